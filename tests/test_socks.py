"""
Tests for L{txgate.socks}: the SOCKS5 server negotiation without a reactor,
each conversation fed whole, one byte at a time, and with trailing bytes.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import PeerProtocolError
from txgate.socks import (
    MAX_NEGOTIATION,
    AddressType,
    CheckCredentials,
    Close,
    Connect,
    Established,
    Reply,
    Send,
    SocksServer,
    State,
    encode_reply,
)

NO_AUTH_GREETING = b"\x05\x01\x00"
AUTH_GREETING = b"\x05\x02\x00\x02"


def _request(command: int, atyp: int, address: bytes, port: int) -> bytes:
    return bytes((5, command, 0, atyp)) + address + struct.pack("!H", port)


def _domain(name: bytes, port: int = 443, command: int = 1) -> bytes:
    return _request(command, 3, bytes((len(name),)) + name, port)


def _auth(user: bytes, password: bytes) -> bytes:
    return b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password


def _feed(server: SocksServer, data: bytes, one_by_one: bool) -> list[Any]:
    if not one_by_one:
        return server.receive_data(data)
    commands: list[Any] = []
    for i in range(len(data)):
        commands += server.receive_data(data[i : i + 1])
    return commands


class NoAuthTests(SynchronousTestCase):
    """Method 0x00 when the service has no realm."""

    def test_connect_by_name(self) -> None:
        """
        Greeting, then a CONNECT to a domain name: the method is chosen, the
        glue is asked to connect, and success replies with the bound address.
        """
        for one_by_one in (False, True):
            server = SocksServer(require_credentials=False)
            commands = _feed(server, NO_AUTH_GREETING + _domain(b"Origin.Test"), one_by_one)
            self.assertEqual(
                commands,
                [Send(b"\x05\x00"), Connect("origin.test", 443, AddressType.DOMAIN)],
                msg=f"one_by_one={one_by_one}",
            )
            self.assertIs(server.state, State.CONNECTING)
            self.assertEqual(
                server.connected("10.200.2.1", 40000),
                [Send(b"\x05\x00\x00\x01" + bytes((10, 200, 2, 1)) + struct.pack("!H", 40000)), Established(b"")],
            )
            self.assertIs(server.state, State.ESTABLISHED)

    def test_ipv4_and_ipv6(self) -> None:
        """IPv4 and IPv6 destinations come back as address literals."""
        cases = [
            (_request(1, 1, bytes((192, 0, 2, 7)), 80), Connect("192.0.2.7", 80, AddressType.IPV4)),
            (
                _request(1, 4, bytes.fromhex("fd000200000200000000000000000002"), 8443),
                Connect("fd00:200:2::2", 8443, AddressType.IPV6),
            ),
        ]
        for request, expected in cases:
            for one_by_one in (False, True):
                server = SocksServer(False)
                commands = _feed(server, NO_AUTH_GREETING + request, one_by_one)
                self.assertEqual(commands[-1], expected, msg=f"{request!r} one_by_one={one_by_one}")

    def test_trailing_bytes(self) -> None:
        """Bytes sent after the request, before the reply, are the tunnel's first bytes."""
        server = SocksServer(False)
        server.receive_data(NO_AUTH_GREETING + _domain(b"a.test") + b"GET / HTTP/1.1\r\n")
        server.receive_data(b"Host: a.test\r\n\r\n")
        self.assertEqual(
            server.connected("::1", 5)[1], Established(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        )

    def test_ipv6_bound_address(self) -> None:
        """The success reply carries an IPv6 bound address as ATYP 4."""
        self.assertEqual(
            encode_reply(Reply.SUCCEEDED, "::1", 1080), b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x04\x38"
        )
        self.assertEqual(encode_reply(Reply.SUCCEEDED, "::ffff:10.0.0.1", 1)[3], 1)

    def test_no_acceptable_method(self) -> None:
        """A client offering only username/password to a no-auth service gets 0xFF and a close."""
        server = SocksServer(False)
        commands = server.receive_data(b"\x05\x01\x02")
        self.assertEqual(commands[0], Send(b"\x05\xff"))
        self.assertIsInstance(commands[1], Close)
        self.assertIn("no acceptable authentication method", commands[1].reason)
        self.assertEqual(server.receive_data(b"more"), [])

    def test_unsupported_commands(self) -> None:
        """BIND and UDP ASSOCIATE are answered 0x07 and closed."""
        for command, name in ((2, "BIND"), (3, "UDP ASSOCIATE"), (9, "0x09")):
            server = SocksServer(False)
            commands = server.receive_data(NO_AUTH_GREETING + _domain(b"a.test", command=command))
            self.assertEqual(commands[1], Send(encode_reply(Reply.COMMAND_NOT_SUPPORTED)), msg=name)
            self.assertEqual(commands[2].reply, Reply.COMMAND_NOT_SUPPORTED)
            self.assertIn(name, commands[2].reason)
            self.assertIs(server.state, State.CLOSED)

    def test_unsupported_address_type(self) -> None:
        """An unknown ATYP is answered 0x08."""
        server = SocksServer(False)
        commands = server.receive_data(NO_AUTH_GREETING + b"\x05\x01\x00\x05\x00\x00")
        self.assertEqual(commands[1], Send(encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED)))

    def test_bad_names_and_port(self) -> None:
        """Empty or non-printable names and port 0 are refused with 0x01."""
        for request in (_domain(b""), _domain(b"a b"), _domain(b"\xff.test"), _domain(b"a.test", port=0)):
            server = SocksServer(False)
            commands = server.receive_data(NO_AUTH_GREETING + request)
            self.assertEqual(commands[-1].reply, Reply.GENERAL_FAILURE, msg=repr(request))

    def test_reject(self) -> None:
        """The glue's refusal (policy, connect failure) is sent with its reply code."""
        for reply in (Reply.NOT_ALLOWED, Reply.HOST_UNREACHABLE, Reply.CONNECTION_REFUSED, Reply.TTL_EXPIRED):
            server = SocksServer(False)
            server.receive_data(NO_AUTH_GREETING + _domain(b"a.test"))
            commands = server.reject(reply, "because")
            self.assertEqual(commands, [Send(encode_reply(reply)), Close("because", reply)])

    def test_not_socks5(self) -> None:
        """A SOCKS4 or HTTP client is a peer protocol error naming socks5."""
        for data in (b"\x04\x01\x00\x50", b"GET / HTTP/1.1\r\n", b"\x05\x00"):
            server = SocksServer(False)
            e = self.assertRaises(PeerProtocolError, server.receive_data, data)
            self.assertEqual(e.protocol, "socks5", msg=repr(data))

    def test_bad_request_version(self) -> None:
        """A request whose version is not 5 is a protocol error."""
        server = SocksServer(False)
        server.receive_data(NO_AUTH_GREETING)
        self.assertRaises(PeerProtocolError, server.receive_data, b"\x04\x01\x00\x01\x00\x00\x00\x00\x00\x00")

    def test_negotiation_cap(self) -> None:
        """More than MAX_NEGOTIATION bytes before the tunnel is refused."""
        server = SocksServer(False)
        server.receive_data(NO_AUTH_GREETING + _domain(b"a.test"))
        server.receive_data(b"x" * (MAX_NEGOTIATION - 100))
        self.assertRaises(PeerProtocolError, server.receive_data, b"x" * 200)

    def test_misuse_is_a_bug(self) -> None:
        """Answering a question that was not asked is the caller's bug."""
        server = SocksServer(False)
        self.assertRaises(RuntimeError, server.connected, "1.2.3.4", 1)
        self.assertRaises(RuntimeError, server.credentials_checked, True)


