# -*- test-case-name: tests.sip.test_framing -*-
"""
SIP over a byte stream, sans-IO.

Over TCP (and TLS) a SIP message ends where its Content-Length says: RFC 3261
18.3 makes the header mandatory on stream transports. Between messages a peer
may send keep-alives (RFC 5626 3.5.1): a CRLFCRLF "ping" and a CRLF "pong".

L{SipReader} turns bytes into L{Message} and L{KeepAlive} events. A message
keeps its exact bytes, so a relay forwards what arrived, byte for byte; the
parsed start line and headers are for logs and policy only.
"""

from __future__ import annotations

import re
import secrets
from typing import Callable, Iterator

import attrs

from txgate.errors import PeerProtocolError

__all__ = [
    "MAX_BODY",
    "MAX_HEADER",
    "COMPACT_FORMS",
    "KeepAlive",
    "Message",
    "SipReader",
    "first_request",
    "forbidden_response",
    "rewrite_negotiate_compression",
]

MAX_HEADER = 64 * 1024
"""
Bytes a start line plus header block may take, CRLFCRLF included. Lync's
largest header blocks (REGISTER with long Authorization and ms-* headers) are
a few KiB; a peer that sends more without ending its headers is refused with a
L{PeerProtocolError} rather than buffered without bound.
"""

MAX_BODY = 8 * 1024 * 1024
"""
The largest Content-Length accepted. A message is held whole until its last
byte arrives (so that it can be relayed as one unit), so this bounds memory per
connection; Lync's biggest bodies (roaming contact lists, conference
documents) are well under 1 MiB.
"""

COMPACT_FORMS = {
    "i": "call-id",
    "f": "from",
    "t": "to",
    "v": "via",
    "l": "content-length",
    "m": "contact",
    "k": "supported",
    "c": "content-type",
    "e": "content-encoding",
    "s": "subject",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}
"""Compact header names (RFC 3261 7.3.3 and later extensions) to their long form, lower case."""

_TOKEN = rb"[A-Za-z0-9\-.!%*_+`'~]+"
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") (\S+) SIP/2\.0")
_STATUS_LINE = re.compile(rb"SIP/2\.0 ([1-6][0-9][0-9]) ?(.*)", re.DOTALL)
_HEADER_NAME = re.compile(_TOKEN)
_CRLF = b"\r\n"
_CRLF2 = b"\r\n\r\n"


def _canonical(name: str) -> str:
    lower = name.strip().lower()
    return COMPACT_FORMS.get(lower, lower)


@attrs.frozen
class KeepAlive:
    """
    A keep-alive between messages: C{b"\\r\\n\\r\\n"} (ping) or C{b"\\r\\n"} (pong).
    A ping split across two reads may arrive as two pongs; the bytes are the same.
    """

    raw: bytes


@attrs.frozen
class Message:
    """
    One SIP request or response.

    @ivar raw: the exact bytes of the message, headers and body.
    @ivar start_line: the first line, decoded.
    @ivar method: the request method (C{"NEGOTIATE"}), C{None} for a response.
    @ivar uri: the Request-URI, C{None} for a response.
    @ivar status: the status code of a response, C{None} for a request.
    @ivar reason: the reason phrase of a response, C{""} for a request.
    @ivar headers: C{(name, value)} pairs in order, names as sent (compact
        or long), values decoded with folding undone; look them up with
        L{header} and L{headers_named}, which know the compact forms.
    @ivar body_offset: where the body starts in C{raw}.
    """

    raw: bytes
    start_line: str
    method: str | None
    uri: str | None
    status: int | None
    reason: str
    headers: tuple[tuple[str, str], ...]
    body_offset: int

    @property
    def is_request(self) -> bool:
        return self.method is not None

    @property
    def body(self) -> bytes:
        return self.raw[self.body_offset :]

    def headers_named(self, name: str) -> list[str]:
        """Every value of header C{name} (any case, long or compact form), in order."""
        wanted = _canonical(name)
        return [value for key, value in self.headers if _canonical(key) == wanted]

    def header(self, name: str, default: str = "") -> str:
        """The first value of header C{name}, or C{default}."""
        values = self.headers_named(name)
        return values[0] if values else default

    @property
    def call_id(self) -> str:
        return self.header("call-id")

    @property
    def from_(self) -> str:
        return self.header("from")

    @property
    def to(self) -> str:
        return self.header("to")

    @property
    def cseq(self) -> str:
        return self.header("cseq")

    @property
    def cseq_method(self) -> str:
        """The method named by CSeq (what a response answers), upper case."""
        parts = self.cseq.split()
        return parts[1].upper() if len(parts) > 1 else ""

    @property
    def summary(self) -> str:
        """The method, or the status and reason: what a log line names."""
        if self.method is not None:
            return self.method
        return f"{self.status} {self.reason}".rstrip()


