# -*- test-case-name: tests.test_testing -*-
"""
Fakes and helpers for txgate's tests and for plugin authors' tests.

Everything here runs without a network: upstream connections are real
L{txgate.net.upstream.Upstream} protocols on L{StringTransport}s, and time is a
L{MemoryReactorClock} that only moves when the test says so.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from txgate.net.upstream import Upstream

__all__ = [
    "assert_provides",
    "HalfCloseableStringTransport",
    "make_upstream",
    "FakeConnector",
    "PendingConnection",
    "RecordingObserver",
]


def assert_provides(testcase: SynchronousTestCase, interface: InterfaceClass, obj: object) -> None:
    """
    Fail C{testcase} unless C{obj} fully provides C{interface}: declared and
    with every attribute and method of the right signature.
    """
    try:
        verifyObject(interface, obj)
    except Exception as e:
        testcase.fail(f"{obj!r} does not provide {interface.__name__}: {e}")


class HalfCloseableStringTransport(StringTransport):
    """
    A L{StringTransport} that also records half-closes
    (C{loseWriteConnection}), as TCP transports allow, and refuses anything
    but C{bytes} as real transports do.

    @ivar write_closed: whether C{loseWriteConnection} was called.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def write(self, data: bytes) -> None:
        # As strict as a real transport, which refuses anything but bytes.
        _check_bytes(data)
        super().write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        for piece in data:
            _check_bytes(piece)
        super().writeSequence(data)


def _check_bytes(data: object) -> None:
    if type(data) is not bytes:
        raise TypeError(f"Data must be bytes, got {type(data).__name__}")


def make_upstream(host: str = "192.0.2.10", port: int = 80) -> Upstream:
    """
    An upstream connection whose transport is a L{StringTransport}: what the
    proxy writes is in C{upstream.transport.value()}, and the test plays the
    server by calling C{upstream.dataReceived(...)}.
    """
    upstream = Upstream()
    upstream.makeConnection(HalfCloseableStringTransport(peerAddress=IPv4Address("TCP", host, port)))
    return upstream


@attrs.define
class PendingConnection:
    """A connection attempt the test completes or fails by hand."""

    host: str
    port: int
    tls: bool
    deferred: Deferred[Upstream]

    def succeed(self) -> Upstream:
        upstream = make_upstream(self.host, self.port)
        self.deferred.callback(upstream)
        return upstream


@attrs.define
class FakeConnector:
    """
    Stands in for L{txgate.net.upstream.Connector}: every C{connect} is
    recorded in C{pending} for the test to complete.
    """

    reactor: Any = attrs.Factory(MemoryReactorClock)
    connect_timeout: float = 10.0
    pending: list[PendingConnection] = attrs.Factory(list)

    def connect(self, host: str, port: int, tls: bool = False) -> Deferred[Upstream]:
        d: Deferred[Upstream] = Deferred()
        self.pending.append(PendingConnection(host, port, tls, d))
        return d


@attrs.define
class RecordingObserver:
    """A log observer keeping every event, for assertions on fields."""

    events: list[dict[str, Any]] = attrs.Factory(list)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
