# -*- test-case-name: tests.net.test_explicit -*-
"""
The explicit HTTP proxy service (C{kind = "explicit-http"}): absolute-form
requests forwarded with streamed bodies and pooled keep-alive upstream
connections, and CONNECT tunnels that go through the connection pipeline.

Requests are read with the strict request reader reverse mode uses
(L{txgate.http.framing}: request smuggling is refused on both); origin
servers' responses with L{txgate.http.responses}, leniently, as browsers
read them. This module moves bytes between the two sides and keeps the books
(session counters, access log).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate.accesslog import AccessLog
from txgate.auth import Refused, is_revocation_fetch
from txgate.config import ServiceConfig
from txgate.errors import PeerProtocolError
from txgate.http.framing import BadHead, Framing, RequestBody, RequestHead, response_head
from txgate.http.proxying import (
    RETRYABLE,
    Headers,
    Target,
    connection_auth,
    error_page,
    parse_target,
    reason_phrase,
    request_headers_upstream,
    response_headers_downstream,
)
from txgate.http.responses import BodyReader, ResponseHead
from txgate.interfaces import Checkpoint, Decision
from txgate.net.http1 import ClientConnection, ServerResponse
from txgate.net.idle import IdleWatch
from txgate.net.intercept import has_idle_upstreams
from txgate.net.pipeline import Delegating, Pipeline, PipelineSettings
from txgate.net.transaction import Transaction, identify_client, open_session
from txgate.net.upstream import Connector, Upstream, UpstreamPool, describe_connect_failure
from txgate.pki.authority import MAX_OCSP_BODY
from txgate.session import Address, ClientProtocol, Session

__all__ = ["ExplicitProxyFactory", "ExplicitProxy"]

_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    413: "Content Too Large",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    504: "Gateway Timeout",
}


class ExplicitProxyFactory(Factory):
    """
    Shared state of one explicit service: its settings, the upstream pool,
    the access log.
    """

    noisy = False  # the service logs its own "listening" line

    def __init__(
        self,
        service: ServiceConfig,
        settings: PipelineSettings,
        connector: Connector,
        pool: UpstreamPool,
        access: AccessLog,
    ) -> None:
        self.service = service
        self.settings = settings
        self.reactor = settings.reactor
        self.connector = connector
        self.pool = pool
        self.access = access
        self.sessions: dict[str, Session] = {}

    def buildProtocol(self, addr: Any) -> "ExplicitProxy":
        protocol = ExplicitProxy()
        protocol.factory = self
        return protocol


class ExplicitProxy(ClientConnection, Delegating):
    """
    One client connection to the explicit service.

    @ivar session: this connection's L{Session}.
    """

    _log = Logger()
    factory: ExplicitProxyFactory
    connection_user: str | None = None
    """The user the connection itself authenticated (SOCKS5); requests start from it."""
    pinned = False
    """Whether requests go only to this connection's own server (intercepted TLS), never through the pool."""

    def connectionMade(self) -> None:
        self.session = open_session(self.factory, ClientProtocol.HTTP, self.transport)
        self._identify_client()
        self._identified = False
        self.begin_http()

    def begin_http(self) -> None:
        """Start reading HTTP requests on this connection for C{self.session}."""
        factory = self.factory
        service = factory.service
        self._buffer = bytearray()
        self._scanned = 0
        self._max_head = service.max_header_size
        self._pending = bytearray()
        """Bytes after the head: its body, then pipelined requests, which wait."""
        self._request: RequestHead | None = None
        """The request being read and answered, once its head is whole."""
        self._body: RequestBody | None = None
        self._request_ended = False
        self._framing = None
        self._eof = False
        """Whether the client half-closed."""
        self._exchange: _Exchange | None = None
        self._reading = True
        self._closing = False
        self._cycle_in = self.session.bytes_in
        self._idle: IdleWatch | None = IdleWatch(factory.reactor, service.idle_timeout, self._timed_out)
        self.spare: Upstream | None = None

    def next_upstream(self) -> Deferred[tuple[Upstream, bool]] | None:
        """
        For a C{pinned} connection whose own upstream is gone: another one
        to its server (and whether it was reused), or C{None} when there is
        none to have. The explicit proxy itself pins nothing.
        """
        return None

    def _identify_client(self) -> None:
        """
        Read the client address from the transport. Behind a C{haproxy:}
        listener it is known only once the PROXY header has been read, which
        is before the first bytes reach this protocol.
        """
        self._allowed = identify_client(self.transport, self.session, self.factory.service.clients)

    # -- client bytes -------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not self._identified:
            self._identified = True
            self._identify_client()
        session = self.session
        session.bytes_in += len(data)
        if self._idle is not None:
            self._idle.touch()
        if self._closing:
            return
        self._bytes_in(data)

    def _head_refused(self, error: BadHead) -> None:
        self._bad_request(error)

    def _body_refused(self, status: int, reason: str) -> None:
        self._bad_request(BadHead(status, reason))

    def _body_waits(self) -> None:
        if self._eof:
            self._bad_request(BadHead(400, "the client closed its side before the request body was complete"))

    def readConnectionLost(self) -> None:
        if self._delegate is not None:
            super().readConnectionLost()
            return
        if self._closing:
            return
        self._eof = True
        if self._request is None:
            if self._buffer.strip(b"\r\n"):
                self._bad_request(BadHead(400, "the client closed its side before the request head was complete"))
            elif self._exchange is None:
                self._closing = True
                self.transport.loseConnection()
        elif self._reading and not self._request_ended:
            self._body_in()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.sessions.pop(self.session.id, None)
        if self._idle is not None:
            self._idle.stop()
        if self._delegate is not None:
            super().connectionLost(reason)
            return
        self._closing = True
        if self._exchange is not None:
            self._exchange.client_lost(reason)

    def pause_reading(self) -> None:
        """
        Take no further request for now. The transport is paused only when
        bytes actually come meanwhile (L{dataReceived}): most exchanges see
        none, and each pause and resume is an C{epoll_ctl}.
        """
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        if self._request is not None:
            self._body_in()
        elif self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self._head_in(data)
        elif self._eof:
            self._closing = True
            self.transport.loseConnection()

    # -- writing to the client ----------------------------------------------

    def _send(self, pieces: list[bytes]) -> None:
        self.session.bytes_out += sum(len(p) for p in pieces)
        self.transport.writeSequence(pieces)

    def error(
        self,
        transaction: Transaction | None,
        status: int,
        reason: str,
        verdict: str = "allow",
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """
        Answer with a short error page, close the connection, and log.

        @param extra_headers: more response headers (a 407's
            C{Proxy-Authenticate}).
        """
        headers, body = error_page(status, reason)
        headers = [*headers, *extra_headers]
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n".encode("ascii")
        head += b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"connection: close\r\n\r\n"
        self.session.bytes_out += len(head) + len(body)
        self.transport.writeSequence([head, body])
        self._closing = True
        self.transport.loseConnection()
        if transaction is None:
            transaction = self._transaction("-", "-")
        transaction.log(status, verdict, reason)

    def target_of(self, request: RequestHead) -> Target:
        """
        Where a request goes: an explicit proxy reads absolute-form targets
        and CONNECT authorities.

        @raise PeerProtocolError: a target this service cannot route.
        """
        return parse_target(request.method, request.target)

    def _transaction(self, method: str, target: str) -> Transaction:
        factory = self.factory
        return Transaction.begin(factory.access, factory.reactor, self.session, method, target, self._cycle_in)

    def _bad_request(self, e: BadHead) -> None:
        status = e.status
        reason = f"malformed HTTP request: {e.reason}"
        if status == 431:
            limit = self.factory.service.max_header_size
            line_end = self._buffer.find(b"\n", 0, limit)
            if line_end < 0:
                status, reason = 414, f"request line longer than {limit} bytes"
            else:
                reason = f"request head larger than {limit} bytes"
        self._log.info(
            "{client}: http protocol error: {reason}", client=str(self.session.client), reason=reason
        )
        self.error(None, status, reason)

    def _timed_out(self, idle: float) -> None:
        self._idle = None
        timeout = self.factory.service.idle_timeout
        reason = f"idle timeout ({timeout:g}s)"
        exchange = self._exchange
        if exchange is not None:
            exchange.timed_out(reason)
        elif self.session.bytes_in > self._cycle_in and self._request is None:
            self.error(None, 408, f"{reason} while reading the request head")
        else:
            self._closing = True
            self.transport.loseConnection()

    # -- requests -----------------------------------------------------------

    def _request_in(self, request: RequestHead) -> None:
        method = request.method.decode("ascii", "replace")
        raw_target = request.target.decode("ascii", "replace")
        transaction = self._transaction(method, raw_target)
        try:
            target = self.target_of(request)
        except PeerProtocolError as e:
            self._log.info("{client}: http protocol error: {reason}", client=str(self.session.client), reason=e.reason)
            self.error(transaction, e.status_hint, e.reason)
            return
        transaction.target = target.url()
        authority = self.factory.settings.authority
        if authority is not None and target.scheme == "http" and authority.is_crl_host(target.host, target.port):
            # txgate's own CRL and OCSP: for every client, never behind
            # authentication or policy (clients abort handshakes without them).
            self._exchange = _AuthorityExchange(self, request, target, transaction, authority)  # type: ignore[assignment]
            return
        if not self._allowed:
            self._log.info(
                "{client}: denied: client not allowed by service {service}",
                client=str(self.session.client),
                service=self.session.service,
            )
            self.error(transaction, 403, "client not allowed", "deny")
            return
        facts = target.facts()
        facts["method"] = method
        facts.update(self.factory.settings.facts_for(target.host))
        # Basic credentials come with each request: a connection a
        # downstream proxy shares among its users carries no one's identity
        # from one request to the next.
        self.session.user = self.connection_user
        decision = self.factory.settings.policy.decide(Checkpoint.REQUEST, self.session, facts)
        if decision.properties.get("authenticate"):
            authenticated = self._authenticate(request, target, transaction, facts, decision)
            if authenticated is None:
                return
            decision = authenticated
        transaction.quiet = decision.properties.get("access_log") is False
        if not decision.allow:
            self.error(transaction, 403, decision.reason or "denied by policy", "deny")
            return
        if request.method == b"CONNECT":
            self._connect(request, target, transaction, decision)
            return
        self._exchange = _Exchange(self, request, target, transaction)
        self._exchange.start()

    def _authenticate(
        self,
        request: RequestHead,
        target: Target,
        transaction: Transaction,
        facts: Mapping[str, object],
        decision: Decision,
    ) -> Decision | None:
        """
        Policy asks for credentials of the realm C{decision} names: check the
        request's C{Proxy-Authorization}, then ask policy again knowing the
        user. CRL, CA-issuer and OCSP fetches are never challenged (see
        L{txgate.auth.exempt}): they keep C{decision}.

        @return: the decision to apply, or C{None} when the request was
            answered (407 challenge, or 403 for a realm not configured).
        """
        if is_revocation_fetch(request.method, target, request.headers):
            return decision
        name = str(decision.properties["authenticate"])
        realm = self.factory.settings.realms.get(name)
        if realm is None:
            # Loading refuses a policy naming an unknown realm; fail closed
            # should one get through.
            self._log.error("policy names authentication realm {realm}, which is not configured", realm=name)
            self.error(transaction, 403, f"authentication realm {name} is not configured", "deny")
            return None
        values = [v for n, v in request.headers if n == b"proxy-authorization"]
        outcome = realm.authenticate(values, self.factory.reactor.seconds())
        if isinstance(outcome, Refused):
            self.error(transaction, 407, outcome.reason, "deny", [(b"proxy-authenticate", realm.challenge)])
            return None
        self.session.user = outcome.user
        return self.factory.settings.policy.decide(
            Checkpoint.REQUEST, self.session, {**facts, "user": outcome.user, "authenticated": True}
        )

    def _connect(self, request: RequestHead, target: Target, transaction: Transaction, decision: Decision) -> None:
        # What the client sends next waits for the upstream.
        if has_idle_upstreams(self.factory.settings.authority, target.host, target.port):
            # Interception keeps verified connections to this server: the
            # client (most likely its TLS again) is answered at once, and a
            # connection is opened only if the stream needs one after all.
            self._tunnel(None, target, transaction, decision, _ConnectLater(self.factory.connector, target.host, target.port))
            return
        self.pause_reading()
        d = self.factory.connector.connect(target.host, target.port)
        d.addCallbacks(self._tunnel, self._connect_failed, (target, transaction, decision), None, (target, transaction))

    def _connect_failed(self, failure: Failure, target: Target, transaction: Transaction) -> None:
        if self._closing:
            return
        status, reason = describe_connect_failure(failure, target.host, target.port)
        self.error(transaction, status, reason)

    def _tunnel(
        self,
        upstream: Upstream | None,
        target: Target,
        transaction: Transaction,
        decision: Decision,
        later: "_ConnectLater | None" = None,
    ) -> None:
        """Answer the CONNECT and hand the stream to a pipeline, with C{upstream} or what opens it C{later}."""
        if self._closing:
            if upstream is not None:
                upstream.transport.loseConnection()
            return
        transaction.upstream = "new"
        self._send([response_head(200, b"Connection established", [])])
        replay = bytes(self._pending)
        # The stream is the pipeline's now: this connection's HTTP state is
        # never read again, and an idle tunnel need not keep it.
        self._request = self._framing = None
        self._buffer, self._pending = bytearray(), bytearray()
        session = self.session
        session.destination = Address(target.host, target.port)
        if self._idle is not None:
            self._idle.stop()
            self._idle = None
        self.transport.resumeProducing()

        def finished(reason: str) -> None:
            if later is not None and not later.opened:
                transaction.upstream = "reused"  # the stream went over an idle intercepted connection, or nowhere
            if pipeline.denied:
                transaction.log(200, "deny", reason)
            elif not pipeline.quiet:
                transaction.log(200, "allow", reason)

        pipeline = Pipeline(self.factory.settings, session, upstream, self, finished, decision, source=later)
        # Bytes sent along with the CONNECT were counted when read; whoever
        # carries the stream counts them again as they are replayed.
        session.bytes_in -= len(replay)
        self.hand_over(pipeline, replay)

    def exchange_done(self, reusable: bool) -> None:
        """
        The current exchange is over: read the next request, or close.
        """
        self._exchange = None
        if self._closing:
            return
        request, framing = self._request, self._framing
        if (
            reusable
            and self._request_ended
            and request is not None
            and request.keep_alive
            and framing is not None
            and not framing.close
        ):
            self._request = self._framing = None
            self._cycle_in = self.session.bytes_in
            self.resume_reading()
        else:
            self._closing = True
            self.transport.loseConnection()


@attrs.define
class _ConnectLater:
    """The connection for a CONNECT answered before connecting: opened when the stream needs it."""

    connector: Connector
    host: str
    port: int
    opened: bool = False

    def get(self) -> Deferred[tuple[Upstream, bool]]:
        self.opened = True
        return self.connector.connect(self.host, self.port).addCallback(lambda upstream: (upstream, False))

    def put(self, upstream: Upstream) -> None:
        upstream.transport.loseConnection()


class _AuthorityExchange:
    """A request for C{crl_host}, answered by the L{Authority} itself."""

    def __init__(self, proxy: ExplicitProxy, request: RequestHead, target: Target, transaction: Transaction, authority: Any) -> None:
        self._proxy = proxy
        self._method = request.method.decode("ascii", "replace")
        self._path = target.path.decode("ascii", "replace")
        self._transaction = transaction
        self._authority = authority
        self._body = bytearray()
        self._too_big = False
        transaction.upstream = "-"

    def client_data(self, data: bytes) -> None:
        if len(self._body) + len(data) > MAX_OCSP_BODY:
            self._too_big = True
        elif not self._too_big:
            self._body += data

    def client_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        proxy = self._proxy
        if self._too_big:
            proxy.error(self._transaction, 413, f"request body larger than {MAX_OCSP_BODY} bytes")
            return
        answer = self._authority.http_answer(self._method, self._path, bytes(self._body))
        proxy.send_response(answer.status, reason_phrase(answer.status), answer.headers())
        proxy.send_data(answer.body)  # nothing for HEAD: the framing knows
        proxy.send_end([])
        self._transaction.log(answer.status, "allow")
        proxy.exchange_done(True)

    def client_lost(self, reason: Failure | None) -> None:
        self._transaction.log(None, "allow", "client closed the connection before the request was complete")

    def timed_out(self, reason: str) -> None:
        self._proxy.error(self._transaction, 408, f"{reason} while reading the request body")


class _Exchange(ServerResponse):
    """
    One request forwarded upstream and its response forwarded back, bodies
    streamed with each side the other's producer.
    """

    _log = Logger()
    lenient = True  # origin servers are read as browsers read them

    def __init__(self, proxy: ExplicitProxy, request: RequestHead, target: Target, transaction: Transaction) -> None:
        self._proxy = proxy
        self._request = request
        self._target = target
        self._transaction = transaction
        self._upstream: Upstream | None = None
        self._reused = False
        self._retried = False
        self._request_done = False
        self._response_started = False
        self._upstream_eof = False
        self._finished = False
        self._registered = False
        self._response_headers: Headers = []
        self._framing: Framing | None = None
        """How the request is framed upstream."""
        self._inbox = bytearray()
        """Response bytes until a whole head is here."""
        self._body: BodyReader | None = None
        """The final response's body, once its head is read."""

    def start(self) -> None:
        proxy = self._proxy
        proxy.pause_reading()
        target = self._target
        spare = proxy.spare
        if proxy.pinned:
            # Intercepted TLS: every request goes to the server the client's
            # handshake was emulated for, over the connection kept for this
            # client, or one its interceptor hands out.
            proxy.spare = None
            if spare is not None and spare.lost is None and not spare.eof:
                d: Deferred[tuple[Upstream, bool]] = succeed((spare, spare.exchanges > 0))
            else:
                if spare is not None:
                    spare.transport.loseConnection()
                fresh = proxy.next_upstream()
                if fresh is None:
                    self._finished = True
                    proxy.error(self._transaction, 502, f"upstream {target.authority} closed the intercepted connection")
                    return
                d = fresh
        elif spare is not None and target.scheme == "http" and spare.lost is None:
            # The connection opened before the stream was known to be HTTP
            # serves its first request.
            proxy.spare = None
            d = succeed((spare, False))
        else:
            d = proxy.factory.pool.get(target.scheme or "http", target.connect_host, target.port)
        d.addCallbacks(self._connected, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        if self._finished:
            return
        self._finished = True
        status, reason = describe_connect_failure(failure, self._target.host, self._target.port)
        self._proxy.error(self._transaction, status, reason)

    def _connected(self, result: tuple[Upstream, bool]) -> None:
        upstream, reused = result
        if self._finished:
            upstream.transport.loseConnection()
            return
        self._upstream = upstream
        self._reused = reused
        self._transaction.upstream = "reused" if reused else "new"
        request = self._request
        headers = request_headers_upstream(request.headers, self._target, request.chunked)
        self._framing = framing = Framing.request(request.method, self._target.path, headers, request.chunked)
        self._inbox.clear()
        self._body = None
        self._upstream_eof = False
        self._write_upstream([framing.head])
        client, server = self._proxy.transport, upstream.transport
        server.registerProducer(client, True)
        client.registerProducer(server, True)
        self._registered = True
        upstream.attach(self)
        if self._request_done:
            self._end_upstream([])  # a retry: the request had no body
        elif not self._finished:
            self._proxy.resume_reading()

    def _write_upstream(self, pieces: list[bytes]) -> None:
        assert self._upstream is not None
        if pieces:
            self._upstream.transport.writeSequence(pieces)

    def _end_upstream(self, trailers: Headers) -> None:
        """The request's end (a chunked body's last chunk and trailers; nothing for a body of known length)."""
        assert self._framing is not None
        end = self._framing.end(trailers)
        if end:
            self._write_upstream([end])

    # -- client side ----------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        assert self._framing is not None
        self._write_upstream(self._framing.data(data))

    def client_end(self, trailers: Headers) -> None:
        self._request_done = True
        self._proxy.pause_reading()
        if self._upstream is not None:
            self._end_upstream(trailers)

    def client_lost(self, reason: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._upstream is not None:
            self._upstream.transport.loseConnection()
        self._transaction.log(
            self._status, "allow", "client closed the connection before the response was complete"
        )

    def timed_out(self, reason: str) -> None:
        if self._finished:
            return
        if not self._response_started:
            self._finished = True
            if self._upstream is not None:
                self._upstream.transport.loseConnection()
            if self._request_done:
                self._proxy.error(self._transaction, 504, f"{reason} waiting for the upstream response")
            else:
                self._proxy.error(self._transaction, 408, f"{reason} while reading the request body")
            return
        self._abort(reason)

    # -- upstream side --------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        idle = self._proxy._idle
        if idle is not None:
            idle.touch()
        if self._finished:
            return
        if self._body is None:
            self._inbox += data
            self._heads()
        else:
            self._body_in(data)

    def upstream_eof(self) -> None:
        self._read_eof()
        if not self._finished:
            self._upstream_closed(None)

    def upstream_lost(self, reason: Failure) -> None:
        self._read_eof()
        if not self._finished:
            self._upstream_closed(reason)

    def _upstream_closed(self, reason: Failure | None) -> None:
        """
        The server closed before the response was complete: retry, answer
        502, or cut the client off mid-body.
        """
        upstream = self._upstream
        assert upstream is not None
        self._unregister()
        upstream.transport.loseConnection()
        detail = reason.getErrorMessage() if reason is not None else "connection closed"
        proxy = self._proxy
        if (
            not self._response_started
            and self._reused
            and not self._retried
            and not self._request.has_body
            and self._request.method in RETRYABLE
        ):
            # A pooled connection the server closed while idle: try once more
            # on a fresh one, as clients do for idempotent requests.
            target = self._target
            if not proxy.pinned:
                d = proxy.factory.connector.connect(target.connect_host, target.port, tls=target.scheme == "https")
                d.addCallback(lambda fresh: (fresh, False))
            else:
                d = proxy.next_upstream()
            if d is not None:
                self._retried = True
                self._upstream = None
                upstream.detach()  # its last events are not the next connection's
                d.addCallbacks(self._connected, self._connect_failed)
                return
        if not self._response_started:
            self._finished = True
            self._proxy.error(
                self._transaction,
                502,
                f"upstream {self._target.authority} closed the connection before responding ({detail})",
            )
            return
        self._abort(f"upstream {self._target.authority} closed the connection mid-body: {detail}")

    def _switching(self, head: ResponseHead, rest: bytes) -> None:
        self._bad_response("upstream switched protocols without being asked", prefix=False)

    def _respond(self, head: ResponseHead) -> None:
        self._response_headers = head.headers
        self._proxy.send_response(head.status, head.reason, response_headers_downstream(head.headers))

    def _bad_response(self, reason: str, prefix: bool = True) -> None:
        """A response that cannot be forwarded: 502 before it began, both connections cut after."""
        if prefix:
            reason = f"malformed HTTP response from upstream: {reason}"
        if self._response_started:
            self._abort(reason)
            return
        self._finished = True
        self._unregister()
        assert self._upstream is not None
        self._upstream.transport.loseConnection()
        self._proxy.error(self._transaction, 502, reason)

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self._proxy.transport.unregisterProducer()
            assert self._upstream is not None
            self._upstream.transport.unregisterProducer()

    def _abort(self, reason: str) -> None:
        """The response cannot be completed: cut both connections."""
        self._finished = True
        self._unregister()
        self._log.info(
            "session {session}: {reason}", session=self._proxy.session.id, reason=reason
        )
        if self._upstream is not None:
            self._upstream.transport.abortConnection()
        self._proxy._closing = True
        self._proxy.transport.abortConnection()
        self._transaction.log(self._status, "allow", reason)

    def _finish(self) -> None:
        self._finished = True
        self._unregister()
        upstream = self._upstream
        body = self._body
        assert upstream is not None and body is not None
        upstream.exchanges += 1
        target = self._target
        self._transaction.log(self._status, "allow")
        # Reused only once both messages ended where their framing said,
        # and the server keeps the connection (BodyReader.reusable).
        reusable_upstream = self._request_done and body.reusable
        if self._proxy.pinned:
            if reusable_upstream:
                authenticating = connection_auth(self._request.headers, self._status, self._response_headers)
                self._proxy.keep_upstream(upstream, authenticating)
            else:
                upstream.transport.loseConnection()
            self._proxy.exchange_done(self._request_done and reusable_upstream)
            return
        if reusable_upstream:
            self._proxy.factory.pool.put(target.scheme or "http", target.connect_host, target.port, upstream)
        else:
            upstream.transport.loseConnection()
        self._proxy.exchange_done(self._request_done)
