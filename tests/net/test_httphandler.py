"""
Tests for L{txgate.net.httphandler}: HTTP found inside a CONNECT tunnel,
carried request by request to the tunnel's destination.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, IHandoff, Verdict
from txgate.net.httphandler import HTTPHandoff
from txgate.net.pump import TunnelHandoff
from txgate.plugins import Plugin, Registry
from txgate.testing import assert_provides
from tests.net.test_explicit import _Harness

CONNECT = b"CONNECT origin.test:8080 HTTP/1.1\r\nHost: origin.test:8080\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@attrs.frozen
class _RequestLine:
    """Stands in for the HTTP detector: a line starting with GET or POST."""

    name: str = "http"
    priority: int = 40

    def detect(self, buffered: bytes) -> Verdict:
        if buffered.startswith((b"GET ", b"POST ")):
            return Detected("http")
        if any(m.startswith(buffered) for m in (b"GET ", b"POST ")):
            return NEED_MORE
        return NOT_MINE


def _harness(**service: Any) -> _Harness:
    h = _Harness(**service)
    registry = Registry(
        (
            Plugin("detector", "http", "test", _RequestLine()),
            Plugin("handoff", "http", "test", HTTPHandoff()),
            Plugin("handoff", "tunnel", "test", TunnelHandoff()),
        )
    )
    h.factory.settings = attrs.evolve(h.factory.settings, registry=registry)
    return h


class InnerHTTPTests(SynchronousTestCase):
    """
    Requests inside the tunnel go to its destination on the connection
    opened for the CONNECT, then on pooled ones; each gets a record.
    """

    def _open(self, **service: Any) -> tuple[_Harness, Any, Any, Any]:
        h = _harness(**service)
        proxy, client = h.client()
        proxy.dataReceived(CONNECT)
        upstream = h.connector.pending[0].succeed()
        client.clear()
        return h, proxy, client, upstream

    def test_provides(self) -> None:
        """The handoff provides IHandoff."""
        assert_provides(self, IHandoff, HTTPHandoff())

    def test_requests_to_destination(self) -> None:
        """
        An origin-form request goes to the CONNECT destination on the
        connection already open, Host kept for naming; the record names the
        URL; the next request reuses that connection from the pool.
        """
        h, proxy, client, upstream = self._open()
        proxy.dataReceived(b"GET /a HTTP/1.1\r\nHost: www.site.example:8080\r\n\r\n")
        self.assertEqual(len(h.connector.pending), 1)
        sent = upstream.transport.value()
        self.assertTrue(sent.startswith(b"GET /a HTTP/1.1\r\nhost: www.site.example:8080\r\n"), sent)
        upstream.dataReceived(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertEqual(proxy.session.client_protocol, "http")
        self.assertFalse(proxy.session.tunneled)
        upstream.transport.clear()
        proxy.dataReceived(b"GET /b HTTP/1.1\r\nHost: www.site.example:8080\r\n\r\n")
        self.assertEqual(len(h.connector.pending), 1)
        self.assertTrue(upstream.transport.value().startswith(b"GET /b HTTP/1.1"))
        upstream.dataReceived(OK)
        records = [(r["method"], r["target"], r["status"], r["upstream"]) for r in h.records.events]
        self.assertEqual(
            records,
            [
                ("GET", "http://www.site.example:8080/a", 200, "new"),
                ("GET", "http://www.site.example:8080/b", 200, "reused"),
            ],
        )

    def test_protocol_error_tunnels(self) -> None:
        """
        With tunnel on protocol error, a stream that looked like HTTP but is
        not reaches the destination byte-exact, and the tunnel is logged.
        """
        h, proxy, client, upstream = self._open(tunnel_on_protocol_error=True)
        garbage = b"GET \x00\xff not http at all\r\n\r\n"
        proxy.dataReceived(garbage)
        self.assertEqual(upstream.transport.value(), garbage)
        self.assertTrue(proxy.session.tunneled)
        upstream.dataReceived(b"raw reply")
        self.assertEqual(client.value(), b"raw reply")

    def test_protocol_error_closes(self) -> None:
        """Without it, the connection is closed and the record names http and the reason."""
        h, proxy, client, upstream = self._open()
        proxy.dataReceived(b"GET \x00\xff not http at all\r\n\r\n")
        self.assertTrue(client.disconnecting)
        self.assertTrue(upstream.transport.disconnecting)
        [record] = h.records.events
        self.assertEqual(record["method"], "CONNECT")
        self.assertIn("http protocol error: http: malformed HTTP request", record["reason"])

    def test_refusal(self) -> None:
        """A refused HTTP stream gets a 403 page naming the reason."""
        body = HTTPHandoff().refusal(b"GET / HTTP/1.1\r\n\r\n", "not here")
        self.assertTrue(body.startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertIn(b"txgate: 403: not here", body)

    def test_client_gone_closes_unused_upstream(self) -> None:
        """A client that leaves before its first request leaves no upstream open."""
        h, proxy, client, upstream = self._open()
        proxy.dataReceived(b"GET /a HT")
        proxy.connectionLost(None)
        self.assertTrue(upstream.transport.disconnecting)
        [record] = h.records.events
        self.assertEqual((record["method"], record["reason"]), ("CONNECT", "closed by client"))
