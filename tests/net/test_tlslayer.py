# -*- test-case-name: tests.net.test_tlslayer -*-
"""Tests for L{txgate.net.tlslayer}."""

from __future__ import annotations

import datetime
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    ILoggingContext,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.test.iosim import IOPump, connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer, providedBy

from txgate.net import tlslayer
from txgate.net.tlslayer import TLSLayer, write_now
from txgate.testing import make_ca, make_server_cert


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    def clientConnectionForTLS(self, tls: Any) -> SSL.Connection:
        connection = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        connection.set_connect_state()
        return connection


@implementer(ITCPTransport, IHalfCloseableDescriptor, ILoggingContext)
class _TCPLike(StringTransport):
    """Provides more than a TLS layer implements, as a TCP connection does."""


class TLSLayerTests(TestCase):
    def _connect(self, layer_class: type[BufferingTLSTransport], connect_wrapped: bool = True) -> tuple[Any, Any, Any]:
        factory = TLSMemoryBIOFactory(_Creator(), True, protocol.Factory.forProtocol(protocol.Protocol))
        transport = _TCPLike()
        wrapped = protocol.Protocol()
        layer = layer_class(factory, wrapped, connect_wrapped)
        layer.makeConnection(transport)
        return layer, factory, transport

    def test_as_twisted(self) -> None:
        """
        The layer provides what Twisted's provides over the same transport,
        registers with its factory, connects the protocol it wraps and
        starts the handshake.
        """
        stock, _, _ = self._connect(BufferingTLSTransport)
        layer, factory, transport = self._connect(TLSLayer)
        self.assertEqual(list(providedBy(layer)), list(providedBy(stock)))
        self.assertTrue(ITCPTransport.providedBy(layer))
        self.assertIn(layer, factory.protocols)
        self.assertIs(layer.wrappedProtocol.transport, layer)
        self.assertEqual(transport.value()[:1], b"\x16")  # a handshake record: the ClientHello

    def test_not_connecting_wrapped(self) -> None:
        """Without the wrapped protocol connected (STARTTLS), it is Twisted's own."""
        stock, _, _ = self._connect(BufferingTLSTransport, connect_wrapped=False)
        layer, _, transport = self._connect(TLSLayer, connect_wrapped=False)
        self.assertEqual(list(providedBy(layer)), list(providedBy(stock)))
        self.assertIsNone(layer.wrappedProtocol.transport)
        self.assertEqual(transport.value()[:1], b"\x16")


class _Collect(protocol.Protocol):
    def connectionMade(self) -> None:
        self.received = b""
        self.factory.connected.callback(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.factory.expect:
            self.factory.done.callback(self.received)


class WriteNowTests(TestCase):
    """L{write_now} over real loopback TCP connections."""

    def _pair(self, expect: int) -> Deferred[tuple[Any, Deferred[bytes]]]:
        """A connected client transport and a Deferred of the first C{expect} bytes the server reads."""
        server = protocol.ServerFactory.forProtocol(_Collect)
        server.connected, server.done, server.expect = Deferred(), Deferred(), expect
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = protocol.ClientCreator(reactor, protocol.Protocol).connectTCP("127.0.0.1", port.getHost().port)

        def connected(proto: Any) -> Any:
            self.addCleanup(proto.transport.abortConnection)
            return server.connected.addCallback(
                lambda peer: (self.addCleanup(peer.transport.abortConnection), (proto.transport, server.done))[1]
            )

        return client.addCallback(connected)

    async def test_sends_at_once(self) -> None:
        """With nothing queued, the bytes go to the socket now: the transport never waits for writability."""
        transport, received = await self._pair(5)
        write_now(transport, b"hello")
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(transport.dataBuffer, b"")
        self.assertEqual(await received, b"hello")

    async def test_queued_first(self) -> None:
        """Bytes written after queued ones queue behind them: the order holds."""
        transport, received = await self._pair(6)
        transport.write(b"abc")
        write_now(transport, b"def")
        self.assertIn(transport, reactor.getWriters())
        self.assertEqual(await received, b"abcdef")

    async def test_closing(self) -> None:
        """Once the connection is closing, Twisted's C{write} decides, as before."""
        transport, received = await self._pair(2)
        transport.loseConnection()
        write_now(transport, b"ok")
        self.assertEqual(await received, b"ok")

    def test_not_tcp(self) -> None:
        """Any other transport (a wrapper, a test double) gets a plain C{write}."""
        transport = StringTransport()
        write_now(transport, b"bytes")
        self.assertEqual(transport.value(), b"bytes")


class _Chunks(protocol.Protocol):
    """Each C{dataReceived} call's bytes: one per TLS record read."""

    def connectionMade(self) -> None:
        self.chunks: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


_TLS: list[tuple[CertificateOptions, Any]] = []


def _tls() -> tuple[CertificateOptions, Any]:
    """Server options and client options for C{tls.test}, made once for the module."""
    if not _TLS:
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
        ca, ca_key = make_ca("tlslayer test CA", start, end)
        cert, key = make_server_cert(ca, ca_key, ["tls.test"], not_before=start, not_after=end)
        server = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key), certificate=crypto.X509.from_cryptography(cert)
        )
        client = optionsForClientTLS("tls.test", trustRoot=Certificate(crypto.X509.from_cryptography(ca)))
        _TLS.append((server, client))
    return _TLS[0]


