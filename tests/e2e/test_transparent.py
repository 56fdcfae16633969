"""
The stream services end to end: C{transparent} in network namespaces with
iptables C{REDIRECT} (IPv4 and IPv6), C{tcp-tunnel} and C{socks5} on
loopback, and the explicit proxy on C{::1}. Real curl, nginx and
C{twistd txgate forward}.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from twisted.trial.unittest import TestCase

from tests.auth.test_htpasswd import bcrypt_hash
from tests.e2e.harness import fetch, start_nginx, start_txgate, wait_for_record
from tests.e2e.netns import (
    CLIENT4,
    PROXY_CLIENT_SIDE4,
    SERVER4,
    SERVER6,
    make_topology,
    netns_fetch,
    start_nginx_in,
)

HELLO = hashlib.shake_256(b"hello through the transparent proxy").digest(40 * 1024)


def config(*services: dict[str, Any], realm: str = "") -> str:
    """A config with C{services} (tables of keys), the access log in text in {tmp}."""
    lines = [
        "[txgate]",
        'state_dir = "{tmp}/var"',
        'access_log = "{tmp}/access.log"',
        'access_log_format = "text"',
    ]
    for service in services:
        lines += ["", "[[service]]"] + [f"{k} = {json.dumps(v)}" for k, v in service.items()]
    return "\n".join(lines) + "\n" + realm


TRANSPARENT = config(
    {"name": "transparent4", "kind": "transparent", "listen": "tcp:0"},
    {"name": "transparent6", "kind": "transparent", "listen": "tcp6:0"},
)


class TransparentNetnsTests(TestCase):
    """
    curl in the client namespace, txgate and the REDIRECT rules in the proxy
    namespace, nginx in the server namespace.
    """

    timeout = 90

    async def _setup(self) -> Any:
        topo = make_topology(self)
        nginx = await start_nginx_in(self, topo, {"hello.bin": HELLO})
        proxy = await start_txgate(self, TRANSPARENT, prefix=topo.exec_prefix(topo.proxy))
        topo.redirect(proxy.addresses["transparent4"][1], proxy.addresses["transparent6"][1])
        return topo, nginx, proxy

    async def test_http_and_https(self) -> None:
        """
        HTTP and HTTPS to the server's address reach nginx through txgate;
        each connection's record names the original destination, the
        client's own address and the service.
        """
        topo, nginx, proxy = await self._setup()
        http = await netns_fetch(
            self, topo.client, "http://origin.test/hello.bin", extra=["--resolve", f"origin.test:80:{SERVER4}"]
        )
        self.assertEqual((http.exit_code, http.status), (0, 200), http.stderr + proxy.output())
        self.assertEqual(http.body, HELLO)
        https = await netns_fetch(
            self,
            topo.client,
            "https://origin.test/hello.bin",
            extra=["--resolve", f"origin.test:443:{SERVER4}", "--cacert", nginx.ca_pem_path],
        )
        self.assertEqual((https.exit_code, https.status), (0, 200), https.stderr + proxy.output())
        self.assertEqual(https.body, HELLO)
        for port in (80, 443):
            record = await wait_for_record(proxy, lambda r, p=port: r["method"] in (None, "-") and r["target"] == f"{SERVER4}:{p}")
            self.assertEqual((record["service"], record["verdict"]), ("transparent4", "allow"), record)
            self.assertRegex(record["client"], rf"^{CLIENT4}:\d+$")
        self.assertEqual(proxy.tracebacks(), [])

    async def test_ipv6(self) -> None:
        """HTTP and HTTPS over IPv6 go through the ip6tables REDIRECT to the IPv6 listener."""
        topo, nginx, proxy = await self._setup()
        http = await netns_fetch(self, topo.client, f"http://[{SERVER6}]/hello.bin", extra=["-g"])
        self.assertEqual((http.exit_code, http.status), (0, 200), http.stderr + proxy.output())
        self.assertEqual(http.body, HELLO)
        https = await netns_fetch(
            self,
            topo.client,
            "https://origin.test/hello.bin",
            extra=["--resolve", f"origin.test:443:[{SERVER6}]", "--cacert", nginx.ca_pem_path],
        )
        self.assertEqual((https.exit_code, https.status), (0, 200), https.stderr + proxy.output())
        for port in (80, 443):
            record = await wait_for_record(
                proxy, lambda r, p=port: r["method"] in (None, "-") and r["target"] == f"[{SERVER6}]:{p}"
            )
            self.assertEqual(record["service"], "transparent6")

    async def test_not_redirected(self) -> None:
        """
        A client connecting straight to the transparent listener (no
        REDIRECT) is closed, never looped back to txgate, and the record says
        why.
        """
        topo, nginx, proxy = await self._setup()
        port = proxy.addresses["transparent4"][1]
        result = await netns_fetch(self, topo.client, f"http://{PROXY_CLIENT_SIDE4}:{port}/", timeout=10)
        self.assertNotEqual(result.exit_code, 0)
        record = await wait_for_record(proxy, lambda r: "not redirected" in (r["reason"] or ""))
        self.assertEqual(record["verdict"], "deny")


class TunnelAndSocksTests(TestCase):
    """tcp-tunnel and socks5 on loopback, and the explicit proxy on ::1."""

    timeout = 60

    async def test_tcp_tunnel(self) -> None:
        """Every connection to a tcp-tunnel reaches its destination, whatever it asks for."""
        nginx = await start_nginx(self, root_files={"hello.bin": HELLO})
        proxy = await start_txgate(
            self,
            config(
                {
                    "name": "tunnel",
                    "kind": "tcp-tunnel",
                    "listen": "tcp:0:interface=127.0.0.1",
                    "destination": nginx.authority,
                }
            ),
        )
        host, port = proxy.addresses["tunnel"]
        result = await fetch(self, f"http://{host}:{port}/hello.bin")
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        self.assertEqual(result.body, HELLO)
        record = await wait_for_record(proxy, lambda r: r["service"] == "tunnel" and r["method"] in (None, "-"))
        self.assertEqual((record["target"], record["verdict"]), (nginx.authority, "allow"))

    async def test_socks5_no_auth(self) -> None:
        """curl --socks5-hostname: txgate resolves the name and tunnels HTTPS to nginx."""
        nginx = await start_nginx(self, tls=True, root_files={"hello.bin": HELLO})
        proxy = await start_txgate(
            self, config({"name": "socks", "kind": "socks5", "listen": "tcp:0:interface=127.0.0.1"})
        )
        host, port = proxy.addresses["socks"]
        result = await fetch(
            self,
            f"https://localhost:{nginx.port}/hello.bin",
            extra=["--socks5-hostname", f"{host}:{port}", "--cacert", nginx.ca_pem_path, "-4"],
        )
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr + proxy.output())
        self.assertEqual(result.body, HELLO)
        record = await wait_for_record(proxy, lambda r: r["method"] == "CONNECT")
        self.assertEqual((record["target"], record["service"]), (f"localhost:{nginx.port}", "socks"))

    async def test_socks5_realm(self) -> None:
        """With a realm, the right password gets through and the record names the user; a wrong one is refused."""
        nginx = await start_nginx(self, root_files={"hello.bin": HELLO})
        htpasswd = os.path.abspath(self.mktemp())
        with open(htpasswd, "w") as f:
            f.write(f"alice:{bcrypt_hash(b'secret')}\n")
        realm = f'\n[realm.corp]\nhtpasswd = "{htpasswd}"\n'
        proxy = await start_txgate(
            self,
            config({"name": "socks", "kind": "socks5", "listen": "tcp:0:interface=127.0.0.1", "realm": "corp"}, realm=realm),
        )
        host, port = proxy.addresses["socks"]
        result = await fetch(
            self,
            nginx.url("/hello.bin"),
            extra=["--socks5-hostname", f"{host}:{port}", "--proxy-user", "alice:secret"],
        )
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr + proxy.output())
        record = await wait_for_record(proxy, lambda r: r["method"] == "CONNECT" and r["verdict"] == "allow")
        self.assertEqual(record["user"], "alice")
        refused = await fetch(
            self,
            nginx.url("/hello.bin"),
            extra=["--socks5-hostname", f"{host}:{port}", "--proxy-user", "alice:wrong"],
        )
        self.assertNotEqual(refused.exit_code, 0)
        await wait_for_record(proxy, lambda r: "invalid credentials" in (r["reason"] or ""))

    async def test_explicit_on_ipv6_loopback(self) -> None:
        """The explicit proxy listens on ::1 and serves a client there."""
        nginx = await start_nginx(self, root_files={"hello.bin": HELLO})
        proxy = await start_txgate(
            self, config({"name": "explicit", "kind": "explicit-http", "listen": "tcp6:0:interface=\\:\\:1"})
        )
        self.assertEqual(proxy.addresses["explicit"][0], "::1")
        result = await fetch(self, nginx.url("/hello.bin"), proxy=proxy.addresses["explicit"])
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        self.assertEqual(result.body, HELLO)
        record = await wait_for_record(proxy, lambda r: r["method"] == "GET")
        self.assertRegex(record["client"], r"^\[::1\]:\d+$")


