# -*- test-case-name: tests.net.test_tlslayer -*-
"""Tests for L{txgate.net.tlslayer}."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import protocol
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

from txgate.net.tlslayer import TLSLayer


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
