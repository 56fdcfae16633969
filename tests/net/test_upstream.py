"""
Tests for L{txgate.net.upstream}: holding a connection's bytes until someone
carries them, the keep-alive pool, and what a failed connect tells the client.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, SynchronousResolver, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgate.hosts import Hosts
from txgate.net.upstream import Connector, IdlePools, UpstreamPool, describe_connect_failure
from txgate.testing import FakeConnector, make_upstream


class _Receiver:
    """Records what an attached upstream delivers, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def upstream_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def upstream_eof(self) -> None:
        self.events.append(("eof",))

    def upstream_lost(self, reason: Failure) -> None:
        self.events.append(("lost", reason))


class AttachTests(SynchronousTestCase):
    """
    Until a receiver is attached, the server's bytes are held and reading
    stops; attaching delivers them in order and reading resumes.
    """

    def test_bytes_held_then_delivered(self) -> None:
        """Bytes before attach pause the transport and arrive on attach, in order; later bytes go straight through."""
        upstream = make_upstream()
        upstream.dataReceived(b"HTTP/1.1 200 OK\r\n")
        upstream.dataReceived(b"\r\n")
        self.assertEqual(upstream.transport.producerState, "paused")

        receiver = _Receiver()
        upstream.attach(receiver)
        self.assertEqual(receiver.events, [("data", b"HTTP/1.1 200 OK\r\n"), ("data", b"\r\n")])
        self.assertEqual(upstream.transport.producerState, "producing")

        upstream.dataReceived(b"more")
        self.assertEqual(receiver.events[-1], ("data", b"more"))

    def test_eof_before_attach(self) -> None:
        """A half-close before attach is delivered after the held bytes."""
        upstream = make_upstream()
        upstream.dataReceived(b"bye")
        upstream.readConnectionLost()
        receiver = _Receiver()
        upstream.attach(receiver)
        self.assertEqual(receiver.events, [("data", b"bye"), ("eof",)])

    def test_lost_before_attach(self) -> None:
        """A lost connection before attach is delivered after the held bytes, with its reason."""
        upstream = make_upstream()
        upstream.dataReceived(b"bye")
        reason = Failure(error.ConnectionLost())
        upstream.connectionLost(reason)
        receiver = _Receiver()
        upstream.attach(receiver)
        self.assertEqual(receiver.events, [("data", b"bye"), ("lost", reason)])


