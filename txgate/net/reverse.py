# -*- test-case-name: tests.net.test_reverse -*-
"""
A reverse virtual service: client connections (TLS or plain HTTP/1.1),
requests checked against the allowed hosts and paths, sent to a real server
chosen by persistence and scheduling, bodies streamed both ways, WebSocket
upgrades tunnelled, NTLM/Negotiate handshakes kept on one backend
connection.

The decisions are the pure cores in L{txgate.reverse}; this module moves
bytes between them and keeps the books (ESP logs, counters). Client
requests are read once, strictly, by L{check_head} and L{ChunkedChecker},
and responses framed for the client by L{frame_response}; real servers'
responses are read by L{txgate.http.responses}.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate import metrics
from txgate.config import VirtualServiceConfig
from txgate.http.framing import BadHead, Framing, RequestBody, RequestHead, response_head
from txgate.http.proxying import RETRYABLE, Headers, connection_auth
from txgate.http.responses import BodyReader, ResponseHead
from txgate.net.http1 import ClientConnection, ServerResponse
from txgate.net.idle import IdleWatch
from txgate.net.realservers import Backend
from txgate.net.upstream import Upstream, describe_connect_failure, no_delay
from txgate.reverse import esplog
from txgate.reverse.allowed import AmbiguousPath, HostRules, PathRules, normalize_target
from txgate.reverse.balancing import scheduler_for
from txgate.reverse.headers import (
    cookie_value,
    downstream_response_headers,
    location_rewriter,
    set_cookie_value,
    upstream_request_headers,
    user_of,
    wants_upgrade,
)
from txgate.reverse.persistence import CookiePersistence, CookieSigner, NoPersistence, SourceIPPersistence
from txgate.reverse.proxyv2 import proxy_v2_header

__all__ = ["EspLogs", "VirtualService", "ReverseProxyFactory"]

_PHRASES = {
    400: b"Bad Request",
    403: b"Forbidden",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def _minimal_page(status: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """
    The body of an error txgate answers itself: the status alone, so a
    refusal tells an internet client nothing about what is behind.
    """
    body = b"%d %s\n" % (status, _PHRASES.get(status, b"Error"))
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-store"),
        (b"connection", b"close"),
    ]
    return headers, body


def _header(headers: Any, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return bytes(value)
    return None


class EspLogs:
    """
    The ESP log files: connections, security refusals, user access. Each
    line is flushed as written, so an operator's C{tail -f} sees it at once.
    """

    _log = Logger()

    def __init__(self, connection: str, security: str, user: str) -> None:
        self._files: dict[str, TextIO | None] = {
            "connection": self._open(connection),
            "security": self._open(security),
            "user": self._open(user),
        }

    @staticmethod
    def _open(path: str) -> TextIO | None:
        if not path:
            return None
        import os

        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        return open(path, "a", encoding="utf-8", buffering=1)

    def enabled(self, log: str) -> bool:
        """Whether C{log} is written: a line for a log that is off need not be formatted."""
        return self._files[log] is not None

    def write(self, log: str, line: str) -> None:
        f = self._files[log]
        if f is not None:
            f.write(line + "\n")

    def close(self) -> None:
        """Close the files; lines written afterwards are dropped."""
        for name, f in self._files.items():
            if f is not None:
                f.close()
                self._files[name] = None


class VirtualService:
    """
    The shared state of one C{[[virtual_service]]}: its rules, its real
    servers and how one is chosen.
    """

    def __init__(self, config: VirtualServiceConfig, reactor: Any, signer: CookieSigner | None, logs: EspLogs) -> None:
        self.config = config
        self.reactor = reactor
        self.logs = logs
        self.hosts = HostRules.of(config.allowed_hosts)
        self.paths = PathRules.of(config.allowed_paths)
        self.backends = [Backend(reactor, rs, config.connect_timeout, config.pool_size) for rs in config.real_servers]
        self.by_key = {b.state.key: b for b in self.backends}
        self.servers = [b.state for b in self.backends]
        self.scheduler = scheduler_for(config.scheduling)
        persistence = config.persistence
        self.cookie: str | None = None
        if persistence.mode == "active-cookie":
            assert signer is not None
            self.cookie = persistence.cookie
            self.persistence: Any = CookiePersistence(signer, persistence.cookie)
        elif persistence.mode == "source-ip":
            self.persistence = SourceIPPersistence(persistence.timeout)
        else:
            self.persistence = NoPersistence()
        internal = set()
        for rs in config.real_servers:
            internal.add((rs.host.lower(), rs.port))
            internal.add((rs.verified_name.lower(), rs.port))
        self.internal = frozenset(internal)
        self.proto = "https" if config.certificates else "http"
        self.requests = 0
        self.clients: set[Any] = set()
        """The open client connections (counted, and ended when draining runs out of time)."""

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)

    def snapshot(self) -> dict[str, Any]:
        """What the admin console shows of this virtual service."""
        return {
            "name": self.config.name,
            "listen": self.config.listen,
            "connections": len(self.clients),
            "requests": self.requests,
            "real_servers": [s.snapshot() for s in self.servers],
        }


class ReverseProxyFactory(Factory):
    noisy = False

    def __init__(self, service: VirtualService) -> None:
        self.service = service

    def buildProtocol(self, addr: Any) -> "ReverseProxy":
        protocol = ReverseProxy()
        protocol.factory = self
        protocol.service = self.service
        return protocol


class ReverseProxy(ClientConnection, Protocol):
    """One client connection to a virtual service."""

    _log = Logger()
    service: VirtualService
    client = "-"
    client_ip = ""
    local = "-"
    _corked: list[bytes] | None = None
    """What is written to the client between L{cork} and L{uncork}."""

    def connectionMade(self) -> None:
        no_delay(self.transport)
        service = self.service
        service.clients.add(self)
        clock = service.reactor
        self._opened = clock.seconds()
        self.bytes_in = 0
        self.bytes_out = 0
        self._identified = False
        self._closing = False
        self._reading = True
        self._paused = False
        self._buffer = bytearray()
        self._scanned = 0
        self._max_head = service.config.max_header_size
        self._request: RequestHead | None = None
        """The request being answered, from its head until its exchange is over."""
        self._pending = bytearray()
        """Bytes after the request head not handed on yet: its body, or the next request."""
        self._body: RequestBody | None = None
        self._request_ended = False
        self._response_done = False
        self._exchange: _Exchange | None = None
        self._tunnel: Upstream | None = None
        self.own: tuple[Backend, Upstream] | None = None
        """A backend connection only this client uses (NTLM/Negotiate, PROXY header)."""
        self.pin_auth = False
        self._idle = IdleWatch(clock, service.config.idle_timeout, self._idle_out)
        self._head_timer: Any = clock.callLater(service.config.header_timeout, self._head_timeout)

    def _identify(self) -> None:
        """
        Read the addresses once bytes arrive: behind a C{haproxy:} listener
        they are the real client's only once the PROXY header has been read.
        """
        self._identified = True
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.client_ip = getattr(peer, "host", "")
        self.peer = (self.client_ip, getattr(peer, "port", 0))
        self.host = (getattr(host, "host", ""), getattr(host, "port", 0))
        self.client = esplog.endpoint(*self.peer)
        self.local = esplog.endpoint(*self.host)
        service = self.service
        service.logs.write("connection", esplog.opened_line(service.now(), self.local, self.client))

    # -- client bytes ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._identified:
            self._identify()
        self.bytes_in += len(data)
        self._idle.touch()
        if self._closing:
            return
        if self._tunnel is not None:
            self._tunnel.transport.write(data)
            return
        self._bytes_in(data)

    def _head_waits(self) -> None:
        # Armed only now: a kept-alive client's next head usually arrives
        # whole, and a timer per request is two heap operations.
        if self._head_timer is None:
            self._head_timer = self.service.reactor.callLater(self.service.config.header_timeout, self._head_timeout)

    def _head_read(self) -> None:
        self._stop_head_timer()

    def _head_refused(self, error: BadHead) -> None:
        self._refuse(error.status, error.reason)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            if self._head_timer.active():
                self._head_timer.cancel()
            self._head_timer = None

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closing = True
        self._idle.stop()
        self._stop_head_timer()
        service = self.service
        service.clients.discard(self)
        if self._exchange is not None:
            self._exchange.client_lost(reason)
        if self._tunnel is not None:
            self._tunnel.transport.loseConnection()
        if self.own is not None:
            self.own[1].transport.loseConnection()
            self.own = None
        if self._identified:
            seconds = service.reactor.seconds() - self._opened
            service.logs.write(
                "connection",
                esplog.closed_line(service.now(), self.local, self.client, seconds, self.bytes_in, self.bytes_out),
            )

    def pause_reading(self) -> None:
        """
        Stop handing events on. The transport is paused only if bytes
        arrive meanwhile (L{dataReceived}): most requests end before then,
        and pausing and resuming cost two epoll calls per request.
        """
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._body_in()

    # -- answering --------------------------------------------------------------

    def cork(self) -> None:
        """
        Hold what is written to the client until L{uncork}: a response read
        in one piece from the real server then goes out as one TLS record
        and one C{send}, head, body and end together.
        """
        self._corked = []

    def uncork(self) -> None:
        """Write what L{cork} held, and write straight through again."""
        pieces, self._corked = self._corked, None
        if pieces:
            self.transport.writeSequence(pieces)

    def _write(self, data: bytes) -> None:
        if data:
            self._send([data])

    def _send(self, pieces: list[bytes]) -> None:
        self.bytes_out += sum(len(p) for p in pieces)
        if self._corked is not None:
            self._corked += pieces
        else:
            self.transport.writeSequence(pieces)

    def answer(self, status: int) -> None:
        """
        Answer with a minimal page, unless a response has begun, and close
        (the request is not read on).
        """
        if self._framing is None:
            headers, body = _minimal_page(status)
            if self._request is not None and self._request.method == b"HEAD":
                body = b""
            self._write(response_head(status, _PHRASES.get(status, b"Error"), headers) + body)
        self.uncork()
        self._closing = True
        self.transport.loseConnection()

    def _body_refused(self, status: int, reason: str) -> None:
        self._refuse(status, reason)

    def _refuse(self, status: int, reason: str) -> None:
        """A request refused as malformed or dangerous: 4xx, security log."""
        service = self.service
        service.logs.write("security", esplog.refused_line(service.now(), self.local, self.client, reason))
        self._log.info(
            "{service}: refused a request from {client}: {reason}",
            service=service.config.name,
            client=self.client,
            reason=reason,
        )
        if self._exchange is not None:
            self._exchange.abort_upstream()
            self._exchange = None
        self.answer(status)

    def _deny(self, what: str, value: str, reason: str) -> None:
        service = self.service
        service.logs.write("security", esplog.denied_line(service.now(), self.local, self.client, what, value, reason))
        self.answer(403)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._closing or self._exchange is not None:
            return
        if not self._buffer and self._request is None and self._identified:
            # A kept-alive connection with no request yet: idle_timeout rules.
            return
        if not self._identified:
            self._identify()
        self._refuse(408, f"request head not complete within {self.service.config.header_timeout:g} s")

    def _idle_out(self, idle: float) -> None:
        if self._closing:
            return
        self._log.info(
            "{service}: closing the connection from {client}: idle for {idle:.0f} s",
            service=self.service.config.name,
            client=self.client,
            idle=idle,
        )
        if self._exchange is not None:
            self._exchange.abort_upstream()
        self._closing = True
        self.transport.abortConnection()

    # -- requests -------------------------------------------------------------

    def _request_in(self, request: RequestHead) -> None:
        service = self.service
        service.requests += 1
        headers = request.headers
        host = _header(headers, b"host")
        if service.hosts.match(host) is None:
            shown = host.decode("latin-1") if host is not None else "(none)"
            self._deny("host", shown, "not in allowed_hosts")
            return
        try:
            path, target = normalize_target(request.target)
        except AmbiguousPath as e:
            self._refuse(400, f"ambiguous path {request.target.decode('latin-1')}: {e}")
            return
        if not service.paths.allows(path):
            self._deny("path", path, "not in allowed_paths")
            return
        backend, set_cookie = self._choose(headers)
        if backend is None:
            self._log.warn("{service}: no real server is up", service=service.config.name)
            self.answer(503)
            return
        exchange = _Exchange(self, request, target, backend, set_cookie)
        self._exchange = exchange
        if not request.has_body:
            self._request_ended = True
            exchange.client_end([])
        else:
            exchange.begin()

    def _choose(self, headers: list[tuple[bytes, bytes]]) -> tuple[Backend | None, bytes | None]:
        """The real server for a request with C{headers} and the cookie to set, if any."""
        service = self.service
        own = self.own
        if own is not None and self.pin_auth:
            backend, upstream = own
            if backend.state.up and upstream.lost is None and not upstream.eof:
                return backend, None
        cookie = cookie_value(headers, service.cookie) if service.cookie else None
        choice = service.persistence.choose(
            cookie, self.client_ip, service.servers, service.scheduler, service.reactor.seconds()
        )
        if choice.server is None:
            return None, None
        set_cookie = set_cookie_value(service.cookie, choice.set_cookie) if choice.set_cookie and service.cookie else None
        return service.by_key[choice.server.key], set_cookie

    def connection_for(self, backend: Backend) -> tuple[Upstream, bool] | Deferred[tuple[Upstream, bool]]:
        """
        The backend connection for a request to C{backend} and whether it
        was reused: this client's own one when it has one for that server, a
        new own one when the service sends PROXY headers, else the pool's.
        One at hand comes as is, not in a Deferred (the keep-alive path).
        """
        own = self.own
        if own is not None:
            self.own = None
            own_backend, upstream = own
            if own_backend is backend and upstream.lost is None and not upstream.eof:
                return upstream, True
            upstream.transport.loseConnection()
            self.pin_auth = False
        if self.service.config.send_proxy:
            return backend.connect_own(proxy_v2_header(self.peer, self.host))
        pooled = backend.idle()
        if pooled is not None:
            return pooled, True
        return backend.connect()

    def keep_own(self, backend: Backend, upstream: Upstream) -> None:
        """Keep C{upstream} for this client's next request."""
        self.own = (backend, upstream)
        upstream.attach(_OwnWatch(self, upstream))

    def exchange_done(self, keep_alive: bool) -> None:
        self._exchange = None
        if self._closing or self._request is None:
            return
        framing = self._framing
        if keep_alive and self._request_ended and self._response_done and framing is not None and not framing.close:
            rest = bytes(self._pending)
            self._pending.clear()
            self._request = None
            self._framing = None
            self._body = None
            self._reading = True
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            if rest:
                self._head_in(rest)
        else:
            self.uncork()
            self._closing = True
            self.transport.loseConnection()

    def switch_to_tunnel(self, upstream: Upstream) -> None:
        """After a 101 answer: bytes go across untouched from now on."""
        rest = bytes(self._pending)
        self._pending.clear()
        self._exchange = None
        self._request = None
        self._tunnel = upstream
        if rest:
            upstream.transport.write(rest)
        self._reading = True
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()


