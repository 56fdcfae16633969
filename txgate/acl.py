# -*- test-case-name: tests.test_acl -*-
"""
Which client addresses a service serves.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

__all__ = ["client_allowed"]


def client_allowed(
    host: str,
    networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
) -> bool:
    """
    @param host: the client's address as the transport reports it; an IPv4
        address mapped into IPv6 (C{::ffff:10.1.2.3}) is checked as IPv4.
    @return: whether C{host} is inside one of C{networks}. A host that is not
        an IP address (a UNIX socket peer) is never allowed by an IP list.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
