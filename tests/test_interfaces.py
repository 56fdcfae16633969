"""
Tests for L{txgate.interfaces}: the built-in plugins provide what they
declare, and the value types behave as documented.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txgate.interfaces import NEED_MORE, NOT_MINE, Decision, Detected, IHandoff, IPolicyProvider
from txgate.plugins import discover
from txgate.testing import assert_provides


class BuiltinPluginTests(SynchronousTestCase):
    """
    Every shipped plugin provides its interface.
    """

    def test_provides(self) -> None:
        """The tunnel handoff and the CPL policy provider are found and complete."""
        registry = discover()
        [tunnel] = [p.provider for p in registry.of_kind("handoff") if p.name == "tunnel"]
        [cpl] = [p.provider for p in registry.of_kind("policy") if p.name == "cpl"]
        assert_provides(self, IHandoff, tunnel)
        assert_provides(self, IPolicyProvider, cpl)
        self.assertTrue(cpl.accepts("etc/policy/lync.CPL"))
        self.assertFalse(cpl.accepts("etc/forward.toml"))


class ValueTests(SynchronousTestCase):
    """
    Verdict values.
    """

    def test_sentinels(self) -> None:
        """The detector answers print as their names."""
        self.assertEqual((repr(NEED_MORE), repr(NOT_MINE)), ("NEED_MORE", "NOT_MINE"))

    def test_detected(self) -> None:
        """Detected carries a protocol and its facts."""
        self.assertEqual(Detected("sips", {"sni": "a"}).facts["sni"], "a")

    def test_decision_verdict(self) -> None:
        """A decision's verdict is allow or deny."""
        self.assertEqual((Decision(True).verdict, Decision(False, "no").verdict), ("allow", "deny"))
