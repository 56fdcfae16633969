"""
Tests for the C{socks5} service of L{txgate.net.streams}, in memory.
"""

from __future__ import annotations

import struct

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.auth.test_htpasswd import bcrypt_hash
from tests.net.test_transparent import Harness, RecordingPolicy
from txgate.auth import Realm, parse_htpasswd
from txgate.interfaces import Checkpoint
from txgate.socks import Reply, encode_reply

GREETING = b"\x05\x01\x00"
AUTH_GREETING = b"\x05\x01\x02"


def connect(name: bytes, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes((len(name),)) + name + struct.pack("!H", port)


def credentials(user: bytes, password: bytes) -> bytes:
    return b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password


def _realm() -> Realm:
    return Realm("corp", parse_htpasswd(f"alice:{bcrypt_hash(b'secret')}\n", "users.htpasswd"))


class SocksNoAuthTests(SynchronousTestCase):
    """A socks5 service without a realm."""

    def test_connect(self) -> None:
        """
        CONNECT by name: policy sees method CONNECT and the host; the upstream
        is the named host; the success reply carries the bound address; then
        bytes flow; one record with method CONNECT.
        """
        h = Harness("socks5")
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(GREETING)
        self.assertEqual(client.value(), b"\x05\x00")
        proxy.dataReceived(connect(b"origin.test", 443) + b"hello")
        [facts] = h.policy.facts(Checkpoint.REQUEST)
        self.assertEqual((facts["method"], facts["url.host"], facts["url.port"]), ("CONNECT", "origin.test", 443))
        [pending] = h.connector.pending
        self.assertEqual((pending.host, pending.port), ("origin.test", 443))
        upstream = pending.succeed()
        upstream.transport.hostAddr = IPv4Address("TCP", "10.200.2.1", 40001)
        reply = client.value()[2:]
        self.assertEqual(reply[:4], b"\x05\x00\x00\x01")
        self.assertEqual(upstream.transport.value(), b"hello")
        upstream.dataReceived(b"world")
        self.assertTrue(client.value().endswith(b"world"))
        proxy.readConnectionLost()
        upstream.readConnectionLost()
        [record] = h.records.events
        self.assertEqual(
            {k: record[k] for k in ("method", "target", "status", "verdict", "bytes_in", "bytes_out")},
            {
                "method": "CONNECT",
                "target": "origin.test:443",
                "status": None,
                "verdict": "allow",
                "bytes_in": len(GREETING + connect(b"origin.test", 443) + b"hello"),
                "bytes_out": 2 + 10 + 5,
            },
        )

    def test_one_byte_at_a_time(self) -> None:
        """The negotiation may arrive a byte at a time."""
        h = Harness("socks5")
        proxy, client = h.client(host="127.0.0.1")
        for byte in GREETING + connect(b"a.test", 80):
            proxy.dataReceived(bytes((byte,)))
        self.assertEqual(len(h.connector.pending), 1)

    def test_policy_deny(self) -> None:
        """A policy denial is reply 0x02 and a deny record."""
        h = Harness("socks5", policy=RecordingPolicy(deny_reason="blocked"))
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(GREETING + connect(b"a.test", 80))
        self.assertEqual(client.value(), b"\x05\x00" + encode_reply(Reply.NOT_ALLOWED))
        self.assertTrue(client.disconnecting)
        self.assertEqual((h.records.events[0]["verdict"], h.records.events[0]["reason"]), ("deny", "blocked"))

    def test_client_not_allowed(self) -> None:
        """A client outside C{clients} gets 0x02 at its request."""
        h = Harness("socks5")
        proxy, client = h.client(host="192.0.2.1")
        proxy.dataReceived(GREETING + connect(b"a.test", 80))
        self.assertTrue(client.value().endswith(encode_reply(Reply.NOT_ALLOWED)))
        self.assertEqual(h.connector.pending, [])
        self.assertEqual(h.records.events[0]["reason"], "client not allowed")

    def test_connect_failures(self) -> None:
        """Connect failures map to 0x04, 0x05, 0x06 and 0x01, and are logged with the reason."""
        for exception, reply, reason in (
            (error.DNSLookupError("nope"), Reply.HOST_UNREACHABLE, "DNS lookup failed for a.test"),
            (error.ConnectionRefusedError(), Reply.CONNECTION_REFUSED, "connection refused by a.test:80"),
            (error.TimeoutError(), Reply.TTL_EXPIRED, "timed out connecting to a.test:80"),
            (OSError("weird"), Reply.GENERAL_FAILURE, "could not connect to a.test:80"),
        ):
            h = Harness("socks5")
            proxy, client = h.client(host="127.0.0.1")
            proxy.dataReceived(GREETING + connect(b"a.test", 80))
            h.connector.pending[0].deferred.errback(Failure(exception))
            self.assertTrue(client.value().endswith(encode_reply(reply)), msg=reason)
            self.assertTrue(client.disconnecting)
            self.assertIn(reason, h.records.events[0]["reason"])

    def test_bind_refused(self) -> None:
        """BIND gets 0x07."""
        h = Harness("socks5")
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(GREETING + b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x50")
        self.assertTrue(client.value().endswith(encode_reply(Reply.COMMAND_NOT_SUPPORTED)))
        self.assertIn("BIND", h.records.events[0]["reason"])

    def test_not_socks(self) -> None:
        """An HTTP client on the SOCKS port is closed and logged as a socks5 error."""
        h = Harness("socks5")
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(client.disconnecting)
        self.assertEqual(client.value(), b"")
        self.assertIn("socks5", h.records.events[0]["reason"])

    def test_authenticate_without_realm(self) -> None:
        """Policy asking for authentication on a service without a realm is refused (fail closed)."""
        h = Harness("socks5", policy=RecordingPolicy(properties={"authenticate": "corp"}))
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(GREETING + connect(b"a.test", 80))
        self.assertTrue(client.value().endswith(encode_reply(Reply.NOT_ALLOWED)))


class SocksAuthTests(SynchronousTestCase):
    """A socks5 service with C{realm = "corp"}."""

    def _harness(self) -> Harness:
        return Harness("socks5", realm="corp", realms={"corp": _realm()})

    def test_valid(self) -> None:
        """Valid credentials: policy sees the user; the session carries it."""
        h = self._harness()
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(AUTH_GREETING + credentials(b"alice", b"secret") + connect(b"a.test", 80))
        self.assertEqual(client.value(), b"\x05\x02\x01\x00")
        [facts] = h.policy.facts(Checkpoint.REQUEST)
        self.assertEqual((facts["user"], facts["authenticated"]), ("alice", True))
        h.connector.pending[0].succeed()
        proxy.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(h.records.events[0]["user"], "alice")

    def test_invalid(self) -> None:
        """Wrong password: 01 01, close, nothing connects."""
        h = self._harness()
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(AUTH_GREETING + credentials(b"alice", b"wrong") + connect(b"a.test", 80))
        self.assertEqual(client.value(), b"\x05\x02\x01\x01")
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.connector.pending, [])
        self.assertIn("invalid credentials", h.records.events[0]["reason"])

    def test_no_auth_offered(self) -> None:
        """A client offering only no-auth gets 0xFF."""
        h = self._harness()
        proxy, client = h.client(host="127.0.0.1")
        proxy.dataReceived(GREETING)
        self.assertEqual(client.value(), b"\x05\xff")
        self.assertTrue(client.disconnecting)