def _pair(
    case: SynchronousTestCase, clock: Clock, client_protocol: type[protocol.Protocol] = protocol.Protocol
) -> tuple[TLSLayer, TLSMemoryBIOProtocol, IOPump]:
    """A L{TLSLayer} client over real TLS in memory with its handshake done, and the stock TLS server's layer."""
    server_options, client_options = _tls()
    server_factory = TLSMemoryBIOFactory(server_options, False, protocol.Factory.forProtocol(_Chunks), clock)
    server_factory.protocol = TLSMemoryBIOProtocol
    client_factory = TLSMemoryBIOFactory(client_options, True, protocol.Factory.forProtocol(client_protocol), clock)
    client_factory.protocol = TLSLayer
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    case.assertTrue(client._handshakeDone)
    return client, server, pump


def _server_pair(
    case: SynchronousTestCase, clock: Clock, tls12: bool = False, server_side: bool = True
) -> tuple[TLSLayer, TLSMemoryBIOProtocol, IOPump, list[bytes]]:
    """
    A L{TLSLayer} server (C{server_side}) with its handshake done, the stock
    TLS client's layer, and every write the server made to its transport
    since the handshake was done.
    """
    server_options, client_options = _tls()
    if tls12:
        server_options = CertificateOptions(
            privateKey=server_options.privateKey,
            certificate=server_options.certificate,
            raiseMinimumTo=TLSVersion.TLSv1_2,
            lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
        )
    server_factory = TLSMemoryBIOFactory(server_options, False, protocol.Factory.forProtocol(protocol.Protocol), clock)
    server_factory.protocol = TLSLayer
    server_factory.server_side = server_side
    client_factory = TLSMemoryBIOFactory(client_options, True, protocol.Factory.forProtocol(_Chunks), clock)
    client_factory.protocol = TLSMemoryBIOProtocol
    client, server, pump = connectedServerAndClient(
        lambda: server_factory.buildProtocol(None),
        lambda: client_factory.buildProtocol(None),
        clock=clock,
        greet=False,
    )
    writes: list[bytes] = []
    write = server.transport.write

    def counted(data: bytes) -> None:
        if server._handshakeDone:
            writes.append(data)
        write(data)

    server.transport.write = counted
    pump.flush()
    case.assertTrue(server._handshakeDone)
    case.assertTrue(client._handshakeDone)
    return server, client, pump, writes


