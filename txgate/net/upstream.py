# -*- test-case-name: tests.net.test_upstream -*-
"""
Connections to upstream servers: the connector that opens them and the
keep-alive pool HTTP exchanges borrow them from.
"""

from __future__ import annotations

import collections
import ipaddress
from typing import Any, Callable

import attrs
from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.hosts import Hosts

__all__ = ["Upstream", "Connector", "IdlePool", "IdlePools", "UpstreamPool", "describe_connect_failure", "no_delay"]


def no_delay(transport: Any) -> None:
    """
    Send small writes at once (TCP_NODELAY), as proxies must: with Nagle's
    algorithm a response written in pieces waits for the peer's delayed ACK
    (about 40 ms on Linux), once per intercepted request.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        try:
            set_no_delay(True)
        except OSError:
            pass


@implementer(IHalfCloseableProtocol)
class Upstream(Protocol):
    """
    One connection to an upstream server, handed from its opener to whoever
    carries the stream.

    Until a receiver is attached, bytes from the server are held and the
    connection stops reading, so nothing is lost and nothing piles up. After
    L{attach}, bytes go straight to C{receiver.upstream_data}.

    @ivar exchanges: how many HTTP exchanges it carried (a reused connection has some).
    @ivar lost: the reason, once the connection is gone.
    """

    exchanges = 0
    lost: Failure | None = None
    eof = False
    notify: Any = None
    """Called with no arguments when bytes arrive while no receiver is attached."""
    source: Any = None
    """
    For a connection that may be lent out while its stream waits, what
    lends it: C{lend(upstream) -> bool}, C{get()}, C{put(upstream)} (an
    intercepted server's L{txgate.net.intercept.UpstreamSource}); else C{None}.
    """

    def __init__(self) -> None:
        self._held: list[bytes] = []
        self._receiver: Any = None

    def connectionMade(self) -> None:
        no_delay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._held.append(data)
        self.transport.pauseProducing()
        if self.notify is not None:
            self.notify()

    def readConnectionLost(self) -> None:
        self.eof = True
        if self._receiver is not None:
            self._receiver.upstream_eof()
        elif self.notify is not None:
            self.notify()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason
        if self._receiver is not None:
            self._receiver.upstream_lost(reason)
        elif self.notify is not None:
            self.notify()

    def attach(self, receiver: Any) -> None:
        """
        Send everything this connection receives from now on (and anything
        held) to C{receiver}, which has C{upstream_data(bytes)},
        C{upstream_eof()} and C{upstream_lost(reason)}.
        """
        self._receiver = receiver
        self.notify = None
        held, self._held = self._held, []
        self.dataReceived = receiver.upstream_data  # type: ignore[method-assign]
        for data in held:
            receiver.upstream_data(data)
        if self.lost is not None:
            receiver.upstream_lost(self.lost)
            return
        if self.eof:
            receiver.upstream_eof()
        self.transport.resumeProducing()

    def detach(self) -> None:
        """
        Hold bytes from the server again, as before L{attach}: for a
        connection taken from a pool that is handed on unattached.
        """
        self._receiver = None
        self.__dict__.pop("dataReceived", None)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _UpstreamFactory(Factory):
    protocol = Upstream
    noisy = False  # one log line per upstream connection is noise


@attrs.frozen
class Connector:
    """
    Opens upstream connections with Twisted's endpoints, so tests can swap in
    one backed by a memory reactor.

    @ivar connect_timeout: seconds for the TCP connect (per address tried).
    @ivar hosts: static overrides (C{[txgate] hosts_file}): a name found
        there is connected to at its address, without resolving it. TLS still
        sends and verifies the name; IP literals are never looked up.
    """

    reactor: Any
    connect_timeout: float = 10.0
    hosts: Hosts | None = None

    def connect(self, host: str, port: int, tls: bool = False) -> Deferred[Upstream]:
        endpoint = self._endpoint(host, port)
        if tls:
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint.connect(_UpstreamFactory())

    def _endpoint(self, host: str, port: int) -> Any:
        address = self.hosts.address_of(host) if self.hosts else None
        if address is None:
            if not _is_ip_literal(host):
                return HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
            # HostnameEndpoint would still ask getaddrinfo, in a thread, per connection.
            address = host
        if ":" in address:
            return TCP6ClientEndpoint(self.reactor, address, port, timeout=self.connect_timeout)
        return TCP4ClientEndpoint(self.reactor, address, port, timeout=self.connect_timeout)


def describe_connect_failure(failure: Failure, host: str, port: int) -> tuple[int, str]:
    """
    The HTTP status and the log reason for an upstream connection that could
    not be opened: 504 for a timeout, 502 otherwise.
    """
    where = f"{host}:{port}"
    if failure.check(error.DNSLookupError):
        return 502, f"DNS lookup failed for {host}"
    if failure.check(error.ConnectionRefusedError):
        return 502, f"connection refused by {where}"
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return 504, f"timed out connecting to {where}"
    if failure.check(error.NoRouteError):
        return 502, f"no route to {where}"
    value = failure.value
    detail = str(value).strip() or type(value).__name__
    return 502, f"could not connect to {where}: {detail}"


class _IdleWatcher:
    """
    The receiver of an idle pooled connection: a server that speaks or
    closes while idle loses its place in the pool.
    """

    __slots__ = ("_pool", "_upstream")

    def __init__(self, pool: "IdlePool", upstream: Upstream) -> None:
        self._pool = pool
        self._upstream = upstream

    def upstream_data(self, data: bytes) -> None:
        self._pool.discard(self._upstream)
        self._upstream.transport.loseConnection()

    def upstream_eof(self) -> None:
        self.upstream_data(b"")

    def upstream_lost(self, reason: Failure) -> None:
        self._pool.discard(self._upstream)


class IdlePool:
    """
    The idle keep-alive connections to one server, newest taken first.

    No timer per connection: each connection keeps the time it was put, and
    one timer closes those idle for C{idle_timeout}, so a kept-alive request
    costs no heap operation.

    @ivar emptied: called with no arguments when the last idle connection
        leaves (so a pool of pools can drop this one), or C{None}.
    """

    def __init__(self, clock: Any, max_idle: int, idle_timeout: float = 60.0) -> None:
        self._clock = clock
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.emptied: Any = None
        self._idle: list[tuple[Upstream, float]] = []
        """Oldest first: put appends, take pops the newest."""
        self._timer: Any = None

    def __len__(self) -> int:
        return len(self._idle)

    def take(self) -> Upstream | None:
        """The newest idle connection still open, or C{None}."""
        idle = self._idle
        while idle:
            upstream, _ = idle.pop()
            if upstream.lost is None and not upstream.eof:
                self._check_empty()
                return upstream
        self._check_empty()
        return None

    def put(self, upstream: Upstream) -> None:
        """Keep C{upstream} for reuse, or close it when the pool is full."""
        if upstream.lost is not None or upstream.eof or len(self._idle) >= self.max_idle:
            upstream.transport.loseConnection()
            self._check_empty()  # a pool made for this connection is dropped at once
            return
        upstream.attach(_IdleWatcher(self, upstream))
        self._idle.append((upstream, self._clock.seconds()))
        if self._timer is None:
            self._timer = self._clock.callLater(self.idle_timeout, self._expire)

    def discard(self, upstream: Upstream) -> None:
        self._idle[:] = [(u, since) for u, since in self._idle if u is not upstream]
        self._check_empty()

    def _expire(self) -> None:
        """Close the connections idle for C{idle_timeout}; come back for the next oldest."""
        self._timer = None
        deadline = self._clock.seconds() - self.idle_timeout
        idle = self._idle
        expired = []
        while idle and idle[0][1] <= deadline:
            expired.append(idle.pop(0)[0])
        if idle:
            self._timer = self._clock.callLater(idle[0][1] - deadline, self._expire)
        for upstream in expired:
            upstream.transport.loseConnection()
        self._check_empty()

    def _check_empty(self) -> None:
        if self._idle:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.emptied is not None:
            self.emptied()

    def close_all(self) -> None:
        idle, self._idle = self._idle, []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for upstream, _ in idle:
            upstream.transport.loseConnection()


class IdlePools:
    """
    Idle keep-alive connections by key (a server, and whatever else makes
    two connections to it interchangeable): an L{IdlePool} per key, dropped
    once empty.
    """

    def __init__(
        self,
        clock: IReactorTime,
        max_idle_per_key: int,
        idle_timeout: float,
        group: Callable[[Any], Any] | None = None,
        max_keys: int = 256,
    ) -> None:
        """
        @param group: what groups keys (e.g. the server alone), for
            L{has_group}; C{None} for no groups.
        @param max_keys: how many keys may have idle connections at once;
            past it, the idle connections of the key used least recently are
            closed (a proxy meeting thousands of servers a minute must not
            keep a connection to each).
        """
        self._clock = clock
        self.max_idle_per_key = max_idle_per_key
        self.idle_timeout = idle_timeout
        self.max_keys = max_keys
        self._idle: collections.OrderedDict[Any, IdlePool] = collections.OrderedDict()
        """Least recently used first."""
        self._group = group
        self._groups: collections.Counter[Any] = collections.Counter()
        """Per group, how many of its keys have idle connections."""

    def take(self, key: Any) -> Upstream | None:
        """The newest idle connection for C{key} still open, or C{None}."""
        pool = self._idle.get(key)
        if pool is None:
            return None
        self._idle.move_to_end(key)
        return pool.take()

    def put(self, key: Any, upstream: Upstream) -> None:
        """Keep C{upstream} for reuse under C{key}, or close it when that pool is full."""
        pool = self._idle.get(key)
        if pool is None:
            pool = self._idle[key] = IdlePool(self._clock, self.max_idle_per_key, self.idle_timeout)
            pool.emptied = lambda: self._emptied(key)
            if self._group is not None:
                self._groups[self._group(key)] += 1
            if len(self._idle) > self.max_keys:
                oldest_key, oldest = next(iter(self._idle.items()))
                oldest.emptied = None  # a late callback must not drop a newer pool of that key
                self._emptied(oldest_key)
                oldest.close_all()
        else:
            self._idle.move_to_end(key)
        pool.put(upstream)

    def has_group(self, group: Any) -> bool:
        """Whether some key of C{group} has idle connections (or had, until one is found closed)."""
        return self._groups.get(group, 0) > 0

    def _emptied(self, key: Any) -> None:
        if self._idle.pop(key, None) is not None and self._group is not None:
            group = self._group(key)
            self._groups[group] -= 1
            if self._groups[group] <= 0:
                del self._groups[group]

    def close_all(self) -> None:
        pools, self._idle = list(self._idle.values()), collections.OrderedDict()
        self._groups.clear()
        for pool in pools:
            pool.emptied = None
            pool.close_all()


@attrs.frozen
class _PoolKey:
    scheme: str
    host: str
    port: int


class UpstreamPool:
    """
    Idle keep-alive connections to upstream servers, by scheme, host and
    port (L{IdlePools}), and the connector for new ones.

    @ivar max_idle_per_key: idle connections kept per server; more are closed.
    @ivar idle_timeout: seconds an idle connection is kept.
    """

    max_idle_per_key = 8
    idle_timeout = 60.0

    def __init__(self, connector: Connector, clock: IReactorTime) -> None:
        self._connector = connector
        self._idle = IdlePools(clock, self.max_idle_per_key, self.idle_timeout)

    def get(self, scheme: str, host: str, port: int) -> Deferred[tuple[Upstream, bool]]:
        """
        @return: a L{Deferred} firing with an upstream connection and whether
            it was reused from the pool.
        """
        upstream = self._idle.take(_PoolKey(scheme, host, port))
        if upstream is not None:
            return succeed((upstream, True))
        d = self._connector.connect(host, port, tls=(scheme == "https"))
        return d.addCallback(lambda upstream: (upstream, False))

    def put(self, scheme: str, host: str, port: int, upstream: Upstream) -> None:
        """Keep C{upstream} for reuse, or close it when the pool is full."""
        self._idle.put(_PoolKey(scheme, host, port), upstream)

    def close_all(self) -> None:
        self._idle.close_all()
