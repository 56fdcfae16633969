# -*- test-case-name: tests.net.test_tlslayer -*-
"""Tests for L{txgate.net.tlslayer}."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import protocol, reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableDescriptor,
    ILoggingContext,
    IOpenSSLClientConnectionCreator,
    ITCPTransport,
)
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer, providedBy

from txgate.net.tlslayer import TLSLayer, write_now


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
