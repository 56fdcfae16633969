"""
Tests for the C{transparent} and C{tcp-tunnel} services of
L{txgate.net.streams}, in memory: the client on a L{StringTransport} whose
socket answers C{SO_ORIGINAL_DST}, upstreams from a L{FakeConnector}.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Mapping

import attrs
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.test_origdst import sockaddr_in, sockaddr_in6
from txgate.accesslog import AccessLog
from txgate.auth import Realm
from txgate.config import ServiceConfig
from txgate.interfaces import NEED_MORE, NOT_MINE, Checkpoint, Decision, Detected, IPolicy
from txgate.net.pipeline import PEEK_TIMEOUT, PipelineSettings
from txgate.net.streams import StreamProxyFactory, original_destination
from txgate.net.upstream import UpstreamPool
from txgate.origdst import SO_ORIGINAL_DST, SOL_IP, SOL_IPV6
from txgate.plugins import Plugin, Registry, discover
from txgate.session import Address, Session
from txgate.testing import FakeConnector, HalfCloseableStringTransport, RecordingObserver


@implementer(IPolicy)
@attrs.define
class RecordingPolicy:
    """Allows (or denies, naming C{deny_reason}) and records each checkpoint's facts."""

    deny_reason: str | None = None
    properties: dict[str, object] = attrs.Factory(dict)
    calls: list[tuple[Checkpoint, dict[str, object]]] = attrs.Factory(list)

    def decide(self, checkpoint: Checkpoint, session: Session, facts: Mapping[str, object]) -> Decision:
        self.calls.append((checkpoint, dict(facts)))
        if checkpoint is Checkpoint.REQUEST and self.deny_reason is not None:
            return Decision(False, self.deny_reason)
        return Decision(True, properties=self.properties if checkpoint is Checkpoint.REQUEST else {})

    def facts(self, checkpoint: Checkpoint) -> list[dict[str, object]]:
        return [f for c, f in self.calls if c is checkpoint]


@attrs.frozen
class _GetDetector:
    """Detects a request line starting C{GET }, standing in for the HTTP detector."""

    name = "test-get"
    priority = 0

    def detect(self, buffered: bytes) -> Any:
        if buffered.startswith(b"GET "):
            return Detected("http")
        return NOT_MINE if buffered[:4] != b"GET "[: len(buffered)] else NEED_MORE


def _with_get_detector(registry: Registry) -> Registry:
    plugin = Plugin("detector", "test-get", __file__, _GetDetector())
    return attrs.evolve(registry, plugins=(*registry.plugins, plugin))


@attrs.define
class FakeSocket:
    """Answers C{getsockopt} from a table, as the kernel would for a redirected socket."""

    family: int = socket.AF_INET
    options: dict[tuple[int, int], bytes] = attrs.Factory(dict)

    def getsockopt(self, level: int, option: int, size: int = 0) -> bytes:
        try:
            return self.options[level, option]
        except KeyError:
            raise OSError(2, "No such file or directory") from None


