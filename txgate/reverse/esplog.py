# -*- test-case-name: tests.reverse.test_esplog -*-
"""
The lines of the ESP logs (user, security and connection), in the format
KEMP's Edge Security Pack operators read.

Each function returns one line without its newline. Everything that came
from a client is written inside C{"..."} with C{"} and C{\\} escaped by a
backslash and every other byte that is not printable ASCII written as
C{\\xHH}, so a hostile User-Agent or path can neither end a line nor forge
a field. Reasons are escaped the same way, without quotes.
"""

from __future__ import annotations

import datetime
import re

__all__ = [
    "closed_line",
    "denied_line",
    "endpoint",
    "opened_line",
    "refused_line",
    "timestamp",
    "user_line",
]

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')
_UTC = datetime.timezone.utc


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in '"\\':
        return "\\" + char
    # surrogateescape turns bytes decoded with it back into themselves.
    return "".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogateescape"))


def _escape(value: str) -> str:
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_escape_char, value)


def _quote(value: str) -> str:
    return '"' + _escape(value) + '"'


def timestamp(when: datetime.datetime) -> str:
    """
    C{when} as the logs write it: ISO-8601 UTC with milliseconds
    (C{2026-11-21T10:00:00.123Z}). A naive C{when} is taken to be UTC.
    """
    if when.tzinfo is not None and when.utcoffset():
        when = when.astimezone(_UTC)
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}.{when.microsecond // 1000:03d}Z"
    )


def endpoint(host: str, port: int) -> str:
    """
    An address and port as the logs write them: C{1.2.3.4:443}, C{[v6]:443}.
    """
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _client(when: datetime.datetime, vs: str, client: str) -> str:
    return f"{timestamp(when)} {_quote(vs)} client {_quote(client)}"


def user_line(
    when: datetime.datetime,
    vs: str,
    rs: str,
    user: str | None,
    method: str,
    uri: str,
    user_agent: str | None,
) -> str:
    """
    The user log line of one request: which user (C{-} when none is
    visible) asked which real server for what.

    @param vs: the virtual service's endpoint; C{rs} the real server's.
    """
    return (
        f"{timestamp(when)} {_quote(vs)} ({_quote(rs)}) User "
        f"{'-' if user is None else _quote(user)} requested {_quote(method)} {_quote(uri)} "
        f"{'-' if user_agent is None else _quote(user_agent)}"
    )


def denied_line(when: datetime.datetime, vs: str, client: str, what: str, value: str, reason: str) -> str:
    """
    The security log line of a request refused with 403 (C{what} is
    C{host} or C{path}; C{value} is what the client sent).
    """
    return f"{_client(when, vs, client)} denied {_escape(what)} {_quote(value)}: {_escape(reason)}"


def refused_line(when: datetime.datetime, vs: str, client: str, reason: str) -> str:
    """
    The security log line of a request refused with 400 (smuggling,
    ambiguous path, bad head) or another status txgate answers itself.
    """
    return f"{_client(when, vs, client)} refused request: {_escape(reason)}"


def opened_line(when: datetime.datetime, vs: str, client: str) -> str:
    """The connection log line of a client connection accepted."""
    return f"{_client(when, vs, client)} opened"


def closed_line(
    when: datetime.datetime, vs: str, client: str, seconds: float, bytes_in: int, bytes_out: int
) -> str:
    """
    The connection log line of a client connection closed: how long it
    lasted and the bytes it carried each way (in: from the client).
    """
    return (
        f"{_client(when, vs, client)} closed after {seconds:.3f} s, "
        f"{bytes_in} bytes in, {bytes_out} bytes out"
    )
