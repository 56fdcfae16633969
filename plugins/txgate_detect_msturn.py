# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{ms-turn} (priority 10).

[MS-TURN] over TCP: the 50-byte pseudo-TLS client hello (C{pseudo_tls=True}) or
a stream opening with a TURN control frame (C{pseudo_tls=False}). It runs
before C{tls}: the pseudo-TLS hello is a well-formed TLS 1.0 ClientHello too.

The logic lives in L{txgate.detect.msturn}; docs/protocols.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.detect import msturn as _core
from txgate.interfaces import NOT_MINE, IDetector, Verdict


@implementer(IPlugin, IDetector)
class MsTurnDetector:
    """The C{ms-turn} detector; see the module docstring."""

    name = "ms-turn"
    priority = 10

    def detect(self, buffered: bytes) -> Verdict:
        try:
            return _core.detect(buffered)
        except Exception:
            # The core never raises; should a bug make it, the pipeline
            # must not break: the stream is then just not ours.
            return NOT_MINE


detector = MsTurnDetector()
