"""
Tests for L{txgate.reverse.proxyv2}, read back with Twisted's own parser.
"""

from __future__ import annotations

import ipaddress

from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse.proxyv2 import proxy_v2_header


class ProxyV2HeaderTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        info = V2Parser.parse(proxy_v2_header(("192.0.2.7", 51234), ("198.51.100.1", 443)))
        self.assertEqual((info.source.host, info.source.port), ("192.0.2.7", 51234))
        self.assertEqual((info.destination.host, info.destination.port), ("198.51.100.1", 443))

    def test_ipv6(self) -> None:
        info = V2Parser.parse(proxy_v2_header(("2001:db8::7", 1), ("2001:db8::1", 4443)))
        self.assertEqual((ipaddress.ip_address(info.source.host), info.source.port), (ipaddress.ip_address("2001:db8::7"), 1))
        self.assertEqual(info.destination.port, 4443)

    def test_mixed_families_are_mapped(self) -> None:
        info = V2Parser.parse(proxy_v2_header(("192.0.2.7", 5), ("2001:db8::1", 443)))
        self.assertEqual(ipaddress.ip_address(info.source.host), ipaddress.ip_address("::ffff:192.0.2.7"))

    def test_unknown_is_local(self) -> None:
        info = V2Parser.parse(proxy_v2_header(None, ("192.0.2.1", 443)))
        self.assertIsNone(info.source)
        self.assertIsNone(info.destination)
