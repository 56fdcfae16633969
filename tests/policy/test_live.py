"""
Tests for L{txgate.policy.live}: the policy in force, swapped on reload.
"""

from __future__ import annotations

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import ConfigError, ConfigErrors
from txgate.interfaces import Checkpoint, IPolicy
from txgate.policy.cpl import parse_policy
from txgate.policy.default import DefaultPolicy
from txgate.policy.live import LivePolicy
from txgate.session import Address, Session
from txgate.testing import RecordingObserver, assert_provides

SESSION = Session("s-9", "explicit", Address("10.0.0.1", 4000), 0.0, client_protocol="tcp", tunneled=True)


class LivePolicyTests(SynchronousTestCase):
    """
    A reload replaces the policy whole, or not at all.
    """

    def setUp(self) -> None:
        self.logged = RecordingObserver()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def messages(self) -> list[str]:
        return [formatEvent(e) for e in self.logged.events if e.get("log_namespace") == "txgate.policy.live.LivePolicy"]

    def test_provides(self) -> None:
        """It is an IPolicy itself."""
        assert_provides(self, IPolicy, LivePolicy(DefaultPolicy(True)))

    def test_reload(self) -> None:
        """A good reload takes effect for the next decision and is logged."""
        live = LivePolicy(DefaultPolicy(True))
        self.assertTrue(live.decide(Checkpoint.CONNECTION, SESSION, {}).allow)
        self.assertTrue(live.reload(lambda: DefaultPolicy(False)))
        self.assertFalse(live.decide(Checkpoint.CONNECTION, SESSION, {}).allow)
        self.assertIn("policy reloaded", self.messages())

    def test_failed_reload_keeps_policy(self) -> None:
        """A reload that raises keeps the policy in force and logs the errors."""
        live = LivePolicy(DefaultPolicy(True))

        def broken() -> DefaultPolicy:
            raise ConfigErrors((ConfigError("p.cpl", "", "unknown action 'x'", 3, 5),))

        self.assertFalse(live.reload(broken))
        self.assertTrue(live.decide(Checkpoint.CONNECTION, SESSION, {}).allow)
        [message] = self.messages()
        self.assertIn("keeping the policy in force", message)
        self.assertIn("p.cpl:3:5: unknown action 'x'", message)

    def test_trace(self) -> None:
        """With trace on, each decision is logged with the rules that made it."""
        policy = parse_policy("<proxy>\n  DENY client.protocol=!ssl tunneled=yes\n", "t.cpl")
        live = LivePolicy(policy, trace=True)
        live.decide(Checkpoint.CONNECTION, SESSION, {"url.host": "x"})
        [message] = self.messages()
        self.assertIn("session=s-9 checkpoint=connection verdict=deny matched=t.cpl:2 <proxy>", message)

    def test_no_trace(self) -> None:
        """With trace off, decisions are not logged."""
        LivePolicy(DefaultPolicy(True)).decide(Checkpoint.CONNECTION, SESSION, {})
        self.assertEqual(self.messages(), [])