class TicketTests(SynchronousTestCase):
    """
    A TLS 1.3 server side's session tickets wait for its first write and go
    in the same write; a TLS 1.2 handshake is never held up.
    """

    def test_tickets_with_first_write(self) -> None:
        """
        The tickets a layer not marked C{server_side} sends at once go with
        a server side's first write: the same bytes, one write fewer.
        """
        plain, _, plain_pump, plain_writes = _server_pair(self, Clock(), server_side=False)
        self.assertEqual(len(plain_writes), 1)  # the tickets, at once
        plain.write(b"first words")
        plain.flush_writes()
        server, client, pump, writes = _server_pair(self, Clock())
        self.assertEqual(server.getHandle().get_protocol_version_name(), "TLSv1.3")
        self.assertEqual(writes, [])  # the tickets wait
        server.write(b"first words")
        server.flush_writes()
        self.assertEqual([len(w) for w in writes], [sum(len(w) for w in plain_writes)])
        pump.flush()
        self.assertEqual(client.wrappedProtocol.chunks, [b"first words"])

    def test_tickets_with_close(self) -> None:
        """A server that closes without writing sends the tickets with its close."""
        server, client, pump, writes = _server_pair(self, Clock())
        seen = client.wrappedProtocol
        self.assertEqual(writes, [])
        server.loseConnection()
        self.assertEqual(len(writes), 1)
        pump.flush()
        self.assertTrue(seen.lost)

    def test_tls12_not_held(self) -> None:
        """In TLS 1.2 the server's Finished comes last: the handshake completes and bytes flow."""
        server, client, pump, writes = _server_pair(self, Clock(), tls12=True)
        self.assertEqual(server.getHandle().get_protocol_version_name(), "TLSv1.2")
        server.write(b"hello")
        server.flush_writes()
        pump.flush()
        self.assertEqual(client.wrappedProtocol.chunks, [b"hello"])


class ReceiveTests(SynchronousTestCase):
    """
    L{TLSLayer} reads every record that arrives, however the bytes are cut,
    without asking OpenSSL for more once its buffers are empty.
    """

    def _receiving(self) -> tuple[TLSLayer, TLSMemoryBIOProtocol, IOPump, list[int]]:
        """The pair, with every C{recv} on the client's TLS connection counted."""
        client, server, pump = _pair(self, Clock(), _Chunks)
        connection = client._tlsConnection
        calls: list[int] = []
        recv = connection.recv

        def counted(size: int) -> bytes:
            calls.append(size)
            return recv(size)

        connection.recv = counted
        return client, server, pump, calls

    def test_records_in_one_read(self) -> None:
        """Three records arriving in one read are each delivered, in order, with one C{recv} apiece."""
        client, server, pump, calls = self._receiving()
        for text in (b"one", b"two", b"three"):
            TLSMemoryBIOProtocol.write(server, text)
        pump.flush()
        self.assertEqual(client.wrappedProtocol.chunks, [b"one", b"two", b"three"])
        self.assertEqual(len(calls), 3)

    def test_byte_by_byte(self) -> None:
        """A record cut into single bytes is delivered once whole."""
        client, server, pump, calls = self._receiving()
        records = []
        server.transport.write = records.append  # what the server would send, kept back
        TLSMemoryBIOProtocol.write(server, b"in pieces")
        data = b"".join(records)
        for index in range(len(data)):
            client.dataReceived(data[index : index + 1])
        self.assertEqual(client.wrappedProtocol.chunks, [b"in pieces"])

    def test_close_after_data(self) -> None:
        """The data before a close_notify is delivered, then the connection ends."""
        client, server, pump, calls = self._receiving()
        seen = client.wrappedProtocol
        TLSMemoryBIOProtocol.write(server, b"last")
        server.loseConnection()
        pump.flush()
        self.assertEqual(seen.chunks, [b"last"])
        self.assertTrue(seen.lost)

    def test_without_peeking(self) -> None:
        """A pyOpenSSL whose BIOs cannot be looked into: records are read until OpenSSL wants more, as Twisted does."""
        client, server, pump, calls = self._receiving()
        self.patch(tlslayer, "_CAN_PEEK", False)
        for text in (b"one", b"two"):
            TLSMemoryBIOProtocol.write(server, text)
        pump.flush()
        self.assertEqual(client.wrappedProtocol.chunks, [b"one", b"two"])
        self.assertEqual(len(calls), 3)


