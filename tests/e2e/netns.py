# -*- test-case-name: tests.e2e.test_transparent -*-
"""
Network namespaces for end-to-end tests of transparent interception: a
client, a proxy (router) and a server namespace, each test its own.

    client ns                 proxy ns                      server ns
    10.200.1.2  ---veth---  10.200.1.1 | 10.200.2.1  ---veth---  10.200.2.2
    fd00:200:1::2           fd00:200:1::1 | fd00:200:2::1         fd00:200:2::2

The client's and the server's default routes go through the proxy, which
forwards; L{Topology.redirect} adds C{iptables -t nat ... REDIRECT} rules in
the proxy namespace so the client's connections to ports 80/443 reach a
local txgate instead. Traffic never leaves the three namespaces.

    topo = make_topology(self)                       # deleted by a cleanup
    nginx = await start_nginx_in(self, topo, {"a.txt": b"..."})
    proxy = await start_txgate(self, CONFIG, prefix=topo.exec_prefix(topo.proxy))
    topo.redirect(ipv4_port=..., ipv6_port=...)
    result = await netns_fetch(self, topo.client, "http://10.200.2.2/a.txt")

Namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and C{ip}/C{iptables}:
without them the test is skipped, or fails under C{CI=true}.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import unittest
from typing import Mapping, Sequence

import attrs
from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import FailTest

from tests.e2e.harness import (
    STARTUP_TIMEOUT,
    CurlResult,
    curl_result,
    _child_env,
    _Child,
    _new_dir,
    _stop_child,
    _tail,
    make_pki,
    require,
    require_tool,
    wait_for,
)

__all__ = [
    "CLIENT4",
    "CLIENT6",
    "PROXY_CLIENT_SIDE4",
    "PROXY_CLIENT_SIDE6",
    "SERVER4",
    "SERVER6",
    "NetnsNginx",
    "Topology",
    "make_topology",
    "netns_fetch",
    "start_nginx_in",
]

CLIENT4, PROXY_CLIENT_SIDE4 = "10.200.1.2", "10.200.1.1"
PROXY_SERVER_SIDE4, SERVER4 = "10.200.2.1", "10.200.2.2"
CLIENT6, PROXY_CLIENT_SIDE6 = "fd00:200:1::2", "fd00:200:1::1"
PROXY_SERVER_SIDE6, SERVER6 = "fd00:200:2::1", "fd00:200:2::2"

COMMAND_TIMEOUT = 15.0
"""Seconds any one C{ip}/C{iptables}/C{sysctl} command may take."""


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)


@attrs.frozen
class Topology:
    """
    Three namespaces and the links between them.

    @ivar proxy_from_client: the proxy's interface facing the client (the
        one C{REDIRECT} rules match with C{-i}).
    """

    ip: str
    client: str
    proxy: str
    server: str
    proxy_from_client: str
    proxy_to_server: str

    def exec_prefix(self, namespace: str) -> list[str]:
        """The argv prefix that runs a command inside C{namespace}."""
        return [self.ip, "netns", "exec", namespace]

    def run(self, namespace: str, *argv: str) -> str:
        """
        Run C{argv} inside C{namespace} and return its stdout.

        @raise FailTest: if it fails, with its stderr.
        """
        done = _run([*self.exec_prefix(namespace), *argv])
        if done.returncode != 0:
            raise FailTest(f"in netns {namespace}: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def redirect(self, ipv4_port: int | None, ipv6_port: int | None, ports: Sequence[int] = (80, 443)) -> None:
        """
        In the proxy namespace, send TCP from the client to C{ports} to the
        local C{ipv4_port} / C{ipv6_port} (iptables / ip6tables C{REDIRECT}).
        Deleting the namespace removes the rules.
        """
        dports = ",".join(str(p) for p in ports)
        for tool, port in (("iptables", ipv4_port), ("ip6tables", ipv6_port)):
            if port is None:
                continue
            self.run(
                self.proxy,
                require_tool(tool),
                "-w", "5",
                "-t", "nat",
                "-A", "PREROUTING",
                "-i", self.proxy_from_client,
                "-p", "tcp",
                "-m", "multiport",
                "--dports", dports,
                "-j", "REDIRECT",
                "--to-ports", str(port),
            )


def make_topology(testcase: unittest.TestCase) -> Topology:
    """
    Create the client, proxy and server namespaces (names with a random
    suffix), link them, address them, make the proxy forward and route the
    others through it. A cleanup deletes the namespaces, which removes their
    veths and iptables rules, even when creation failed half way.

    @raise unittest.SkipTest: when namespaces cannot be made (not root, no
        C{ip}), outside CI.
    @raise FailTest: the same under C{CI=true}.
    """
    ip = require_tool("ip")
    require_tool("iptables")
    require_tool("ip6tables")
    require(os.geteuid() == 0, "network namespaces need root")
    suffix = secrets.token_hex(3)
    topo = Topology(
        ip=ip,
        client=f"txg-c-{suffix}",
        proxy=f"txg-p-{suffix}",
        server=f"txg-s-{suffix}",
        proxy_from_client=f"vpc-{suffix}",
        proxy_to_server=f"vps-{suffix}",
    )
    created: list[str] = []

    def delete() -> None:
        for namespace in reversed(created):
            _run([ip, "netns", "delete", namespace])

    testcase.addCleanup(delete)
    for namespace in (topo.client, topo.proxy, topo.server):
        done = _run([ip, "netns", "add", namespace])
        require(done.returncode == 0, f"cannot create network namespace {namespace}: {done.stderr.strip()}")
        created.append(namespace)

    def host(*argv: str) -> None:
        done = _run([ip, *argv])
        if done.returncode != 0:
            raise FailTest(f"ip {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")

    client_if, server_if = f"vc-{suffix}", f"vs-{suffix}"
    host("link", "add", topo.proxy_from_client, "netns", topo.proxy, "type", "veth", "peer", "name", client_if, "netns", topo.client)
    host("link", "add", topo.proxy_to_server, "netns", topo.proxy, "type", "veth", "peer", "name", server_if, "netns", topo.server)
    links = (
        (topo.client, client_if, CLIENT4, CLIENT6),
        (topo.proxy, topo.proxy_from_client, PROXY_CLIENT_SIDE4, PROXY_CLIENT_SIDE6),
        (topo.proxy, topo.proxy_to_server, PROXY_SERVER_SIDE4, PROXY_SERVER_SIDE6),
        (topo.server, server_if, SERVER4, SERVER6),
    )
    for namespace, interface, v4, v6 in links:
        topo.run(namespace, ip, "link", "set", "lo", "up")
        topo.run(namespace, ip, "addr", "add", f"{v4}/24", "dev", interface)
        # nodad: usable at once, instead of "tentative" for a second or two.
        topo.run(namespace, ip, "-6", "addr", "add", f"{v6}/64", "dev", interface, "nodad")
        topo.run(namespace, ip, "link", "set", interface, "up")
    topo.run(topo.proxy, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    topo.run(topo.proxy, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
    for namespace, via4, via6 in (
        (topo.client, PROXY_CLIENT_SIDE4, PROXY_CLIENT_SIDE6),
        (topo.server, PROXY_SERVER_SIDE4, PROXY_SERVER_SIDE6),
    ):
        topo.run(namespace, ip, "route", "add", "default", "via", via4)
        topo.run(namespace, ip, "-6", "route", "add", "default", "via", via6)
    return topo


def netns_fetch(
    testcase: unittest.TestCase,
    namespace: str,
    url: str,
    *,
    extra: Sequence[str] = (),
    timeout: float = 20.0,
) -> defer.Deferred[CurlResult]:
    """
    Fetch C{url} with curl inside C{namespace} (no proxy: the network
    intercepts); C{extra} goes before the URL (C{--resolve}, C{--cacert}).
    """
    ip = require_tool("ip")
    curl = require_tool("curl")
    body_path = os.path.abspath(testcase.mktemp())  # type: ignore[attr-defined]
    argv = [
        "netns", "exec", namespace, curl, "-q", "--max-time", str(timeout), "--silent", "--show-error",
        "--noproxy", "*", "--output", body_path, "--write-out", "%{http_code}", *extra, url,
    ]

    return getProcessOutputAndValue(ip, argv, env=_child_env()).addCallback(curl_result, body_path)


@attrs.frozen
class NetnsNginx:
    """
    nginx in the server namespace on ports 80 (HTTP) and 443 (HTTPS) of
    L{SERVER4} and L{SERVER6}.

    @ivar ca_pem_path: the CA for C{curl --cacert}; the certificate names
        C{origin.test} and both server addresses.
    """

    directory: str
    ca_pem_path: str
    pid: int


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" info;
events {{ worker_connections 256; }}
http {{
    access_log "{tmp}/access.log";
    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    default_type application/octet-stream;
    server {{
        listen {v4}:80;
        listen [{v6}]:80;
        listen {v4}:443 ssl;
        listen [{v6}]:443 ssl;
        server_name origin.test;
        root "{docroot}";
        ssl_certificate "{cert}";
        ssl_certificate_key "{key}";
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ }}
    }}
}}
"""


