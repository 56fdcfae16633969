# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{tls} (priority 20).

A TLS ClientHello, reassembled across records and TCP segments: C{ssl}, with
facts C{sni}, C{alpn}, C{versions} and C{ech}. It leaves the [MS-TURN] pseudo-
TLS hello to the C{ms-turn} detector.

The logic lives in L{txgate.detect.tls}; docs/protocols.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.detect import tls as _core
from txgate.interfaces import NOT_MINE, IDetector, Verdict


@implementer(IPlugin, IDetector)
class TlsDetector:
    """The C{tls} detector; see the module docstring."""

    name = "tls"
    priority = 20

    def detect(self, buffered: bytes) -> Verdict:
        try:
            return _core.detect(buffered)
        except Exception:
            # The core never raises; should a bug make it, the pipeline
            # must not break: the stream is then just not ours.
            return NOT_MINE


detector = TlsDetector()
