# -*- test-case-name: tests.net.test_pump -*-
"""
The byte tunnel: the handoff for streams txgate does not parse.

Each side is the other's streaming producer, as in
L{twisted.protocols.portforward}, so a slow reader on one side stops reads on
the other and memory stays bounded; a half-close on one side is passed on as
a half-close on the other; the connection ends when both directions have.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.interfaces import HandoffContext, IHandoff
from txgate.net.idle import IdleWatch

__all__ = ["Tunnel", "TunnelHandoff"]


@implementer(IHalfCloseableProtocol)
class Tunnel(Protocol):
    """
    Moves bytes both ways between the client transport and an attached
    upstream, counting them on the session.
    """

    _log = Logger()

    def __init__(self, context: HandoffContext) -> None:
        self._context = context
        self._session = context.session
        self._upstream = context.upstream
        self._seconds = context.reactor.seconds
        self._client_eof = False
        self._upstream_eof = False
        self._done = False
        self._idle: IdleWatch | None = None

    def connectionMade(self) -> None:
        client, upstream = self.transport, self._upstream.transport
        upstream.registerProducer(client, True)
        client.registerProducer(upstream, True)
        self._idle = IdleWatch(self._context.reactor, self._context.idle_timeout, self._timed_out)
        self._upstream.attach(self)

    # client -> upstream
    def dataReceived(self, data: bytes) -> None:
        session = self._session
        session.bytes_in += len(data)
        session.last_active = self._idle.last = self._seconds()  # type: ignore[union-attr]
        self._upstream.transport.write(data)

    def readConnectionLost(self) -> None:
        self._client_eof = True
        if self._upstream_eof:
            self._finish("closed by both sides")
        else:
            self._upstream.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self._done:
            self._upstream.transport.loseConnection()
            self._finish("closed by client" if self._client_eof or self._upstream_eof else _describe(reason, "client"))

    # upstream -> client
    def upstream_data(self, data: bytes) -> None:
        session = self._session
        session.bytes_out += len(data)
        session.last_active = self._idle.last = self._seconds()  # type: ignore[union-attr]
        self.transport.write(data)

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self._client_eof:
            self._finish("closed by both sides")
        else:
            self.transport.loseWriteConnection()

    def upstream_lost(self, reason: Failure) -> None:
        if not self._done:
            self.transport.loseConnection()
            self._finish("closed by server" if self._upstream_eof or self._client_eof else _describe(reason, "server"))

    def _timed_out(self, idle: float) -> None:
        timeout = self._context.idle_timeout
        self._log.info("tunnel {session} idle for {idle:.0f}s: closing", session=self._session.id, idle=idle)
        self._finish(f"idle timeout ({timeout:g}s)")
        self.transport.loseConnection()
        self._upstream.transport.loseConnection()

    def _finish(self, reason: str) -> None:
        if self._done:
            return
        self._done = True
        if self._idle is not None:
            self._idle.stop()
        if self._client_eof and self._upstream_eof:
            self.transport.loseConnection()
            self._upstream.transport.loseConnection()
        self._context.finished(reason)


def _describe(reason: Failure | None, side: str) -> str:
    if reason is None:
        return f"closed by {side}"
    from twisted.internet import error

    if reason.check(error.ConnectionDone):
        return f"closed by {side}"
    return f"{side} connection lost: {reason.getErrorMessage()}"


@implementer(IPlugin, IHandoff)
class TunnelHandoff:
    """
    The handoff for anything no other handoff carries: C{tcp} (undetected or
    detection off), and any detected protocol without a handler.
    """

    name = "tunnel"
    protocols = frozenset({"tcp"})
    tunneled = True

    def build(self, context: HandoffContext) -> Tunnel:
        return Tunnel(context)

    def refusal(self, buffered: bytes, reason: str) -> bytes:
        """A byte stream has no way to say no: the connection is closed."""
        return b""
