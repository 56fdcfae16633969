# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{http} (priority 40).

An HTTP/1.x request line: C{http}, with facts C{method} and C{target}.

The logic lives in L{txgate.detect.http}; docs/protocols.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.detect import http as _core
from txgate.interfaces import NOT_MINE, IDetector, Verdict


@implementer(IPlugin, IDetector)
class HttpDetector:
    """The C{http} detector; see the module docstring."""

    name = "http"
    priority = 40

    def detect(self, buffered: bytes) -> Verdict:
        try:
            return _core.detect(buffered)
        except Exception:
            # The core never raises; should a bug make it, the pipeline
            # must not break: the stream is then just not ours.
            return NOT_MINE


detector = HttpDetector()
