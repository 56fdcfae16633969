# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{sip} (priority 30).

SIP over TCP (request, response, after optional CRLF keep-alives): C{sip}, with
facts C{method} or C{status}, and C{call_id} once the headers are in.

The logic lives in L{txgate.detect.sip}; docs/protocols.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.detect import sip as _core
from txgate.interfaces import NOT_MINE, IDetector, Verdict


@implementer(IPlugin, IDetector)
class SipDetector:
    """The C{sip} detector; see the module docstring."""

    name = "sip"
    priority = 30

    def detect(self, buffered: bytes) -> Verdict:
        try:
            return _core.detect(buffered)
        except Exception:
            # The core never raises; should a bug make it, the pipeline
            # must not break: the stream is then just not ours.
            return NOT_MINE


detector = SipDetector()
