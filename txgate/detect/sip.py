# -*- test-case-name: tests.detect.test_sip -*-
"""
SIP over TCP (RFC 3261 7.1, 7.2): a request line
C{Method SP Request-URI SP SIP/2.0 CRLF}, a status line
C{SIP/2.0 SP NNN SP Reason-Phrase CRLF}, possibly after C{CRLF} / C{CRLFCRLF}
keep-alives (RFC 5626 4.4.1), which Lync clients send on idle connections.

A request is SIP when its method is one Lync uses (L{LYNC_METHODS}, any
Request-URI) or any other token with a C{sip:}, C{sips:} or C{tel:}
Request-URI, and its version token is C{SIP/2.0}. The version token alone
tells SIP from HTTP request lines, so the C{sip} and C{http} detectors agree
in any order.
"""

from __future__ import annotations

from txgate.detect.http import MAX_START_LINE, read_request_line, skip_empty_lines
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

__all__ = ["LYNC_METHODS", "URI_SCHEMES", "detect", "header_value"]

LYNC_METHODS = frozenset(
    {
        "REGISTER",
        "NEGOTIATE",
        "SUBSCRIBE",
        "SERVICE",
        "INVITE",
        "ACK",
        "BYE",
        "CANCEL",
        "INFO",
        "MESSAGE",
        "NOTIFY",
        "BENOTIFY",
        "OPTIONS",
        "REFER",
        "PRACK",
        "UPDATE",
        "PUBLISH",
    }
)
"""The methods Lync / Skype for Business clients and servers send."""

URI_SCHEMES = (b"sip:", b"sips:", b"tel:")
"""Request-URI schemes that make any other token method SIP."""

_VERSION = b"SIP/2.0"
_DIGITS = frozenset(b"0123456789")


def _is_version(version: bytes) -> bool:
    # RFC 3261 7.1: the SIP-Version string is case-insensitive.
    return version.upper() == _VERSION


def _could_be_version(version: bytes) -> bool:
    return len(version) <= len(_VERSION) and _VERSION.startswith(version.upper())


def _target_ok(method: bytes, target: bytes, finished: bool) -> bool:
    if method.decode("ascii") in LYNC_METHODS:
        return True
    lowered = target.lower()
    if any(lowered.startswith(scheme) for scheme in URI_SCHEMES):
        return True
    return not finished and any(scheme.startswith(lowered) for scheme in URI_SCHEMES)


def _read_status_line(data: bytes) -> tuple[int, int] | object:
    """
    C{(status, end)} for a complete C{SIP/2.0 NNN reason (CR)LF} at the start
    of C{data} (C{end} is just past the LF), L{NEED_MORE} for a prefix of
    one, else L{NOT_MINE}. A missing reason phrase (C{SIP/2.0 200 CRLF} or
    C{SIP/2.0 200 CRLF} without the SP) is tolerated.
    """
    prefix = _VERSION + b" "
    head = data[: len(prefix)]
    if head.upper() != prefix[: len(head)]:
        return NOT_MINE
    code = data[len(prefix) : len(prefix) + 3]
    if not all(b in _DIGITS for b in code) or code[:1] in (b"0", b"7", b"8", b"9"):
        return NOT_MINE
    after = len(prefix) + 3
    if len(data) <= after:
        return NEED_MORE
    if data[after] not in b" \r\n":
        return NOT_MINE
    end = data.find(b"\n", after, MAX_START_LINE + 2)
    rest = data[after : end if end != -1 else MAX_START_LINE + 2]
    if rest.endswith(b"\r"):
        rest = rest[:-1]
    if after + len(rest) > MAX_START_LINE:
        return NOT_MINE
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in rest):
        return NOT_MINE
    if end == -1:
        return NEED_MORE
    return int(code), end + 1


def header_value(block: bytes, names: tuple[bytes, ...]) -> str | None:
    """
    The value of the first header in C{block} (the header lines, without the
    start line) whose name is one of C{names} (lower case; compact forms
    included by the caller), with continuation lines unfolded.
    """
    value: bytes | None = None
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r")
        if value is not None:
            if line[:1] in (b" ", b"\t"):
                value += b" " + line.strip()
                continue
            break
        name, colon, rest = line.partition(b":")
        if colon and name.strip().lower() in names:
            value = rest.strip()
    return None if value is None else value.strip().decode("utf-8", "replace")


def _headers(data: bytes, start: int) -> bytes | None:
    """The header block after the start line ending at C{start}, if it is complete."""
    if data[start:].startswith((b"\r\n", b"\n")):
        return b""
    for terminator in (b"\r\n\r\n", b"\n\n"):
        end = data.find(terminator, start)
        if end != -1:
            return data[start:end]
    return None


def _facts(data: bytes, start: int, facts: dict[str, object]) -> dict[str, object]:
    block = _headers(data, start)
    if block is not None:
        call_id = header_value(block, (b"call-id", b"i"))
        if call_id is not None:
            facts["call_id"] = call_id
    return facts


def detect(buffered: bytes) -> Verdict:
    """
    C{sip} for a SIP request (facts C{method}) or response (facts C{status}),
    with C{call_id} too when the header block is complete in C{buffered}.
    Keep-alives alone are L{NEED_MORE}: the first message decides.
    """
    rest = skip_empty_lines(buffered)
    if rest in (b"", b"\r"):
        return NEED_MORE
    status = _read_status_line(rest)
    if isinstance(status, tuple):
        code, end = status
        return Detected("sip", _facts(rest, end, {"status": code}))
    request = read_request_line(
        rest, is_version=_is_version, could_be_version=_could_be_version, target_ok=_target_ok
    )
    if isinstance(request, tuple):
        method, _, _, end = request
        return Detected("sip", _facts(rest, end, {"method": method}))
    if NEED_MORE in (status, request):
        return NEED_MORE
    return NOT_MINE
