"""
Tests for L{txgate.policy.default}: the policy when no policy file is named.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txgate.interfaces import Checkpoint, IPolicy
from txgate.policy.default import DefaultPolicy
from txgate.session import Address, Session
from txgate.testing import assert_provides

SESSION = Session("s-1", "explicit", Address("127.0.0.1", 40000), 0.0)


class DefaultPolicyTests(SynchronousTestCase):
    """
    Every transaction gets the C{default_policy} verdict, at every checkpoint.
    """

    def test_provides(self) -> None:
        """It provides L{IPolicy}."""
        assert_provides(self, IPolicy, DefaultPolicy(True))

    def test_allow(self) -> None:
        """C{default_policy = "allow"}: allowed, with no reason."""
        for checkpoint in Checkpoint:
            decision = DefaultPolicy(True).decide(checkpoint, SESSION, {"url": "http://a.test/"})
            self.assertEqual((decision.verdict, decision.reason), ("allow", ""), msg=checkpoint)

    def test_deny(self) -> None:
        """C{default_policy = "deny"}: denied, and the reason names the setting."""
        for checkpoint in Checkpoint:
            decision = DefaultPolicy(False).decide(checkpoint, SESSION, {})
            self.assertEqual((decision.verdict, decision.reason), ("deny", "denied by default_policy"), msg=checkpoint)
