# -*- test-case-name: tests.test_acl -*-
"""
Which client addresses a service serves.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Iterable

__all__ = ["client_allowed", "parse_address"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1024)
def parse_address(text: str) -> Address | None:
    """
    An IP literal as an address, with an IPv4 address mapped into IPv6
    (C{::ffff:10.1.2.3}) as the IPv4 address it carries and any zone id
    (C{%eth0}) dropped; C{None} for anything that is not an IP literal.

    Answers are kept for the most recent texts: a connection asks several
    times (the client check, policy facts, hosts_file), and clients and
    servers recur.
    """
    if len(text) > 64:  # longer than any IP literal, even with a zone id
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


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
    address = parse_address(host)
    return address is not None and any(address in network for network in networks)
