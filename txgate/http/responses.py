# -*- test-case-name: tests.http.test_responses -*-
"""
Servers' responses, read by both proxies: the head, and where the body
ends. Reverse mode reads its real servers strictly; the forward proxy reads
origin servers with C{lenient=True}, as browsers do (L{parse_response_head}).

Where a response ends decides what the next client on a pooled connection
reads, so the reader is conservative: anything that could be read two ways
is a L{BadResponse} (a 502, or a cut connection once the response has
begun), and a response whose end is not certain leaves its connection out
of the pool. Bodies pass as they come, decoded only from chunked coding.
"""

from __future__ import annotations

import re

import attrs

from txgate.http.proxying import TOKEN, Headers, comma_tokens
from txgate.http.framing import BadHead, ChunkedChecker, head_end

__all__ = ["BadResponse", "BodyReader", "MAX_RESPONSE_HEAD", "ResponseHead", "parse_response_head", "response_head_end"]

MAX_RESPONSE_HEAD = 16384
"""The most bytes a response head may take (h11's default, which this reader replaced)."""


class BadResponse(Exception):
    """A response the proxy cannot forward; C{str()} is the reason, for the log."""


@attrs.frozen
class ResponseHead:
    """An informational or final response head."""

    status: int
    reason: bytes
    http_version: bytes
    headers: Headers
    """C{(name, value)} in order: lower-case names, values without surrounding whitespace."""
    keep_alive: bool
    """HTTP/1.1 without C{close} among the Connection tokens."""


_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# Every field line at once (each ends in CRLF): one pass, no backtracking.
_FIELD_LINES = re.compile(rb"(?:" + TOKEN + rb":[\t\x20-\x7e\x80-\xff]*\r\n)*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}")


_BLANK_LINE = re.compile(rb"\n\r?\n")


def response_head_end(buffer: bytes | bytearray, lenient: bool = False) -> int | None:
    """
    The index just past the blank line ending the response head in
    C{buffer}, or C{None} while it is incomplete.

    @param lenient: a blank line ends the head whatever its line ends
        (CRLF or a bare LF), as browsers read origin servers; see
        L{parse_response_head}.
    @raise BadResponse: no head within L{MAX_RESPONSE_HEAD} bytes.
    """
    if lenient:
        blank = _BLANK_LINE.search(buffer, 0, MAX_RESPONSE_HEAD)
        if blank is not None:
            return blank.end()
        if len(buffer) < MAX_RESPONSE_HEAD:
            return None
    else:
        try:
            return head_end(buffer, MAX_RESPONSE_HEAD)
        except BadHead:
            pass
    raise BadResponse(f"response head larger than {MAX_RESPONSE_HEAD} bytes")


def _normalized(head: bytes) -> bytes:
    """
    C{head} with every line ending in CRLF and obs-fold lines joined to the
    field line they continue, with one space (RFC 9112 section 5.2).
    """
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")][:-2]
    out = lines[:1]
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and len(out) > 1:
            out[-1] = out[-1].rstrip(b" \t") + b" " + line.strip(b" \t")
        else:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n\r\n"


def parse_response_head(head: bytes, lenient: bool = False) -> ResponseHead:
    """
    Read a response head (as L{response_head_end} delimits it). Every line
    ends in CRLF; obs-fold and control characters are refused.

    @param lenient: accept bare LF line ends and unfold obs-fold lines, as
        browsers do: the forward proxy reads any origin server on the
        internet, and refusing what the client would read costs the user the
        page. Reverse mode's real servers get no such leeway.
    @raise BadResponse: with the reason.
    """
    if lenient and (head.count(b"\n") != head.count(b"\r\n") or b"\n " in head or b"\n\t" in head):
        head = _normalized(head)
    if not head.endswith(b"\r\n\r\n"):
        raise BadResponse("response head does not end with an empty line")
    fields_start = head.find(b"\r\n") + 2
    fields_end = len(head) - 2
    status_line = _STATUS_LINE.fullmatch(head, 0, fields_start - 2)
    # Neither pattern admits a CR or LF but in a line's end: bare ones are
    # looked for only in a head they refuse, for the reason.
    if status_line is None or (
        fields_start < fields_end and _FIELD_LINES.fullmatch(head, fields_start, fields_end) is None
    ):
        if head.count(b"\r") != head.count(b"\n") or head.count(b"\r\n") != head.count(b"\n"):
            raise BadResponse("bare CR or LF in response head")
        if status_line is None:
            raise BadResponse(f"malformed status line {head[: min(fields_start - 2, 80)]!r}")
        raise _fields_error(head[fields_start:fields_end])
    minor, status, reason = status_line.group(1), int(status_line.group(2)), status_line.group(3) or b""
    if status < 100:
        raise BadResponse(f"status {status} out of range")
    keep_alive = minor == b"1"
    headers: Headers = []
    if fields_start < fields_end:
        for line in head[fields_start : fields_end - 2].split(b"\r\n"):
            name, _, value = line.partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            headers.append((name, value))
            if name == b"connection" and b"close" in comma_tokens(value):
                keep_alive = False
    return ResponseHead(status, reason, b"1." + minor, headers, keep_alive)


