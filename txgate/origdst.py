# -*- test-case-name: tests.test_origdst -*-
"""
The original destination of a connection intercepted with iptables
C{REDIRECT} (or C{DNAT}): Linux returns it from C{getsockopt(SOL_IP,
SO_ORIGINAL_DST)} (C{struct sockaddr_in}) or C{getsockopt(SOL_IPV6,
IP6T_SO_ORIGINAL_DST)} (C{struct sockaddr_in6}). Pure: the glue
(L{txgate.net.streams}) makes the call and hands the bytes here.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

from txgate.session import Address

__all__ = ["SO_ORIGINAL_DST", "IP6T_SO_ORIGINAL_DST", "SOCKADDR_SIZE", "parse_sockaddr"]

SO_ORIGINAL_DST = 80
"""C{linux/netfilter_ipv4.h}; the option at level C{SOL_IP}."""

IP6T_SO_ORIGINAL_DST = 80
"""C{linux/netfilter_ipv6/ip6_tables.h}; the option at level C{SOL_IPV6}."""

SOCKADDR_SIZE = 28
"""Bytes to ask for: C{sizeof(struct sockaddr_in6)}, which also holds a C{sockaddr_in}."""

_AF_INET = 2
_AF_INET6 = 10  # Linux's value; this only ever parses Linux's answers


def parse_sockaddr(data: bytes) -> Address | None:
    """
    The address and port in a C{struct sockaddr_in} or C{sockaddr_in6} as
    Linux returns it (family in host byte order, port and address in
    network order). An IPv4-mapped IPv6 address comes back as IPv4.

    @return: the address, or C{None} for an unknown family, a short buffer,
        an unspecified address or port 0 (nothing to connect to).
    """
    if len(data) < 2:
        return None
    family = struct.unpack("=H", data[:2])[0]
    if family == _AF_INET and len(data) >= 8:
        port = struct.unpack("!H", data[2:4])[0]
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(data[4:8])
    elif family == _AF_INET6 and len(data) >= 24:
        port = struct.unpack("!H", data[2:4])[0]
        address = ipaddress.IPv6Address(data[8:24])
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    else:
        return None
    if port == 0 or address.is_unspecified:
        return None
    return Address(str(address), port)


# Kept here so the glue and its tests share one spelling; socket may lack
# SOL_IPV6 on other platforms, and these values are Linux's.
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
