# -*- test-case-name: tests.net.test_tlslayer -*-
"""
Twisted's TLS layers with two costs taken out: one of every new connection
(L{DirectTLS.makeConnection}) and one of every write (L{write_now}), for the
listeners, interceptors and real-server connections that make one per
client or request.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import WantReadError
from twisted.internet.tcp import Connection
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol

__all__ = ["TLSLayer", "UnbufferedTLSLayer", "write_now"]


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


class DirectTLS(TLSMemoryBIOProtocol):
    """
    A TLS layer whose records go to the socket at once (L{write_now}), and
    which declares the interfaces of the transport it lays over once per
    connection instead of once per interface.
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

    def _flushSendBIO(self) -> None:
        """Twisted's, writing with L{write_now}."""
        try:
            data = self._tlsConnection.bio_read(2**15)
        except WantReadError:
            return  # nothing to send
        write_now(self.transport, data)


class TLSLayer(DirectTLS, BufferingTLSTransport):
    """
    L{DirectTLS} with Twisted's merging of the small writes of one reactor
    turn into one record: for the client side of listeners, where a
    response is several writes.
    """


class UnbufferedTLSLayer(DirectTLS):
    """
    L{DirectTLS} encrypting each write at once: for real-server connections,
    where the proxy writes a request head whole and body pieces as they
    come, so a C{callLater(0)} per request would only cost.
    """