class SipReader:
    """
    Frames SIP messages from a stream, h11 style: L{receive} bytes, then call
    L{next_event} until it returns C{None}; or L{feed} to do both.

    Raises L{PeerProtocolError} (protocol C{"sip"} or C{"sips"}, as given) at
    the first byte that is not SIP. The error is raised before the offending
    message is consumed, so L{pending} then holds every byte not yet returned
    as an event: a relay that forwarded each event can hand exactly those
    bytes to a tunnel.
    """

    def __init__(self, protocol: str = "sip", max_header: int = MAX_HEADER, max_body: int = MAX_BODY) -> None:
        self._protocol = protocol
        self._max_header = max_header
        self._max_body = max_body
        self._buffer = bytearray()
        # Where to resume looking for CRLFCRLF, so a slow header block is not
        # searched from its start on every read.
        self._scan_from = 0
        self._first_line_checked = False

    @property
    def pending(self) -> bytes:
        """The bytes received and not yet returned in an event."""
        return bytes(self._buffer)

    def receive(self, data: bytes) -> None:
        self._buffer += data

    def feed(self, data: bytes) -> list[Message | KeepAlive]:
        """
        Receive C{data} and return every event now complete.

        @raise PeerProtocolError: the stream is not SIP; events complete
            before the bad bytes are lost to the caller, so relays use
            L{receive} and L{next_event}.
        """
        self.receive(data)
        return list(self._events())

    def _events(self) -> Iterator[Message | KeepAlive]:
        while True:
            event = self.next_event()
            if event is None:
                return
            yield event

    def _error(self, reason: str) -> PeerProtocolError:
        return PeerProtocolError(self._protocol, reason)

    def next_event(self) -> Message | KeepAlive | None:
        """
        @return: the next complete event, or C{None} if more bytes are needed.
        @raise PeerProtocolError: the next bytes are not SIP.
        """
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[:2] == _CRLF or buffer[:1] == b"\r" and len(buffer) == 1:
            return self._keep_alive()
        if not self._first_line_checked:
            end = buffer.find(_CRLF)
            if end < 0:
                if len(buffer) > self._max_header:
                    raise self._error(f"no end of start line in the first {self._max_header} bytes")
                if b"\n" in buffer:
                    raise self._error(f"start line ends with a bare LF: {bytes(buffer[:80])!r}")
                return None
            _parse_start_line(bytes(buffer[:end]), self._error)
            self._first_line_checked = True
        end = buffer.find(_CRLF2, max(self._scan_from - 3, 0))
        if end < 0:
            if len(buffer) > self._max_header:
                raise self._error(f"header block longer than {self._max_header} bytes without CRLFCRLF")
            self._scan_from = len(buffer)
            return None
        header_end = end + 4
        if header_end > self._max_header:
            raise self._error(f"header block of {header_end} bytes exceeds {self._max_header}")
        head = bytes(buffer[:end])
        message_head = _parse_head(head, self._error)
        length = _content_length(message_head[4], self._error)
        if length > self._max_body:
            raise self._error(f"Content-Length {length} exceeds the limit of {self._max_body} bytes")
        total = header_end + length
        if len(buffer) < total:
            return None
        raw = bytes(buffer[:total])
        del buffer[:total]
        self._scan_from = 0
        self._first_line_checked = False
        start_line, method, uri, status_reason, headers = message_head
        status, reason = status_reason
        return Message(raw, start_line, method, uri, status, reason, headers, header_end)

    def _keep_alive(self) -> KeepAlive | None:
        buffer = self._buffer
        if buffer[:4] == _CRLF2:
            del buffer[:4]
            return KeepAlive(_CRLF2)
        if buffer[:2] == _CRLF:
            del buffer[:2]
            return KeepAlive(_CRLF)
        return None  # a lone CR: wait for its LF


_ErrorFactory = Callable[[str], PeerProtocolError]


def _parse_start_line(line: bytes, error: _ErrorFactory) -> tuple[str, str | None, str | None, tuple[int | None, str]]:
    if line.startswith(b"SIP/2.0 "):
        match = _STATUS_LINE.fullmatch(line)
        if match is None:
            raise error(f"malformed status line {line[:80]!r}")
        reason = match.group(2).decode("utf-8", "replace")
        return line.decode("utf-8", "replace"), None, None, (int(match.group(1)), reason)
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise error(f"expected a SIP request or status line, got {line[:80]!r}")
    return (
        line.decode("utf-8", "replace"),
        match.group(1).decode("ascii"),
        match.group(2).decode("utf-8", "replace"),
        (None, ""),
    )


