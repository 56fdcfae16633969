# -*- test-case-name: tests.http.test_framing -*-
"""
The client side of txgate's HTTP/1.1, in both modes: strict request heads
and chunked bodies, how a response is framed back, and how a request is
framed for the server.

Parsers are lenient where leniency lets a request be read two ways (h11,
for one, accepts a bare LF as a line end, unfolds obs-fold lines, merges
repeated identical Content-Length fields and lets Transfer-Encoding win over
Content-Length). A proxy that reads a head one way in front of a server that
reads it another is how requests are smuggled, so both proxies read client
requests only with L{check_head} and L{ChunkedChecker} and refuse every such
head or body with a 400 and the reason (reverse mode's goes to the security
log). Servers' responses are read by L{txgate.http.responses} and framed for
the client by L{frame_response}.
"""

from __future__ import annotations

import re

import attrs

from txgate.http.proxying import TOKEN, Headers, comma_tokens

__all__ = [
    "BadHead",
    "ChunkedChecker",
    "Framing",
    "MAX_CHUNK_SIZE",
    "MAX_EMPTY_LINES",
    "RequestBody",
    "RequestHead",
    "check_head",
    "frame_response",
    "head_end",
    "head_start",
    "response_head",
]


class BadHead(Exception):
    """
    A request head (or chunked body) the proxy refuses.

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
    CRLFs (RFC 9112 section 2.2), which L{check_head} skips.
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


_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/([0-9]+)\.([0-9]+)")
_FIELD_NAME = re.compile(TOKEN)
# Every field line at once: a token, a colon, a value without CR, LF or
# control characters but HTAB, CRLF.
_FIELD_LINES = re.compile(rb"(?:" + TOKEN + rb":[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,19}")
_SUPPORTED = frozenset({(b"1", b"0"), (b"1", b"1")})


def _field_error(line: bytes, what: str = "header") -> BadHead:
    """Why C{line}, a C{what} field line, is not C{token ":" value}."""
    name, colon, _ = line.partition(b":")
    if not colon:
        return BadHead(400, f"{what} line without a colon")
    if not name:
        return BadHead(400, f"empty {what} name")
    if name.rstrip(b" \t") != name:
        return BadHead(400, f"request smuggling: whitespace before colon in {what} name")
    return BadHead(400, f"{what} name is not a token")


def _head_error(head: bytes, lines: list[bytes]) -> BadHead:
    """Why C{head} (leading empty lines skipped; C{lines}, its lines) is refused, the first reason in reading order."""
    crs = head.count(b"\r")
    crlfs = head.count(b"\r\n")
    if crs != crlfs:
        return BadHead(400, "request smuggling: bare CR in head")
    if head.count(b"\n") != crlfs:
        return BadHead(400, "request smuggling: bare LF in head")
    control = _CONTROL.search(head)
    if control is not None:
        if control.group() == b"\x00":
            return BadHead(400, "NUL in head")
        return BadHead(400, f"control character 0x{control.group()[0]:02X} in head")
    if not head.endswith(_TERMINATOR):
        return BadHead(400, "head does not end with an empty line")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        return BadHead(400, "malformed request line")
    if (request.group(3), request.group(4)) not in _SUPPORTED:
        return BadHead(505, "HTTP version not supported")
    return _fields_error(lines)


def _fields_error(lines: list[bytes]) -> BadHead:
    """Why the header lines (C{lines[1:]}, request line first) are not all C{token ":" value}."""
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            return BadHead(400, "request smuggling: obs-fold (line folding) in header")
        name, colon, _ = line.partition(b":")
        if not colon or _FIELD_NAME.fullmatch(name) is None:
            return _field_error(line)
    return BadHead(400, "malformed header section")


@attrs.frozen
class RequestHead:
    """A request head L{check_head} accepted, as the proxy reads it."""

    method: bytes
    target: bytes
    http_version: bytes
    """C{b"1.0"} or C{b"1.1"}."""
    headers: Headers
    """C{(name, value)} in order: lower-case names, values without surrounding whitespace."""
    length: int | None
    """Content-Length, or C{None} without one."""
    chunked: bool
    keep_alive: bool
    """HTTP/1.1 without C{close} among the Connection tokens (HTTP/1.0 connections are not kept)."""

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.length)


def check_head(head: bytes | bytearray) -> RequestHead:
    """
    Read a request head strictly, refusing whatever could be read two ways.

    @param head: a whole head as L{head_end} delimits it (C{buffer[:end]}),
        ending in the blank line; leading empty lines are skipped.
    @raise BadHead: 505 for an HTTP version other than 1.0 and 1.1, else
        400 with the reason.
    """
    head = bytes(head[head_start(head) :])
    lines = head[:-4].split(b"\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    fields_start, fields_end = len(lines[0]) + 2, len(head) - 2
    # The two patterns admit no bare CR or LF and no control character but
    # HTAB, so a head they match needs no other scan; any other head is
    # scanned again, check by check, for the reason.
    if (
        request is None
        or not head.endswith(_TERMINATOR)
        or (fields_start < fields_end and _FIELD_LINES.fullmatch(head, fields_start, fields_end) is None)
    ):
        raise _head_error(head, lines)
    major, minor = request.group(3), request.group(4)
    if (major, minor) not in _SUPPORTED:
        raise BadHead(505, "HTTP version not supported")

    lengths = encodings = hosts = 0
    length: int | None = None
    keep_alive = minor == b"1"
    headers: Headers = []
    if fields_start < fields_end:
        for index in range(1, len(lines)):
            name, _, value = lines[index].partition(b":")
            name = name.lower()
            value = value.strip(b" \t")
            headers.append((name, value))
            if name == b"content-length":
                lengths += 1
                if lengths > 1:
                    raise BadHead(400, "request smuggling: more than one Content-Length")
                if b"," in value:
                    raise BadHead(400, "request smuggling: list in Content-Length")
                if _CONTENT_LENGTH.fullmatch(value) is None:
                    raise BadHead(400, "request smuggling: Content-Length is not 1-19 digits")
                length = int(value)
            elif name == b"transfer-encoding":
                encodings += 1
                if encodings > 1:
                    raise BadHead(400, "request smuggling: more than one Transfer-Encoding")
                if value.lower() != b"chunked":
                    raise BadHead(400, "request smuggling: Transfer-Encoding other than chunked")
            elif name == b"host":
                hosts += 1
                if hosts > 1:
                    raise BadHead(400, "more than one Host header")
            elif name == b"connection" and b"close" in comma_tokens(value):
                keep_alive = False

    if lengths and encodings:
        raise BadHead(400, "request smuggling: both Content-Length and Transfer-Encoding")
    if minor == b"0" and encodings:
        # RFC 9112 section 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
        raise BadHead(400, "request smuggling: Transfer-Encoding in an HTTP/1.0 request")
    if minor == b"1" and not hosts:
        raise BadHead(400, "HTTP/1.1 request without Host")
    return RequestHead(
        method=request.group(1),
        target=request.group(2),
        http_version=b"1." + minor,
        headers=headers,
        length=length,
        chunked=bool(encodings),
        keep_alive=keep_alive,
    )


MAX_CHUNK_SIZE = 2**63 - 1
"""
The largest chunk size L{ChunkedChecker} accepts. A server that keeps the size
in a signed or unsigned 64-bit integer reads a longer hex string modulo 2**64
(or as a negative number) while h11, with Python's unbounded ints, reads it
whole: the two then disagree on where the body ends. At most 16 significant
hex digits and a value below 2**63 fit every such server.
"""

_HEXDIG = re.compile(rb"[0-9A-Fa-f]*")
# CTLs other than HTAB; obs-text (0x80-0xFF) is allowed in extensions and trailers.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TRAILER_FIELD = re.compile(rb"(" + TOKEN + rb"):(.*)", re.DOTALL)
_FRAMING_FIELDS = frozenset({b"content-length", b"transfer-encoding"})

# ChunkedChecker states. Only the line states scan bytes; DATA skips them.
_SIZE = 0  # reading a chunk-size line, buffered in _line
_DATA = 1  # inside chunk-data, _remaining bytes to go
_DATA_CR = 2  # chunk-data done, CR expected
_DATA_LF = 3  # CR seen after chunk-data, LF expected
_TRAILER = 4  # reading trailer lines (after the last-chunk), buffered in _line
_DONE = 5  # the body has ended; feed() returned a number
_FAILED = 6  # feed() raised; it raises the same error again


class ChunkedChecker:
    """
    Follows a chunked body's framing over raw bytes, refusing what lenient
    parsers let through, and hands out its data and trailer fields.

    h11, for one, reads chunked bodies leniently: a chunk-size line ending in
    a bare LF leaves it waiting for a CRLF that never comes, a bare CR passes
    inside extensions, and a chunk size of any length is read as a Python
    int, where servers with 64-bit sizes read it modulo 2**64. The glue feeds
    every raw body byte through L{feed}, forwards the data it hands out, and
    answers 400 at the first L{BadHead}.

    What is accepted (RFC 9112 section 7.1), and where we are stricter:

      - chunk-size: 1*HEXDIG, at most 16 hex digits once leading zeros are
        stripped, and below 2**63 (L{MAX_CHUNK_SIZE}).
      - chunk-ext: after optional SP/HTAB, a C{;} and then anything but a CTL
        other than HTAB. Extensions are not parsed further (h11 drops them), so
        C{;name}, C{;name=token}, C{ ; name = "quoted;string"} and even
        C{;} pass. Whitespace after the size that no C{;} follows
        (C{5 CRLF}) is refused: the grammar allows BWS only around an
        extension, and a server that reads C{5 } as no number at all is
        exactly the disagreement this class exists to rule out.
      - Every line ends in CRLF; a bare CR or bare LF anywhere in a size line,
        after chunk-data or in the trailer section is refused.
      - chunk-data is followed by exactly CRLF.
      - trailer section: field lines (C{token ":" value}, no CTLs but HTAB,
        no obs-fold, no whitespace before the colon) and an empty line. A
        Content-Length or Transfer-Encoding trailer is refused (RFC 9110
        section 6.5.1: framing fields never belong in trailers, and a server
        that merges trailers into the head would let one reframe the message).

    Chunk-data is skipped with integer arithmetic, so the cost is per chunk,
    not per byte; only size and trailer lines are scanned, with C{find}. A line
    may be split anywhere across L{feed} calls; its bytes are buffered (at most
    C{max_line + 2} of them) until its LF arrives. Each violation is reported
    as soon as the bytes so far prove it, and the reason does not depend on
    where the input was split.

    @ivar max_line: the longest size or trailer line, CRLF excluded. A line
        still without its LF after C{max_line + 2} bytes is refused as too
        long; so is a trailer section over C{16 * max_line} bytes.
    """

    def __init__(self, max_line: int = 4096) -> None:
        self.max_line = max_line
        self._trailer_limit = 16 * max_line
        self._state = _SIZE
        self._remaining = 0
        self._line = bytearray()
        self._trailer_size = 0
        self._error: BadHead | None = None
        self.trailers: Headers = []
        """The trailer fields read so far: lower-case names, values without surrounding whitespace."""

    def feed(self, data: bytes | bytearray | memoryview, out: list[bytes] | None = None) -> int | None:
        """
        Check the next bytes of the body. Returns None while the body goes on; once the body's
        last byte (the CRLF after the last-chunk and any trailer fields) is in `data`, returns how many
        bytes of `data` belonged to the body (the rest is the next request). Raises BadHead(400, reason)
        at the first violation. Never called again after it returned a number.

        @param out: a list the chunk data in C{data} is appended to (the
            body decoded), in pieces as they lie in C{data}.
        @raise RuntimeError: when called after it returned a number, a bug in
            the caller.
        """
        state = self._state
        if state >= _DONE:
            if self._error is not None:
                raise self._error
            raise RuntimeError("ChunkedChecker.feed() called after the body ended")
        if isinstance(data, memoryview):
            data = data.tobytes()
        try:
            return self._feed(data, out)
        except BadHead as e:
            self._state = _FAILED
            self._error = e
            raise

    def _feed(self, data: bytes | bytearray, out: list[bytes] | None) -> int | None:
        pos = 0
        end = len(data)
        state = self._state
        while pos < end:
            if state == _DATA:
                remaining = self._remaining
                if end - pos < remaining:
                    if out is not None:
                        out.append(data[pos:end])
                    self._remaining = remaining - (end - pos)
                    self._state = _DATA
                    return None
                if out is not None:
                    out.append(data[pos : pos + remaining])
                pos += remaining
                self._remaining = 0
                if data[pos : pos + 2] == b"\r\n":
                    pos += 2
                    state = _SIZE
                else:
                    state = _DATA_CR
            elif state == _SIZE:
                line, pos = self._take_line(data, pos, "chunk-size line")
                if line is None:
                    break
                size = self._chunk_size(line)
                if size:
                    self._remaining = size
                    state = _DATA
                else:
                    state = _TRAILER
            elif state == _DATA_CR:
                byte = data[pos]
                if byte == 0x0D:
                    pos += 1
                    state = _DATA_LF
                elif byte == 0x0A:
                    raise BadHead(400, "bare LF in chunked body (after chunk data)")
                else:
                    raise BadHead(400, "chunk data not followed by CRLF")
            elif state == _DATA_LF:
                if data[pos] != 0x0A:
                    raise BadHead(400, "bare CR in chunked body (after chunk data)")
                pos += 1
                state = _SIZE
            else:  # _TRAILER
                line, pos = self._take_line(data, pos, "trailer line")
                if line is None:
                    break
                self._trailer_size += len(line) + 2
                if self._trailer_size > self._trailer_limit:
                    raise BadHead(400, f"chunked trailer section larger than {self._trailer_limit} bytes")
                if not line:
                    self._state = _DONE
                    return pos
                self.trailers.append(_trailer_field(line))
        self._state = state
        return None

    def _take_line(self, data: bytes | bytearray, pos: int, what: str) -> tuple[bytes | None, int]:
        """
        Take the rest of a size or trailer line from C{data[pos:]}.

        The line so far is C{self._line}; at most C{max_line + 2} bytes of it
        are ever looked at. C{data} is scanned once, from C{pos}, and a
        buffered line only from its last byte (a CR that may now meet its LF).

        @param what: which line this is, for the reason.
        @return: the line without its CRLF and the index just past its LF, or
            C{None} and C{len(data)} when the line goes on past C{data}.
        @raise BadHead: for a bare CR, a bare LF or a line too long, whichever
            comes first in the line.
        """
        line = self._line
        room = self.max_line + 2 - len(line)
        stop = min(len(data), pos + room)
        lf = data.find(b"\n", pos, stop)
        if lf < 0:
            piece = data[pos:stop]
        else:
            piece = data[pos : lf + 1]
        # A CR is bare when a byte other than LF follows it; the LF, if any,
        # is the piece's last byte, so every CR before the last two is bare,
        # as is one just before the end of the piece when no LF ends it.
        search_from = len(line) - 1 if line else 0
        line += piece
        last = len(line) - 2 if lf >= 0 else len(line) - 1
        cr = line.find(b"\r", max(search_from, 0), last)
        if cr >= 0:
            raise BadHead(400, f"bare CR in chunked body ({what})")
        if lf < 0:
            if len(line) >= self.max_line + 2:
                raise BadHead(400, f"{what} too long (over {self.max_line} bytes)")
            return None, stop
        if len(line) < 2 or line[-2] != 0x0D:
            raise BadHead(400, f"bare LF in chunked body ({what})")
        text = bytes(line[:-2])
        self._line = bytearray()
        return text, lf + 1

    def _chunk_size(self, line: bytes) -> int:
        """
        The size a chunk-size line (CRLF stripped) announces.

        @raise BadHead: for a size that is empty, not hex, too large, or
            followed by something other than an extension.
        """
        digits = _HEXDIG.match(line).group()  # type: ignore[union-attr]
        rest = line[len(digits) :]
        if not digits:
            if not rest:
                raise BadHead(400, "empty chunk size")
            raise BadHead(400, "bad chunk size")
        if len(digits.lstrip(b"0")) > 16:
            raise BadHead(400, "chunk size too large")
        size = int(digits, 16)
        if size > MAX_CHUNK_SIZE:
            raise BadHead(400, "chunk size too large")
        if rest:
            extension = rest.lstrip(b" \t")
            if not extension:
                raise BadHead(400, "whitespace after chunk size")
            if extension[:1] != b";":
                raise BadHead(400, "bad chunk size")
            control = _CTL.search(extension)
            if control is not None:
                raise BadHead(400, f"control character 0x{control.group()[0]:02X} in chunk extension")
        return size


def _trailer_field(line: bytes) -> tuple[bytes, bytes]:
    """
    A trailer field line (CRLF stripped) as C{(name, value)}, refused
    unless it is C{token ":" value}.
    """
    if line[:1] in (b" ", b"\t"):
        raise BadHead(400, "obs-fold (line folding) in chunked trailer")
    field = _TRAILER_FIELD.fullmatch(line)
    if field is None:
        raise _field_error(line, "chunked trailer")
    control = _CTL.search(field.group(2))
    if control is not None:
        raise BadHead(400, f"control character 0x{control.group()[0]:02X} in chunked trailer")
    name = field.group(1).lower()
    if name in _FRAMING_FIELDS:
        raise BadHead(400, "request smuggling: framing field in chunked trailer")
    return name, field.group(2).strip(b" \t")


class RequestBody:
    """
    Where a request's body ends in the bytes after its head: at its
    Content-Length, or at the end of its chunked coding (checked by
    L{ChunkedChecker}, and decoded).

    @ivar trailers: a chunked body's trailer fields, once it ended.
    """

    __slots__ = ("_left", "_chunks", "trailers")

    def __init__(self, request: RequestHead) -> None:
        self._left = request.length or 0
        self._chunks = ChunkedChecker() if request.chunked else None
        self.trailers: Headers = []

    def feed(self, data: bytes, out: list[bytes]) -> int | None:
        """
        Append the body data in C{data} to C{out}. Returns C{None} while
        the body goes on; once it has ended, how many bytes of C{data} it
        took (the rest is the next request's). A body without length ends
        at once.

        @raise BadHead: a chunked body that breaks its framing.
        """
        chunks = self._chunks
        if chunks is not None:
            if not data:
                return None
            end = chunks.feed(data, out)
            if end is not None:
                self.trailers = chunks.trailers
            return end
        taken = min(self._left, len(data))
        self._left -= taken
        if taken:
            out.append(data if taken == len(data) else data[:taken])
        return None if self._left else taken


def _head(start_line: bytes, headers: Headers) -> bytes:
    pieces = [start_line]
    for name, value in headers:
        pieces += (name, b": ", value, b"\r\n")  # one join, no concatenation per line
    pieces.append(b"\r\n")
    return b"".join(pieces)


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    """A response's status line and header section, as sent."""
    return _head(b"HTTP/1.1 %d %s\r\n" % (status, reason), headers)


@attrs.frozen
class Framing:
    """
    A message on its way out (a response to the client, a request to a
    real server): its head, and how its body is framed (L{data}, L{end}).
    """

    head: bytes
    body: bool
    """Whether a body may follow the head (not for HEAD, 1xx, 204, 304)."""
    chunked: bool
    """The body goes chunked: a request's was, a response's length was not known (chunked, or ended by a close)."""
    close: bool
    """The client's connection closes after this response."""

    @classmethod
    def informational(cls, status: int, reason: bytes, headers: Headers) -> "Framing":
        """A 1xx response: a head alone, and the exchange goes on."""
        return cls(response_head(status, reason, headers), body=False, chunked=False, close=False)

    @classmethod
    def request(cls, method: bytes, target: bytes, headers: Headers, chunked: bool) -> "Framing":
        """
        A request for a real server: C{headers} carry its framing
        (Content-Length, or Transfer-Encoding for a C{chunked} body).
        """
        return cls(_head(b"%s %s HTTP/1.1\r\n" % (method, target), headers), body=True, chunked=chunked, close=False)

    def data(self, data: bytes) -> list[bytes]:
        """The bytes that carry C{data}, a piece of the body."""
        if not data or not self.body:
            return []
        if self.chunked:
            return [b"%x\r\n" % len(data), data, b"\r\n"]
        return [data]

    def end(self, trailers: Headers) -> bytes:
        """The bytes that end the body (a chunked one's last chunk and trailer fields)."""
        if not (self.body and self.chunked):
            return b""
        return b"0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in trailers) + b"\r\n"


_NO_BODY_STATUSES = frozenset({204, 304})


def frame_response(request: RequestHead, status: int, reason: bytes, headers: Headers) -> Framing:
    """
    Frame a final response to C{request} for the client.

    C{headers} are the real server's without hop-by-hop fields. A body of
    known length keeps its Content-Length and passes as it comes; one of
    unknown length (the real server chunked it, or ends it by closing) is
    chunked for an HTTP/1.1 client and ends with the connection for an
    HTTP/1.0 one. HEAD, 204 and 304 responses have no body, and their
    headers are those a GET would get (RFC 9110 section 9.3.2). The
    connection closes after the response when the request asked for it, was
    HTTP/1.0, or nothing else can end the body; it is then said with
    C{Connection: close}. The fields the proxy adds are spelt as h11 spells
    them, so clients see what they saw when h11 framed responses.
    """
    body = status not in _NO_BODY_STATUSES and request.method != b"HEAD"
    names = [name for name, _ in headers]
    chunked = close = False
    if status not in _NO_BODY_STATUSES and (b"transfer-encoding" in names or b"content-length" not in names):
        headers = [(n, v) for n, v in headers if n != b"content-length" and n != b"transfer-encoding"]
        if request.http_version == b"1.1":
            headers.append((b"Transfer-Encoding", b"chunked"))
            chunked = True
        elif body:
            close = True
    if close or not request.keep_alive:
        close = True
        headers = [(n, v) for n, v in headers if n != b"connection"]
        headers.append((b"Connection", b"close"))
    return Framing(response_head(status, reason, headers), body=body, chunked=chunked, close=close)
