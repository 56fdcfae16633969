# -*- test-case-name: tests.detect.test_http -*-
"""
HTTP/1.x: a request line, C{method SP request-target SP HTTP/1.x CRLF}
(RFC 9112 3).

SIP request lines have the same shape with a different version token, so the
line reader here, L{read_request_line}, is shared with L{txgate.detect.sip};
each detector decides by its version token alone, and the order the two run
in does not matter.
"""

from __future__ import annotations

import re
from typing import Callable

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

__all__ = [
    "MAX_START_LINE",
    "RequestLine",
    "read_request_line",
    "skip_empty_lines",
    "is_token",
    "detect",
]

MAX_START_LINE = 8 * 1024
"""
The longest request line (or SIP status line) a detector waits for, CRLF
excluded. Longer than this without a line end and the stream is not HTTP (or
SIP) as far as detection goes; servers refuse such lines too (414).
"""

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VCHAR = frozenset(range(0x21, 0x7F))
_HTTP_VERSION = re.compile(rb"HTTP/1\.[0-9]")
_HTTP_VERSION_SHAPE = b"HTTP/1.0"


def is_token(data: bytes) -> bool:
    """Whether C{data} is a non-empty RFC 9110 token (C{1*tchar})."""
    return bool(data) and all(b in _TCHAR for b in data)


def skip_empty_lines(data: bytes) -> bytes:
    """
    C{data} without leading empty lines (C{CRLF} or a bare C{LF}): HTTP servers
    ignore them before a request line (RFC 9112 2.2), and they are SIP
    keep-alives (C{CRLFCRLF}, RFC 5626 4.4.1).
    """
    position = 0
    while True:
        if data.startswith(b"\r\n", position):
            position += 2
        elif data.startswith(b"\n", position):
            position += 1
        else:
            return data[position:]


RequestLine = tuple[str, str, str, int]
"""C{(method, target, version, end)}: C{end} is the offset just past the line's LF."""


def read_request_line(
    data: bytes,
    *,
    is_version: Callable[[bytes], bool],
    could_be_version: Callable[[bytes], bool],
    target_ok: Callable[[bytes, bytes, bool], bool] = lambda method, target, finished: True,
    max_length: int = MAX_START_LINE,
) -> RequestLine | object:
    """
    Read C{method SP target SP version (CR)LF} from the start of C{data}.

    The method must be a token, the target one or more visible ASCII
    characters; the version is judged by the caller.

    @param is_version: whether a complete version token is acceptable.
    @param could_be_version: whether a partial version token could still
        become acceptable.
    @param target_ok: C{(method, target, finished)}, whether the (partial
        unless C{finished}) target is acceptable for C{method}.
    @return: the parsed line; L{NEED_MORE} while the line is incomplete and
        every byte so far fits; L{NOT_MINE} as soon as one does not, or when
        the line is longer than C{max_length}.
    """
    end = data.find(b"\n", 0, max_length + 2)
    if end == -1:
        line, complete = data[: max_length + 2], False
    else:
        line, complete = data[:end], True
    finished = complete
    if line.endswith(b"\r"):
        line = line[:-1]
        finished = True  # only LF may follow a CR: the version must be whole
    if len(line) > max_length:
        return NOT_MINE
    parts = line.split(b" ")
    if len(parts) > 3:
        return NOT_MINE
    method = parts[0]
    if not all(b in _TCHAR for b in method) or (len(parts) > 1 and not method):
        return NOT_MINE
    if len(parts) > 1:
        target = parts[1]
        if not all(b in _VCHAR for b in target) or (len(parts) > 2 and not target):
            return NOT_MINE
        if target and not target_ok(method, target, len(parts) > 2 or finished):
            return NOT_MINE
    if len(parts) > 2:
        version = parts[2]
        if not all(b in _VCHAR for b in version):
            return NOT_MINE
        if not (is_version(version) if finished else could_be_version(version)):
            return NOT_MINE
    if not complete:
        return NOT_MINE if finished and len(parts) < 3 else NEED_MORE
    if len(parts) < 3:
        return NOT_MINE
    return (method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), end + 1)


def _is_http_version(version: bytes) -> bool:
    return _HTTP_VERSION.fullmatch(version) is not None


def _could_be_http_version(version: bytes) -> bool:
    if len(version) > len(_HTTP_VERSION_SHAPE):
        return False
    if len(version) == len(_HTTP_VERSION_SHAPE):
        return _is_http_version(version)
    return _HTTP_VERSION_SHAPE.startswith(version)


def detect(buffered: bytes) -> Verdict:
    """
    C{http} with facts C{method} and C{target} for a stream that starts with
    an HTTP/1.x request line (after optional empty lines).
    """
    rest = skip_empty_lines(buffered)
    if rest in (b"", b"\r"):
        return NEED_MORE
    if rest[0] not in _TCHAR:
        return NOT_MINE
    line = read_request_line(rest, is_version=_is_http_version, could_be_version=_could_be_http_version)
    if line is NEED_MORE or line is NOT_MINE:
        return line  # type: ignore[return-value]
    method, target, _, _ = line
    return Detected("http", {"method": method, "target": target})
