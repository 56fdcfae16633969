"""
Tests for L{txgate.net.pump}: the byte tunnel, built by its handoff as the
pipeline builds it, between a client and an upstream on string transports.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgate.interfaces import HandoffContext
from txgate.net.pump import Tunnel, TunnelHandoff
from txgate.session import Address, Session
from txgate.testing import HalfCloseableStringTransport, make_upstream


class TunnelTests(SynchronousTestCase):
    """
    Bytes move both ways and are counted; half-closes are passed on; the
    tunnel finishes once, with a reason, when both directions are done.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = Session("s-1", "explicit", Address("127.0.0.1", 40000), 0.0)
        self.upstream = make_upstream("192.0.2.10", 443)
        self.finished: list[str] = []
        self.errors: list[tuple[Exception, bytes]] = []
        self.client = HalfCloseableStringTransport()

    def start(self) -> Tunnel:
        """Build the tunnel through its handoff and connect it to the client."""
        context = HandoffContext(
            session=self.session,
            reactor=self.clock,
            upstream=self.upstream,
            idle_timeout=60.0,
            protocol_error=lambda e, data: self.errors.append((e, data)),
            finished=self.finished.append,
        )
        tunnel = TunnelHandoff().build(context)
        tunnel.makeConnection(self.client)
        return tunnel

    def test_bytes_both_ways(self) -> None:
        """Client bytes go upstream and count as C{bytes_in}; server bytes go to the client as C{bytes_out}."""
        tunnel = self.start()
        tunnel.dataReceived(b"\x16\x03\x01hello")
        self.upstream.dataReceived(b"\x16\x03\x03server")
        self.assertEqual(self.upstream.transport.value(), b"\x16\x03\x01hello")
        self.assertEqual(self.client.value(), b"\x16\x03\x03server")
        self.assertEqual((self.session.bytes_in, self.session.bytes_out), (8, 9))

    def test_server_bytes_before_tunnel(self) -> None:
        """Bytes a server sent before the tunnel existed reach the client first and are counted."""
        self.upstream.dataReceived(b"220 smtp.test ESMTP\r\n")
        self.start()
        self.assertEqual(self.client.value(), b"220 smtp.test ESMTP\r\n")
        self.assertEqual(self.session.bytes_out, 21)

    def test_producers_registered(self) -> None:
        """Each side is the other's streaming producer, so a slow reader pauses the other side."""
        self.start()
        self.assertIs(self.client.producer, self.upstream.transport)
        self.assertIs(self.upstream.transport.producer, self.client)
        self.assertTrue(self.client.streaming)
        self.assertTrue(self.upstream.transport.streaming)

    def test_client_half_close(self) -> None:
        """A client half-close half-closes the upstream; the tunnel stays open for the reply."""
        tunnel = self.start()
        tunnel.readConnectionLost()
        self.assertTrue(self.upstream.transport.write_closed)
        self.upstream.dataReceived(b"last words")
        self.assertEqual(self.client.value(), b"last words")
        self.assertEqual(self.finished, [])
        self.assertFalse(self.client.disconnecting)

    def test_server_half_close(self) -> None:
        """A server half-close half-closes the client."""
        self.start()
        self.upstream.readConnectionLost()
        self.assertTrue(self.client.write_closed)
        self.assertEqual(self.finished, [])

    def test_both_half_close(self) -> None:
        """Both half-closes finish the tunnel once, C{closed by both sides}, and close both connections."""
        tunnel = self.start()
        tunnel.readConnectionLost()
        self.upstream.readConnectionLost()
        self.assertEqual(self.finished, ["closed by both sides"])
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(self.upstream.transport.disconnecting)
        tunnel.connectionLost(Failure(error.ConnectionDone()))
        self.upstream.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.finished, ["closed by both sides"])

    def test_server_connection_lost(self) -> None:
        """A server that drops the connection closes the client; the reason names the server."""
        tunnel = self.start()
        self.upstream.connectionLost(Failure(error.ConnectionLost("reset by peer")))
        self.assertTrue(self.client.disconnecting)
        [reason] = self.finished
        self.assertTrue(reason.startswith("server connection lost: "), reason)
        self.assertIn("reset by peer", reason)
        tunnel.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(self.finished), 1)

    def test_client_connection_lost(self) -> None:
        """A client that drops the connection closes the upstream; the reason names the client."""
        tunnel = self.start()
        tunnel.connectionLost(Failure(error.ConnectionLost("reset by peer")))
        self.assertTrue(self.upstream.transport.disconnecting)
        [reason] = self.finished
        self.assertTrue(reason.startswith("client connection lost: "), reason)

    def test_idle_timeout(self) -> None:
        """With no bytes either way for C{idle_timeout} seconds, both sides are closed."""
        tunnel = self.start()
        self.clock.advance(50)
        tunnel.dataReceived(b"keepalive")
        self.clock.advance(50)
        self.assertEqual(self.finished, [])
        self.clock.advance(10)
        self.assertEqual(self.finished, ["idle timeout (60s)"])
        self.assertTrue(self.client.disconnecting)
        self.assertTrue(self.upstream.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finish_stops_idle_timer(self) -> None:
        """A finished tunnel leaves no timer behind."""
        tunnel = self.start()
        tunnel.readConnectionLost()
        self.upstream.readConnectionLost()
        self.assertEqual(self.clock.getDelayedCalls(), [])
