# -*- test-case-name: tests.test_socks -*-
"""
The server side of a SOCKS5 negotiation (RFC 1928, with RFC 1929
username/password authentication), sans-IO.

Bytes go in through L{SocksServer.receive_data}; what the glue must do comes
back as commands (L{Send}, L{CheckCredentials}, L{Connect}, L{Close},
L{Established}). The glue answers a L{CheckCredentials} with
L{SocksServer.credentials_checked} and a L{Connect} with
L{SocksServer.connected} or L{SocksServer.reject}. Nothing here reads a clock,
touches a socket or logs.

Only C{CONNECT} is carried: C{BIND} and C{UDP ASSOCIATE} are answered with
reply C{0x07} (command not supported).
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

from txgate.errors import PeerProtocolError

__all__ = [
    "AddressType",
    "CheckCredentials",
    "Close",
    "Command",
    "Connect",
    "Established",
    "MAX_NEGOTIATION",
    "Method",
    "Reply",
    "Send",
    "SocksServer",
    "State",
    "encode_reply",
]

MAX_NEGOTIATION = 4096
"""
Bytes a client may send before its tunnel is established. The largest
well-formed negotiation (greeting with 255 methods, username/password with
255 bytes each, a request with a 255-byte name) is under 1 KiB; a client
that sends data optimistically, before the reply, may send a little of it,
and more than this is refused.
"""

PROTOCOL = "socks5"
"""The protocol name in errors and logs."""


class Method(enum.IntEnum):
    """Authentication methods (RFC 1928 section 3)."""

    NO_AUTH = 0x00
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Reply(enum.IntEnum):
    """The REP field of a reply (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AddressType(enum.IntEnum):
    """The ATYP field of a request or reply."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class State(enum.Enum):
    """Where a negotiation is."""

    GREETING = enum.auto()  # waiting for VER NMETHODS METHODS
    AUTH = enum.auto()  # waiting for the RFC 1929 username/password
    CHECKING = enum.auto()  # the glue checks the credentials
    REQUEST = enum.auto()  # waiting for VER CMD RSV ATYP DST.ADDR DST.PORT
    CONNECTING = enum.auto()  # the glue connects (or refuses)
    ESTABLISHED = enum.auto()  # the tunnel carries the stream
    CLOSED = enum.auto()  # refused; the glue closes


@attrs.frozen
class Send:
    """Write C{data} to the client."""

    data: bytes


@attrs.frozen
class CheckCredentials:
    """
    Check RFC 1929 credentials and call L{SocksServer.credentials_checked}.

    @ivar username: as sent, decoded as UTF-8 (C{None} when it is not UTF-8).
    """

    username: str | None
    password: bytes = attrs.field(repr=False)


@attrs.frozen
class Connect:
    """
    Decide on and open a connection to C{host}:C{port}, then call
    L{SocksServer.connected} or L{SocksServer.reject}.

    @ivar host: an IP address literal or a domain name (lower case).
    """

    host: str
    port: int
    address_type: AddressType


@attrs.frozen
class Close:
    """Close the connection (after sending what came before); C{reason} is for the log."""

    reason: str
    reply: Reply | None = None


@attrs.frozen
class Established:
    """
    The tunnel is open: from now on the stream is the caller's, starting with
    C{trailing} (client bytes sent after the request, before the reply).
    """

    trailing: bytes


Command = Send | CheckCredentials | Connect | Close | Established

_ALLOWED_EVENTS: dict[State, frozenset[str]] = {
    State.GREETING: frozenset({"data"}),
    State.AUTH: frozenset({"data"}),
    State.CHECKING: frozenset({"data", "credentials_checked"}),
    State.REQUEST: frozenset({"data"}),
    State.CONNECTING: frozenset({"data", "connected", "reject"}),
    State.ESTABLISHED: frozenset(),
    State.CLOSED: frozenset({"data"}),
}
"""What may happen in each state; anything else is a bug in the caller."""


def encode_reply(reply: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """
    A reply: C{VER REP RSV ATYP BND.ADDR BND.PORT}. The bound address is an
    IP literal (an IPv4-mapped IPv6 address is sent as IPv4); anything else
    is sent as C{0.0.0.0}.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        address = ipaddress.IPv4Address(0)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    kind = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
    return bytes((5, reply, 0, kind)) + address.packed + struct.pack("!H", port & 0xFFFF)


def _malformed(reason: str) -> PeerProtocolError:
    return PeerProtocolError(PROTOCOL, reason)


class SocksServer:
    """
    One client's SOCKS5 negotiation.

    @ivar state: the current L{State}.
    @ivar method: the authentication method chosen, once chosen.
    """

    def __init__(self, require_credentials: bool) -> None:
        """
        @param require_credentials: ask for username/password (method
            C{0x02}); otherwise only C{0x00} (no authentication) is accepted.
        """
        self._require = require_credentials
        self._buffer = bytearray()
        self.state = State.GREETING
        self.method: Method | None = None

    def _expect(self, event: str) -> None:
        if event not in _ALLOWED_EVENTS[self.state]:
            raise RuntimeError(f"can't handle {event} in state {self.state.name}")

    # -- bytes in -----------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Command]:
        """
        Take bytes from the client and return what to do.

        @raise PeerProtocolError: the client does not speak SOCKS5 (the glue
            closes without a reply: none would be understood).
        """
        self._expect("data")
        if self.state is State.CLOSED:
            return []
        self._buffer += data
        if len(self._buffer) > MAX_NEGOTIATION:
            self.state = State.CLOSED
            raise _malformed(f"more than {MAX_NEGOTIATION} bytes before the tunnel was established")
        return self._advance()

    def _advance(self) -> list[Command]:
        commands: list[Command] = []
        while True:
            if self.state is State.GREETING:
                step = self._greeting()
            elif self.state is State.AUTH:
                step = self._auth()
            elif self.state is State.REQUEST:
                step = self._request()
            else:
                return commands  # waiting on the glue, or done
            if step is None:
                return commands
            commands += step
            if any(isinstance(c, (Close, CheckCredentials, Connect)) for c in step):
                return commands

    def _take(self, n: int) -> bytes:
        taken = bytes(self._buffer[:n])
        del self._buffer[:n]
        return taken

    def _greeting(self) -> list[Command] | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != 5:
            self.state = State.CLOSED
            raise _malformed(f"expected SOCKS version 5, got {buf[0]:#04x}")
        if len(buf) < 2 or len(buf) < 2 + buf[1]:
            return None
        count = buf[1]
        if count == 0:
            self.state = State.CLOSED
            raise _malformed("greeting offers no authentication method")
        methods = set(self._take(2 + count)[2:])
        wanted = Method.USERNAME_PASSWORD if self._require else Method.NO_AUTH
        if wanted not in methods:
            self.state = State.CLOSED
            offered = ", ".join(f"{m:#04x}" for m in sorted(methods))
            return [
                Send(bytes((5, Method.NO_ACCEPTABLE))),
                Close(f"no acceptable authentication method (wanted {wanted:#04x}, offered {offered})"),
            ]
        self.method = wanted
        self.state = State.AUTH if self._require else State.REQUEST
        return [Send(bytes((5, wanted)))]

    def _auth(self) -> list[Command] | None:
        buf = self._buffer
        if not buf:
            return None
        if buf[0] != 1:
            self.state = State.CLOSED
            raise _malformed(f"expected username/password version 1, got {buf[0]:#04x}")
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 3 + ulen:
            return None
        plen = buf[2 + ulen]
        if len(buf) < 3 + ulen + plen:
            return None
        raw = self._take(3 + ulen + plen)
        name, password = raw[2 : 2 + ulen], raw[3 + ulen :]
        try:
            username: str | None = name.decode("utf-8")
        except UnicodeDecodeError:
            username = None
        self.state = State.CHECKING
        return [CheckCredentials(username, password)]

    def credentials_checked(self, valid: bool, reason: str = "invalid credentials") -> list[Command]:
        """
        The glue checked the L{CheckCredentials}: go on to the request, or
        answer failure and close (RFC 1929 says the server closes).
        """
        self._expect("credentials_checked")
        if not valid:
            self.state = State.CLOSED
            return [Send(b"\x01\x01"), Close(reason)]
        self.state = State.REQUEST
        return [Send(b"\x01\x00"), *self._advance()]

    def _request(self) -> list[Command] | None:
        buf = self._buffer
        if len(buf) < 5:
            return None
        version, command, atyp = buf[0], buf[1], buf[3]  # buf[2] is reserved
        if version != 5:
            self.state = State.CLOSED
            raise _malformed(f"expected SOCKS version 5 in the request, got {version:#04x}")
        if atyp == AddressType.IPV4:
            size = 4 + 4 + 2
        elif atyp == AddressType.IPV6:
            size = 4 + 16 + 2
        elif atyp == AddressType.DOMAIN:
            size = 4 + 1 + buf[4] + 2
        else:
            self.state = State.CLOSED
            return self._refuse(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {atyp:#04x} is not supported")
        if len(buf) < size:
            return None
        raw = self._take(size)
        if command != 1:
            self.state = State.CLOSED
            name = {2: "BIND", 3: "UDP ASSOCIATE"}.get(command, f"{command:#04x}")
            return self._refuse(Reply.COMMAND_NOT_SUPPORTED, f"command {name} is not supported (only CONNECT)")
        port = struct.unpack("!H", raw[-2:])[0]
        if atyp == AddressType.DOMAIN:
            name_bytes = raw[5:-2]
            try:
                host = name_bytes.decode("ascii").lower()
            except UnicodeDecodeError:
                host = ""
            if not host or not all(0x21 <= b < 0x7F for b in name_bytes):
                self.state = State.CLOSED
                return self._refuse(Reply.GENERAL_FAILURE, f"destination name {bytes(name_bytes)!r} is not a host name")
        else:
            host = str(ipaddress.ip_address(raw[4:-2]))
        if port == 0:
            self.state = State.CLOSED
            return self._refuse(Reply.GENERAL_FAILURE, "destination port 0")
        self.state = State.CONNECTING
        return [Connect(host, port, AddressType(atyp))]

    def _refuse(self, reply: Reply, reason: str) -> list[Command]:
        return [Send(encode_reply(reply)), Close(reason, reply)]

    # -- the glue's answers ---------------------------------------------------

    def connected(self, bound_host: str, bound_port: int) -> list[Command]:
        """
        The upstream connection is open from C{bound_host}:C{bound_port}:
        reply success and hand the stream over.
        """
        self._expect("connected")
        self.state = State.ESTABLISHED
        trailing = bytes(self._buffer)
        self._buffer.clear()
        return [Send(encode_reply(Reply.SUCCEEDED, bound_host, bound_port)), Established(trailing)]

    def reject(self, reply: Reply, reason: str) -> list[Command]:
        """Refuse the L{Connect} with C{reply} (policy, ACL, connect failure) and close."""
        self._expect("reject")
        if reply is Reply.SUCCEEDED:
            raise ValueError("reject needs a failure reply")
        self.state = State.CLOSED
        self._buffer.clear()
        return self._refuse(reply, reason)