def _parse_head(head: bytes, error: _ErrorFactory) -> tuple[str, str | None, str | None, tuple[int | None, str], tuple[tuple[str, str], ...]]:
    lines = head.split(_CRLF)
    start_line, method, uri, status_reason = _parse_start_line(lines[0], error)
    headers: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            if not headers:
                raise error(f"continuation line before any header: {line[:80]!r}")
            headers[-1][1] += " " + line.strip().decode("utf-8", "replace")
            continue
        name, colon, value = line.partition(b":")
        name = name.rstrip(b" \t")
        if not colon or _HEADER_NAME.fullmatch(name) is None:
            raise error(f"malformed header line {line[:80]!r}")
        headers.append([name.decode("ascii"), value.strip().decode("utf-8", "replace")])
    return start_line, method, uri, status_reason, tuple((n, v) for n, v in headers)


def _content_length(headers: tuple[tuple[str, str], ...], error: _ErrorFactory) -> int:
    values = {v.strip() for n, v in headers if _canonical(n) == "content-length"}
    if not values:
        raise error("Content-Length missing (mandatory over TCP, RFC 3261 18.3)")
    if len(values) > 1:
        raise error(f"conflicting Content-Length values {sorted(values)}")
    (value,) = values
    if not value.isdigit() or not value.isascii():
        raise error(f"Content-Length {value!r} is not a number")
    return int(value)


def _header_lines(message: Message) -> list[bytes]:
    return message.raw[: message.body_offset - 4].split(_CRLF)


def rewrite_negotiate_compression(message: Message) -> Message:
    """
    Turn a NEGOTIATE request's C{Compression: LZ77-8K} offer ([MS-SIPCOMP]
    3.1.5) into C{Compression: None}.

    In [MS-SIPCOMP] the client's NEGOTIATE (sent first on a TLS connection)
    names the compression it wants, and the server's C{200 OK} echoes it;
    from then on both directions are LZ77 compressed and no longer readable
    as SIP. Offering C{None} keeps the stream plain text. Only the value of
    that header changes; every other byte, the body and so Content-Length
    stay as they were.

    @return: the rewritten message, or C{message} itself when it is not such
        an offer.
    """
    if message.method != "NEGOTIATE":
        return message
    if not any(v.strip().upper().startswith("LZ77") for v in message.headers_named("compression")):
        return message
    lines = _header_lines(message)
    out = [lines[0]]
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"compression" and value.strip().upper().startswith(b"LZ77"):
            spaces = value[: len(value) - len(value.lstrip(b" \t"))]
            line = name + b":" + spaces + b"None"
        out.append(line)
    raw = _CRLF.join(out) + _CRLF2 + message.body
    [rewritten] = SipReader().feed(raw)
    return rewritten  # type: ignore[return-value]


def _quote(reason: str) -> str:
    text = "".join(c if c.isprintable() and c not in '"\\' else " " for c in reason)
    return " ".join(text.split())[:200]


def forbidden_response(request: Message | None, reason: str, tag: str | None = None) -> bytes:
    """
    The C{403 Forbidden} that refuses C{request}: Via, From, To (with a tag
    added when it has none), Call-ID and CSeq copied as RFC 3261 8.2.6.2
    requires, a C{Warning: 399 txgate "reason"} and no body.

    @param tag: the To tag to add, random when C{None}.
    @return: the response bytes, or C{b""} when C{request} is C{None}, a
        response, or an ACK (which is never answered).
    """
    if request is None or not request.is_request or request.method == "ACK":
        return b""
    lines = ["SIP/2.0 403 Forbidden"]
    for value in request.headers_named("via"):
        lines.append(f"Via: {value}")
    lines.append(f"From: {request.from_}")
    to = request.to
    if ";tag=" not in to.replace(" ", "").lower():
        to = f"{to};tag={tag or secrets.token_hex(8)}"
    lines.append(f"To: {to}")
    lines.append(f"Call-ID: {request.call_id}")
    lines.append(f"CSeq: {request.cseq}")
    lines.append(f'Warning: 399 txgate "{_quote(reason)}"')
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def first_request(buffered: bytes, protocol: str = "sip") -> Message | None:
    """
    The first complete request in C{buffered} (keep-alives and responses
    skipped), or C{None} if there is none or the bytes are not SIP.
    """
    reader = SipReader(protocol)
    reader.receive(buffered)
    try:
        while (event := reader.next_event()) is not None:
            if isinstance(event, Message) and event.is_request:
                return event
    except PeerProtocolError:
        return None
    return None
