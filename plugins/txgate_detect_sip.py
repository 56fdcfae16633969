# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{sip} (priority 30).

SIP over TCP (request, response, after optional CRLF keep-alives): C{sip}, with
facts C{method} or C{status}, and C{call_id} once the headers are in.

The logic lives in L{txgate.detect.sip}; docs/protocols.md describes it.
"""

from txgate.detect import CoreDetector, sip

detector = CoreDetector("sip", 30, sip.detect)
