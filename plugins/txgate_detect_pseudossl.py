# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{pseudo-ssl} (priority 15).

Google Talk / libjingle pseudo-SSL: the canned 72-byte SSLv2 CLIENT-HELLO
(C{pseudo-ssl}).

The logic lives in L{txgate.detect.pseudossl}; docs/protocols.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.detect import pseudossl as _core
from txgate.interfaces import NOT_MINE, IDetector, Verdict


@implementer(IPlugin, IDetector)
class PseudoSslDetector:
    """The C{pseudo-ssl} detector; see the module docstring."""

    name = "pseudo-ssl"
    priority = 15

    def detect(self, buffered: bytes) -> Verdict:
        try:
            return _core.detect(buffered)
        except Exception:
            # The core never raises; should a bug make it, the pipeline
            # must not break: the stream is then just not ours.
            return NOT_MINE


detector = PseudoSslDetector()
