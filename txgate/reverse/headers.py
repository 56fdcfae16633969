# -*- test-case-name: tests.reverse.test_headers -*-
"""
What the reverse proxy changes in the messages it forwards, and what it
reads from them: the user for the user log, whether a connection-oriented
handshake (NTLM, Negotiate) pins the real server connection, whether a
request asks for an Upgrade, and the persistence cookie.

Headers are lists of C{(name, value)} as the reverse proxy reads them
(L{txgate.http.framing.check_head}, L{txgate.http.responses}):
lower-case names.
"""

from __future__ import annotations

import binascii
import functools
import re
from base64 import b64decode
from typing import Callable, Collection, Iterable

from txgate.http.proxying import TOKEN, Headers, auth_scheme_and_token, comma_tokens, strip_hop_by_hop

__all__ = [
    "cookie_value",
    "downstream_response_headers",
    "location_rewriter",
    "set_cookie_value",
    "upstream_request_headers",
    "user_of",
    "wants_upgrade",
]


_REPLACED = frozenset({b"host", b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"})
# RFC 7230 tchar: a Forwarded parameter value that is all tchar needs no quotes.
_TOKEN = re.compile(TOKEN)
_QUOTABLE = re.compile(rb"[\x20-\x7e\t]*")
_QUOTED_SPECIALS = re.compile(rb'(["\\])')


def _forwarded_value(value: bytes) -> bytes:
    if _TOKEN.fullmatch(value) is not None:
        return value
    return b'"' + _QUOTED_SPECIALS.sub(rb"\\\1", value) + b'"'


@functools.lru_cache(maxsize=1024)
def _forwarded_element(client_ip: str, proto: str, host: bytes | None) -> bytes:
    """Cached: a client sends request after request with the same address and Host."""
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    element = b"for=" + node.encode("ascii") + b";proto=" + proto.encode("ascii")
    # A Host that cannot be put in a quoted-string (controls, obs-text) is
    # left out rather than passed on.
    if host is not None and _QUOTABLE.fullmatch(host) is not None:
        element += b";host=" + _forwarded_value(host)
    return element


def _upgrade_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    out = [(n, v) for n, v in headers if n == b"upgrade"]
    out.append((b"connection", b"upgrade"))
    return out


def upstream_request_headers(
    headers: Iterable[tuple[bytes, bytes]],
    client_ip: str,
    proto: str,
    keep_upgrade: bool,
    chunked: bool = False,
) -> Headers:
    """
    The headers to send a real server for a client's request.

    Host goes first, unchanged (real servers route on it); hop-by-hop
    headers are removed; the client's address is appended to
    C{X-Forwarded-For} and C{Forwarded}, and C{X-Forwarded-Proto} is
    replaced, since only the proxy knows how the client connected. Other
    headers keep their order.

    @param client_ip: the client's address (IPv6 without brackets).
    @param proto: C{https} or C{http}, how the client reached the proxy.
    @param keep_upgrade: forward C{Upgrade} with C{Connection: upgrade}
        (WebSocket); the caller decided the upgrade is tunnelled.
    @param chunked: the client framed the body with chunked coding; the
        framing header is re-added, since the body goes upstream chunked too.
    """
    headers = list(headers)
    host = None
    for name, value in headers:
        if name == b"host":
            host = value
            break
    out: Headers = [] if host is None else [(b"host", host)]
    xff: list[bytes] = []
    forwarded: list[bytes] = []
    for name, value in strip_hop_by_hop(headers):
        if name not in _REPLACED:
            out.append((name, value))
        elif name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"forwarded":
            forwarded.append(value)
    if keep_upgrade:
        out.extend(_upgrade_headers(headers))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    xff.append(client_ip.encode("ascii"))
    out.append((b"x-forwarded-for", b", ".join(xff)))
    out.append((b"x-forwarded-proto", proto.encode("ascii")))
    forwarded.append(_forwarded_element(client_ip, proto, host))
    out.append((b"forwarded", b", ".join(forwarded)))
    return out


def downstream_response_headers(
    headers: Iterable[tuple[bytes, bytes]],
    location_rewrite: Callable[[bytes], bytes] | None,
    set_cookie: bytes | None,
    keep_upgrade: bool,
) -> Headers:
    """
    The headers to send the client for a real server's response.

    @param location_rewrite: applied to each C{Location} value (see
        L{location_rewriter}), or C{None} to keep them.
    @param set_cookie: a C{Set-Cookie} value to add (persistence), or C{None}.
    @param keep_upgrade: the response is a 101 whose upgrade is tunnelled:
        keep C{Upgrade} and send C{Connection: upgrade}.
    """
    headers = list(headers)
    out = strip_hop_by_hop(headers)
    if location_rewrite is not None:
        out = [(n, location_rewrite(v) if n == b"location" else v) for n, v in out]
    if keep_upgrade:
        out.extend(_upgrade_headers(headers))
    if set_cookie is not None:
        out.append((b"set-cookie", set_cookie))
    return out


_ABSOLUTE = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)(.*)", re.DOTALL)
_AUTHORITY = re.compile(rb"(?:\[([0-9A-Fa-f:.]+)\]|([^\[\]:@]+))(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


def location_rewriter(
    public_host: bytes, public_scheme: str, internal: Collection[tuple[str, int]]
) -> Callable[[bytes], bytes]:
    """
    A function that turns a real server's own address in a C{Location} into
    the public one the client used, since the client cannot reach the real
    server (C{https://fe1.corp:4443/x} becomes C{https://meet.example.com/x}).

    @param public_host: the request's C{Host} value, as the client sent it.
    @param public_scheme: C{https} or C{http}, how the client reached us.
    @param internal: C{(host, port)} pairs naming real servers (their
        addresses and server names); hosts are compared case-insensitively,
        IPv6 without brackets.
    @return: a function from a C{Location} value to the value to send; a
        relative, foreign or malformed location comes back unchanged.
    """
    names = frozenset((host.lower().strip("[]"), port) for host, port in internal)
    prefix = public_scheme.encode("ascii") + b"://" + public_host

    def rewrite(location: bytes) -> bytes:
        absolute = _ABSOLUTE.fullmatch(location)
        if absolute is None:
            return location
        scheme, authority, rest = absolute.groups()
        default = _DEFAULT_PORTS.get(scheme.lower())
        if default is None:
            return location
        parts = _AUTHORITY.fullmatch(authority)
        if parts is None:
            return location
        v6, name, port = parts.groups()
        host = (v6 if v6 is not None else name).decode("ascii", "replace").lower()
        if (host, int(port) if port else default) not in names:
            return location
        return prefix + rest

    return rewrite


_NTLM_SIGNATURE = b"NTLMSSP\x00"
_NEGOTIATE_UNICODE = 0x00000001


def _ntlm_field(message: bytes, at: int, unicode: bool) -> str | None:
    length = int.from_bytes(message[at : at + 2], "little")
    offset = int.from_bytes(message[at + 4 : at + 8], "little")
    if offset + length > len(message):
        return None
    data = message[offset : offset + length]
    if unicode:
        if length % 2:
            return None
        return data.decode("utf-16-le")
    return data.decode("latin-1")


def _ntlm_user(token: bytes) -> str | None:
    message = b64decode(token, validate=True)
    # AUTHENTICATE_MESSAGE (MS-NLMP 2.2.1.3): signature, type 3, then
    # LmChallengeResponse, NtChallengeResponse, DomainName, UserName,
    # Workstation and EncryptedRandomSessionKey fields (len, maxlen, offset),
    # then NegotiateFlags at 60. Old clients stop after Workstation (52).
    if len(message) < 52 or message[:8] != _NTLM_SIGNATURE:
        return None
    if int.from_bytes(message[8:12], "little") != 3:
        return None
    flags = int.from_bytes(message[60:64], "little") if len(message) >= 64 else 0
    unicode = bool(flags & _NEGOTIATE_UNICODE)
    domain = _ntlm_field(message, 28, unicode)
    user = _ntlm_field(message, 36, unicode)
    if not user or domain is None:
        return None
    return f"{domain}\\{user}" if domain else user


def user_of(authorization: bytes | None) -> str | None:
    """
    The user an C{Authorization} header names, for the user log: the user of
    C{Basic}, C{DOMAIN\\user} of an NTLM AUTHENTICATE message. Never raises.

    @return: C{None} when no user is visible: no header, other schemes
        (Negotiate, NTLM negotiate), or anything malformed.
    """
    if not authorization:
        return None
    scheme, token = auth_scheme_and_token(authorization)
    try:
        if scheme == b"basic":
            user = b64decode(token, validate=True).partition(b":")[0]
            if not user:
                return None
            try:
                return user.decode("utf-8")
            except UnicodeDecodeError:
                return user.decode("latin-1")
        if scheme == b"ntlm":
            return _ntlm_user(token)
    except (ValueError, binascii.Error):
        # Bad base64, or a UTF-16 name that does not decode.
        return None
    return None


def wants_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """
    Whether a request asks to switch to WebSocket: C{Upgrade: websocket}
    and C{upgrade} among the C{Connection} tokens. Other upgrades (C{h2c}
    above all) are not carried: after a 101 the bytes would pass unchecked,
    and a second request inside them would escape the allowed hosts and
    paths. Their C{Upgrade} header is dropped as hop-by-hop.
    """
    upgrade = connection = False
    for name, value in headers:
        if name == b"upgrade":
            upgrade = set(comma_tokens(value)) == {b"websocket"}
        elif name == b"connection" and b"upgrade" in comma_tokens(value):
            connection = True
    return upgrade and connection


def cookie_value(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """
    The value of cookie C{name} in the request's C{Cookie} headers (the
    first one, if sent several times), or C{None}.
    """
    wanted = name.encode("ascii")
    for header, value in headers:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, equals, cookie = pair.partition(b"=")
            if equals and key.strip() == wanted:
                return cookie.strip().decode("latin-1")
    return None


_COOKIE_NAME = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_COOKIE_OCTETS = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")


def set_cookie_value(name: str, value: str) -> bytes:
    """
    A session cookie for persistence: C{NAME=VALUE; Path=/}. No Expires or
    Max-Age, and neither HttpOnly nor Secure: Lync clients need it that way.

    @raise ValueError: a name that is not a token or a value with characters
        a cookie cannot carry.
    """
    if _COOKIE_NAME.fullmatch(name) is None:
        raise ValueError(f"cookie name must be a token, got {name!r}")
    if _COOKIE_OCTETS.fullmatch(value) is None:
        raise ValueError(f"cookie value has characters a cookie cannot carry: {value!r}")
    return f"{name}={value}; Path=/".encode("ascii")
