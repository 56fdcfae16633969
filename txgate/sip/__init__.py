"""
SIP, sans-IO: framing of SIP over a byte stream (RFC 3261 18.3), the one
rewrite txgate makes (the [MS-SIPCOMP] NEGOTIATE compression offer) and the
C{403 Forbidden} answer for refused requests. No I/O here; the Twisted glue is
L{txgate.net.sip}.
"""

from txgate.sip.framing import (
    MAX_BODY,
    MAX_HEADER,
    KeepAlive,
    Message,
    SipReader,
    first_request,
    forbidden_response,
    rewrite_negotiate_compression,
)

__all__ = [
    "MAX_BODY",
    "MAX_HEADER",
    "KeepAlive",
    "Message",
    "SipReader",
    "first_request",
    "forbidden_response",
    "rewrite_negotiate_compression",
]