class UsernamePasswordTests(SynchronousTestCase):
    """Method 0x02 (RFC 1929) when the service has a realm."""

    def test_valid(self) -> None:
        """Credentials are handed to the glue; valid ones get 01 00 and the request goes on."""
        data = AUTH_GREETING + _auth(b"alice", b"s3cret") + _domain(b"a.test", 80)
        for one_by_one in (False, True):
            server = SocksServer(True)
            commands = _feed(server, data, one_by_one)
            self.assertEqual(commands, [Send(b"\x05\x02"), CheckCredentials("alice", b"s3cret")])
            self.assertIs(server.state, State.CHECKING)
            self.assertEqual(
                server.credentials_checked(True), [Send(b"\x01\x00"), Connect("a.test", 80, AddressType.DOMAIN)]
            )

    def test_invalid(self) -> None:
        """Invalid credentials get 01 01 and a close."""
        server = SocksServer(True)
        server.receive_data(AUTH_GREETING + _auth(b"alice", b"wrong"))
        self.assertEqual(server.credentials_checked(False, "bad"), [Send(b"\x01\x01"), Close("bad")])
        self.assertIs(server.state, State.CLOSED)

    def test_no_auth_only_client(self) -> None:
        """A client offering only no-auth to a service with a realm gets 0xFF."""
        server = SocksServer(True)
        self.assertEqual(server.receive_data(NO_AUTH_GREETING)[0], Send(b"\x05\xff"))

    def test_non_utf8_username(self) -> None:
        """A username that is not UTF-8 is passed as None (the glue refuses it)."""
        server = SocksServer(True)
        commands = server.receive_data(AUTH_GREETING + _auth(b"\xff", b"p"))
        self.assertEqual(commands[-1], CheckCredentials(None, b"p"))

    def test_bad_subnegotiation_version(self) -> None:
        """The username/password version must be 1."""
        server = SocksServer(True)
        server.receive_data(AUTH_GREETING)
        self.assertRaises(PeerProtocolError, server.receive_data, b"\x05\x01a\x01b")
