# -*- test-case-name: tests.http.test_proxying -*-
"""
What a proxy changes in a message it forwards (RFC 9110 section 7.6, RFC 9112
section 3.2.2), and how it reads the request target it is sent.
"""

from __future__ import annotations

import ipaddress
import re
from http import HTTPStatus
from typing import Iterable
from urllib.parse import urlsplit

import attrs

from txgate.errors import PeerProtocolError

__all__ = [
    "HOP_BY_HOP",
    "Target",
    "parse_host_header",
    "parse_target",
    "request_headers_upstream",
    "response_headers_downstream",
    "strip_hop_by_hop",
    "error_page",
    "error_response",
    "reason_phrase",
    "auth_scheme_and_token",
    "comma_tokens",
    "connection_auth",
    "VIA",
    "RETRYABLE",
    "TOKEN",
]

VIA = b"1.1 txgate"

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Headers that describe one hop and are never forwarded (RFC 9110 7.6.1)."""

TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
"""RFC 9110 token (field names, methods, parameter values), as a bytes pattern to build regexes from."""

_DEFAULT_PORTS = {"http": 80, "https": 443}

RETRYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS"})
"""Methods retried once on a new connection when a kept-alive one was closed under them."""


Headers = list[tuple[bytes, bytes]]


@attrs.frozen
class Target:
    """
    Where a request goes.

    @ivar scheme: C{http}, C{https}, or C{None} for CONNECT.
    @ivar host: the host name or address, without brackets.
    @ivar port: the port (the scheme's default when absent).
    @ivar path: origin-form target to send upstream (C{/p?q}); C{b""} for
        CONNECT.
    @ivar address: where to connect when it is not C{host}: a transparent
        connection's original destination, while C{host} (from the Host
        header) only names it.
    """

    scheme: str | None
    host: str
    port: int
    path: bytes
    address: str | None = None

    @property
    def connect_host(self) -> str:
        """The host or address to open the upstream connection to."""
        return self.address or self.host

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme is not None and _DEFAULT_PORTS.get(self.scheme) == self.port:
            return host
        return f"{host}:{self.port}"

    def facts(self) -> dict[str, object]:
        """The C{url.*} facts policy conditions read."""
        facts: dict[str, object] = {"url.host": self.host, "url.port": self.port}
        if self.scheme is not None:
            facts["url.scheme"] = self.scheme
            facts["url.path"] = self.path.decode("ascii", "replace")
        return facts

    def url(self) -> str:
        """The target as the access log writes it."""
        if self.scheme is None:
            return self.authority
        return f"{self.scheme}://{self.authority}{self.path.decode('ascii', 'replace')}"


def _port(text: str, target: bytes) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise PeerProtocolError("http", f"bad port in request target {target!r}")
    return int(text)


def _host(text: str, target: bytes) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise PeerProtocolError("http", f"bad IPv6 literal in request target {target!r}")
        try:
            return str(ipaddress.IPv6Address(text[1:-1]))
        except ValueError:
            raise PeerProtocolError("http", f"bad IPv6 literal in request target {target!r}") from None
    if not text or any(c in text for c in " /\\@?#[]%") or not text.isascii():
        raise PeerProtocolError("http", f"bad host in request target {target!r}")
    return text.lower()


def parse_target(method: bytes, target: bytes) -> Target:
    """
    Read a proxy request's target: authority-form for CONNECT
    (C{host:port}), absolute-form (C{http://host[:port]/path}) otherwise.

    @raise PeerProtocolError: with a 400 hint for anything else, including
        origin-form (C{/path}), which a proxy cannot route.
    """
    text = target.decode("ascii", "replace")
    if method == b"CONNECT":
        host, sep, port = text.rpartition(":")
        if not sep:
            raise PeerProtocolError("http", f"CONNECT target needs host:port, got {target!r}")
        return Target(None, _host(host, target), _port(port, target), b"")
    if text.startswith("/") or text == "*":
        raise PeerProtocolError(
            "http",
            f"txgate is a proxy: the request target must be an absolute URI, got {target!r}",
        )
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise PeerProtocolError("http", f"unsupported scheme in request target {target!r}")
    if parts.username is not None or parts.password is not None:
        raise PeerProtocolError("http", f"userinfo is not allowed in request target {target!r}")
    netloc = parts.netloc
    host, port = netloc, ""
    if netloc.startswith("["):
        closing = netloc.find("]")
        host, rest = netloc[: closing + 1], netloc[closing + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise PeerProtocolError("http", f"bad authority in request target {target!r}")
            port = rest[1:]
    elif ":" in netloc:
        host, port = netloc.rsplit(":", 1)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(
        scheme,
        _host(host, target),
        _port(port, target) if port else _DEFAULT_PORTS[scheme],
        path.encode("ascii"),
    )


def parse_host_header(value: bytes) -> str:
    """
    The host a C{Host} header names (C{name}, C{name:port}, C{[v6]:port}),
    lower-case, without port or brackets.

    @raise PeerProtocolError: not a host.
    """
    if b":" not in value.rsplit(b"]", 1)[-1]:
        value += b":80"
    try:
        return parse_target(b"CONNECT", value).host
    except PeerProtocolError:
        raise PeerProtocolError("http", f"bad Host header {value!r}") from None


def comma_tokens(value: bytes) -> list[bytes]:
    """
    The tokens of a comma-separated field value whose tokens are
    case-insensitive (Connection, Transfer-Encoding, Upgrade), lower-cased.
    """
    return [t.strip().lower() for t in value.split(b",")]


def _connection_tokens(headers: Headers) -> set[bytes]:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(comma_tokens(value))
    return tokens


def strip_hop_by_hop(headers: Headers) -> Headers:
    """
    The headers without hop-by-hop fields: the fixed set in L{HOP_BY_HOP} and
    any field a C{Connection} header names.
    """
    tokens = _connection_tokens(headers)
    drop = HOP_BY_HOP | tokens if tokens else HOP_BY_HOP
    return [(n, v) for n, v in headers if n not in drop]


def _with_via(headers: Headers) -> Headers:
    vias = [v for n, v in headers if n == b"via"]
    rest = [(n, v) for n, v in headers if n != b"via"]
    rest.append((b"via", b", ".join(vias + [VIA])))
    return rest


def request_headers_upstream(headers: Headers, target: Target, chunked: bool) -> Headers:
    """
    The headers to send upstream for a request the client sent to the proxy.

    @param headers: as L{txgate.http.framing.check_head} gives them
        (lower-case names).
    @param chunked: whether the client framed the body with chunked coding;
        the framing header is re-added, and the body goes on chunked.
    """
    out = [(n, v) for n, v in strip_hop_by_hop(headers) if n != b"host"]
    out.insert(0, (b"host", target.authority.encode("ascii")))
    if chunked:
        out.append((b"transfer-encoding", b"chunked"))
    return _with_via(out)


def response_headers_downstream(headers: Headers) -> Headers:
    """
    The headers to send the client for a response from upstream. Without
    Content-Length, L{txgate.http.framing.frame_response} picks the framing
    the client understands (chunked for HTTP/1.1, close-delimited for
    HTTP/1.0).
    """
    return _with_via(strip_hop_by_hop(headers))


def error_page(status: int, message: str) -> tuple[Headers, bytes]:
    """
    A short plain-text page for an error txgate itself answers.
    """
    body = f"txgate: {status}: {message}\n".encode("utf-8", "replace")
    return (
        [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"cache-control", b"no-store"),
            (b"via", VIA),
        ],
        body,
    )


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase of C{status} (RFC 9110), or C{Unknown}."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def error_response(status: int, message: str) -> bytes:
    """
    L{error_page} as a whole HTTP/1.1 response closing the connection, for
    a stream no HTTP state machine carries (yet).
    """
    headers, body = error_page(status, message)
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
    return head + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"connection: close\r\n\r\n" + body


_CONNECTION_SCHEMES = frozenset({b"ntlm", b"negotiate"})
_CHALLENGE_SCHEME = re.compile(rb"(?:^|,)[ \t]*(ntlm|negotiate)(?=[ \t,]|$)", re.IGNORECASE)


def auth_scheme_and_token(authorization: bytes) -> tuple[bytes, bytes]:
    """An C{Authorization} value's scheme (lower case) and the rest."""
    scheme, _, token = authorization.strip().partition(b" ")
    return scheme.lower(), token.strip()


def connection_auth(
    request_headers: Iterable[tuple[bytes, bytes]],
    status: int | None = None,
    response_headers: Iterable[tuple[bytes, bytes]] = (),
) -> bool:
    """
    Whether a connection-oriented handshake (NTLM, Negotiate) has begun, so
    the real server connection must stay with this client connection: these
    schemes authenticate the connection, not the request.
    """
    for name, value in request_headers:
        if name == b"authorization" and auth_scheme_and_token(value)[0] in _CONNECTION_SCHEMES:
            return True
    if status == 401:
        for name, value in response_headers:
            if name == b"www-authenticate" and _CHALLENGE_SCHEME.search(value) is not None:
                return True
    return False
