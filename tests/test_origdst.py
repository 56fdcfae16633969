"""
Tests for L{txgate.origdst}: reading the sockaddr Linux returns for
C{SO_ORIGINAL_DST} / C{IP6T_SO_ORIGINAL_DST}.
"""

from __future__ import annotations

import socket
import struct

from twisted.trial.unittest import SynchronousTestCase

from txgate.origdst import SOCKADDR_SIZE, parse_sockaddr
from txgate.session import Address


def sockaddr_in(host: str, port: int) -> bytes:
    """A C{struct sockaddr_in} as Linux fills it, padded to the size asked for."""
    raw = struct.pack("=H", 2) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, host)
    return raw + b"\x00" * (SOCKADDR_SIZE - len(raw))


def sockaddr_in6(host: str, port: int, scope: int = 0) -> bytes:
    """A C{struct sockaddr_in6} (28 bytes)."""
    return (
        struct.pack("=H", 10)
        + struct.pack("!H", port)
        + b"\x00" * 4
        + socket.inet_pton(socket.AF_INET6, host)
        + struct.pack("=I", scope)
    )


class ParseSockaddrTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """A sockaddr_in gives its address and port (16 or 28 bytes)."""
        self.assertEqual(parse_sockaddr(sockaddr_in("10.200.2.2", 443)), Address("10.200.2.2", 443))
        self.assertEqual(parse_sockaddr(sockaddr_in("10.200.2.2", 80)[:16]), Address("10.200.2.2", 80))

    def test_ipv6(self) -> None:
        """A sockaddr_in6 gives its address (compressed) and port."""
        self.assertEqual(parse_sockaddr(sockaddr_in6("fd00:200:2::2", 80)), Address("fd00:200:2::2", 80))

    def test_ipv4_mapped(self) -> None:
        """An IPv4-mapped IPv6 address comes back as IPv4."""
        self.assertEqual(parse_sockaddr(sockaddr_in6("::ffff:192.0.2.1", 8080)), Address("192.0.2.1", 8080))

    def test_nothing_to_connect_to(self) -> None:
        """Unknown families, short buffers, unspecified addresses and port 0 give None."""
        for raw in (
            b"",
            b"\x02",
            sockaddr_in("10.0.0.1", 80)[:6],
            sockaddr_in6("::1", 80)[:20],
            struct.pack("=H", 1) + b"\x00" * 26,
            sockaddr_in("0.0.0.0", 80),
            sockaddr_in("10.0.0.1", 0),
            sockaddr_in6("::", 80),
        ):
            self.assertIsNone(parse_sockaddr(raw), msg=repr(raw))
