"""
Tests for L{txgate.net.explicit}: the explicit HTTP proxy in memory, with the
client and every upstream on L{StringTransport}s and time on a fake clock.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgate.accesslog import AccessLog
from txgate.config import ServiceConfig
from txgate.net.explicit import ExplicitProxy, ExplicitProxyFactory
from txgate.net.pipeline import PEEK_TIMEOUT, PipelineSettings
from txgate.net.upstream import UpstreamPool
from txgate.plugins import discover
from txgate.policy.default import DefaultPolicy
from txgate.testing import FakeConnector, HalfCloseableStringTransport, RecordingObserver

GET = b"GET http://origin.test/a?b=1 HTTP/1.1\r\nHost: origin.test\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eDp5\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n\r\nhello"


class _Harness:
    """An explicit proxy service with a fake connector, clock and access log."""

    def __init__(self, allow: bool = True, settings: dict[str, Any] | None = None, **service: Any) -> None:
        """
        @param settings: L{PipelineSettings} fields to set (policy, realms,
            ssl, authority...), over a policy of C{allow}.
        """
        self.clock = MemoryReactorClock()
        self.connector = FakeConnector(self.clock)
        self.pool = UpstreamPool(self.connector, self.clock)  # type: ignore[arg-type]
        options = dict(
            name="explicit",
            kind="explicit-http",
            listen="tcp:0",
            clients=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        options.update(service)
        self.service = ServiceConfig(**options)  # type: ignore[arg-type]
        fields: dict[str, Any] = dict(
            registry=discover(),
            policy=DefaultPolicy(allow),
            reactor=self.clock,
            detect_protocol=self.service.detect_protocol,
            tunnel_on_protocol_error=self.service.tunnel_on_protocol_error,
            idle_timeout=self.service.idle_timeout,
        )
        fields.update(settings or {})
        self.access = AccessLog()
        self.records = RecordingObserver()
        self.access.publisher.addObserver(self.records)
        self.factory = ExplicitProxyFactory(self.service, PipelineSettings(**fields), self.connector, self.pool, self.access)  # type: ignore[arg-type]

    def client(self, host: str = "127.0.0.1") -> tuple[ExplicitProxy, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = HalfCloseableStringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return protocol, transport


class ForwardingTests(SynchronousTestCase):
    """
    Absolute-form requests are forwarded to the origin in origin-form with
    hop-by-hop headers removed and Via added.
    """

    def test_get_forwarded(self) -> None:
        """
        A GET reaches the origin as C{GET /a?b=1} with Host set from the URI,
        no proxy headers, and a Via; the response comes back with Via and
        without the origin's hop-by-hop headers.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(GET)
        [pending] = h.connector.pending
        self.assertEqual((pending.host, pending.port, pending.tls), ("origin.test", 80, False))
        upstream = pending.succeed()
        sent = upstream.transport.value()
        self.assertTrue(sent.startswith(b"GET /a?b=1 HTTP/1.1\r\nhost: origin.test\r\n"), sent)
        self.assertIn(b"via: 1.1 txgate\r\n", sent)
        self.assertNotIn(b"proxy-", sent.lower())
        upstream.dataReceived(OK)
        response = client.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertIn(b"via: 1.1 txgate\r\n", response)
        self.assertNotIn(b"keep-alive", response.lower())
        self.assertTrue(response.endswith(b"\r\n\r\nhello"))
        self.assertFalse(client.disconnecting)
        [record] = h.records.events
        self.assertEqual(
            {k: record[k] for k in ("method", "target", "status", "verdict", "upstream", "client_protocol", "tunneled", "seq")},
            {
                "method": "GET",
                "target": "http://origin.test/a?b=1",
                "status": 200,
                "verdict": "allow",
                "upstream": "new",
                "client_protocol": "http",
                "tunneled": False,
                "seq": 1,
            },
        )
        self.assertEqual(record["bytes_in"], len(GET))
        self.assertEqual(record["bytes_out"], len(response))

    def test_keep_alive_reuses_upstream(self) -> None:
        """
        A second request on the same client connection is served on the
        pooled upstream connection: no new connect, C{upstream=reused}, the
        same session with C{seq} 2.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(GET)
        upstream = h.connector.pending[0].succeed()
        upstream.dataReceived(OK)
        upstream.transport.clear()
        proxy.dataReceived(GET)
        self.assertEqual(len(h.connector.pending), 1)
        self.assertTrue(upstream.transport.value().startswith(b"GET /a?b=1 HTTP/1.1"))
        upstream.dataReceived(OK)
        first, second = h.records.events
        self.assertEqual((second["session"], second["seq"], second["upstream"]), (first["session"], 2, "reused"))

    def test_post_body_streamed(self) -> None:
        """
        A body sent before the upstream connects is held (the client is
        paused once more of it comes) and then forwarded; chunked request
        bodies stay chunked upstream.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(
            b"POST http://origin.test/up HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        self.assertEqual(client.producerState, "producing")  # paused only if more comes: an epoll_ctl saved
        proxy.dataReceived(b"6\r\n world\r\n")
        self.assertEqual(client.producerState, "paused")
        upstream = h.connector.pending[0].succeed()
        self.assertEqual(client.producerState, "producing")
        self.assertIs(upstream.transport.producer, client)
        self.assertIs(client.producer, upstream.transport)
        proxy.dataReceived(b"0\r\n\r\n")
        sent = upstream.transport.value()
        self.assertIn(b"transfer-encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), sent)
        upstream.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 201 Created"))
        self.assertIsNone(client.producer)

    def test_close_delimited_response_chunked_to_client(self) -> None:
        """
        A response framed by the server closing the connection reaches an
        HTTP/1.1 client chunked, so the client connection stays reusable.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(GET)
        upstream = h.connector.pending[0].succeed()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome ")
        upstream.dataReceived(b"bytes")
        upstream.readConnectionLost()
        upstream.connectionLost(Failure(error.ConnectionDone()))
        response = client.value()
        self.assertIn(b"transfer-encoding: chunked", response.lower())
        self.assertTrue(response.endswith(b"5\r\nsome \r\n5\r\nbytes\r\n0\r\n\r\n"), response)
        self.assertFalse(client.disconnecting)
        self.assertEqual(h.records.events[0]["status"], 200)

    def _second_on_pooled(self, h: _Harness) -> tuple[StringTransport, Any]:
        """A client whose second GET went on the connection its first was answered on."""
        proxy, client = h.client()
        proxy.dataReceived(GET)
        upstream = h.connector.pending[0].succeed()
        upstream.dataReceived(OK)
        proxy.dataReceived(GET)
        return client, upstream

    def test_stale_pooled_connection_retried(self) -> None:
        """
        When a pooled connection turns out closed before any response byte, an
        idempotent request is sent again on a new connection.
        """
        h = _Harness()
        client, upstream = self._second_on_pooled(h)
        upstream.connectionLost(Failure(error.ConnectionLost()))
        self.assertEqual(len(h.connector.pending), 2)
        fresh = h.connector.pending[1].succeed()
        fresh.dataReceived(OK)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 2)

    def test_stale_pooled_connection_eof_then_lost(self) -> None:
        """
        A pooled connection that half-closes and then closes under a request
        is retried once; its last event does not reach the fresh one, whose
        close-delimited response then ends with its close.
        """
        h = _Harness()
        client, upstream = self._second_on_pooled(h)
        upstream.readConnectionLost()
        fresh = h.connector.pending[1].succeed()
        upstream.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(len(h.connector.pending), 2)
        fresh.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nagain")
        fresh.readConnectionLost()
        response = client.value()
        self.assertTrue(response.endswith(b"5\r\nagain\r\n0\r\n\r\n"), response)
        self.assertEqual([e["status"] for e in h.records.events], [200, 200])
        self.assertFalse(client.disconnecting)


class ErrorTests(SynchronousTestCase):
    """
    Requests txgate cannot forward get a proper status, a log record naming
    the reason, and a closed connection.
    """

    def _fail(self, exception: Exception) -> tuple[StringTransport, dict[str, Any]]:
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(b"GET http://nosuch.invalid/ HTTP/1.1\r\nHost: nosuch.invalid\r\n\r\n")
        h.connector.pending[0].deferred.errback(Failure(exception))
        return client, h.records.events[0]

    def test_dns_failure(self) -> None:
        """An unresolvable host gets 502 with a page naming it."""
        client, record = self._fail(error.DNSLookupError("nosuch.invalid"))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertIn(b"DNS lookup failed for nosuch.invalid", client.value())
        self.assertTrue(client.disconnecting)
        self.assertEqual((record["status"], record["reason"]), (502, "DNS lookup failed for nosuch.invalid"))

    def test_refused(self) -> None:
        """A refused connection gets 502 naming host and port."""
        client, record = self._fail(error.ConnectionRefusedError())
        self.assertIn(b"connection refused by nosuch.invalid:80", client.value())

    def test_timeout(self) -> None:
        """A connect timeout gets 504."""
        client, record = self._fail(error.TimeoutError())
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))

    def _bad(self, data: bytes, **service: Any) -> tuple[StringTransport, dict[str, Any]]:
        h = _Harness(**service)
        proxy, client = h.client()
        proxy.dataReceived(data)
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.connector.pending, [])
        return client, h.records.events[0]

    def test_garbage(self) -> None:
        """Bytes that are not HTTP get 400 and a close."""
        client, record = self._bad(b"\x00\xffgarbage\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertIn("malformed HTTP request", record["reason"])

    def test_origin_form(self) -> None:
        """A request for a path, not a URI, gets 400 explaining why."""
        client, record = self._bad(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400 "))
        self.assertIn(b"absolute URI", client.value())

    def test_long_request_line(self) -> None:
        """A request line over the header limit gets 414."""
        client, record = self._bad(b"GET http://x/" + b"a" * 70000, max_header_size=65536)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 414 URI Too Long\r\n"))

    def test_large_headers(self) -> None:
        """A request head over the limit gets 431."""
        headers = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        client, record = self._bad(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n" + headers, max_header_size=65536)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"))

    def test_large_headers_under_limit(self) -> None:
        """A 60 KiB Kerberos-sized header passes under the 64 KiB default."""
        h = _Harness()
        proxy, client = h.client()
        token = b"A" * 60000
        proxy.dataReceived(b"GET http://x/ HTTP/1.1\r\nHost: x\r\nAuthorization: Negotiate " + token + b"\r\n\r\n")
        upstream = h.connector.pending[0].succeed()
        self.assertIn(token, upstream.transport.value())

    def test_client_not_allowed(self) -> None:
        """A client outside C{clients} gets 403 and a deny record."""
        h = _Harness()
        proxy, client = h.client("203.0.113.5")
        proxy.dataReceived(GET)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403 Forbidden\r\n"))
        self.assertEqual(h.connector.pending, [])
        record = h.records.events[0]
        self.assertEqual((record["verdict"], record["reason"]), ("deny", "client not allowed"))

    def test_default_policy_deny(self) -> None:
        """With C{default_policy = "deny"} and no rules, requests get 403."""
        h = _Harness(allow=False)
        proxy, client = h.client()
        proxy.dataReceived(GET)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403 "))
        self.assertEqual(h.records.events[0]["verdict"], "deny")

    def test_stall_mid_head(self) -> None:
        """A client that stops in the middle of its request head gets 408 after idle_timeout."""
        h = _Harness(idle_timeout=2.0)
        proxy, client = h.client()
        proxy.dataReceived(b"GET http://x/ HTTP/1.1\r\nHost: x\r\n")
        h.clock.advance(1.9)
        self.assertFalse(client.disconnecting)
        h.clock.advance(0.2)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertTrue(client.disconnecting)

    def test_idle_keep_alive_closed_quietly(self) -> None:
        """An idle keep-alive connection between requests is closed without a response."""
        h = _Harness(idle_timeout=2.0)
        proxy, client = h.client()
        h.clock.advance(3)
        self.assertEqual(client.value(), b"")
        self.assertTrue(client.disconnecting)

    def test_upstream_reset_mid_body(self) -> None:
        """
        When the origin drops the connection in the middle of a body the
        client connection is aborted, so the client sees a truncated response
        rather than a short one that looks complete.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(GET)
        upstream = h.connector.pending[0].succeed()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\npartial")
        upstream.connectionLost(Failure(error.ConnectionLost()))
        self.assertTrue(client.disconnected)
        self.assertIn("closed the connection mid-body", h.records.events[0]["reason"])

    def test_upstream_gone_before_response(self) -> None:
        """An origin that closes without answering gives 502."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(GET)
        upstream = h.connector.pending[0].succeed()
        upstream.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "))

    def test_long_poll_timeout(self) -> None:
        """An origin silent for idle_timeout after the request gets 504."""
        h = _Harness(idle_timeout=30.0)
        proxy, client = h.client()
        proxy.dataReceived(GET)
        h.connector.pending[0].succeed()
        h.clock.advance(29)
        self.assertEqual(client.value(), b"")
        h.clock.advance(2)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 "))


class ConnectTests(SynchronousTestCase):
    """
    CONNECT opens a tunnel that goes through detection and the tunnel
    handoff.
    """

    def _tunnel(self, **service: Any) -> tuple[_Harness, ExplicitProxy, StringTransport, Any]:
        h = _Harness(**service)
        proxy, client = h.client()
        proxy.dataReceived(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        self.assertEqual(client.value(), b"")  # answered once the upstream connects
        upstream = h.connector.pending[0].succeed()
        self.assertEqual(client.value(), b"HTTP/1.1 200 Connection established\r\n\r\n")
        client.clear()
        return h, proxy, client, upstream

    def test_bytes_both_ways(self) -> None:
        """
        After 200, client bytes (including those sent with the CONNECT) reach
        the server and server bytes reach the client; each side is the other's
        producer.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\nearly")
        upstream = h.connector.pending[0].succeed()
        proxy.dataReceived(b" bytes")
        h.clock.advance(PEEK_TIMEOUT)
        self.assertEqual(upstream.transport.value(), b"early bytes")
        upstream.dataReceived(b"reply")
        self.assertTrue(client.value().endswith(b"reply"))
        self.assertIs(client.producer, upstream.transport)
        self.assertIs(upstream.transport.producer, client)

    def test_server_speaks_first(self) -> None:
        """A server that speaks first ends detection at once: the stream is C{tcp}."""
        h, proxy, client, upstream = self._tunnel()
        upstream.dataReceived(b"SSH-2.0-OpenSSH\r\n")
        self.assertEqual(client.value(), b"SSH-2.0-OpenSSH\r\n")
        self.assertEqual(proxy.session.client_protocol, "tcp")

    def test_half_close_and_record(self) -> None:
        """
        A client half-close is passed on; when both sides are done the
        tunnel's record has C{CONNECT host:port 200}, C{tcp}, tunneled.
        """
        h, proxy, client, upstream = self._tunnel(detect_protocol=False)
        proxy.dataReceived(b"x" * 10)
        proxy.readConnectionLost()
        self.assertTrue(upstream.transport.write_closed)
        self.assertFalse(upstream.transport.disconnecting)
        upstream.dataReceived(b"y" * 20)
        upstream.readConnectionLost()
        [record] = h.records.events
        self.assertEqual(
            {k: record[k] for k in ("method", "target", "status", "client_protocol", "tunneled", "bytes_in", "bytes_out")},
            {
                "method": "CONNECT",
                "target": "origin.test:443",
                "status": 200,
                "client_protocol": "tcp",
                "tunneled": True,
                "bytes_in": len(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n") + 10,
                "bytes_out": len(b"HTTP/1.1 200 Connection established\r\n\r\n") + 20,
            },
        )

    def test_tunnel_idle_timeout(self) -> None:
        """A tunnel with no traffic for idle_timeout is closed and logged."""
        h, proxy, client, upstream = self._tunnel(detect_protocol=False, idle_timeout=60.0)
        h.clock.advance(59)
        proxy.dataReceived(b"x")
        h.clock.advance(59)
        self.assertFalse(client.disconnecting)
        h.clock.advance(2)
        self.assertTrue(client.disconnecting)
        self.assertIn("idle timeout", h.records.events[0]["reason"])

    def test_connect_refused(self) -> None:
        """A CONNECT to a port nobody listens on gets 502."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        h.connector.pending[0].deferred.errback(Failure(error.ConnectionRefusedError()))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "))
        self.assertEqual(h.records.events[0]["target"], "origin.test:443")


class HeadLimitTests(SynchronousTestCase):
    """
    The head limit holds however the head arrives.
    """

    def test_whole_oversized_head(self) -> None:
        """A complete 70 KiB head arriving in one read still gets 431, and nothing goes upstream."""
        h = _Harness()
        proxy, client = h.client()
        head = b"GET http://x/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * (70 * 1024) + b"\r\n\r\n"
        proxy.dataReceived(head)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 431 "))
        self.assertEqual(h.connector.pending, [])

    def test_whole_oversized_line(self) -> None:
        """A complete request with a 70 KiB target in one read gets 414."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(b"GET http://x/" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 414 "))


class PoolSafetyTests(SynchronousTestCase):
    """
    An upstream connection goes back to the pool only when nothing of the
    last exchange is left on it.
    """

    def test_extra_bytes_not_pooled(self) -> None:
        """
        A server that sends more than one response's bytes is closed, and the
        next client's request gets a fresh connection, never the stale bytes.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(GET)
        upstream = h.connector.pending[0].succeed()
        upstream.dataReceived(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstale!")
        self.assertTrue(upstream.transport.disconnecting)
        other, other_client = h.client("127.0.0.2")
        other.dataReceived(GET)
        self.assertEqual(len(h.connector.pending), 2)
        self.assertNotIn(b"stale!", other_client.value())


class ReadingTests(SynchronousTestCase):
    """
    Client requests are read as strictly as reverse mode reads them (what
    could be read two ways is refused); origin responses as leniently as
    browsers read them.
    """

    def _forwarded(self, request: bytes) -> tuple[_Harness, ExplicitProxy, StringTransport, Any]:
        """A client that sent C{request}, and the upstream connection it was forwarded on."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(request)
        return h, proxy, client, h.connector.pending[0].succeed()

    def _bad(self, data: bytes) -> tuple[bytes, dict[str, Any]]:
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(data)
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.connector.pending, [])
        [record] = h.records.events
        return client.value(), record

    def test_smuggling_refused(self) -> None:
        """Content-Length with Transfer-Encoding, or a folded header, gets 400 naming the reason."""
        both = b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        response, record = self._bad(both)
        self.assertTrue(response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response)
        self.assertEqual(record["reason"], "malformed HTTP request: request smuggling: both Content-Length and Transfer-Encoding")
        folded = b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nX-A: one\r\n two\r\n\r\n"
        response, record = self._bad(folded)
        self.assertTrue(response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response)
        self.assertIn("obs-fold", record["reason"])

    def test_bad_chunked_body(self) -> None:
        """A chunked request body that breaks its framing gets 400, and the connection closes."""
        h, proxy, client, upstream = self._forwarded(b"POST http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        proxy.dataReceived(b"zz\r\nhello\r\n")
        self.assertIn(b"HTTP/1.1 400 Bad Request\r\n", client.value())
        self.assertTrue(client.disconnecting)
        self.assertTrue(any("malformed chunked body" in str(e.get("reason")) for e in h.records.events))
        self.assertNotIn(b"hello", upstream.transport.value())

    def test_lenient_origin(self) -> None:
        """
        A response head with bare LF line ends and a folded header reaches
        the client with CRLFs and the header unfolded.
        """
        h, proxy, client, upstream = self._forwarded(GET)
        upstream.dataReceived(b"HTTP/1.1 200 OK\nX-Folded: one\n  two\nContent-Length: 5\n\nhello")
        response = client.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\nx-folded: one two\r\ncontent-length: 5\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello"))
        self.assertEqual(h.records.events[0]["status"], 200)

    def test_malformed_origin(self) -> None:
        """A response that is not HTTP gets 502 naming the upstream's fault."""
        h, proxy, client, upstream = self._forwarded(GET)
        upstream.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertTrue(upstream.transport.disconnecting)
        self.assertIn("malformed HTTP response from upstream", h.records.events[0]["reason"])

    def test_pipelined(self) -> None:
        """Two requests in one read are answered in order, the second once the first is done."""
        h, proxy, client, upstream = self._forwarded(GET + GET)
        self.assertEqual(upstream.transport.value().count(b"GET /a?b=1 HTTP/1.1"), 1)
        upstream.dataReceived(OK)
        self.assertEqual(upstream.transport.value().count(b"GET /a?b=1 HTTP/1.1"), 2)
        upstream.dataReceived(OK)
        self.assertEqual(client.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual([e["seq"] for e in h.records.events], [1, 2])
        self.assertFalse(client.disconnecting)

    def test_http10_client(self) -> None:
        """An HTTP/1.0 client gets a body of unknown length ended by the close, and the connection closes."""
        h, proxy, client, upstream = self._forwarded(b"GET http://origin.test/ HTTP/1.0\r\n\r\n")
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        response = client.value()
        self.assertNotIn(b"chunked", response.lower())
        self.assertTrue(response.endswith(b"\r\n\r\nhello"), response)
        self.assertTrue(client.disconnecting)

    def test_half_close_mid_head(self) -> None:
        """A client that closes its side in the middle of a head gets 400."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(b"GET http://origin.test/ HTTP/1.1\r\nHost: ori")
        proxy.readConnectionLost()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertIn("before the request head was complete", h.records.events[0]["reason"])
        self.assertTrue(client.disconnecting)
