# -*- test-case-name: tests.net.test_workers -*-
"""
Listening sockets, opened here or adopted from the main process: with
C{--workers N} the main process binds every listener once and its workers
adopt the sockets, so they share one accept queue.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.haproxy import proxyEndpoint
from zope.interface import implementer

__all__ = ["Adopted", "bind", "listen", "unwrapped"]


def unwrapped(description: str) -> tuple[str, bool]:
    """The endpoint string without its C{haproxy:} prefixes, and whether it had one."""
    haproxy = False
    while description.startswith("haproxy:"):
        description, haproxy = description[len("haproxy:") :], True
    return description, haproxy


@attrs.frozen
class Adopted:
    """A listening socket handed down by the main process."""

    fd: int
    family: int
    haproxy: bool

    def argument(self, name: str) -> str:
        """How the main process names it on a worker's command line."""
        return f"{name}={self.fd}:{self.family}:{int(self.haproxy)}"

    @classmethod
    def parse(cls, argument: str) -> tuple[str, "Adopted"]:
        name, _, rest = argument.rpartition("=")
        fd, family, haproxy = rest.split(":")
        return name, cls(int(fd), int(family), haproxy == "1")


def listen(reactor: Any, description: str, factory: Any, adopted: Adopted | None = None) -> Deferred[Any]:
    """
    Listen on C{description} with C{factory}, or accept on the C{adopted}
    socket instead (wrapped for PROXY headers when the description has
    C{haproxy:}, as the endpoint parser would have).
    """
    if adopted is None:
        return serverFromString(reactor, description).listen(factory)
    endpoint: Any = _AdoptedEndpoint(reactor, adopted)
    if adopted.haproxy:
        endpoint = proxyEndpoint(endpoint)
    return endpoint.listen(factory)


@implementer(IStreamServerEndpoint)
class _AdoptedEndpoint:
    def __init__(self, reactor: Any, adopted: Adopted) -> None:
        self._reactor = reactor
        self._adopted = adopted

    def listen(self, factory: Any) -> Deferred[Any]:
        port = self._reactor.adoptStreamPort(self._adopted.fd, self._adopted.family, factory)
        # The port listens on a duplicate: without the inherited descriptor
        # closed, a worker that stops listening (to drain) would still hold
        # the socket open, and new clients would queue instead of being refused.
        os.close(self._adopted.fd)
        return succeed(port)


class _Nothing(Factory):
    protocol = Protocol
    noisy = False


def _family(address: Any) -> int:
    if isinstance(address, IPv6Address):
        return socket.AF_INET6
    if isinstance(address, IPv4Address):
        return socket.AF_INET
    if isinstance(address, UNIXAddress):
        return socket.AF_UNIX
    raise ValueError(f"cannot hand a {type(address).__name__} listener to workers")


def bind(reactor: Any, description: str) -> Deferred[tuple[Any, Adopted]]:
    """
    Bind C{description} in the main process without accepting on it (the
    workers do): the port, and what a worker needs to adopt it.
    """
    inner, haproxy = unwrapped(description)
    d = serverFromString(reactor, inner).listen(_Nothing())

    def bound(port: Any) -> tuple[Any, Adopted]:
        port.stopReading()
        # The socket is the workers' too: when this process closes its copy
        # (stopService), Twisted must not shut it down under them, or a worker
        # not yet told to stop gets EINVAL from accept(). It closes for good
        # once every worker has stopped listening.
        port._shouldShutdown = False
        return port, Adopted(port.fileno(), _family(port.getHost()), haproxy)

    return d.addCallback(bound)
