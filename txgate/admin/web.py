# -*- test-case-name: tests.admin.test_web -*-
"""
The admin console over HTTP: the JSON API, the HTML pages and C{/metrics},
behind one authentication check.

Routes::

    GET    /                          302 to /sessions
    GET    /sessions                  HTML: active sessions (?protocol=&client=&host=&sort=)
    POST   /sessions/ID/terminate     end one session, 303 back to /sessions (filters kept)
    GET    /forward, /reverse         HTML: forward status, virtual and real servers
    GET    /metrics                   Prometheus text exposition
    GET    /api/sessions              {"sessions": [...]} (same query as the page)
    DELETE /api/sessions/ID           {"terminated": ID}, or 404
    GET    /api/realservers           {"virtual_services": [...]}
    GET    /api/status                the source's status document
    POST   /api/reload                {"ok", "message"}: 200 when ok, 500 when not

Authentication: a peer on loopback (127.0.0.0/8, ::1) or a UNIX socket needs
nothing. Any other peer (behind C{haproxy:}, the address from the PROXY
header) must present the token, either as C{Authorization: Bearer TOKEN} or,
because a browser cannot add that header to a link or a form, as a C{token}
query parameter or form field; the pages then carry the token on in their
links and forms. Tokens are compared in constant time.

Two browser-facing defences go beyond that check, because "loopback" is also
where an operator's browser lives: a C{POST} or C{DELETE} whose C{Origin}
names another site is refused (403), so a web page cannot end sessions
through the operator's browser; and a loopback request whose C{Host} is a DNS
name other than C{localhost} must carry the token like a remote one, so a
DNS-rebinding page cannot read the console either.

Errors are JSON (C{{"error": "..."}}). An exception from the source is
logged with its traceback and answered with a bare 500: never a traceback
to the client.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import attrs
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, resource, server

from txgate.admin.views import (
    PageContext,
    QueryError,
    SessionQuery,
    json_bytes,
    render_forward,
    render_reverse,
    render_sessions,
    sessions_document,
)

__all__ = ["AdminResource", "AdminSource", "admin_site", "is_loopback_peer"]

_JSON = b"application/json"
_HTML = b"text/html; charset=utf-8"
_TEXT = b"text/plain; charset=utf-8"
#: What Prometheus scrapers expect of the text exposition format.
_METRICS = b"text/plain; version=0.0.4; charset=utf-8"

#: Every response: nothing is cached (it is live data), the content type is
#: not second-guessed, a token in a URL travels in no other site's Referer, and a
#: page may load nothing but its own inline style.
_SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    # Not "no-referrer": with it browsers send "Origin: null" on the pages'
    # own form posts, and the cross-origin check could not tell them apart.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
)


class AdminSource(Protocol):
    """
    What the web layer needs of its data source: the methods of
    C{txgate.admin.source.IAdminSource}, each returning a L{Deferred}.
    """

    def sessions(self) -> Deferred[list[dict[str, Any]]]: ...

    def terminate(self, session_id: str) -> Deferred[bool]: ...

    def realservers(self) -> Deferred[list[dict[str, Any]]]: ...

    def status(self) -> Deferred[dict[str, Any]]: ...

    def reload(self) -> Deferred[dict[str, Any]]: ...

    def metrics(self) -> Deferred[bytes]: ...


def is_loopback_peer(address: IAddress) -> bool:
    """
    Whether a peer may use the console without a token: a loopback address
    (IPv4-mapped ones included), or a UNIX socket, which only processes with
    access to its file can reach.
    """
    if isinstance(address, UNIXAddress):
        return True
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _local_host_header(host: bytes | None) -> bool:
    """
    Whether a C{Host} header names this machine in a way DNS cannot rebind:
    an IP literal or C{localhost}. No header (HTTP/1.0) counts as local.
    """
    if not host:
        return True
    text = host.decode("ascii", "replace").strip().lower()
    if text.startswith("["):
        name = text[1:].partition("]")[0]
    else:
        name = text.rpartition(":")[0] if ":" in text else text
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@attrs.frozen
class _Reply:
    """One response, decided before anything is written."""

    code: int
    body: bytes = b""
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _error(code: int, message: str, *headers: tuple[bytes, bytes]) -> _Reply:
    return _Reply(code, json_bytes({"error": message}), _JSON, headers)


def _args_param(request: Any, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    return values[0].decode("utf-8", "replace")


# A route handler takes the request and the path parameters.
_Handler = Callable[..., "Deferred[_Reply] | _Reply"]


class AdminResource(resource.Resource):
    """
    The whole console as one leaf resource: it routes on the path itself so
    every request, known or not, passes the same authentication check and
    every error has the same JSON shape.

    @ivar _trusted_peer: decides which peers need no token
        (L{is_loopback_peer}); tests substitute it to act as a remote peer.
    @ivar _trust_local: every peer is trusted: the listener is a worker's
        control socket, which only the main process can reach.
    """

    isLeaf = True
    _log = Logger()

    def __init__(
        self,
        source: AdminSource,
        token: str | None,
        refresh: float,
        clock: IReactorTime,
        *,
        workers: int | None = None,
        trusted_peer: Callable[[IAddress], bool] = is_loopback_peer,
        trust_local: bool = False,
    ) -> None:
        super().__init__()
        self._trust_local = trust_local
        self._source = source
        self._token = None if token is None else token.encode("utf-8")
        self._refresh = refresh
        self._clock = clock
        self._workers = workers
        self._trusted_peer = trusted_peer

    # -- authentication -------------------------------------------------------

    def _presented_tokens(self, request: Any) -> list[bytes]:
        tokens = []
        authorization = request.getHeader(b"authorization")
        if authorization:
            scheme, _, credentials = authorization.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                tokens.append(credentials.strip())
        tokens.extend((request.args or {}).get(b"token", []))
        return tokens

    def _authorized(self, request: Any) -> bool:
        if self._trust_local:
            return True
        if self._trusted_peer(request.getClientAddress()) and (
            isinstance(request.getClientAddress(), UNIXAddress)
            or _local_host_header(request.getHeader(b"host"))
        ):
            return True
        if self._token is None:
            return False
        # Compare every candidate, so timing does not tell which one failed.
        results = [hmac.compare_digest(t, self._token) for t in self._presented_tokens(request)]
        return any(results)

    def _cross_origin(self, request: Any) -> bool:
        """
        Whether a state-changing request comes from another site's page.
        Scripts (curl, the lead's fan-out) send no C{Origin} and pass.
        """
        fetch_site = request.getHeader(b"sec-fetch-site")
        if fetch_site is not None:
            # "same-site" includes other ports of 127.0.0.1: other local apps.
            return fetch_site not in (b"same-origin", b"none")
        origin = request.getHeader(b"origin")
        if origin is None:
            return False
        netloc = urlsplit(origin.decode("ascii", "replace")).netloc
        host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
        return netloc.lower() != host.lower()

    # -- routing --------------------------------------------------------------

    def _route(self, segments: list[str]) -> tuple[dict[str, _Handler], tuple[str, ...]] | None:
        match segments:
            case []:
                return {"GET": self._index}, ()
            case ["sessions"]:
                return {"GET": self._sessions_page}, ()
            case ["sessions", session_id, "terminate"] if session_id:
                return {"POST": self._terminate_form}, (session_id,)
            case ["forward"]:
                return {"GET": self._forward_page}, ()
            case ["reverse"]:
                return {"GET": self._reverse_page}, ()
            case ["metrics"]:
                return {"GET": self._metrics}, ()
            case ["api", "sessions"]:
                return {"GET": self._api_sessions}, ()
            case ["api", "sessions", session_id] if session_id:
                return {"DELETE": self._api_terminate}, (session_id,)
            case ["api", "realservers"]:
                return {"GET": self._api_realservers}, ()
            case ["api", "status"]:
                return {"GET": self._api_status}, ()
            case ["api", "reload"]:
                return {"POST": self._api_reload}, ()
        return None

    def render(self, request: Any) -> Any:
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)
        d = maybeDeferred(self._dispatch, request)
        d.addErrback(self._failed, request)
        d.addCallback(self._send, request, gone)
        return server.NOT_DONE_YET

    def _dispatch(self, request: Any) -> Deferred[_Reply] | _Reply:
        if not self._authorized(request):
            return _error(
                401,
                "this address needs the admin token: send 'Authorization: Bearer TOKEN'"
                " or add ?token=TOKEN",
                (b"www-authenticate", b'Bearer realm="txgate admin"'),
            )
        segments = [s.decode("utf-8", "replace") for s in request.postpath]
        if segments and segments[-1] == "":
            segments.pop()  # "/sessions/" is "/sessions"
        route = self._route(segments)
        path = "/" + "/".join(segments)
        if route is None:
            return _error(404, f"no such resource: {path}")
        handlers, params = route
        method = request.method.decode("ascii", "replace").upper()
        if method == "HEAD" and "GET" in handlers:
            method = "GET"
        handler = handlers.get(method)
        if handler is None:
            allowed = sorted(set(handlers) | ({"HEAD"} if "GET" in handlers else set()))
            return _error(
                405,
                f"{method} is not allowed on {path}: use {', '.join(allowed)}",
                (b"allow", ", ".join(allowed).encode("ascii")),
            )
        if method in ("POST", "DELETE") and self._cross_origin(request):
            return _error(403, "cross-origin request refused")
        return handler(request, *params)

    def _failed(self, failure: Failure, request: Any) -> _Reply:
        if failure.check(QueryError):
            return _error(400, str(failure.value))
        self._log.failure(
            "admin request {method} {path} failed", failure,
            method=request.method.decode("ascii", "replace"),
            # Not request.uri: its query may hold the token.
            path="/" + b"/".join(request.postpath).decode("utf-8", "replace"),
        )
        return _error(500, "internal error: the admin log has the details")

    def _send(self, reply: _Reply, request: Any, gone: list[Failure]) -> None:
        if gone:
            return  # the client left; nothing to write to
        request.setResponseCode(reply.code)
        request.setHeader(b"content-type", reply.content_type)
        for name, value in reply.headers:
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % (len(reply.body),))
        request.write(reply.body)
        request.finish()

    # -- helpers --------------------------------------------------------------

    def _context(self, request: Any) -> PageContext:
        return PageContext(
            now=self._clock.seconds(),
            refresh=self._refresh,
            token=_args_param(request, "token"),
            workers=self._workers,
        )

    def _html(self, body: bytes) -> _Reply:
        return _Reply(200, body, _HTML)

    def _json(self, document: Any, code: int = 200) -> _Reply:
        return _Reply(code, json_bytes(document), _JSON)

    # -- handlers -------------------------------------------------------------

    def _index(self, request: Any) -> _Reply:
        location = self._context(request).href("/sessions")
        return _Reply(http.FOUND, b"", _TEXT, ((b"location", location.encode("utf-8")),))

    def _sessions_page(self, request: Any) -> Deferred[_Reply]:
        query = SessionQuery.from_args(request.args)
        ctx = self._context(request)
        return self._source.sessions().addCallback(
            lambda sessions: self._html(render_sessions(sessions, query, ctx)))

    def _forward_page(self, request: Any) -> Deferred[_Reply]:
        ctx = self._context(request)
        return self._source.status().addCallback(
            lambda status: self._html(render_forward(status, ctx)))

    def _reverse_page(self, request: Any) -> Deferred[_Reply]:
        ctx = self._context(request)
        return self._source.realservers().addCallback(
            lambda vservices: self._html(render_reverse(vservices, ctx)))

    def _terminate_form(self, request: Any, session_id: str) -> Deferred[_Reply]:
        # Keep the operator's filters (not a bad sort: that would only turn
        # the redirect into a 400), and the token the form carried.
        params = []
        for name in ("protocol", "client", "host", "sort"):
            value = _args_param(request, name)
            if value:
                params.append((name, value))
        ctx = self._context(request)
        location = ctx.href("/sessions", params).encode("utf-8")

        def done(found: bool) -> _Reply:
            self._log.info(
                "admin: terminate session {session_id} from the console: {outcome}",
                session_id=session_id, outcome="closed" if found else "not found",
            )
            return _Reply(http.SEE_OTHER, b"", _TEXT, ((b"location", location),))

        return self._source.terminate(session_id).addCallback(done)

    def _metrics(self, request: Any) -> Deferred[_Reply]:
        return self._source.metrics().addCallback(lambda body: _Reply(200, body, _METRICS))

    def _api_sessions(self, request: Any) -> Deferred[_Reply]:
        query = SessionQuery.from_args(request.args)
        return self._source.sessions().addCallback(
            lambda sessions: self._json(sessions_document(sessions, query)))

    def _api_terminate(self, request: Any, session_id: str) -> Deferred[_Reply]:
        def done(found: bool) -> _Reply:
            self._log.info(
                "admin: terminate session {session_id} through the API: {outcome}",
                session_id=session_id, outcome="closed" if found else "not found",
            )
            if found:
                return self._json({"terminated": session_id})
            return _error(404, f"no live session {session_id!r}")

        return self._source.terminate(session_id).addCallback(done)

    def _api_realservers(self, request: Any) -> Deferred[_Reply]:
        return self._source.realservers().addCallback(
            lambda vservices: self._json({"virtual_services": vservices}))

    def _api_status(self, request: Any) -> Deferred[_Reply]:
        return self._source.status().addCallback(self._json)

    def _api_reload(self, request: Any) -> Deferred[_Reply]:
        def done(result: dict[str, Any]) -> _Reply:
            ok = bool(result.get("ok"))
            self._log.info("admin: reload requested: {ok} {message}",
                           ok="ok" if ok else "FAILED", message=result.get("message", ""))
            return self._json(result, 200 if ok else 500)

        return self._source.reload().addCallback(done)


class _RedactedRequest:
    """
    A view of a request for the access log in which the C{token} parameter
    reads C{REDACTED}: a token given as C{?token=} must not end up in a log.
    """

    def __init__(self, request: Any) -> None:
        self._request = request

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def uri(self) -> bytes:
        uri: bytes = self._request.uri
        path, sep, query = uri.partition(b"?")
        if not sep or b"token=" not in query:
            return uri
        pairs = [
            b"token=REDACTED" if pair.startswith(b"token=") else pair
            for pair in query.split(b"&")
        ]
        return path + b"?" + b"&".join(pairs)


def _access_log_line(timestamp: str, request: Any) -> str:
    return http.combinedLogFormatter(timestamp, _RedactedRequest(request))


def admin_site(
    source: AdminSource,
    token: str | None,
    refresh: float,
    clock: IReactorTime,
    *,
    workers: int | None = None,
    trusted_peer: Callable[[IAddress], bool] = is_loopback_peer,
    trust_local: bool = False,
) -> server.Site:
    """
    The admin console's site.

    @param source: provides C{txgate.admin.source.IAdminSource}.
    @param token: the bearer token non-loopback peers must present; C{None}
        refuses every non-loopback peer.
    @param refresh: seconds between the HTML pages' own reloads (0: never).
    @param clock: gives the time shown on the pages.
    @param workers: the number of worker processes, shown on the pages when
        given.
    @param trusted_peer: which peers need no token (default: loopback and
        UNIX sockets).
    @param trust_local: trust every peer, without even the C{Host} check: for
        a worker's private control socket.
    """
    site = server.Site(
        AdminResource(source, token, refresh, clock, workers=workers, trusted_peer=trusted_peer,
                      trust_local=trust_local),
        logFormatter=_access_log_line,
    )
    site.noisy = False
    site.displayTracebacks = False
    return site
