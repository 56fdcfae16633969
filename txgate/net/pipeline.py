# -*- test-case-name: tests.net.test_pipeline -*-
"""
The connection pipeline after txgate knows where a stream goes: peek at the
client's first bytes, run the detectors, ask policy, hand the stream (with
every byte peeked) to the handoff that carries its protocol.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.detection import UNKNOWN, detect
from txgate.errors import PeerProtocolError
from txgate.interfaces import NEED_MORE, Checkpoint, Detected, HandoffContext, IPolicy
from txgate.plugins import Registry
from txgate.session import Session

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
            protocol.dataReceived(replay)

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
    What a service says about detection and errors, with the plugins and
    policy in force.
    """

    registry: Registry
    policy: IPolicy
    reactor: Any
    detect_protocol: bool
    tunnel_on_protocol_error: bool
    idle_timeout: float


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
    ) -> None:
        self._settings = settings
        self._session = session
        self._upstream = upstream
        self._owner = owner
        self._finished = finished
        self._buffer = b""
        self._timer: Any = None
        self._decided = False
        self._client_eof = False

    def connectionMade(self) -> None:
        if not self._settings.detect_protocol:
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
        handoff = settings.registry.handoff_for(verdict.protocol)
        session.stack.append(verdict.protocol)
        session.client_protocol = verdict.protocol
        session.tunneled = bool(handoff.tunneled)
        for key in ("sni", "alpn"):
            if key in verdict.facts:
                setattr(session, key, verdict.facts[key])
        decision = settings.policy.decide(Checkpoint.CONNECTION, session, dict(verdict.facts))
        if not decision.allow:
            self._log.info(
                "session {session} denied: {protocol}: {reason}",
                session=session.id,
                protocol=verdict.protocol,
                reason=decision.reason,
            )
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
        if not self._settings.tunnel_on_protocol_error:
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
