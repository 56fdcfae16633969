# -*- test-case-name: tests.reverse.test_proxyv2 -*-
"""
The PROXY protocol version 2 header txgate sends to a real server when
C{send_proxy} is on, so the next hop (another txgate, HAProxy, a KEMP) sees
the client's address. Twisted parses these headers but does not write them.
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["proxy_v2_header"]

_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_PROXY_COMMAND = 0x21  # version 2, PROXY
_LOCAL_COMMAND = 0x20  # version 2, LOCAL: no addresses
_TCP4 = 0x11
_TCP6 = 0x21


def proxy_v2_header(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """
    The header for a TCP connection from C{source} to C{destination}
    (C{(address, port)} pairs). Mixed or unknown families (C{None}, a UNIX
    socket) give a LOCAL header, which tells the receiver to use the
    connection's own addresses.
    """
    try:
        src = ipaddress.ip_address(source[0]) if source else None
        dst = ipaddress.ip_address(destination[0]) if destination else None
    except ValueError:
        src = dst = None
    if src is None or dst is None or source is None or destination is None:
        return _SIGNATURE + struct.pack("!BBH", _LOCAL_COMMAND, 0, 0)
    if src.version != dst.version:
        # An IPv4 client on an IPv6 listener arrives as a mapped address.
        src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    family = _TCP4 if src.version == 4 else _TCP6
    addresses = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return _SIGNATURE + struct.pack("!BBH", _PROXY_COMMAND, family, len(addresses)) + addresses