@implementer(IPushProducer)
class _Resumable:
    """A transport as a producer that can be paused and resumed, not stopped."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class _OwnWatch:
    """The receiver of a client's own backend connection between requests."""

    def __init__(self, proxy: ReverseProxy, upstream: Upstream) -> None:
        self._proxy = proxy
        self._upstream = upstream

    def upstream_data(self, data: bytes) -> None:
        self.upstream_lost(None)

    def upstream_eof(self) -> None:
        self.upstream_lost(None)

    def upstream_lost(self, reason: Failure | None) -> None:
        proxy = self._proxy
        if proxy.own is not None and proxy.own[1] is self._upstream:
            proxy.own = None
            self._upstream.transport.loseConnection()


class _Exchange(ServerResponse):
    """
    One request sent to a real server and its response sent back, bodies
    streamed with each side the other's producer.
    """

    _log = Logger()

    def __init__(
        self,
        proxy: ReverseProxy,
        request: RequestHead,
        target: bytes,
        backend: Backend,
        set_cookie: bytes | None,
    ) -> None:
        self._proxy = proxy
        self._request = request
        self._headers = headers = request.headers
        self._target = target
        self._backend = backend
        self._set_cookie = set_cookie
        self._upstream: Upstream | None = None
        self._reused = False
        self._retried = False
        self._started = False
        self._early: list[bytes] = []
        self._request_done = False
        self._trailers: Headers = []
        self._out: Framing | None = None
        """How the request goes to the real server, once connected."""
        self._inbox = bytearray()
        """Response head bytes from the real server, until a head is whole."""
        self._body: BodyReader | None = None
        self._response_started = False
        self._upstream_eof = False
        self._finished = False
        self._registered = False
        self._upgrade = wants_upgrade(headers)
        self._status: int | None = None
        self._began = proxy.service.reactor.seconds()
        self._body_watch: IdleWatch | None = None
        self._chunked = request.chunked
        # A Content-Length of 0 counts: such a request is not retried on a new connection.
        self._has_body = request.chunked or request.length is not None
        self._expects = False
        for name, _ in headers:
            if name == b"expect":
                self._expects = True
                break

    def begin(self) -> None:
        """
        Start now, or, for a chunked body, once its first chunk has parsed:
        a request with a malformed chunk size is refused before any real
        server sees its head.
        """
        if self._has_body:
            config = self._proxy.service.config
            self._body_watch = IdleWatch(self._proxy.service.reactor, config.body_timeout, self._body_timed_out)
        if not self._chunked or self._expects:
            self._start()

    def _start(self) -> None:
        self._started = True
        proxy = self._proxy
        proxy.pause_reading()
        state = self._backend.state
        state.active += 1
        state.requests += 1
        ready = proxy.connection_for(self._backend)
        if type(ready) is tuple:
            self._connected(ready)
        else:
            ready.addCallbacks(self._connected, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if self._finished:
            return
        config = self._backend.config
        status, reason = describe_connect_failure(failure, config.host, config.port)
        self._fail(status, f"real server {self._backend.state.key}: {reason}")

    def _connected(self, result: tuple[Upstream, bool]) -> None:
        upstream, reused = result
        if self._finished:
            upstream.transport.loseConnection()
            return
        self._upstream = upstream
        self._reused = reused
        self._inbox = bytearray()
        self._body = None
        self._upstream_eof = False
        proxy = self._proxy
        headers = upstream_request_headers(
            self._headers, proxy.client_ip, proxy.service.proto, self._upgrade, chunked=self._chunked
        )
        # The client's fields passed check_head (token names, no control
        # characters but HTAB in values) and the proxy's own are built from
        # checked values, so the head is written as is.
        out = self._out = Framing.request(self._request.method, self._target, headers, self._chunked)
        pieces = [out.head]
        for data in self._early:
            pieces += out.data(data)
        self._early = []
        if self._request_done:
            pieces.append(out.end(self._trailers))
        upstream.transport.writeSequence(pieces)
        if self._has_body or self._upgrade:
            self._register()
        upstream.attach(self)
        if self._finished:
            return
        if not self._request_done:
            proxy.resume_reading()

    def _register(self) -> None:
        """
        Make each side the other's producer, so neither buffers without
        bound. A request without a body registers only once its response
        outlasts one read from the real server (L{_pump}): most end within
        it, and registering costs four calls into both TLS layers.
        """
        assert self._upstream is not None
        client, server = self._proxy.transport, self._upstream.transport
        # The real server's connection ending must not end the client's (a
        # consumer stops its producer when it is lost): a stale pooled
        # connection is retried, a failure gets its 502.
        server.registerProducer(_Resumable(client), True)
        client.registerProducer(server, True)
        self._registered = True

    def _write_upstream(self, data: bytes) -> None:
        assert self._upstream is not None
        if data:
            self._upstream.transport.write(data)

    # -- client side ------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        if self._body_watch is not None:
            self._body_watch.touch()
        if not self._started:
            self._early.append(bytes(data))
            self._start()
        elif self._upstream is None:
            self._early.append(bytes(data))
        else:
            assert self._out is not None
            pieces = self._out.data(data)
            if pieces:
                self._upstream.transport.writeSequence(pieces)

    def client_end(self, trailers: Headers) -> None:
        self._request_done = True
        self._trailers = trailers
        if self._body_watch is not None:
            self._body_watch.stop()
            self._body_watch = None
        if not self._started:
            self._start()
            return
        self._proxy.pause_reading()
        if self._upstream is not None:
            assert self._out is not None
            self._write_upstream(self._out.end(trailers))

    def client_lost(self, reason: Failure | None) -> None:
        if self._finished:
            return
        self._done()
        self._unregister()
        if self._upstream is not None:
            self._upstream.transport.loseConnection()

    def abort_upstream(self) -> None:
        """The client side failed: the real server must not see a complete request."""
        if self._finished:
            return
        self._done()
        self._unregister()
        if self._upstream is not None:
            self._upstream.transport.abortConnection()

    def _body_timed_out(self, idle: float) -> None:
        self._body_watch = None
        if self._finished or self._request_done:
            return
        self._proxy._refuse(408, f"request body stalled for {idle:.0f} s")

    # -- real server side -------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        proxy = self._proxy
        proxy._idle.touch()
        if proxy._tunnel is not None:
            proxy._write(data)
            return
        if self._finished:
            return
        proxy.cork()
        try:
            if self._body is None:
                self._inbox += data
                self._heads()
            else:
                self._body_in(data)
        finally:
            proxy.uncork()

    def upstream_eof(self) -> None:
        if self._proxy._tunnel is not None:
            self._proxy.transport.loseConnection()
            return
        self._read_eof()
        if not self._finished:
            self._upstream_closed(None)

    def upstream_lost(self, reason: Failure) -> None:
        if self._proxy._tunnel is not None:
            self._proxy.transport.loseConnection()
            return
        self._read_eof()
        if not self._finished:
            self._upstream_closed(reason)

    def _upstream_closed(self, reason: Failure | None) -> None:
        upstream = self._upstream
        assert upstream is not None
        self._unregister()
        upstream.transport.loseConnection()
        detail = reason.getErrorMessage() if reason is not None else "connection closed"
        key = self._backend.state.key
        if (
            not self._response_started
            and self._reused
            and not self._retried
            and not self._has_body
            and self._request.method in RETRYABLE
            and not self._proxy.pin_auth
        ):
            # A kept-alive connection the server closed while idle: once more
            # on a fresh one, as clients do for idempotent requests.
            self._retried = True
            self._upstream = None
            upstream.detach()  # its last events are not the next connection's
            self._backend.state.active -= 1
            self._backend.state.requests -= 1
            self._start()
            return
        if not self._response_started:
            self._fail(502, f"real server {key} closed the connection before responding ({detail})")
            return
        self._abort(f"real server {key} closed the connection mid-response ({detail})")

    def _waiting(self) -> None:
        if not self._registered:
            self._register()

    def _switching(self, head: ResponseHead, rest: bytes) -> None:
        if not self._upgrade:
            self._bad_response("real server switched protocols without being asked", prefix=False)
            return
        self._status = 101
        self._proxy.send_informational(101, head.reason, downstream_response_headers(head.headers, None, None, True))
        self._switched(rest)

    def _respond(self, head: ResponseHead) -> None:
        proxy = self._proxy
        if connection_auth(self._headers, head.status, head.headers):
            proxy.pin_auth = True
        rewrite = self._rewriter(head.headers)
        proxy.send_response(
            head.status,
            head.reason,
            downstream_response_headers(head.headers, rewrite, self._set_cookie, False),
        )

    def _bad_response(self, reason: str, prefix: bool = True) -> None:
        """A response that cannot be forwarded: 502 before it began, a cut connection after."""
        if prefix:
            reason = f"malformed response from real server {self._backend.state.key}: {reason}"
        if self._response_started:
            self._abort(reason)
            return
        self._unregister()
        assert self._upstream is not None
        self._upstream.transport.loseConnection()
        self._fail(502, reason)

    def _rewriter(self, headers: list[tuple[bytes, bytes]]) -> Callable[[bytes], bytes] | None:
        for name, _ in headers:
            if name == b"location":
                break
        else:
            return None
        host = _header(self._headers, b"host") or b""
        return location_rewriter(host, self._proxy.service.proto, self._proxy.service.internal)

    def _switched(self, rest: bytes) -> None:
        """Both sides agreed on 101: from here on, a tunnel."""
        self._user_log()
        self._done()
        proxy = self._proxy
        assert self._upstream is not None
        proxy.switch_to_tunnel(self._upstream)
        proxy._write(rest)

    # -- endings ----------------------------------------------------------------

    def _done(self) -> None:
        """Count the request as over, once."""
        if self._finished:
            return
        self._finished = True
        if self._body_watch is not None:
            self._body_watch.stop()
            self._body_watch = None
        if self._started:
            self._backend.state.active -= 1
            service = self._proxy.service
            metrics.reverse_request(
                service.config.name, self._backend.state.key, self._status, service.reactor.seconds() - self._began
            )

    def _user_log(self) -> None:
        proxy = self._proxy
        service = proxy.service
        if not service.logs.enabled("user"):
            return
        headers = self._headers
        user = user_of(_header(headers, b"authorization"))
        agent = _header(headers, b"user-agent")
        config = self._backend.config
        service.logs.write(
            "user",
            esplog.user_line(
                service.now(),
                proxy.local,
                esplog.endpoint(config.host, config.port),
                user,
                self._request.method.decode("latin-1"),
                self._request.target.decode("latin-1"),
                agent.decode("latin-1") if agent is not None else None,
            ),
        )

    def _fail(self, status: int, reason: str) -> None:
        """No response came from the real server: answer C{status} and log why."""
        self._status = status
        self._done()
        self._log.warn(
            "{service}: {client} {method} {target}: {reason}",
            service=self._proxy.service.config.name,
            client=self._proxy.client,
            method=self._request.method.decode("latin-1"),
            target=self._request.target.decode("latin-1"),
            reason=reason,
        )
        self._proxy._exchange = None
        self._proxy.answer(status)

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self._proxy.transport.unregisterProducer()
            assert self._upstream is not None
            self._upstream.transport.unregisterProducer()

    def _abort(self, reason: str) -> None:
        """The response cannot be completed: cut both connections."""
        self._done()
        self._unregister()
        self._log.info("{service}: {reason}", service=self._proxy.service.config.name, reason=reason)
        if self._upstream is not None:
            self._upstream.transport.abortConnection()
        proxy = self._proxy
        proxy._closing = True
        proxy.transport.abortConnection()

    def _finish(self) -> None:
        self._user_log()
        self._done()
        self._unregister()
        upstream = self._upstream
        assert upstream is not None
        body = self._body
        # The request must have been sent whole too: a real server may answer before it read the body.
        reusable = body is not None and body.reusable and self._request_done
        proxy = self._proxy
        if reusable:
            if proxy.pin_auth or proxy.service.config.send_proxy:
                proxy.keep_own(self._backend, upstream)
            else:
                self._backend.put(upstream)
        else:
            upstream.transport.loseConnection()
        proxy.exchange_done(self._request_done)