def _fields_error(fields: bytes) -> BadResponse:
    """Why the header lines C{fields} (each ending in CRLF) are not all C{token ":" value}."""
    for line in fields.split(b"\r\n")[:-1]:
        if _FIELD_LINES.fullmatch(line + b"\r\n") is None:
            if line[:1] in (b" ", b"\t"):
                return BadResponse("obs-fold (line folding) in response header")
            return BadResponse(f"malformed response header line {line[:80]!r}")
    return BadResponse("malformed response header section")


# Body framings (RFC 9112 section 6.3).
_NONE, _LENGTH, _CHUNKED, _CLOSE = range(4)


class BodyReader:
    """
    Where a final response's body ends, and its data.

    L{feed} takes the bytes that follow the head as they arrive; the body
    is its length, its chunked coding, or everything until the connection
    closes (L{eof}).

    @ivar reusable: whether the connection can carry another request once
        the body has ended: HTTP/1.1 without C{Connection: close}, and a
        body whose end the framing fixed.
    @ivar trailers: a chunked body's trailer fields.
    """

    def __init__(self, request_method: bytes, head: ResponseHead) -> None:
        self.reusable = head.keep_alive
        self.trailers: Headers = []
        self._left = 0
        self._chunks: ChunkedChecker | None = None
        self.ended = False
        if head.status in (204, 304) or request_method == b"HEAD":
            self._framing = _NONE
            return
        lengths: set[bytes] = set()
        encodings: list[bytes] = []
        for name, value in head.headers:
            if name == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif name == b"transfer-encoding":
                encodings.extend(comma_tokens(value))
        if encodings:
            if encodings != [b"chunked"]:
                raise BadResponse(f"unsupported Transfer-Encoding {b', '.join(encodings)!r}")
            if lengths:
                # RFC 9112 section 6.3: chunked wins, and the connection is
                # not kept, since the two headers disagree on the framing.
                self.reusable = False
            self._framing = _CHUNKED
            self._chunks = ChunkedChecker()
        elif lengths:
            if len(lengths) != 1:
                raise BadResponse("conflicting Content-Length values")
            length = lengths.pop()
            if _CONTENT_LENGTH.fullmatch(length) is None:
                raise BadResponse(f"bad Content-Length {length[:40]!r}")
            self._framing = _LENGTH
            self._left = int(length)
        else:
            self._framing = _CLOSE
            self.reusable = False

    def feed(self, data: bytes, out: list[bytes]) -> int | None:
        """
        Read the next bytes after the head, appending the body data in them
        to C{out}. Returns C{None} while the body goes on; once it has
        ended, how many bytes of C{data} it took (the rest came after it).

        @raise BadResponse: malformed chunked coding.
        """
        framing = self._framing
        if framing == _LENGTH:
            left = self._left
            if len(data) < left:
                out.append(data)
                self._left = left - len(data)
                return None
            out.append(data if len(data) == left else data[:left])
            self._left = 0
            self.ended = True
            return left
        if framing == _CHUNKED:
            assert self._chunks is not None
            try:
                end = self._chunks.feed(data, out)
            except BadHead as e:
                raise BadResponse(f"malformed chunked body: {e.reason}") from None
            if end is not None:
                self.trailers = self._chunks.trailers
                self.ended = True
            return end
        if framing == _CLOSE:
            out.append(data)
            return None
        self.ended = True
        return 0

    def eof(self) -> bool:
        """The connection closed: whether that ended the body (else it was cut short)."""
        if self._framing == _CLOSE:
            self.ended = True
        return self.ended
