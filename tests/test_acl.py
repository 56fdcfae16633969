"""
Tests for L{txgate.acl}.
"""

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from txgate.acl import client_allowed
from txgate.config._model import DEFAULT_CLIENTS

DEFAULT = [ipaddress.ip_network(n) for n in DEFAULT_CLIENTS]


class ClientAllowedTests(SynchronousTestCase):
    """
    The default client list serves loopback and private networks only.
    """

    def test_default(self) -> None:
        """Loopback, RFC 1918, ULA and v4-mapped private addresses pass; public ones do not."""
        for host, expected in [
            ("127.0.0.1", True),
            ("::1", True),
            ("10.20.30.40", True),
            ("172.31.255.1", True),
            ("192.168.1.1", True),
            ("fd00::5", True),
            ("::ffff:10.0.0.1", True),
            ("8.8.8.8", False),
            ("172.32.0.1", False),
            ("2001:db8::1", False),
            ("::ffff:8.8.8.8", False),
            ("/tmp/sock", False),
            ("", False),
        ]:
            self.assertEqual(client_allowed(host, DEFAULT), expected, msg=f"input {host!r}")
