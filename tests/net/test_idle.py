"""
Tests for L{txgate.net.idle}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgate.net.idle import IdleWatch


class IdleWatchTests(SynchronousTestCase):
    """
    The callback fires once, C{timeout} seconds after the last touch.
    """

    def test_fires_after_last_touch(self) -> None:
        """Touches push the deadline; the callback gets the idle time."""
        clock = Clock()
        fired: list[float] = []
        watch = IdleWatch(clock, 10, fired.append)
        clock.advance(6)
        watch.touch()
        clock.advance(6)
        self.assertEqual(fired, [])
        clock.advance(4)
        self.assertEqual(fired, [10])
        clock.advance(100)
        self.assertEqual(fired, [10])

    def test_stop(self) -> None:
        """A stopped watch never fires and leaves no timer behind."""
        clock = Clock()
        watch = IdleWatch(clock, 10, lambda idle: self.fail("fired"))
        watch.stop()
        self.assertEqual(clock.getDelayedCalls(), [])