@implementer(IPushProducer)
class _Producer:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class TurnFlushTests(SynchronousTestCase):
    """
    L{TLSLayer} holds the writes of a reactor turn and sends them when it
    ends, every connection's in one delayed call, over real TLS in memory.
    """

    def _pair(self, clock: Clock) -> tuple[TLSLayer, _Chunks, IOPump]:
        """A L{TLSLayer} client with its handshake done, and what the stock TLS server behind it reads."""
        client, server, pump = _pair(self, clock)
        return client, server.wrappedProtocol, pump

    def test_one_flush_per_turn(self) -> None:
        """
        Writes wait for the turn's end, one delayed call flushes every
        connection's, and each connection's writes go as one record.
        """
        clock = Clock()
        first, first_seen, first_pump = self._pair(clock)
        second, second_seen, second_pump = self._pair(clock)
        first.write(b"head ")
        first.writeSequence([b"body ", b"end"])
        second.write(b"other")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        first_pump.flush(advanceClock=False)
        second_pump.flush(advanceClock=False)
        self.assertEqual((first_seen.chunks, second_seen.chunks), ([], []))
        clock.advance(0)
        first_pump.flush()
        second_pump.flush()
        self.assertEqual(first_seen.chunks, [b"head body end"])
        self.assertEqual(second_seen.chunks, [b"other"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_buffer_copied(self) -> None:
        """A buffer the caller changes after writing it is sent as it was written."""
        clock = Clock()
        layer, seen, pump = self._pair(clock)
        buffer = bytearray(b"as written")
        layer.write(buffer)
        buffer[:] = b"changed"
        pump.flush()
        self.assertEqual(b"".join(seen.chunks), b"as written")

    def test_large_at_once(self) -> None:
        """Once more than L{TLSLayer.MAX_HELD} bytes are held, they go without waiting for the turn's end."""
        clock = Clock()
        layer, seen, pump = self._pair(clock)
        layer.write(b"a" * TLSLayer.MAX_HELD)
        layer.write(b"b")
        pump.flush(advanceClock=False)
        self.assertEqual(b"".join(seen.chunks), b"a" * TLSLayer.MAX_HELD + b"b")

    def test_close_sends_first(self) -> None:
        """C{loseConnection} sends what is held before the TLS close; writes after it are dropped."""
        clock = Clock()
        layer, seen, pump = self._pair(clock)
        layer.write(b"last words")
        layer.loseConnection()
        layer.write(b"too late")
        pump.flush()
        self.assertEqual(b"".join(seen.chunks), b"last words")
        self.assertTrue(seen.lost)

    def test_close_in_one_write(self) -> None:
        """What is held and the TLS close go to the transport in one write: one C{send}."""
        clock = Clock()
        layer, seen, pump = self._pair(clock)
        writes: list[bytes] = []
        write = layer.transport.write
        layer.transport.write = lambda data: (writes.append(data), write(data))
        layer.write(b"last words")
        layer.loseConnection()
        self.assertEqual(len(writes), 1)
        pump.flush()
        self.assertEqual(b"".join(seen.chunks), b"last words")
        self.assertTrue(seen.lost)

    def test_close_waits_for_producer(self) -> None:
        """
        With a producer registered the TLS close waits for it, but what is
        held is sent at once.
        """
        clock = Clock()
        layer, seen, pump = self._pair(clock)
        producer = _Producer()
        layer.registerProducer(producer, True)
        layer.write(b"before the close")
        layer.loseConnection()
        pump.flush()
        self.assertEqual(b"".join(seen.chunks), b"before the close")
        self.assertFalse(seen.lost)
        layer.unregisterProducer()
        pump.flush()
        self.assertTrue(seen.lost)

    def test_abort_drops(self) -> None:
        """C{abortConnection} drops what is held: nothing more reaches the peer."""
        clock = Clock()
        layer, seen, pump = self._pair(clock)
        layer.write(b"never sent")
        layer.abortConnection()
        pump.flush()
        self.assertEqual(seen.chunks, [])