def start_nginx_in(
    testcase: unittest.TestCase, topo: Topology, root_files: Mapping[str, bytes]
) -> defer.Deferred[NetnsNginx]:
    """
    Start nginx in the server namespace serving C{root_files}; fires once it
    listens on all four sockets. A cleanup stops it.
    """
    return defer.Deferred.fromCoroutine(_start_nginx_in(testcase, topo, root_files))


async def _start_nginx_in(testcase: unittest.TestCase, topo: Topology, root_files: Mapping[str, bytes]) -> NetnsNginx:
    nginx = require_tool("nginx")
    directory = _new_dir(testcase)
    docroot = os.path.join(directory, "docroot")
    for relative, content in root_files.items():
        path = os.path.join(docroot, relative.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    pki = make_pki(directory, dns_names=("origin.test",), ip_addresses=(SERVER4, SERVER6))
    conf_path = os.path.join(directory, "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(
            _NGINX_CONF.format(
                tmp=directory, v4=SERVER4, v6=SERVER6, docroot=docroot, cert=pki.cert_path, key=pki.key_path
            )
        )
    error_log = os.path.join(directory, "error.log")
    argv = [*topo.exec_prefix(topo.server), nginx, "-p", directory + "/", "-c", conf_path, "-e", error_log]
    child = _Child()
    transport = reactor.spawnProcess(child, argv[0], argv, env=_child_env(), path=directory)
    testcase.addCleanup(_stop_child, child, transport, "nginx")
    ss = require_tool("ss")

    def listening() -> bool:
        if not child.running:
            return True
        done = _run([*topo.exec_prefix(topo.server), ss, "-Hltn"])
        return done.stdout.count(":80 ") + done.stdout.count(":443 ") >= 4

    await wait_for(listening, timeout=STARTUP_TIMEOUT, description="nginx to listen in the server namespace")
    if not child.running:
        try:
            with open(error_log, errors="replace") as f:
                errors = f.read()
        except FileNotFoundError:
            errors = ""
        raise FailTest(f"nginx exited ({child.describe_end()}); output:\n{_tail(child.lines)}\nerror.log:\n{errors}")
    return NetnsNginx(directory, pki.ca_pem_path, transport.pid)


@attrs.frozen
class NetnsProcess:
    """A server started in a namespace: its output lines and its end."""

    child: _Child
    transport: object

    def output(self) -> str:
        return _tail(self.child.lines)


def start_in(
    testcase: unittest.TestCase, topo: Topology, namespace: str, argv: Sequence[str], port: int, what: str
) -> defer.Deferred[NetnsProcess]:
    """
    Start C{argv} inside C{namespace} and fire once something there listens
    on TCP C{port} (a server that exits first fails the test with its
    output). A cleanup stops it.
    """
    return defer.Deferred.fromCoroutine(_start_in(testcase, topo, namespace, argv, port, what))


async def _start_in(
    testcase: unittest.TestCase, topo: Topology, namespace: str, argv: Sequence[str], port: int, what: str
) -> NetnsProcess:
    directory = _new_dir(testcase)
    full = [*topo.exec_prefix(namespace), *argv]
    child = _Child()
    transport = reactor.spawnProcess(child, full[0], full, env=_child_env(), path=directory)
    testcase.addCleanup(_stop_child, child, transport, what)
    ss = require_tool("ss")

    def listening() -> bool:
        if not child.running:
            return True
        done = _run([*topo.exec_prefix(namespace), ss, "-Hltn", f"sport = :{port}"])
        return bool(done.stdout.strip())

    await wait_for(listening, timeout=STARTUP_TIMEOUT, description=f"{what} to listen on port {port} in {namespace}")
    if not child.running:
        raise FailTest(f"{what} exited ({child.describe_end()}); output:\n{_tail(child.lines)}")
    return NetnsProcess(child, transport)


def run_in(
    topo: Topology, namespace: str, argv: Sequence[str], timeout: float = 60.0
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """Run a client inside C{namespace}: fires with (stdout, stderr, exit code)."""
    full = [*topo.exec_prefix(namespace), *argv]
    d = getProcessOutputAndValue(full[0], full[1:], env=_child_env())
    d.addTimeout(timeout, reactor)
    return d
