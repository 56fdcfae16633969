# -*- test-case-name: tests.net.test_tlslayer -*-
"""
Twisted's TLS layer with costs taken out that every connection or request
pays: declaring the transport's interfaces one by one
(L{TLSLayer.makeConnection}), queueing each write (L{write_now}), a delayed
call per connection per reactor turn (one flush for all connections), the
exceptions that end every read (L{_nothing_to_read}), and sends of their
own for the TLS close and a TLS 1.3 server's session tickets
(L{TLSLayer.loseConnection}, L{TLSLayer._checkHandshakeStatus}). The
listeners, interceptors and real-server connections use it.
"""

from __future__ import annotations

from typing import Any, Iterable
from weakref import WeakKeyDictionary

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure

try:  # the OpenSSL binding under pyOpenSSL, for the two calls it does not wrap (see below)
    from OpenSSL._util import ffi as _ffi, lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL laid out otherwise
    _ffi = _lib = None

__all__ = ["TLSLayer", "write_now"]

_CAN_PEEK = _lib is not None and hasattr(_lib, "BIO_get_mem_data") and hasattr(_lib, "SSL_pending")


def _bio_bytes(connection: Any, bio_name: str) -> int:
    """
    How many bytes one of C{connection}'s memory BIOs holds (C{_into_ssl}:
    ciphertext not yet read by OpenSSL; C{_from_ssl}: records not yet
    sent), or -1 when it cannot be told: pyOpenSSL does not wrap
    C{BIO_get_mem_data}, so this reaches its C{_into_ssl}/C{_from_ssl}.
    """
    bio = getattr(connection, bio_name, None) if _CAN_PEEK else None
    if bio is None:
        return -1
    return int(_lib.BIO_get_mem_data(bio, _ffi.NULL))


def _nothing_to_read(connection: Any) -> bool:
    """
    Whether a C{recv} on C{connection} is sure to fail with
    C{WantReadError}: no ciphertext waits in its receive BIO and no
    plaintext in OpenSSL's buffer. Raising and catching that error costs
    about a microsecond, twice per request and side.
    """
    if _bio_bytes(connection, "_into_ssl") != 0:
        return False
    ssl = getattr(connection, "_ssl", None)
    return ssl is not None and not _lib.SSL_pending(ssl)


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, straight to the socket when it is a TCP
    connection with nothing queued.

    Twisted's TCP C{write} only queues: it registers the socket for
    writability (an C{epoll_ctl}), sends on the reactor's next turn, and
    unregisters it (another). For a proxy answering small requests that is
    two system calls and a reactor turn per write, about 7% of the CPU of a
    kept-alive reverse request (docs/performance.md). What the socket does
    not take now, and anything written while bytes are queued, goes through
    Twisted's C{write} as before, so the order holds, and so do its
    producer and error handling: a send that fails here is left for
    C{doWrite} to fail again and report.
    """
    if (
        isinstance(transport, Connection)
        and not transport._tempDataLen
        and not transport.dataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnecting
        and not transport.TLS
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class _Turn:
    """
    The layers holding writes in this reactor turn. One C{callLater(0)}
    flushes them all once the turn's events are handled, where Twisted's
    L{BufferingTLSTransport} schedules one per connection.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._layers: list[TLSLayer] = []
        self._call: IDelayedCall | None = None

    def hold(self, layer: "TLSLayer") -> None:
        self._layers.append(layer)
        if self._call is None:
            self._call = self._clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        layers, self._layers = self._layers, []
        for layer in layers:
            layer.flush_writes()


_TURNS: WeakKeyDictionary[IReactorTime, _Turn] = WeakKeyDictionary()


def _turn_of(clock: IReactorTime) -> _Turn:
    turn = _TURNS.get(clock)
    if turn is None:
        turn = _TURNS[clock] = _Turn(clock)
    return turn


