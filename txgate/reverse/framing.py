# -*- test-case-name: tests.reverse.test_framing -*-
"""
Strict request heads for reverse mode, checked before a head is given to h11.

h11 is lenient where leniency lets a request be read two ways: it accepts a
bare LF as a line end, unfolds obs-fold lines, merges repeated identical
Content-Length fields and lets Transfer-Encoding win over Content-Length.
A proxy that reads a head one way in front of a real server that reads it
another is how requests are smuggled, so the reverse proxy refuses every such
head with a 400 and the reason goes to the security log.
"""

from __future__ import annotations

import re

__all__ = ["BadHead", "check_head", "head_end", "head_start", "MAX_EMPTY_LINES"]


class BadHead(Exception):
    """
    A request head the reverse proxy refuses.

    @ivar status: the status to answer with (400, 431 or 505).
    @ivar reason: short and precise, for the security log; also C{str()}.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


MAX_EMPTY_LINES = 8
"""
How many empty lines (CRLF) before a request line are skipped. RFC 9112
section 2.2 asks a server to ignore at least one (some clients send one after
a POST body); a few more are harmless, and a bound keeps L{head_end} from
rescanning a long run of them every time a byte arrives. Past the bound the
head ends at the next blank line and L{check_head} finds no request line.
"""

_TERMINATOR = b"\r\n\r\n"


def head_start(buffer: bytes | bytearray) -> int:
    """
    Where the request line starts: past up to L{MAX_EMPTY_LINES} leading
    CRLFs. h11 refuses a head that starts with an empty line, so the glue
    drops C{buffer[:head_start(buffer)]} before feeding it.
    """
    start = 0
    while start < 2 * MAX_EMPTY_LINES and buffer[start : start + 2] == b"\r\n":
        start += 2
    return start


def head_end(buffer: bytes | bytearray, limit: int, start: int = 0) -> int | None:
    """
    Find the end of the request head in what has arrived so far.

    @param limit: the most bytes a head may take, leading empty lines and the
        final blank line included (C{max_header_size}).
    @param start: how much of C{buffer} an earlier call already searched
        (the buffer's length then); the search resumes just before it, so a
        head trickling in a byte at a time is not rescanned from the start.
    @return: the index just past the blank line (C{CRLF CRLF}) ending the
        head, or C{None} while the head is incomplete.
    @raise BadHead: 431 when no head ends within C{limit} bytes.
    """
    first = head_start(buffer)
    # A terminator split over two deliveries starts at most 3 bytes back.
    at = buffer.find(_TERMINATOR, max(first, start - 3), limit)
    if at >= 0:
        return at + 4
    if len(buffer) >= limit:
        raise BadHead(431, f"request head larger than {limit} bytes")
    return None


_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]+)\.([0-9]+)")
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*(.*?)[ \t]*", re.DOTALL)
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}")
_SUPPORTED = frozenset({(b"1", b"0"), (b"1", b"1")})


def _field_error(line: bytes) -> BadHead:
    name, colon, _ = line.partition(b":")
    if not colon:
        return BadHead(400, "header line without a colon")
    if not name:
        return BadHead(400, "empty header name")
    if name.rstrip(b" \t") != name:
        return BadHead(400, "request smuggling: whitespace before colon in header name")
    return BadHead(400, "header name is not a token")


def check_head(head: bytes | bytearray) -> None:
    """
    Refuse a request head that h11 would read leniently.

    @param head: a whole head as L{head_end} delimits it (C{buffer[:end]}),
        ending in the blank line; leading empty lines are skipped.
    @raise BadHead: 505 for an HTTP version other than 1.0 and 1.1, else
        400 with the reason.
    """
    head = bytes(head[head_start(head) :])
    crs = head.count(b"\r")
    crlfs = head.count(b"\r\n")
    if crs != crlfs:
        raise BadHead(400, "request smuggling: bare CR in head")
    if head.count(b"\n") != crlfs:
        raise BadHead(400, "request smuggling: bare LF in head")
    control = _CONTROL.search(head)
    if control is not None:
        if control.group() == b"\x00":
            raise BadHead(400, "NUL in head")
        raise BadHead(400, f"control character 0x{control.group()[0]:02X} in head")
    if not head.endswith(_TERMINATOR):
        raise BadHead(400, "head does not end with an empty line")
    lines = head[:-4].split(b"\r\n")

    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        raise BadHead(400, "malformed request line")
    major, minor = request.group(3), request.group(4)
    if (major, minor) not in _SUPPORTED:
        raise BadHead(505, "HTTP version not supported")

    lengths = encodings = hosts = 0
    for index in range(1, len(lines)):
        line = lines[index]
        if line[:1] in (b" ", b"\t"):
            raise BadHead(400, "request smuggling: obs-fold (line folding) in header")
        field = _FIELD.fullmatch(line)
        if field is None:
            raise _field_error(line)
        name = field.group(1).lower()
        if name == b"content-length":
            lengths += 1
            if lengths > 1:
                raise BadHead(400, "request smuggling: more than one Content-Length")
            value = field.group(2)
            if b"," in value:
                raise BadHead(400, "request smuggling: list in Content-Length")
            if _CONTENT_LENGTH.fullmatch(value) is None:
                raise BadHead(400, "request smuggling: Content-Length is not 1-19 digits")
        elif name == b"transfer-encoding":
            encodings += 1
            if encodings > 1:
                raise BadHead(400, "request smuggling: more than one Transfer-Encoding")
            if field.group(2).lower() != b"chunked":
                raise BadHead(400, "request smuggling: Transfer-Encoding other than chunked")
        elif name == b"host":
            hosts += 1
            if hosts > 1:
                raise BadHead(400, "more than one Host header")

    if lengths and encodings:
        raise BadHead(400, "request smuggling: both Content-Length and Transfer-Encoding")
    if minor == b"0" and encodings:
        # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        raise BadHead(400, "request smuggling: Transfer-Encoding in an HTTP/1.0 request")
    if minor == b"1" and not hosts:
        raise BadHead(400, "HTTP/1.1 request without Host")
