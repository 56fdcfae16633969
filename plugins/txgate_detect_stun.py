# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{stun} (priority 50).

STUN / TURN over TCP, plain or with RFC 4571 framing: C{stun}, with facts
C{framing} and C{cookie}.

The logic lives in L{txgate.detect.stun}; docs/protocols.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.detect import stun as _core
from txgate.interfaces import NOT_MINE, IDetector, Verdict


@implementer(IPlugin, IDetector)
class StunDetector:
    """The C{stun} detector; see the module docstring."""

    name = "stun"
    priority = 50

    def detect(self, buffered: bytes) -> Verdict:
        try:
            return _core.detect(buffered)
        except Exception:
            # The core never raises; should a bug make it, the pipeline
            # must not break: the stream is then just not ours.
            return NOT_MINE


detector = StunDetector()