class TLSLayer(TLSMemoryBIOProtocol):
    """
    Twisted's TLS layer, which declares the interfaces of the transport it
    lays over once per connection instead of once per interface, sends its
    records with L{write_now}, and holds the writes of one reactor turn,
    encrypting them together at its end, as one record where they fit: a
    response is several writes. Sending every connection's bytes once the
    turn's events are handled, rather than each as it is written, also lets
    the next C{epoll_wait} find more events at once: in S4a
    (docs/performance.md) this cost 13% less CPU per request than
    real-server connections that encrypted and sent each write at once.
    """

    MAX_HELD = 64000
    """Bytes held past this are written at once (Twisted's bound too)."""

    MAX_RECORD = 2**14
    """Held bytes up to this are encrypted with the TLS close and sent with it (L{loseConnection})."""

    _held: list[bytes] | None = None
    _held_size = 0
    _written = False
    """Whether the application has written anything yet."""
    _quiet_until_written = False
    """A TLS 1.3 server side's session tickets wait for its first write (L{_checkHandshakeStatus})."""
    _sending = True
    """Whether records go out as they are made (not while L{loseConnection} gathers the last ones)."""
    _turn: _Turn | None = None
    """This layer's reactor's L{_Turn}, looked up on its first write."""

    def makeConnection(self, transport: Any) -> None:
        """
        Twisted's, without its loop of one C{directlyProvides} call per
        interface of the transport: each call builds a zope specification
        afresh (about 30 us per TLS connection in the S2 and S3 profiles of
        docs/performance.md), and the declaration
        L{ProtocolWrapper.makeConnection} makes next replaces them all.
        """
        if not self._connectWrapped:
            # No ProtocolWrapper declaration follows: keep Twisted's own.
            super().makeConnection(transport)
            return
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        ProtocolWrapper.makeConnection(self, transport)
        self._checkHandshakeStatus()

    # Pooled connections resume their transport on every request
    # (Upstream.attach): defined here, these skip the failed lookup that
    # ends in ProtocolWrapper.__getattr__ (an AttributeError each time).
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def _checkHandshakeStatus(self) -> None:
        """
        Twisted's; and once a TLS 1.3 handshake is done on the server side
        (a factory with C{server_side = True}), what OpenSSL writes next on
        its own, the session tickets, waits for the application's first
        write or the close and goes in the same C{send}, instead of a
        C{send} of its own. Nothing the client waits for is held: its
        handshake ended with the server's first flight. (In TLS 1.2 the
        server's Finished comes last, so nothing is held there.)
        """
        super()._checkHandshakeStatus()
        if self._handshakeDone and not self._written and getattr(self.factory, "server_side", False):
            connection = self.getHandle()
            self._quiet_until_written = connection is not None and connection.get_protocol_version_name() == "TLSv1.3"

    def _flushReceiveBIO(self) -> None:
        """
        Twisted's loop, ended when nothing is left to read instead of by the
        C{WantReadError} the next C{recv} would raise (L{_nothing_to_read}).
        """
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            try:
                data = connection.recv(2**15)
            except WantReadError:
                break
            except ZeroReturnError:
                # The peer's close_notify: TLS is over, reason from the transport.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
                if _nothing_to_read(connection):
                    break
        if self._quiet_until_written and not self._written and not self._lostTLSConnection:
            return
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        """Twisted's, writing with L{write_now}, and not asking an empty BIO (see L{_nothing_to_read})."""
        if not self._sending or _bio_bytes(self._tlsConnection, "_from_ssl") == 0:
            return
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return  # nothing to send
        write_now(self.transport, data)

    def write(self, data: bytes) -> None:
        if self.disconnecting and self._producer is None:
            return  # as TLSMemoryBIOProtocol.write: dropped after loseConnection
        if type(data) is not bytes:
            data = bytes(data)  # a caller's buffer may change before the flush
        self._written = True
        held = self._held
        if held is None:
            self._held = [data]
            self._held_size = len(data)
            turn = self._turn
            if turn is None:
                turn = self._turn = _turn_of(self.factory._clock)
            turn.hold(self)
            return
        held.append(data)
        self._held_size += len(data)
        if self._held_size > self.MAX_HELD:
            self.flush_writes()

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def flush_writes(self) -> None:
        """Encrypt and send what this turn's writes left held."""
        held = self._held
        if held:
            self._held = None
            TLSMemoryBIOProtocol.write(self, held[0] if len(held) == 1 else b"".join(held))

    def loseConnection(self) -> None:
        """
        Send what is held, then the TLS close, in one C{send} where they
        fit in one read of the send BIO: a response that ends its
        connection (C{Connection: close}, HTTP/1.0) is one system call,
        not two.
        """
        if not self._held or self._held_size > self.MAX_RECORD or not _CAN_PEEK:
            self.flush_writes()
            super().loseConnection()
            return
        self._sending = False
        try:
            self.flush_writes()
        finally:
            self._sending = True
        super().loseConnection()
        self._flushSendBIO()  # when the close waits (a producer, a handshake), what is held goes now

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._held = None
        super().connectionLost(reason)