class SocketTransport(HalfCloseableStringTransport):
    """A string transport with a socket handle."""

    def __init__(self, handle: FakeSocket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._handle = handle

    def getHandle(self) -> FakeSocket:
        return self._handle


class Harness:
    """A stream service of any kind with a fake connector, clock and access log."""

    def __init__(
        self,
        kind: str,
        policy: RecordingPolicy | None = None,
        realms: Mapping[str, Realm] | None = None,
        registry: Registry | None = None,
        **service: Any,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.connector = FakeConnector(self.clock)
        self.pool = UpstreamPool(self.connector, self.clock)  # type: ignore[arg-type]
        options: dict[str, Any] = dict(
            name=kind,
            kind=kind,
            listen="tcp:0",
            clients=tuple(ipaddress.ip_network(n) for n in ("127.0.0.0/8", "10.200.1.0/24", "fd00:200:1::/64")),
            detect_protocol=False,
        )
        options.update(service)
        self.service = ServiceConfig(**options)
        self.policy = policy or RecordingPolicy()
        settings = PipelineSettings(
            registry=registry or discover(),
            policy=self.policy,
            reactor=self.clock,
            detect_protocol=self.service.detect_protocol,
            tunnel_on_protocol_error=self.service.tunnel_on_protocol_error,
            idle_timeout=self.service.idle_timeout,
            realms=realms or {},
        )
        self.access = AccessLog()
        self.records = RecordingObserver()
        self.access.publisher.addObserver(self.records)
        self.factory = StreamProxyFactory(self.service, settings, self.connector, self.pool, self.access)  # type: ignore[arg-type]

    def client(
        self,
        host: str = "10.200.1.2",
        original: bytes | None = None,
        listener: Any = None,
        family: int = socket.AF_INET,
    ) -> tuple[Any, SocketTransport]:
        """Accept a connection from C{host} whose socket reports C{original}."""
        handle = FakeSocket(family)
        if original is not None:
            level = SOL_IPV6 if original[:2] == sockaddr_in6("::1", 1)[:2] else SOL_IP
            handle.options[level, SO_ORIGINAL_DST] = original
        peer = IPv6Address("TCP", host, 40000) if ":" in host else IPv4Address("TCP", host, 40000)
        transport = SocketTransport(
            handle, peerAddress=peer, hostAddress=listener or IPv4Address("TCP", "10.200.1.1", 3129)
        )
        protocol = self.factory.buildProtocol(None)
        protocol.makeConnection(transport)
        return protocol, transport


class OriginalDestinationTests(SynchronousTestCase):
    """L{original_destination} asks the socket the right level for its family."""

    def test_ipv4_socket(self) -> None:
        handle = FakeSocket(socket.AF_INET, {(SOL_IP, 80): sockaddr_in("10.200.2.2", 443)})
        self.assertEqual(original_destination(SocketTransport(handle)), Address("10.200.2.2", 443))

    def test_ipv6_socket(self) -> None:
        """An IPv6 socket answers at SOL_IPV6; an IPv4 connection on a dual-stack one at SOL_IP."""
        handle = FakeSocket(socket.AF_INET6, {(SOL_IPV6, 80): sockaddr_in6("fd00:200:2::2", 80)})
        self.assertEqual(original_destination(SocketTransport(handle)), Address("fd00:200:2::2", 80))
        handle = FakeSocket(socket.AF_INET6, {(SOL_IP, 80): sockaddr_in("10.200.2.2", 80)})
        self.assertEqual(original_destination(SocketTransport(handle)), Address("10.200.2.2", 80))

    def test_none(self) -> None:
        """No conntrack entry (ENOENT), or no socket at all, is no destination."""
        self.assertIsNone(original_destination(SocketTransport(FakeSocket())))
        self.assertIsNone(original_destination(HalfCloseableStringTransport()))


class TransparentTests(SynchronousTestCase):
    """A redirected connection goes to its original destination."""

    def test_tunnel_to_original_destination(self) -> None:
        """
        The upstream is the original destination (never a name from the
        stream); policy sees url.host/url.port and no method; bytes flow both
        ways and the record names the destination with method and status
        C{-}.
        """
        h = Harness("transparent")
        proxy, client = h.client(original=sockaddr_in("10.200.2.2", 443))
        [pending] = h.connector.pending
        self.assertEqual((pending.host, pending.port, pending.tls), ("10.200.2.2", 443, False))
        self.assertEqual(client.producerState, "paused")
        proxy.dataReceived(b"early")
        upstream = pending.succeed()
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(upstream.transport.value(), b"early")
        proxy.dataReceived(b" more")
        upstream.dataReceived(b"reply")
        self.assertEqual(upstream.transport.value(), b"early more")
        self.assertEqual(client.value(), b"reply")
        [facts] = h.policy.facts(Checkpoint.REQUEST)
        self.assertEqual((facts["url.host"], facts["url.port"], "method" in facts), ("10.200.2.2", 443, False))
        self.assertIn("category", facts)
        proxy.readConnectionLost()
        upstream.readConnectionLost()
        [record] = h.records.events
        self.assertEqual(
            {k: record[k] for k in ("method", "target", "status", "verdict", "service", "client", "bytes_in", "bytes_out", "upstream")},
            {
                "method": "-",
                "target": "10.200.2.2:443",
                "status": None,
                "verdict": "allow",
                "service": "transparent",
                "client": "10.200.1.2:40000",
                "bytes_in": 10,
                "bytes_out": 5,
                "upstream": "new",
            },
        )

    def test_ipv6(self) -> None:
        """An IPv6 original destination is used and logged as [v6]:port."""
        h = Harness("transparent")
        proxy, client = h.client(
            host="fd00:200:1::2",
            original=sockaddr_in6("fd00:200:2::2", 80),
            listener=IPv6Address("TCP", "fd00:200:1::1", 3129),
            family=socket.AF_INET6,
        )
        [pending] = h.connector.pending
        self.assertEqual((pending.host, pending.port), ("fd00:200:2::2", 80))
        pending.succeed()
        proxy.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(h.records.events[0]["target"], "[fd00:200:2::2]:80")

    def test_not_redirected(self) -> None:
        """
        No original destination, or the listener's own address (a direct
        connection: connecting would loop), closes the connection and logs
        why; nothing connects.
        """
        for original, reason in (
            (None, "no original destination"),
            (sockaddr_in("10.200.1.1", 3129), "connecting would loop"),
        ):
            h = Harness("transparent")
            proxy, client = h.client(original=original)
            self.assertEqual(h.connector.pending, [])
            self.assertTrue(client.disconnecting)
            [record] = h.records.events
            self.assertIn(reason, record["reason"])
            self.assertEqual(record["verdict"], "deny")

    def test_client_not_allowed(self) -> None:
        """A client outside C{clients} is closed before anything connects."""
        h = Harness("transparent")
        proxy, client = h.client(host="192.0.2.9", original=sockaddr_in("10.200.2.2", 80))
        self.assertEqual(h.connector.pending, [])
        self.assertTrue(client.disconnecting)
        [record] = h.records.events
        self.assertEqual((record["verdict"], record["reason"], record["target"]), ("deny", "client not allowed", "10.200.2.2:80"))

    def test_policy_denies(self) -> None:
        """A REQUEST denial closes the connection and logs policy's reason."""
        h = Harness("transparent", policy=RecordingPolicy(deny_reason="no thanks"))
        proxy, client = h.client(original=sockaddr_in("10.200.2.2", 80))
        self.assertEqual(h.connector.pending, [])
        self.assertTrue(client.disconnecting)
        self.assertEqual((h.records.events[0]["verdict"], h.records.events[0]["reason"]), ("deny", "no thanks"))

    def test_connect_refused(self) -> None:
        """A refused upstream closes the client; the record says why."""
        h = Harness("transparent")
        proxy, client = h.client(original=sockaddr_in("10.200.2.2", 80))
        h.connector.pending[0].deferred.errback(Failure(error.ConnectionRefusedError()))
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.records.events[0]["reason"], "connection refused by 10.200.2.2:80")

    def test_client_half_close_while_connecting(self) -> None:
        """A client that sent everything and half-closed before the upstream connected is carried whole."""
        h = Harness("transparent")
        proxy, client = h.client(original=sockaddr_in("10.200.2.2", 7))
        proxy.dataReceived(b"all of it")
        proxy.readConnectionLost()
        self.assertFalse(client.disconnecting)
        upstream = h.connector.pending[0].succeed()
        self.assertEqual(upstream.transport.value(), b"all of it")
        self.assertTrue(upstream.transport.write_closed)

    def test_detection_http(self) -> None:
        """
        With detection on, HTTP on a transparent port goes to the HTTP
        handoff: the request reaches the original destination in origin-form,
        the Host header only names it.
        """
        h = Harness("transparent", detect_protocol=True, registry=_with_get_detector(discover()))
        proxy, client = h.client(original=sockaddr_in("10.200.2.2", 80))
        upstream = h.connector.pending[0].succeed()
        proxy.dataReceived(b"GET /a HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.assertEqual(len(h.connector.pending), 1)
        self.assertTrue(upstream.transport.value().startswith(b"GET /a HTTP/1.1\r\n"), upstream.transport.value())
        self.assertEqual(proxy.session.client_protocol, "http")

    def test_idle_before_connected(self) -> None:
        """A connection whose upstream never answers is closed at the idle timeout (when shorter)."""
        h = Harness("transparent", idle_timeout=5.0)
        proxy, client = h.client(original=sockaddr_in("10.200.2.2", 80))
        h.clock.advance(6)
        self.assertTrue(client.disconnecting)
        self.assertIn("idle timeout", h.records.events[0]["reason"])
        h.connector.pending[0].succeed()  # too late: dropped
        self.assertEqual(len(h.records.events), 1)


class TCPTunnelTests(SynchronousTestCase):
    """A tcp-tunnel service sends every connection to its destination."""

    def test_fixed_destination(self) -> None:
        """Every connection goes to C{destination}, whatever the client sends."""
        h = Harness("tcp-tunnel", destination=("backend.test", 2525))
        proxy, client = h.client(host="127.0.0.1")
        [pending] = h.connector.pending
        self.assertEqual((pending.host, pending.port), ("backend.test", 2525))
        upstream = pending.succeed()
        upstream.dataReceived(b"220 ready\r\n")  # server speaks first
        h.clock.advance(PEEK_TIMEOUT)
        self.assertEqual(client.value(), b"220 ready\r\n")
        proxy.dataReceived(b"QUIT\r\n")
        self.assertEqual(upstream.transport.value(), b"QUIT\r\n")
        proxy.connectionLost(Failure(error.ConnectionDone()))
        upstream.connectionLost(Failure(error.ConnectionDone()))
        record = h.records.events[0]
        self.assertEqual((record["method"], record["target"], record["verdict"]), ("-", "backend.test:2525", "allow"))

    def test_haproxy_waits_for_address(self) -> None:
        """Behind a haproxy: listener nothing happens until the first bytes name the client."""
        h = Harness("tcp-tunnel", destination=("backend.test", 22), listen="haproxy:tcp:0")
        proxy, client = h.client(host="127.0.0.1")
        self.assertEqual(h.connector.pending, [])
        proxy.dataReceived(b"SSH-2.0-x\r\n")
        upstream = h.connector.pending[0].succeed()
        self.assertEqual(upstream.transport.value(), b"SSH-2.0-x\r\n")
