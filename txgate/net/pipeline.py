# -*- test-case-name: tests.net.test_pipeline -*-
"""
The connection pipeline after txgate knows where a stream goes: peek at the
client's first bytes, run the detectors, ask policy, hand the stream (with
every byte peeked) to the handoff that carries its protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.detection import UNKNOWN, detect
from txgate.errors import PeerProtocolError
from txgate.interfaces import NEED_MORE, Checkpoint, Decision, Detected, HandoffContext, IPolicy
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
    ) -> None:
        """
        @param decision: policy's decision on the request that opened the
            stream (a CONNECT); its C{detect_protocol} and C{tunnel_on_error}
            override the service's.
        """
        self._settings = settings
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
        self._owner = owner
        self._finished = finished
        self._buffer = b""
        self._timer: Any = None
        self._decided = False
        self._client_eof = False

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
        self._upstream.notify = self._server_spoke
        self._timer = self._settings.reactor.callLater(PEEK_TIMEOUT, self._peek_timed_out)
        if self._upstream._held or self._upstream.eof or self._upstream.lost:
            self._server_spoke()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        verdict = detect(self._settings.registry.detectors, self._buffer)
        if verdict is not NEED_MORE:
            self._decide(verdict)  # type: ignore[arg-type]

    def readConnectionLost(self) -> None:
        self._client_eof = True
        self._decide(detect(self._settings.registry.detectors, self._buffer, final=True))  # type: ignore[arg-type]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._decided:
            self._decided = True
            self._cancel_timer()
            self._upstream.transport.loseConnection()
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

    def _decide(self, verdict: Detected) -> None:
        if self._decided:
            return
        self._decided = True
        self._cancel_timer()
        self._upstream.notify = None
        session = self._session
        settings = self._settings
        if verdict.protocol != UNKNOWN.protocol and not self._detects(verdict.protocol):
            verdict = UNKNOWN
        handoff = settings.registry.handoff_for(verdict.protocol)
        session.stack.append(verdict.protocol)
        session.client_protocol = verdict.protocol
        session.tunneled = bool(handoff.tunneled)
        for key in ("sni", "alpn"):
            if key in verdict.facts:
                setattr(session, key, verdict.facts[key])
        facts: dict[str, object] = dict(verdict.facts)
        if session.destination is not None:
            facts.setdefault("url.host", session.destination.host)
            facts.setdefault("url.port", session.destination.port)
            facts.update(settings.facts_for(session.destination.host))
        decision = settings.policy.decide(Checkpoint.CONNECTION, session, facts)
        if decision.properties.get("access_log") is False:
            self.quiet = True
        if not decision.allow:
            self.denied = True
            self._log.info(
                "session {session} denied: {protocol}: {reason}",
                session=session.id,
                protocol=verdict.protocol,
                reason=decision.reason,
            )
            answer = handoff.refusal(self._buffer, decision.reason)
            if answer:
                self.transport.write(answer)
            self.transport.loseConnection()
            self._upstream.transport.loseConnection()
            self._finished(f"denied: {decision.reason}")
            return
        self._start(handoff, self._buffer)

    def _start(self, handoff: Any, replay: bytes) -> None:
        context = HandoffContext(
            session=self._session,
            reactor=self._settings.reactor,
            upstream=self._upstream,
            idle_timeout=self._settings.idle_timeout,
            protocol_error=self._protocol_error,
            finished=self._finished,
            service=getattr(self._owner, "factory", None),
        )
        protocol = handoff.build(context)
        self._owner.hand_over(protocol, replay)
        if self._client_eof and IHalfCloseableProtocol.providedBy(protocol):
            protocol.readConnectionLost()

    def _protocol_error(self, error: Exception, received: bytes) -> None:
        """
        A handoff found the stream is not what it speaks: tunnel it, replaying
        what it received, or close it, as the service says.
        """
        session = self._session
        protocol = error.protocol if isinstance(error, PeerProtocolError) else session.client_protocol
        for transport in (self.transport, self._upstream.transport):
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
        self._start(self._settings.registry.handoff_for("tcp"), received)
