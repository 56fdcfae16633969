# -*- test-case-name: tests.net.test_pipeline -*-
"""
The connection pipeline after txgate knows where a stream goes: peek at the
client's first bytes, run the detectors, ask policy, hand the stream (with
every byte peeked) to the handoff that carries its protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import attrs
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate import metrics
from txgate.acl import parse_address
from txgate.detection import UNKNOWN, detect
from txgate.errors import PeerProtocolError
from txgate.http.proxying import error_response
from txgate.interception import InnerName, Mode, describe_tls_failure, inner_name
from txgate.interfaces import NEED_MORE, Checkpoint, Decision, Detected, HandoffContext, InterceptRequest, IPolicy
from txgate.net.upstream import describe_connect_failure
from txgate.plugins import Registry
from txgate.policy.categories import Categories
from txgate.session import Session

if TYPE_CHECKING:  # pragma: no cover
    from txgate.auth import Realm

__all__ = ["Delegating", "Pipeline", "PipelineSettings", "PEEK_TIMEOUT"]

PEEK_TIMEOUT = 5.0
"""
Seconds detection waits for a client that sent an incomplete greeting (or
nothing, while the server is silent too) before calling the stream C{tcp}. A
server that speaks first ends detection at once.
"""


@implementer(IHalfCloseableProtocol)
class Delegating(Protocol):
    """
    A connection's protocol that can hand the rest of its stream to another
    protocol. After L{hand_over}, the transport's calls reach the new
    protocol with no extra hop per read.
    """

    _delegate: Any = None

    def hand_over(self, protocol: Any, replay: bytes = b"") -> None:
        """
        Make C{protocol} the receiver of this connection and replay C{replay}
        (bytes already read) into it.
        """
        self._delegate = protocol
        self.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
        protocol.makeConnection(self.transport)
        if replay:
            # Not protocol.dataReceived: its connectionMade may already have
            # handed the stream on (detection off), and the bytes must reach
            # whoever receives the stream now.
            self.dataReceived(replay)

    def readConnectionLost(self) -> None:
        delegate = self._delegate
        if delegate is not None and IHalfCloseableProtocol.providedBy(delegate):
            delegate.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        delegate = self._delegate
        if delegate is not None and IHalfCloseableProtocol.providedBy(delegate):
            delegate.writeConnectionLost()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._delegate is not None:
            self._delegate.connectionLost(reason)


@attrs.frozen
class PipelineSettings:
    """
    What a service says about detection and errors, with the plugins,
    policy, realms and category lists in force, and the SSL interception
    state shared by every service.

    @ivar realms: the authentication realms policy may name in
        C{authenticate(NAME)}, by name (L{txgate.auth.load_realms}).
    """

    registry: Registry
    policy: IPolicy
    reactor: Any
    detect_protocol: bool
    tunnel_on_protocol_error: bool
    idle_timeout: float
    realms: Mapping[str, Realm] = attrs.field(factory=dict)
    categories: Categories = attrs.field(factory=lambda: Categories.from_lists({}))
    ssl: Any = None
    """The C{[ssl]} settings (L{txgate.config.SSLConfig}); C{None}: no interception."""
    authority: Any = None
    """The L{txgate.pki.authority.Authority} that mints, and answers for, emulated certificates."""

    def facts_for(self, host: str | None) -> dict[str, object]:
        """The C{category} fact of a destination host (a name or an address)."""
        if not host:
            return {}
        return {"category": self.categories.lookup(host, None)}


@implementer(IHalfCloseableProtocol)
class Pipeline(Protocol):
    """
    Detection for one stream whose upstream is already connected.

    @ivar _finished: called once with the reason when the stream is over.
    """

    _log = Logger()

    def __init__(
        self,
        settings: PipelineSettings,
        session: Session,
        upstream: Any,
        owner: Delegating,
        finished: Callable[[str], None],
        decision: Decision | None = None,
        inside: Mode | None = None,
        service: Any = None,
        source: Any = None,
    ) -> None:
        """
        @param upstream: the connection to the server, or C{None} when
            C{source} opens it once the stream needs it.
        @param decision: policy's decision on the request that opened the
            stream (a CONNECT); its C{detect_protocol} and C{tunnel_on_error}
            override the service's.
        @param inside: for the decrypted stream of an intercepted TLS
            connection, the C{ssl.forward_proxy} mode that intercepted it.
        @param service: the service's shared state for the handoffs; by
            default C{owner.factory}.
        @param source: with no C{upstream}, what gives one: C{get()} fires
            with C{(upstream, reused)}, C{put(upstream)} takes back one not
            needed after all.
        """
        self._settings = settings
        self._inside = inside
        self._service = service if service is not None else getattr(owner, "factory", None)
        self._decision = decision
        properties = decision.properties if decision is not None else {}
        self._detect: Any = properties.get("detect_protocol")
        tunnel_on_error = properties.get("tunnel_on_error")
        self._tunnel_on_error = (
            settings.tunnel_on_protocol_error if tunnel_on_error is None else bool(tunnel_on_error)
        )
        self.quiet = properties.get("access_log") is False
        self.denied = False
        self._session = session
        self._upstream = upstream
        self._lent_to: Any = source if upstream is None else None
        """What holds or opens the upstream while there is none here (see L{connectionMade}), or C{None}."""
        self._owner = owner
        self._finished = finished
        self._buffer = b""
        self._timer: Any = None
        self._decided = False
        self._client_eof = False
        self._intercepting = False

    def _detects(self, protocol: str) -> bool:
        """Whether detection of C{protocol} is on, by policy or else by the service."""
        if self._detect is None:
            return self._settings.detect_protocol
        return bool(self._detect.enabled(protocol, self._settings.detect_protocol))

    def connectionMade(self) -> None:
        default = self._settings.detect_protocol
        if not (default if self._detect is None else self._detect.any_enabled(default)):
            self._decide(UNKNOWN)
            return
        self._timer = self._settings.reactor.callLater(PEEK_TIMEOUT, self._peek_timed_out)
        if self._upstream is None:
            return  # opened once the stream needs it
        source = self._upstream.source
        if source is not None and source.lend(self._upstream):
            # Decrypted HTTP whose client has not spoken yet: the upstream
            # waits among the idle ones (another client may use it) and one
            # is fetched back once the stream is known.
            self._upstream, self._lent_to = None, source
            return
        self._upstream.notify = self._server_spoke
        if self._upstream._held or self._upstream.eof or self._upstream.lost:
            self._server_spoke()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if self._decided:
            # Intercepting, or fetching an upstream: held for whoever takes
            # the stream, and no more read until then.
            self._pause()
            return
        verdict = detect(self._settings.registry.detectors, self._buffer)
        if verdict is not NEED_MORE:
            self._decide(verdict)  # type: ignore[arg-type]

    def readConnectionLost(self) -> None:
        self._client_eof = True
        if self._decided:
            return
        self._decide(detect(self._settings.registry.detectors, self._buffer, final=True))  # type: ignore[arg-type]

    def writeConnectionLost(self) -> None:
        pass

    _paused = False

    def _pause(self) -> None:
        """Stop reading, only once bytes come while the stream waits: most clients send none, and a pause costs an C{epoll_ctl}."""
        if not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._intercepting:
            self._intercepting = False
            if self._upstream is not None:
                self._upstream.transport.loseConnection()
            self._finished("client closed while the upstream TLS handshake was in progress")
            return
        if self._decided and self._lent_to is not None:
            self._lent_to = None
            self._finished("client closed while an upstream connection was being fetched")
            return
        if not self._decided:
            self._decided = True
            self._lent_to = None
            self._cancel_timer()
            if self._upstream is not None:
                self._upstream.transport.loseConnection()
            if self._inside is not None and reason is not None and reason.check(SSL.Error):
                # TLS 1.3: the client checks the emulated certificate after
                # txgate's side of the handshake is done.
                metrics.tls_handshake_failed("client", reason)
                self._finished(f"client TLS handshake failed: {describe_tls_failure(reason)}")
            else:
                self._finished("client closed before its protocol was detected")

    def _server_spoke(self) -> None:
        if not self._decided:
            self._decide(detect(self._settings.registry.detectors, self._buffer, final=True))  # type: ignore[arg-type]

    def _peek_timed_out(self) -> None:
        self._timer = None
        if not self._decided:
            self._decide(detect(self._settings.registry.detectors, self._buffer, final=True))  # type: ignore[arg-type]

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _name_of(self, protocol: str) -> InnerName:
        """What a detected protocol is called here (inside intercepted TLS, HTTP is C{https}...)."""
        return inner_name(protocol) if self._inside is not None else InnerName(protocol, protocol)

    def _decide(self, verdict: Detected) -> None:
        if self._decided:
            return
        self._decided = True
        self._cancel_timer()
        if self._upstream is not None:
            self._upstream.notify = None
        session = self._session
        settings = self._settings
        inside = self._inside
        name = self._name_of(verdict.protocol)
        if verdict.protocol != UNKNOWN.protocol and not self._detects(name.policy):
            verdict = UNKNOWN
            name = self._name_of(verdict.protocol)
        if inside is Mode.HTTPS and verdict.protocol != "http":
            session.stack.append(verdict.protocol)
            found = "no protocol detected" if verdict is UNKNOWN else f"{verdict.protocol} found"
            self._protocol_error(
                PeerProtocolError("https", f"ssl.forward_proxy(https) carries only HTTP inside TLS; {found}"),
                self._buffer,
            )
            return
        handoff = settings.registry.handoff_for(verdict.protocol)
        session.stack.append(name.carried)
        session.client_protocol = name.policy
        session.tunneled = bool(handoff.tunneled)
        for key in ("sni", "alpn"):
            if key in verdict.facts and inside is None:
                setattr(session, key, verdict.facts[key])
        facts: dict[str, object] = dict(verdict.facts)
        if session.destination is not None:
            facts.setdefault("url.host", session.destination.host)
            facts.setdefault("url.port", session.destination.port)
            facts.update(settings.facts_for(session.destination.host))
        decision = settings.policy.decide(Checkpoint.CONNECTION, session, facts)
        session.client_protocol = name.carried
        metrics.count_protocol(name.carried)
        if decision.properties.get("access_log") is False:
            self.quiet = True
        if not decision.allow:
            self._refuse(handoff, verdict.protocol, decision.reason)
            return
        if inside is None and verdict.protocol == "ssl" and self._maybe_intercept(facts):
            return
        self._start(handoff, self._buffer)

    def _refuse(self, handoff: Any, protocol: str, reason: str) -> None:
        self.denied = True
        self._log.info(
            "session {session} denied: {protocol}: {reason}",
            session=self._session.id,
            protocol=protocol,
            reason=reason,
        )
        answer = handoff.refusal(self._buffer, reason)
        if answer:
            self.transport.write(answer)
        self.transport.loseConnection()
        self._lent_to = None
        if self._upstream is not None:
            self._upstream.transport.loseConnection()
        self._finished(f"denied: {reason}")

    # -- SSL interception --------------------------------------------------------

    def _maybe_intercept(self, facts: dict[str, object]) -> bool:
        """
        Ask policy at the C{ssl-intercept} checkpoint about a detected
        ClientHello; start interception when it says C{https} or C{yes}.

        @return: whether the stream is taken care of (intercepting, or
            refused by the C{<ssl>} layer).
        """
        settings = self._settings
        interceptor = settings.registry.interceptor_for("ssl")
        if interceptor is None or settings.authority is None:
            return False
        session = self._session
        facts = dict(facts)
        destination = session.destination
        if session.sni and (destination is None or parse_address(destination.host) is not None):
            # A transparent connection knows only the address: the name the
            # client asked for is the one policy means.
            facts["url.host"] = session.sni
            facts.update(settings.facts_for(session.sni))
        decision = settings.policy.decide(Checkpoint.SSL_INTERCEPT, session, facts)
        if not decision.allow:
            self._refuse(settings.registry.handoff_for("ssl"), "ssl", decision.reason)
            return True
        mode = Mode(decision.properties.get("ssl.forward_proxy", "no"))
        if mode is Mode.NO:
            return False
        self._intercepting = True
        source = self._lent_to
        request = InterceptRequest(
            context=self._context(),
            settings=settings,
            hello=self._buffer,
            mode=mode,
            decision=decision,
            inner=lambda owner, upstream: self._inner(owner, upstream, mode, decision),
            connect=(lambda: source.get().addCallback(self._connected_for_interception)) if source is not None else None,
        )
        d = interceptor.intercept(request)  # type: ignore[attr-defined]
        d.addCallbacks(self._intercepted, self._not_intercepted)
        return True

    def _inner(self, owner: Delegating, upstream: Any, mode: Mode, decision: Decision) -> Pipeline:
        """The pipeline of the decrypted stream: detection again, then policy."""
        properties = dict(self._decision.properties) if self._decision is not None else {}
        properties.update({k: v for k, v in decision.properties.items() if v is not None})
        merged = attrs.evolve(decision, properties=properties)

        def finished(reason: str) -> None:
            # The record is the outer stream's: it shows the inner verdict.
            self.denied = self.denied or pipeline.denied
            self.quiet = self.quiet or pipeline.quiet
            self._finished(reason)

        pipeline = Pipeline(
            self._settings, self._session, upstream, owner, finished, merged, inside=mode, service=self._service
        )
        pipeline.quiet = self.quiet
        return pipeline

    def _connected_for_interception(self, got: tuple[Any, bool]) -> Any:
        """The connection opened for an interception: this pipeline's, so a client leaving closes it."""
        upstream = got[0]
        if not self._intercepting:
            upstream.transport.loseConnection()
            raise ConnectionDone("the client left while its upstream connection was being opened")
        self._upstream = upstream
        return upstream

    def _intercepted(self, protocol: Any) -> None:
        if not self._intercepting:
            # The client left meanwhile: connectionLost closed the upstream
            # and wrote the record.
            return
        self._intercepting = False
        self._lent_to = None
        self._resume()
        buffer, self._buffer = self._buffer, b""  # the TLS layer has it now
        self._owner.hand_over(protocol, buffer)

    def _not_intercepted(self, failure: Failure) -> None:
        if not self._intercepting:
            return
        self._intercepting = False
        reason = failure.getErrorMessage()
        self._log.info("session {session}: ssl interception failed: {reason}", session=self._session.id, reason=reason)
        self.transport.loseConnection()
        self._lent_to = None
        if self._upstream is not None:
            self._upstream.transport.loseConnection()
        self._finished(reason)

    def _context(self) -> HandoffContext:
        return HandoffContext(
            session=self._session,
            reactor=self._settings.reactor,
            upstream=self._upstream,
            idle_timeout=self._settings.idle_timeout,
            protocol_error=self._protocol_error,
            finished=self._finished,
            service=self._service,
        )

    def _start(self, handoff: Any, replay: bytes) -> None:
        source = self._lent_to
        if source is not None:
            # The client spoke: fetch an upstream back (the one lent, if no
            # one took it) before the handoff starts; the client waits.
            d = source.get()
            d.addCallbacks(lambda got: self._fetched(source, got[0], handoff), self._not_fetched)
            return
        protocol = handoff.build(self._context())
        self._owner.hand_over(protocol, replay)
        if self._client_eof and IHalfCloseableProtocol.providedBy(protocol):
            protocol.readConnectionLost()

    def _fetched(self, source: Any, upstream: Any, handoff: Any) -> None:
        if self._lent_to is None:
            # The client left meanwhile (connectionLost wrote the record):
            # the connection is still good for someone else.
            source.put(upstream)
            return
        self._lent_to = None
        upstream.detach()  # held until the handoff attaches, as a new one is
        self._upstream = upstream
        self._resume()
        # Every client byte so far, including those read while fetching.
        self._start(handoff, self._buffer)

    def _not_fetched(self, failure: Failure) -> None:
        if self._lent_to is None:
            return
        self._lent_to = None
        destination = self._session.destination
        assert destination is not None  # a source is made only for a known destination
        status, reason = describe_connect_failure(failure, destination.host, destination.port)
        self._log.info("session {session}: no upstream connection: {reason}", session=self._session.id, reason=reason)
        if self._session.client_protocol == "https":
            self.transport.write(error_response(status, reason))
        self.transport.loseConnection()
        self._finished(reason)

    def _protocol_error(self, error: Exception, received: bytes) -> None:
        """
        A handoff found the stream is not what it speaks: tunnel it, replaying
        what it received, or close it, as the service says.
        """
        session = self._session
        protocol = error.protocol if isinstance(error, PeerProtocolError) else session.client_protocol
        for transport in (self.transport, self._upstream.transport if self._upstream is not None else None):
            if getattr(transport, "producer", None) is not None:
                transport.unregisterProducer()
        if not self._tunnel_on_error:
            self._log.info(
                "session {session}: {protocol} protocol error, closing: {error}",
                session=session.id,
                protocol=protocol,
                error=str(error),
            )
            self.transport.loseConnection()
            self._lent_to = None
            if self._upstream is not None:
                self._upstream.transport.loseConnection()
            self._finished(f"{protocol} protocol error: {error}")
            return
        self._log.info(
            "session {session}: {protocol} protocol error, tunneling: {error}",
            session=session.id,
            protocol=protocol,
            error=str(error),
        )
        session.tunneled = True
        if self._inside is not None:
            session.client_protocol = "ssl"  # STunnel: the decrypted bytes, re-encrypted upstream
        self._start(self._settings.registry.handoff_for("tcp"), received)
