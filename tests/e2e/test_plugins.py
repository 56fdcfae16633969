"""
End to end: a plugin module dropped into a C{plugin_path} directory is used
by a real C{twistd txgate forward} with no change to txgate's code, and the
PROXY protocol wrapper (C{haproxy:}) gives the real client address.
"""

from __future__ import annotations

import os
import shutil
import socket

from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from tests.e2e.harness import read_http_head, start_txgate, wait_for_record

_EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "greeting_plugin.py")

CONFIG = """
[txgate]
state_dir = "{tmp}/var"
access_log = "{tmp}/access.log"
plugin_path = ["{tmp}/plugins"]
required_plugins = ["greeting"]

[[service]]
name = "explicit"
kind = "explicit-http"
listen = "tcp:0:interface=127.0.0.1"
"""


def _silent_origin(testcase: TestCase) -> int:
    """A loopback TCP server that accepts and never speaks: the CONNECT target."""
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def _greet(proxy: tuple[str, int], target_port: int, lines: list[bytes]) -> tuple[bytes, bytes]:
    with socket.create_connection(proxy, timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head, rest = read_http_head(sock)
        for line in lines:
            sock.sendall(line)
        replies = rest
        while replies.count(b"\n") < len(lines):
            chunk = sock.recv(4096)
            if not chunk:
                break
            replies += chunk
        return head, replies


class DropInPluginTests(TestCase):
    """
    The example plugin in docs/examples is picked up from plugin_path.
    """

    timeout = 60

    async def test_example_plugin_used(self) -> None:
        """
        A CONNECT tunnel opening with C{HELO alice} is answered by the drop-in
        handoff, and the access log records its protocol, not tunneled.
        """
        plugins = os.path.abspath(self.mktemp())
        os.makedirs(plugins)
        shutil.copy(_EXAMPLE, os.path.join(plugins, "greeting_plugin.py"))
        proc = await start_txgate(self, CONFIG.replace("{tmp}/plugins", plugins), isolate_dns=False)
        target = _silent_origin(self)
        head, replies = await threads.deferToThread(
            _greet, proc.addresses["explicit"], target, [b"HELO alice\n", b"HELO bob\n"]
        )
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.assertEqual(replies, b"HI alice\nHI bob\n")
        record = await wait_for_record(proc, lambda r: r["method"] == "CONNECT")
        self.assertEqual(
            (record["client_protocol"], record["tunneled"], record["reason"]),
            ("greeting", False, "greeting finished"),
        )


PROXY_CONFIG = """
[txgate]
state_dir = "{tmp}/var"
access_log = "{tmp}/access.log"

[[service]]
name = "behind-lb"
kind = "explicit-http"
listen = "haproxy:tcp:0:interface=127.0.0.1"
"""


def _send_raw(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


class ProxyProtocolTests(TestCase):
    """
    Behind a load balancer speaking the PROXY protocol, the client address
    txgate checks and logs is the one in the PROXY header.
    """

    timeout = 60

    async def test_client_address_from_proxy_header(self) -> None:
        """
        A private client address in a PROXY v1 header is served and logged;
        a public one is refused by the default client list and logged too.
        """
        proc = await start_txgate(self, PROXY_CONFIG, isolate_dns=False)
        address = proc.addresses["behind-lb"]
        target = _silent_origin(self)
        allowed = await threads.deferToThread(
            _send_raw,
            address,
            f"PROXY TCP4 10.1.2.3 127.0.0.1 40001 {address[1]}\r\n"
            f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        )
        self.assertTrue(allowed.startswith(b"HTTP/1.1 200"), allowed)
        refused = await threads.deferToThread(
            _send_raw,
            address,
            f"PROXY TCP4 198.51.100.7 127.0.0.1 40002 {address[1]}\r\n"
            f"GET http://127.0.0.1:{target}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        )
        self.assertTrue(refused.startswith(b"HTTP/1.1 403"), refused)
        tunnel = await wait_for_record(proc, lambda r: r["method"] == "CONNECT")
        self.assertEqual(tunnel["client"], "10.1.2.3:40001")
        denied = await wait_for_record(proc, lambda r: r["verdict"] == "deny")
        self.assertEqual((denied["client"], denied["reason"]), ("198.51.100.7:40002", "client not allowed"))
