"""
Tests for L{txgate.reverse.health}: rise/fall transitions and check verdicts.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse.health import HealthTracker, judge


class HealthTrackerTests(SynchronousTestCase):
    """
    L{HealthTracker} changes state only after C{fall} consecutive failures or
    C{rise} consecutive successes.
    """

    def test_starts_up(self) -> None:
        """
        Servers start Up, as in HAProxy and KEMP.
        """
        self.assertTrue(HealthTracker(rise=2, fall=3).up)

    def test_fall(self) -> None:
        """
        The C{fall}-th consecutive failure takes the server Down, not before.
        """
        tracker = HealthTracker(rise=2, fall=3)
        self.assertEqual([tracker.record(False) for _ in range(3)], [None, None, False])
        self.assertFalse(tracker.up)
        self.assertIsNone(tracker.record(False))

    def test_rise(self) -> None:
        """
        The C{rise}-th consecutive success brings a Down server Up.
        """
        tracker = HealthTracker(rise=2, fall=1, up=False)
        self.assertEqual([tracker.record(True) for _ in range(3)], [None, True, None])
        self.assertTrue(tracker.up)

    def test_interrupted(self) -> None:
        """
        A success between failures starts the count again, and the other way round.
        """
        tracker = HealthTracker(rise=2, fall=2)
        results = [tracker.record(ok) for ok in (False, True, False, True, False, False)]
        self.assertEqual(results, [None, None, None, None, None, False])
        results = [tracker.record(ok) for ok in (True, False, True, True)]
        self.assertEqual(results, [None, None, None, True])

    def test_one_and_one(self) -> None:
        """
        With rise and fall 1 every change of result is a transition.
        """
        tracker = HealthTracker(rise=1, fall=1)
        results = [tracker.record(ok) for ok in (True, False, False, True, True)]
        self.assertEqual(results, [None, False, None, True, None])

    def test_validation(self) -> None:
        """
        Rise and fall below 1 make no sense and are refused.
        """
        self.assertRaises(ValueError, HealthTracker, rise=0, fall=1)
        self.assertRaises(ValueError, HealthTracker, rise=1, fall=0)

    @given(st.integers(1, 5), st.integers(1, 5), st.lists(st.booleans(), max_size=40))
    def test_model(self, rise: int, fall: int, results: list[bool]) -> None:
        """
        Transitions match a direct model: the state changes exactly when the
        last C{fall} results (since the last change) were failures while Up,
        or the last C{rise} successes while Down.
        """
        tracker = HealthTracker(rise=rise, fall=fall)
        up = True
        run: list[bool] = []
        for ok in results:
            run.append(ok)
            expected = None
            need = fall if up else rise
            if len(run) >= need and all(r == (not up) for r in run[-need:]):
                up = not up
                expected = up
                run = []
            self.assertEqual(tracker.record(ok), expected)
            self.assertEqual(tracker.up, up)


class JudgeTests(SynchronousTestCase):
    """
    L{judge} says whether a check passed, in words fit for a log line.
    """

    def test_expected_status(self) -> None:
        """
        The expected status passes.
        """
        self.assertEqual(judge(200, None, 200), (True, "HTTP 200"))
        self.assertEqual(judge(204, None, 204), (True, "HTTP 204"))

    def test_other_status(self) -> None:
        """
        Any other status fails, saying what was expected.
        """
        self.assertEqual(judge(500, None, 200), (False, "HTTP 500, expected 200"))
        self.assertEqual(judge(200, None, 204), (False, "HTTP 200, expected 204"))

    def test_error(self) -> None:
        """
        An error fails with its own text.
        """
        self.assertEqual(judge(None, "connection refused", 200), (False, "connection refused"))

    def test_nothing(self) -> None:
        """
        No status and no error is still a failure.
        """
        self.assertEqual(judge(None, None, 200), (False, "no response"))
