"""
End to end: a CPL policy in a running C{twistd txgate forward}, reloaded with
SIGHUP while clients keep going.
"""

from __future__ import annotations

import os
import signal
import socket

from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo
from twisted.trial.unittest import TestCase

from tests.e2e.harness import BackgroundFetcher, access_records, fetch, read_http_head, start_nginx, start_txgate, wait_for, wait_for_record

CONFIG = """
[txgate]
state_dir = "{tmp}/var"
access_log = "{tmp}/access.log"
policy = "POLICY"

[[service]]
name = "explicit"
kind = "explicit-http"
listen = "tcp:0:interface=127.0.0.1"
"""

ALLOW_ALL = "<proxy>\n    ALLOW\n"
DENY_SECRET = '<proxy>\n    url.path.prefix=/secret DENY("secret is off limits")\n    ALLOW\n'
BROKEN = "<proxy>\n    url.path.prefx=/x DENY\n"


def _write(path: str, text: str) -> None:
    # Write then rename, as an editor or config manager does, so a reload
    # never reads half a file.
    with open(path + ".new", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".new", path)


def _open_tunnel(proxy: tuple[str, int], port: int) -> socket.socket:
    sock = socket.create_connection(proxy, timeout=10)
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head, rest = read_http_head(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _echo_through(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def _echo_server(testcase: TestCase) -> int:
    """A loopback TCP echo server: the far end of an opaque tunnel."""
    port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


# Bytes no detector claims: the tunnel is carried as tcp.
OPAQUE = b"\x00\x01 opaque stream "


class PolicyReloadTests(TestCase):
    """
    SIGHUP swaps the policy for new transactions; connections in flight and
    other clients carry on; a broken file keeps the policy in force.
    """

    timeout = 90

    async def test_reload_under_traffic(self) -> None:
        """
        While a client keeps fetching and a tunnel stays open, a new policy
        denying /secret applies after SIGHUP; a broken policy is refused and
        logged and the previous one stays; no request failed meanwhile.
        """
        nginx = await start_nginx(self, root_files={"public": b"public\n", "secret": b"secret\n"})
        policy = os.path.join(os.path.abspath(self.mktemp()), "policy.cpl")
        os.makedirs(os.path.dirname(policy))
        _write(policy, ALLOW_ALL)
        proc = await start_txgate(self, CONFIG.replace("POLICY", policy))
        proxy = proc.addresses["explicit"]

        before = await fetch(self, nginx.url("/secret"), proxy=proxy)
        self.assertEqual(before.status, 200)
        tunnel = await threads.deferToThread(_open_tunnel, proxy, _echo_server(self))
        self.addCleanup(tunnel.close)
        self.assertEqual(await threads.deferToThread(_echo_through, tunnel, OPAQUE + b"1"), OPAQUE + b"1")
        background = BackgroundFetcher(self, nginx.url("/public"), proxy, max_requests=300, pause=0.02)
        await wait_for(lambda: len(background.results) >= 2, 10, description="background requests")

        _write(policy, DENY_SECRET)
        os.kill(proc.pid, signal.SIGHUP)
        await wait_for(lambda: any("policy reloaded" in line for line in proc.log_lines), 10, description="the reload")
        denied = await fetch(self, nginx.url("/secret"), proxy=proxy)
        self.assertEqual(denied.status, 403)
        self.assertIn(b"secret is off limits", denied.body)
        record = await wait_for_record(proc, lambda r: r["status"] == 403)
        self.assertEqual((record["verdict"], record["reason"]), ("deny", "secret is off limits"))

        _write(policy, BROKEN)
        os.kill(proc.pid, signal.SIGHUP)
        await wait_for(lambda: any("policy reload failed" in line for line in proc.log_lines), 10, description="the failed reload")
        self.assertTrue(any("unknown condition 'url.path.prefx'" in line for line in proc.log_lines))
        still_denied = await fetch(self, nginx.url("/secret"), proxy=proxy)
        self.assertEqual(still_denied.status, 403)

        seen = len(background.results)
        await wait_for(lambda: len(background.results) >= seen + 2, 10, description="more background requests")

        # The tunnel opened under the first policy still works: the reloads
        # dropped nothing in flight.
        self.assertEqual(await threads.deferToThread(_echo_through, tunnel, OPAQUE + b"2"), OPAQUE + b"2")
        results = await background.stop()
        self.assertGreaterEqual(len(results), 4)
        self.assertEqual({(r.exit_code, r.status) for r in results}, {(0, 200)})


class PolicyDenyTests(TestCase):
    """
    The article's rule refuses undetected tunnels through the real proxy.
    """

    timeout = 60

    async def test_undetected_tunnel_denied(self) -> None:
        """
        With C{DENY client.protocol=!ssl tunneled=yes}, a CONNECT tunnel
        whose protocol nothing detects is closed and logged as denied, while
        HTTP (plain, and inside a tunnel) and TLS tunnels pass.
        """
        nginx = await start_nginx(self, root_files={"public": b"public\n"})
        tls = await start_nginx(self, tls=True, root_files={"public": b"public\n"})
        policy = os.path.join(os.path.abspath(self.mktemp()), "policy.cpl")
        os.makedirs(os.path.dirname(policy))
        _write(policy, "<proxy>\n    DENY client.protocol=!ssl tunneled=yes\n")
        proc = await start_txgate(self, CONFIG.replace("POLICY", policy))
        proxy = proc.addresses["explicit"]

        plain = await fetch(self, nginx.url("/public"), proxy=proxy)
        self.assertEqual(plain.status, 200)
        inner = await fetch(self, nginx.url("/public"), proxy=proxy, extra=["--proxytunnel"])
        self.assertEqual(inner.status, 200)
        secure = await fetch(self, tls.url("/public"), proxy=proxy, extra=["--cacert", tls.ca_pem_path])
        self.assertEqual(secure.status, 200)

        tunnel = await threads.deferToThread(_open_tunnel, proxy, _echo_server(self))
        self.addCleanup(tunnel.close)
        self.assertEqual(await threads.deferToThread(_echo_through, tunnel, OPAQUE), b"")
        record = await wait_for_record(proc, lambda r: r["verdict"] == "deny")
        self.assertEqual((record["method"], record["client_protocol"], record["tunneled"]), ("CONNECT", "tcp", True))
        self.assertIn("denied by policy", record["reason"])
        protocols = {r["client_protocol"] for r in access_records(proc) if r["verdict"] == "allow"}
        self.assertEqual(protocols, {"http", "ssl"})