class UpstreamPoolTests(SynchronousTestCase):
    """
    Idle keep-alive connections are reused per scheme, host and port, for at
    most C{idle_timeout} seconds, and never after the server spoke or closed.
    """

    def setUp(self) -> None:
        self.connector = FakeConnector()
        self.clock = Clock()
        self.pool = UpstreamPool(self.connector, self.clock)

    def connect(self, scheme: str = "http", host: str = "origin.test", port: int = 80) -> Any:
        """Get a new connection from the pool, completing the connect it makes."""
        d = self.pool.get(scheme, host, port)
        upstream = self.connector.pending[-1].succeed()
        self.assertEqual(self.successResultOf(d), (upstream, False))
        return upstream

    def assert_connects(self) -> None:
        """The next C{get} opens a new connection instead of reusing one."""
        before = len(self.connector.pending)
        self.pool.get("http", "origin.test", 80)
        self.assertEqual(len(self.connector.pending), before + 1)

    def test_empty_pool_connects(self) -> None:
        """With nothing idle, C{get} connects (TLS for https) and reports not reused."""
        self.connect()
        self.connect("https", "origin.test", 443)
        self.assertEqual(
            [(p.host, p.port, p.tls) for p in self.connector.pending],
            [("origin.test", 80, False), ("origin.test", 443, True)],
        )

    def test_put_then_get_reuses(self) -> None:
        """A connection put back is returned by the next C{get} as reused, without a new connect."""
        upstream = self.connect()
        self.pool.put("http", "origin.test", 80, upstream)
        self.assertEqual(self.successResultOf(self.pool.get("http", "origin.test", 80)), (upstream, True))
        self.assertEqual(len(self.connector.pending), 1)
        self.assertFalse(upstream.transport.disconnecting)

    def test_other_key_not_reused(self) -> None:
        """A connection to one server is not reused for another port or scheme."""
        self.pool.put("http", "origin.test", 80, self.connect())
        self.pool.get("http", "origin.test", 8080)
        self.pool.get("https", "origin.test", 80)
        self.assertEqual(len(self.connector.pending), 3)

    def test_idle_timeout(self) -> None:
        """An idle connection is closed C{idle_timeout} seconds after it was put, and not returned."""
        upstream = self.connect()
        self.pool.put("http", "origin.test", 80, upstream)
        self.clock.advance(self.pool.idle_timeout - 1)
        self.assertFalse(upstream.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(upstream.transport.disconnecting)
        self.assert_connects()

    def test_reuse_cancels_timer(self) -> None:
        """A connection taken from the pool is not closed by the idle timer."""
        upstream = self.connect()
        self.pool.put("http", "origin.test", 80, upstream)
        self.pool.get("http", "origin.test", 80)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_speaks_while_idle(self) -> None:
        """A server that sends bytes while idle is closed and dropped."""
        upstream = self.connect()
        self.pool.put("http", "origin.test", 80, upstream)
        upstream.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(upstream.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assert_connects()

    def test_server_half_closes_while_idle(self) -> None:
        """A server that half-closes while idle is closed and dropped."""
        upstream = self.connect()
        self.pool.put("http", "origin.test", 80, upstream)
        upstream.readConnectionLost()
        self.assertTrue(upstream.transport.disconnecting)
        self.assert_connects()

    def test_server_closes_while_idle(self) -> None:
        """A connection the server closes while idle is dropped."""
        upstream = self.connect()
        self.pool.put("http", "origin.test", 80, upstream)
        upstream.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assert_connects()

    def test_max_idle_per_key(self) -> None:
        """Past C{max_idle_per_key} idle connections to one server, the extras are closed."""
        upstreams = [self.connect() for _ in range(self.pool.max_idle_per_key + 2)]
        for upstream in upstreams:
            self.pool.put("http", "origin.test", 80, upstream)
        self.assertEqual(
            [u.transport.disconnecting for u in upstreams],
            [False] * self.pool.max_idle_per_key + [True, True],
        )

    def test_close_all(self) -> None:
        """C{close_all} closes every idle connection and cancels their timers."""
        upstreams = [self.connect(), self.connect("https", "other.test", 443)]
        self.pool.put("http", "origin.test", 80, upstreams[0])
        self.pool.put("https", "other.test", 443, upstreams[1])
        self.pool.close_all()
        self.assertEqual([u.transport.disconnecting for u in upstreams], [True, True])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assert_connects()


class _RecordingResolver(SynchronousResolver):
    """Resolves every name to 127.0.0.1, like its parent, and records the names asked for."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, *args: Any, **kwargs: Any) -> Any:
        self.names.append(hostName)
        return super().resolveHostName(resolutionReceiver, hostName, *args, **kwargs)


class ConnectorHostsTests(SynchronousTestCase):
    """
    With C{hosts} (C{[txgate] hosts_file}), a listed name is connected to at
    its address without being resolved; other names and IP literals are
    resolved as before, and TLS still names the host.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.resolver = _RecordingResolver()
        self.reactor.nameResolver = self.resolver
        hosts = Hosts.from_mapping({"*.bench.test": "10.1.2.3", "v6.bench.test": "2001:db8::7"})
        self.connector = Connector(self.reactor, 7.0, hosts)

    def test_overridden_name(self) -> None:
        """A name matching an entry (any case, trailing dot) connects to its address, with the connect timeout."""
        self.connector.connect("WWW.bench.test.", 8080)
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("10.1.2.3", 8080, 7.0))
        self.assertEqual(self.resolver.names, [])

    def test_overridden_ipv6(self) -> None:
        """An IPv6 override connects to the IPv6 address."""
        self.connector.connect("v6.bench.test", 80)
        self.assertEqual(self.reactor.tcpClients[0][:2], ("2001:db8::7", 80))

    def test_other_names_resolved(self) -> None:
        """
        A name not listed goes to the resolver; an IP literal is connected
        to directly (no getaddrinfo in a thread per connection).
        """
        self.connector.connect("origin.example", 443)
        self.connector.connect("10.9.9.9", 80)
        self.connector.connect("2001:db8::9", 81)
        self.assertEqual(self.resolver.names, ["origin.example"])
        self.assertEqual([c[:2] for c in self.reactor.tcpClients][-2:], [("10.9.9.9", 80), ("2001:db8::9", 81)])

    def test_no_hosts(self) -> None:
        """Without C{hosts}, every name is resolved."""
        Connector(self.reactor, 7.0).connect("www.bench.test", 443)
        self.assertEqual(self.resolver.names, ["www.bench.test"])

    def test_tls_keeps_name(self) -> None:
        """Over TLS, the overridden connection still sends the name as SNI."""
        self.connector.connect("www.bench.test", 443, tls=True)
        [(host, port, factory, _, _)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("10.1.2.3", 443))
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertIn(b"www.bench.test", transport.value())


class DescribeConnectFailureTests(SynchronousTestCase):
    """
    A failed connect becomes the status the client gets and the reason the
    access log shows.
    """

    def describe(self, exception: Exception) -> tuple[int, str]:
        return describe_connect_failure(Failure(exception), "origin.test", 443)

    def test_dns(self) -> None:
        """A failed DNS lookup is a 502 naming the host."""
        self.assertEqual(
            self.describe(error.DNSLookupError("no results")), (502, "DNS lookup failed for origin.test")
        )

    def test_refused(self) -> None:
        """A refused connection is a 502 naming host and port."""
        self.assertEqual(
            self.describe(error.ConnectionRefusedError()), (502, "connection refused by origin.test:443")
        )

    def test_timeout(self) -> None:
        """A connect timeout is a 504."""
        self.assertEqual(self.describe(error.TimeoutError()), (504, "timed out connecting to origin.test:443"))

    def test_other(self) -> None:
        """Anything else is a 502 with the error's text."""
        self.assertEqual(
            self.describe(ValueError("certificate verify failed")),
            (502, "could not connect to origin.test:443: certificate verify failed"),
        )


class IdlePoolsTests(SynchronousTestCase):
    """
    Idle connections by key: at most C{max_keys} keys keep any, the least
    recently used losing theirs first; groups tell whether any key of a
    group has idle connections.
    """

    def setUp(self) -> None:
        self.pools = IdlePools(Clock(), 2, 60.0, group=lambda key: key[0], max_keys=2)

    def test_least_recently_used_key_closed(self) -> None:
        """A third key closes the idle connections of the key used least recently."""
        a, b, c = make_upstream(), make_upstream(), make_upstream()
        self.pools.put(("s1", "a"), a)
        self.pools.put(("s1", "b"), b)
        self.assertIsNone(self.pools.take(("s1", "x")))
        self.pools.put(("s1", "b"), make_upstream())  # b's key is now the most recent
        self.pools.put(("s2", "c"), c)
        self.assertTrue(a.transport.disconnecting)
        self.assertFalse(b.transport.disconnecting)
        self.assertIsNone(self.pools.take(("s1", "a")))
        self.assertIs(self.pools.take(("s2", "c")), c)

    def test_groups(self) -> None:
        """A group has idle connections while one of its keys does."""
        self.assertFalse(self.pools.has_group("s1"))
        upstream = make_upstream()
        self.pools.put(("s1", "a"), upstream)
        self.assertTrue(self.pools.has_group("s1"))
        self.assertFalse(self.pools.has_group("s2"))
        self.assertIs(self.pools.take(("s1", "a")), upstream)
        self.assertFalse(self.pools.has_group("s1"))

    def test_closed_connection_leaves_no_pool(self) -> None:
        """A connection already closed is not kept, and its key and group are not left behind."""
        upstream = make_upstream()
        upstream.connectionLost(Failure(error.ConnectionDone()))
        self.pools.put(("s1", "a"), upstream)
        self.assertFalse(self.pools.has_group("s1"))
        self.assertIsNone(self.pools.take(("s1", "a")))

    def test_evicted_pool_spares_newer_one(self) -> None:
        """Connections of an evicted key that close later do not drop a newer pool of that key."""
        old = make_upstream()
        self.pools.put(("s1", "a"), old)
        self.pools.put(("s2", "b"), make_upstream())
        self.pools.put(("s3", "c"), make_upstream())  # evicts ("s1", "a")
        fresh = make_upstream()
        self.pools.put(("s1", "a"), fresh)  # evicts ("s2", "b")
        old.connectionLost(Failure(error.ConnectionDone()))
        self.assertTrue(self.pools.has_group("s1"))
        self.assertIs(self.pools.take(("s1", "a")), fresh)


class DetachTests(SynchronousTestCase):
    """A detached connection holds the server's bytes again, as before its first attach."""

    def test_detach_holds(self) -> None:
        upstream = make_upstream()
        receiver = _Receiver()
        upstream.attach(receiver)
        upstream.detach()
        upstream.dataReceived(b"later")
        self.assertEqual(receiver.events, [])
        self.assertEqual(upstream.transport.producerState, "paused")
        again = _Receiver()
        upstream.attach(again)
        self.assertEqual(again.events, [("data", b"later")])
