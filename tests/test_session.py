"""
Tests for L{txgate.session}.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from txgate.session import Address, ClientProtocol, Session, new_session_id


class NewSessionIdTests(SynchronousTestCase):
    """
    Session ids are unique in a process and read as C{prefix-counter}.
    """

    def test_unique(self) -> None:
        """10,000 ids are all different."""
        ids = [new_session_id() for _ in range(10_000)]
        self.assertEqual(len(set(ids)), len(ids))

    def test_shape(self) -> None:
        """An id is two lowercase hex words joined by C{-}."""
        session_id = new_session_id()
        self.assertTrue(re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", session_id), msg=session_id)


class SessionTests(SynchronousTestCase):
    """
    A session counts the transactions on its connection.
    """

    def test_next_transaction(self) -> None:
        """Transactions are numbered 1, 2, 3 and the count is kept."""
        session = Session("s-1", "explicit", Address("127.0.0.1", 40000), 0.0)
        self.assertEqual([session.next_transaction() for _ in range(3)], [1, 2, 3])
        self.assertEqual(session.transactions, 3)


class AddressTests(SynchronousTestCase):
    """
    Addresses print as logs show them.
    """

    def test_ipv4(self) -> None:
        """IPv4 (and host names) print as C{host:port}."""
        self.assertEqual(str(Address("192.0.2.1", 8080)), "192.0.2.1:8080")

    def test_ipv6(self) -> None:
        """IPv6 prints in brackets: C{[::1]:443}."""
        self.assertEqual(str(Address("::1", 443)), "[::1]:443")

    def test_of(self) -> None:
        """A Twisted address gives its host and port; a UNIX socket its name."""
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        self.assertEqual(Address.of(IPv4Address("TCP", "192.0.2.1", 40000)), Address("192.0.2.1", 40000))
        self.assertEqual(Address.of(IPv6Address("TCP", "::1", 443)), Address("::1", 443))
        unix = UNIXAddress(b"/run/txgate.sock")
        self.assertEqual(Address.of(unix), Address(str(unix), 0))


class ClientProtocolTests(SynchronousTestCase):
    """
    The built-in C{client.protocol} names policy files and logs use.
    """

    def test_values(self) -> None:
        """The values are exactly the documented names, and compare equal to strings."""
        self.assertEqual(
            [p.value for p in ClientProtocol],
            ["http", "https", "ssl", "sip", "sips", "ms-turn", "stun", "tcp"],
        )
        self.assertEqual(ClientProtocol.MS_TURN, "ms-turn")
