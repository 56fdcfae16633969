# -*- test-case-name: tests.net.test_pump -*-
"""
The byte tunnel: the handoff for streams txgate does not parse.

Each side is the other's streaming producer, as in
L{twisted.protocols.portforward}, so a slow reader on one side stops reads on
the other and memory stays bounded; a half-close on one side is passed on as
a half-close on the other; the connection ends when both directions have.

Between two plain TCP connections, a tunnel that has carried L{BULK_AFTER}
bytes moves the rest on the bulk path (L{txgate.net.bulk}): interactive and
idle tunnels keep Twisted's path, bulk ones stop paying Twisted's per-chunk
work.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer, IReactorFDSet
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.interfaces import HandoffContext, IHandoff
from txgate.net import bulk
from txgate.net.idle import IdleWatch

__all__ = ["Tunnel", "TunnelHandoff", "BULK_AFTER"]

BULK_AFTER = 1 << 18
"""Bytes a tunnel carries (either way) before it hands its sockets to the bulk path."""


@implementer(IHalfCloseableProtocol)
class Tunnel(Protocol):
    """
    Moves bytes both ways between the client transport and an attached
    upstream, counting them on the session.
    """

    _log = Logger()

    bulk_path = True
    """Whether bulk bytes may bypass L{dataReceived} and L{upstream_data}; off for subclasses that read them."""

    def __init__(self, context: HandoffContext) -> None:
        self._context = context
        self._session = context.session
        self._upstream = context.upstream
        self._seconds = context.reactor.seconds
        self._client_eof = False
        self._upstream_eof = False
        self._done = False
        self._idle: IdleWatch | None = None
        self._bulk: bulk.BulkPath | None = None
        self._until_bulk: int | None = None
        """Bytes left before trying the bulk path; C{None} when it cannot be used."""
        self._draining: list[Any] = []
        """Transports still sending what Twisted queued before the switch to the bulk path."""

    def connectionMade(self) -> None:
        client, upstream = self.transport, self._upstream.transport
        upstream.registerProducer(client, True)
        client.registerProducer(upstream, True)
        self._idle = IdleWatch(self._context.reactor, self._context.idle_timeout, self._timed_out)
        if (
            self.bulk_path and IReactorFDSet.providedBy(self._context.reactor)
            and bulk.plain_socket(client) and bulk.plain_socket(upstream)
        ):
            self._until_bulk = BULK_AFTER
        self._upstream.attach(self)

    # client -> upstream
    def dataReceived(self, data: bytes) -> None:
        self._moved_in(len(data))
        if self._until_bulk is not None and self._to_bulk(data, client_side=True):
            return
        self._upstream.transport.write(data)
        if self._draining:
            self._wait_for_drain(self._upstream.transport)

    def _moved_in(self, count: int) -> None:
        session = self._session
        session.bytes_in += count
        session.last_active = self._idle.last = self._seconds()  # type: ignore[union-attr]

    def _moved_out(self, count: int) -> None:
        session = self._session
        session.bytes_out += count
        session.last_active = self._idle.last = self._seconds()  # type: ignore[union-attr]

    def _to_bulk(self, data: bytes, client_side: bool) -> bool:
        """
        Count C{data} towards L{BULK_AFTER}; past it, write C{data} the
        usual way, stop reading both sides and hand both sockets to the
        bulk path once Twisted has sent everything queued (bytes sent past
        it must not overtake it).
        """
        left = self._until_bulk - len(data)  # type: ignore[operator]
        if left > 0:
            self._until_bulk = left
            return False
        self._until_bulk = None
        client, upstream = self.transport, self._upstream.transport
        if bulk.plain_socket(client) is None or bulk.plain_socket(upstream) is None:
            return False  # half-closed or closing: stay on this path
        (upstream if client_side else client).write(data)
        for transport in (client, upstream):
            transport.unregisterProducer()
            transport.stopReading()
        self._wait_for_drain(client, upstream)
        return True

    def _wait_for_drain(self, *transports: Any) -> None:
        """
        Hear when C{transports} have sent what Twisted queued. Also for bytes
        a read already under way delivers after C{stopReading}: the reactor
        still runs the events of its current poll.
        """
        added = [t for t in transports if t not in self._draining]
        self._draining.extend(added)  # all of them before the first answer
        for transport in added:
            # A pull producer is asked for more once its consumer's buffer is empty.
            transport.registerProducer(_Drained(self, transport), False)

    def _drained(self, transport: object) -> None:
        """Once both sides sent what Twisted queued: the bulk path, or back to Twisted's if that cannot be."""
        if transport in self._draining and bulk.idle(transport):  # type: ignore[arg-type]
            self._draining.remove(transport)
            transport.unregisterProducer()  # type: ignore[attr-defined]
        if self._draining or self._done:
            return
        client, upstream = self.transport, self._upstream.transport
        client_socket, upstream_socket = bulk.plain_socket(client), bulk.plain_socket(upstream)
        if client_socket is None or upstream_socket is None:
            self._log.debug("tunnel {session}: a side is closing; staying on Twisted's path", session=self._session.id)
            upstream.registerProducer(client, True)
            client.registerProducer(upstream, True)
            if not self._client_eof:
                client.resumeProducing()
            if not self._upstream_eof:
                upstream.resumeProducing()
            return
        self._bulk = bulk.BulkPath(
            self._context.reactor, client_socket, upstream_socket, self._moved_in, self._moved_out, self._bulk_done
        )
        self._log.debug("tunnel {session}: on the bulk path from here on", session=self._session.id)
        self._bulk.start()

    def _bulk_done(self, reason: str | None) -> None:
        self._bulk = None
        if reason is None:
            self._client_eof = self._upstream_eof = True
            self._finish("closed by both sides")
            return
        self._finish(reason)
        self.transport.loseConnection()
        self._upstream.transport.loseConnection()

    def _off_bulk(self) -> None:
        """Give the sockets back to Twisted before closing them its way."""
        draining, self._draining = self._draining, []
        for transport in draining:
            transport.unregisterProducer()
        if self._bulk is not None:
            path, self._bulk = self._bulk, None
            path.stop()

    def readConnectionLost(self) -> None:
        self._client_eof = True
        if self._upstream_eof:
            self._finish("closed by both sides")
        else:
            self._upstream.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._off_bulk()
        if not self._done:
            self._upstream.transport.loseConnection()
            self._finish("closed by client" if self._client_eof or self._upstream_eof else _describe(reason, "client"))

    # upstream -> client
    def upstream_data(self, data: bytes) -> None:
        self._moved_out(len(data))
        if self._until_bulk is not None and self._to_bulk(data, client_side=False):
            return
        self.transport.write(data)
        if self._draining:
            self._wait_for_drain(self.transport)

    def upstream_eof(self) -> None:
        self._upstream_eof = True
        if self._client_eof:
            self._finish("closed by both sides")
        else:
            self.transport.loseWriteConnection()

    def upstream_lost(self, reason: Failure) -> None:
        self._off_bulk()
        if not self._done:
            self.transport.loseConnection()
            self._finish("closed by server" if self._upstream_eof or self._client_eof else _describe(reason, "server"))

    def _timed_out(self, idle: float) -> None:
        timeout = self._context.idle_timeout
        self._log.info("tunnel {session} idle for {idle:.0f}s: closing", session=self._session.id, idle=idle)
        self._off_bulk()
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


@implementer(IPullProducer)
class _Drained:
    """
    A pull producer whose only job is to hear, through C{resumeProducing},
    that its consumer has sent everything it had queued.
    """

    def __init__(self, tunnel: Tunnel, transport: Any) -> None:
        self._tunnel = tunnel
        self._transport = transport

    def resumeProducing(self) -> None:
        self._tunnel._drained(self._transport)

    def stopProducing(self) -> None:
        pass


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
