# -*- test-case-name: tests.test_session -*-
"""
The per-connection L{Session}: the facts policy conditions read, the access log
writes and the admin console lists.
"""

from __future__ import annotations

import enum
import itertools
import secrets
from typing import Any

import attrs

__all__ = ["ClientProtocol", "Session", "Address", "new_session_id"]


class ClientProtocol(enum.StrEnum):
    """
    The C{client.protocol} names shared by policy text, logs and the admin
    console. Detector plugins may report other names; these are the built-in
    ones.
    """

    HTTP = "http"
    HTTPS = "https"
    SSL = "ssl"
    SIP = "sip"
    SIPS = "sips"
    MS_TURN = "ms-turn"
    STUN = "stun"
    TCP = "tcp"


@attrs.frozen
class Address:
    """
    A host and port, printed as C{host:port} (C{[v6]:port} for IPv6).
    """

    host: str
    port: int

    @classmethod
    def of(cls, address: Any) -> "Address":
        """
        The host and port of a Twisted address; one without a host (a UNIX
        socket) is named by its C{str()}, made only then: an address's
        C{repr} costs more than the rest of this.
        """
        host = getattr(address, "host", None)
        return cls(str(address) if host is None else host, getattr(address, "port", 0))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


_prefix = secrets.token_hex(3)
_counter = itertools.count(1)


def new_session_id() -> str:
    """
    A session id unique in this process and, with a random per-process prefix,
    very likely across processes and restarts sharing one log.
    """
    return f"{_prefix}-{next(_counter):x}"


@attrs.define
class Session:
    """
    What txgate knows about one client connection.

    @ivar stack: the protocols detected so far, outermost first
        (C{["ssl", "sips"]}).
    @ivar client_protocol: the C{client.protocol} fact: the protocol the
        connection is carried as now.
    @ivar tunneled: C{True} when the bytes are moved without a protocol-aware
        handler.
    @ivar bytes_in: bytes received from the client.
    @ivar bytes_out: bytes sent to the client.
    """

    id: str
    service: str
    client: Address
    started: float
    destination: Address | None = None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    stack: list[str] = attrs.Factory(list)
    client_protocol: str = ClientProtocol.TCP
    tunneled: bool = False
    intercepted: bool = False
    user: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    last_active: float = 0.0
    transactions: int = 0
    terminate: Any = attrs.field(default=None, repr=False, eq=False)
    """Ends the connection at once (the admin console's "terminate"); set by the service."""

    def next_transaction(self) -> int:
        """
        Count one more transaction (HTTP request, tunnel) on this connection and
        return its 1-based sequence number.
        """
        self.transactions += 1
        return self.transactions
