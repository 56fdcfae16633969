# -*- test-case-name: tests.net.test_tlslayer -*-
"""
Twisted's TLS layer (L{BufferingTLSTransport}) with one cost taken out of
every new connection, for the listeners and interceptors that make one per
client.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport

__all__ = ["TLSLayer"]


class TLSLayer(BufferingTLSTransport):
    """
    L{BufferingTLSTransport}, with the interfaces of the transport it lays
    over declared once per connection instead of once per interface.
    """

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
