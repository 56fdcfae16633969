"""
Workers and scale-out end to end (issue 7).

  - C{--workers 2}: connections land on both workers (the admin API's
    C{worker} field says 1 and 2); a SIGHUP policy change applies to new
    connections on both workers while a 1 GiB CONNECT tunnel opened before
    it completes byte for byte; SIGTERM stops accepting, lets a slow
    download finish, cuts what outlives C{drain_timeout} and exits 0; a
    worker killed with SIGKILL is restarted, logged, and serves again.
  - A real haproxy (C{mode tcp}, C{send-proxy-v2}) in front of two forward
    nodes on C{haproxy:} endpoints: the client's own address is in both
    nodes' access logs and decides C{client.address} policy; nodes sharing
    one state directory mint leaves that verify against the CRL downloaded
    from the other node.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from typing import Any

import attrs
from cryptography import x509
from twisted.internet import reactor, task, threads
from twisted.trial.unittest import FailTest, TestCase

from tests.e2e.admin_peers import admin_request, parse_metrics
from tests.e2e.harness import (
    TxgateProcess,
    _new_dir,
    access_records,
    fetch,
    read_access_log,
    read_http_head,
    require_tool,
    start_nginx,
    start_txgate,
    wait_for,
    write_pattern_file,
)
from tests.e2e.reverse_peers import haproxy_tcp_config, start_haproxy
from tests.e2e.test_admin import _open_tunnel, _reads_eof
from tests.e2e.test_intercept import _load_crl, _urls
from tests.e2e.tls_origins import free_port, http_get, make_origin_pki, pem_certificates, s_client, start_listener

GIB = 1 << 30
SMALL = hashlib.shake_256(b"txgate workers").digest(64 * 1024)
ALLOW_ALL = "<proxy>\n    ALLOW url.path.prefix=/allowed\n"
DENY_NEW = "    DENY url.path.prefix=/denied\n"
"""Added by the SIGHUP test: line 3 of the policy file."""


def workers_config(
    testcase: TestCase, policy_path: str, *, listen: str = "tcp:0:interface=127.0.0.1",
    drain_timeout: float | None = None, state_dir: str | None = None, ssl: dict[str, Any] | None = None,
) -> str:
    """
    A forward config: an C{explicit} service on C{listen}, C{policy_path},
    the admin on a free loopback port, state in a new L{short_state_dir}
    unless C{state_dir} says otherwise.
    """
    if state_dir is None:
        state_dir = short_state_dir(testcase)
    lines = [
        "[txgate]",
        f"state_dir = {json.dumps(state_dir)}",
        'access_log = "{tmp}/access.log"',
        'access_log_format = "text"',
        f"policy = {json.dumps(policy_path)}",
    ]
    if drain_timeout is not None:
        lines.append(f"drain_timeout = {drain_timeout}")
    if ssl:
        lines += ["", "[ssl]", *(f"{k} = {json.dumps(v)}" for k, v in ssl.items())]
    lines += [
        "",
        "[admin]",
        'listen = "tcp:0:interface=127.0.0.1"',
        "",
        "[[service]]",
        'name = "explicit"',
        'kind = "explicit-http"',
        f"listen = {json.dumps(listen)}",
    ]
    return "\n".join(lines) + "\n"


def short_state_dir(testcase: TestCase) -> str:
    """
    A state directory with a short path: the workers' control sockets live
    in C{<state_dir>/run}, and a UNIX socket path is limited to 107 bytes,
    which trial's C{_trial_temp/<module>/<class>/<test>/...} paths exceed.
    """
    path = tempfile.mkdtemp(prefix="txgw-")
    testcase.addCleanup(shutil.rmtree, path, True)
    return path


def write_policy(testcase: TestCase, text: str) -> str:
    path = os.path.join(_new_dir(testcase), "workers.cpl")
    with open(path, "w") as f:
        f.write(text)
    return path


def worker_pids(main_pid: int) -> list[int]:
    """The live children of C{main_pid} whose command line names C{txgate.worker}."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if fields[0] != "Z" and int(fields[1]) == main_pid and b"txgate.worker" in cmdline:
            found.append(int(entry))
    return sorted(found)


def worker_socket(proxy: TxgateProcess, n: int) -> str:
    return os.path.join(proxy.state_dir, "run", f"worker-{n}.sock")


async def start_workers(testcase: TestCase, config: str, n: int = 2) -> TxgateProcess:
    """txgate with C{--workers n}, once both workers' admin sockets exist."""
    proxy = await start_txgate(testcase, config, ["--workers", str(n)], extra_services=("admin",))
    await wait_for(
        lambda: len(worker_pids(proxy.pid)) == n and all(os.path.exists(worker_socket(proxy, i)) for i in range(1, n + 1)),
        timeout=20, description=f"{n} workers and their admin sockets",
    )
    return proxy


async def get_json(where: Any, path: str) -> Any:
    reply = await admin_request(where, path)
    if reply.status != 200:
        raise FailTest(f"GET {path} on {where}: {reply.describe()}")
    return reply.json()


def sleep(seconds: float) -> Any:
    return task.deferLater(reactor, seconds, lambda: None)


def _rule_hits(status: Any, suffix: str) -> int:
    return sum(r["hits"] for r in status["policy"]["rule_hits"] if r["rule"].endswith(suffix))


# ---------------------------------------------------------------- the 1 GiB tunnel


@attrs.define
class _Tunnel:
    started: threading.Event = attrs.Factory(threading.Event)
    resume: threading.Event = attrs.Factory(threading.Event)
    connect_head: bytes = b""
    response_head: bytes = b""
    length: int = -1
    received: int = 0
    sha256: str = ""


def _tunnel_download(state: _Tunnel, proxy: tuple[str, int], origin: tuple[str, int], path: str, first: int) -> _Tunnel:
    """
    Blocking: CONNECT to C{origin} through C{proxy}, GET C{path}, read the
    head and C{first} body bytes, set C{started}, wait for C{resume}, then
    read and hash the rest.
    """
    authority = "%s:%d" % origin
    with socket.create_connection(proxy, timeout=60) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        state.connect_head, rest = read_http_head(sock)
        if not state.connect_head.startswith(b"HTTP/1.1 200"):
            state.started.set()
            return state
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        state.response_head, rest = read_http_head(sock, rest)
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", state.response_head)
        state.length = int(match.group(1)) if match else -1
        digest = hashlib.sha256(rest)
        state.received = len(rest)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        try:
            while state.received < state.length:
                if state.received >= first and not state.started.is_set():
                    state.started.set()
                    state.resume.wait(120)
                n = sock.recv_into(view, min(len(buffer), state.length - state.received))
                if n == 0:
                    break
                digest.update(view[:n])
                state.received += n
        finally:
            state.started.set()
        state.sha256 = digest.hexdigest()
    return state


# ---------------------------------------------------------------- --workers 2


class WorkersTests(TestCase):
    """One node, two workers."""

    timeout = 150

    async def _echo(self) -> tuple[str, int]:
        socat = require_tool("socat")
        port = free_port()
        await start_listener(self, [socat, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "PIPE"], port, "socat echo")
        return "127.0.0.1", port

    async def test_connections_on_both_workers(self) -> None:
        """
        Tunnels opened one after another land on both workers: the main's
        API lists them with C{worker} 1 and 2, each worker's own socket
        lists its share, and the merged C{txgate_sessions} gauge counts them all.
        """
        echo = await self._echo()
        proxy = await start_workers(self, workers_config(self, write_policy(self, ALLOW_ALL)))
        admin = proxy.addresses["admin"]
        tunnels: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in tunnels])
        workers: set[int] = set()
        for _ in range(40):
            tunnels.append(await threads.deferToThread(_open_tunnel, proxy.addresses["explicit"], echo))
            if len(tunnels) >= 4:
                listing = await get_json(admin, "/api/sessions")
                workers = {s["worker"] for s in listing["sessions"]}
                if workers == {1, 2} and len(listing["sessions"]) == len(tunnels):
                    break
        listing = await get_json(admin, "/api/sessions")
        self.assertEqual(len(listing["sessions"]), len(tunnels), listing)
        self.assertEqual({s["worker"] for s in listing["sessions"]}, {1, 2}, f"after {len(tunnels)} tunnels: {listing}")
        by_worker = {}
        for n in (1, 2):
            own = await get_json(worker_socket(proxy, n), "/api/sessions")
            self.assertTrue(all(s["worker"] == n for s in own["sessions"]), own)
            by_worker[n] = sorted(s["id"] for s in own["sessions"])
        self.assertEqual(sorted(by_worker[1] + by_worker[2]), sorted(s["id"] for s in listing["sessions"]))

        metrics = await admin_request(admin, "/metrics")
        self.assertEqual(metrics.status, 200, metrics.describe())
        families = parse_metrics(metrics.body)
        self.assertIn("txgate_sessions", families, sorted(families))
        tcp = sum(s.value for s in families["txgate_sessions"].samples if s.labels.get("protocol") == "tcp")
        self.assertEqual(tcp, len(tunnels), [s for s in families["txgate_sessions"].samples])
        self.assertEqual(proxy.tracebacks(), [], proxy.output())

    async def test_sighup_applies_to_both_workers_while_tunnel_completes(self) -> None:
        """
        A 1 GiB download through a CONNECT tunnel is paused after 16 MiB; a
        DENY rule is added to the policy file and the main gets SIGHUP; both
        workers report the reload, new connections are denied by the new
        rule on both workers (their own rule hit counts), and the tunnel then
        completes with the file's SHA-256.
        """
        docroot = _new_dir(self)
        expected = await threads.deferToThread(write_pattern_file, os.path.join(docroot, "big"), GIB)
        self.addCleanup(lambda: os.remove(os.path.join(docroot, "big")))
        for name in ("allowed.bin", "denied.bin"):
            with open(os.path.join(docroot, name), "wb") as f:
                f.write(SMALL)
        nginx = await start_nginx(self, docroot=docroot)
        policy_path = write_policy(self, ALLOW_ALL)
        proxy = await start_workers(self, workers_config(self, policy_path))
        address = proxy.addresses["explicit"]

        state = _Tunnel()
        download = threads.deferToThread(_tunnel_download, state, address, nginx.address, "/big", 16 << 20)
        self.addCleanup(state.resume.set)
        await wait_for(state.started.is_set, timeout=30, description="the tunnel's first 16 MiB")
        self.assertTrue(state.connect_head.startswith(b"HTTP/1.1 200"), state.connect_head)

        before = await fetch(self, nginx.url("/denied.bin"), proxy=address)
        self.assertEqual((before.status, before.body), (200, SMALL), before.stderr)
        reloads = {n: (await get_json(worker_socket(proxy, n), "/api/status"))["policy"]["last_reload"] for n in (1, 2)}

        with open(policy_path, "w") as f:
            f.write(ALLOW_ALL + DENY_NEW)
        os.kill(proxy.pid, signal.SIGHUP)

        async def reloaded(n: int) -> Any:
            deadline = reactor.seconds() + 15
            while True:
                status = await get_json(worker_socket(proxy, n), "/api/status")
                last = status["policy"]["last_reload"]
                if last != reloads[n] and last.get("time") is not None:
                    return last
                if reactor.seconds() > deadline:
                    raise FailTest(f"worker {n} never reported the reload: {last}\n{proxy.output()}")
                await sleep(0.2)

        for n in (1, 2):
            last = await reloaded(n)
            self.assertIs(last["ok"], True, f"worker {n}: {last}")

        denied = 0
        hits = {1: 0, 2: 0}
        for _ in range(40):
            result = await fetch(self, nginx.url("/denied.bin"), proxy=address)
            self.assertEqual(result.status, 403, f"after SIGHUP /denied.bin gave {result.status} {result.stderr}")
            denied += 1
            for n in (1, 2):
                hits[n] = _rule_hits(await get_json(worker_socket(proxy, n), "/api/status"), ":3")
            if denied >= 4 and all(hits.values()):
                break
        self.assertTrue(all(hits.values()), f"hits of the new rule per worker after {denied} requests: {hits}")
        self.assertEqual(sum(hits.values()), denied, hits)
        allowed = await fetch(self, nginx.url("/allowed.bin"), proxy=address)
        self.assertEqual((allowed.status, allowed.body), (200, SMALL), allowed.stderr)
        merged = await get_json(proxy.addresses["admin"], "/api/status")
        self.assertEqual(_rule_hits(merged, ":3"), denied, merged["policy"])

        state.resume.set()
        done = await download
        self.assertEqual(done.length, GIB, done.response_head)
        self.assertEqual(done.received, GIB)
        self.assertEqual(done.sha256, expected)
        await wait_for(
            lambda: len([r for r in access_records(proxy) if r["verdict"] == "deny"]) == denied,
            timeout=10, description=f"{denied} deny records from both workers in the one access log",
        )
        self.assertEqual(proxy.tracebacks(), [], proxy.output())

    async def test_sigterm_drains(self) -> None:
        """
        SIGTERM to the main: within 3 s nothing accepts on the service; a
        slow download in progress completes; an idle tunnel is cut after
        C{drain_timeout}; the process and its workers exit with status 0.
        """
        drain = 8.0
        docroot = _new_dir(self)
        slow = SMALL * 8  # 512 KiB at 128 KiB/s: about 4 s
        with open(os.path.join(docroot, "slow.bin"), "wb") as f:
            f.write(slow)
        nginx = await start_nginx(self, docroot=docroot)
        echo = await self._echo()
        proxy = await start_workers(self, workers_config(self, write_policy(self, ALLOW_ALL), drain_timeout=drain))
        address = proxy.addresses["explicit"]
        pids = worker_pids(proxy.pid)
        idle = await threads.deferToThread(_open_tunnel, address, echo)
        self.addCleanup(idle.close)
        download = fetch(self, nginx.url("/slow.bin"), proxy=address, extra=["--limit-rate", "128k"])
        await sleep(1.0)  # the download is under way

        proxy.exit_expected = True
        started = time.monotonic()
        os.kill(proxy.pid, signal.SIGTERM)

        def refused() -> bool:
            try:
                with socket.create_connection(address, timeout=1):
                    return False
            except ConnectionRefusedError:
                return True
            except OSError:
                return False

        await wait_for(refused, timeout=3, description="the explicit service to refuse connections after SIGTERM")
        result = await download
        finished = time.monotonic() - started
        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr + proxy.output())
        self.assertEqual(result.body, slow)
        self.assertLess(finished, drain, "the slow download outlived drain_timeout")
        eof = await threads.deferToThread(_reads_eof, idle, drain + 5)
        self.assertIs(eof, True, f"the idle tunnel read {eof} instead of being cut")
        self.assertTrue(await proxy.wait_ended(drain + 10), f"still running {drain + 10}s after SIGTERM:\n{proxy.output()}")
        ended = time.monotonic() - started
        # twistd ends by re-raising the SIGTERM it handled, as daemons do
        # (systemd counts that as a clean stop): no exit status, signal 15.
        end = proxy._child.ended.value if proxy._child.ended is not None else None
        self.assertEqual(
            (getattr(end, "exitCode", None), getattr(end, "signal", None)),
            (None, signal.SIGTERM),
            f"ended: {proxy._child.describe_end()}\n{proxy.output()}",
        )
        self.assertGreaterEqual(ended, drain - 1, f"exited {ended:.1f}s after SIGTERM with a tunnel still open")
        self.assertLessEqual(ended, drain + 6, f"exited {ended:.1f}s after SIGTERM, drain_timeout {drain}")
        self.assertEqual([p for p in pids if os.path.exists(f"/proc/{p}")], [], "workers left behind")
        self.assertEqual(proxy.tracebacks(), [], proxy.output())

    async def test_killed_worker_is_restarted(self) -> None:
        """
        SIGKILL to one worker: the main logs its restart, a new worker takes
        its place (2 workers again, a new pid), and requests and the admin
        API work as before.
        """
        nginx = await start_nginx(self, root_files={"allowed.bin": SMALL})
        proxy = await start_workers(self, workers_config(self, write_policy(self, ALLOW_ALL)))
        victim, survivor = worker_pids(proxy.pid)
        seen = len(proxy.log_lines)
        os.kill(victim, signal.SIGKILL)

        def restart_logged() -> str | None:
            return next((line for line in proxy.log_lines[seen:] if re.search(r"(?i)worker.*restart", line)), None)

        line = await wait_for(restart_logged, timeout=15, description="the main to log the worker's restart")
        self.assertIn(str(victim), line, f"the restart line does not name the dead worker's pid: {line}")
        await wait_for(lambda: len(worker_pids(proxy.pid)) == 2, timeout=15, description="two workers again")
        pids = worker_pids(proxy.pid)
        self.assertNotIn(victim, pids)
        self.assertIn(survivor, pids)
        for _ in range(10):
            result = await fetch(self, nginx.url("/allowed.bin"), proxy=proxy.addresses["explicit"])
            self.assertEqual((result.exit_code, result.status, result.body), (0, 200, SMALL), result.stderr)
        for n in (1, 2):
            await wait_for(lambda: os.path.exists(worker_socket(proxy, n)), timeout=10, description=f"worker-{n}.sock")
        listing = await get_json(proxy.addresses["admin"], "/api/sessions")
        self.assertEqual(listing, {"sessions": []})
        await get_json(proxy.addresses["admin"], "/api/status")


# ---------------------------------------------------------------- haproxy in front of two nodes


class HaproxyNodesTests(TestCase):
    """Two forward nodes on C{haproxy:} endpoints behind a real haproxy sending PROXY v2."""

    timeout = 120

    async def test_client_address_through_haproxy(self) -> None:
        """
        curl from 127.0.0.5 through haproxy: both nodes (one with two
        workers, one single-process) log client 127.0.0.5, never haproxy's
        address; C{DENY client.address=127.0.0.6} denies the client from
        127.0.0.6 on both nodes.
        """
        nginx = await start_nginx(self, root_files={"allowed.bin": SMALL})
        policy = write_policy(self, "<proxy>\n    DENY client.address=127.0.0.6\n")
        listen = "haproxy:tcp:0:interface=127.0.0.1"
        node_a = await start_workers(self, workers_config(self, policy, listen=listen))
        node_b = await start_txgate(self, workers_config(self, policy, listen=listen), extra_services=("admin",))
        lb = await start_haproxy(self, haproxy_tcp_config([node_a.addresses["explicit"], node_b.addresses["explicit"]]))
        url = nginx.url("/allowed.bin")
        for _ in range(4):
            result = await fetch(self, url, proxy=lb.address, extra=["--interface", "127.0.0.5"])
            self.assertEqual((result.status, result.body), (200, SMALL), result.stderr + lb.output())
        for _ in range(2):
            result = await fetch(self, url, proxy=lb.address, extra=["--interface", "127.0.0.6"])
            self.assertEqual(result.status, 403, result.stderr)
        for name, node in (("A", node_a), ("B", node_b)):
            await wait_for(lambda: len(access_records(node)) >= 3, timeout=10, description=f"node {name}'s records")
            records = access_records(node)
            clients = [(r["client"].rpartition(":")[0], r["verdict"], r["status"]) for r in records]
            self.assertEqual(
                sorted(clients), sorted([("127.0.0.5", "allow", 200)] * 2 + [("127.0.0.6", "deny", 403)]),
                f"node {name}:\n" + "\n".join(read_access_log(node)),
            )
            sessions = await get_json(node.addresses["admin"], "/api/sessions")
            self.assertEqual(sessions, {"sessions": []})

    async def test_shared_keyring_crl_from_the_other_node(self) -> None:
        """
        Two nodes sharing one state directory (one keyring), each naming the
        other's CRL listener as crl_host: through haproxy, s_client gets a
        leaf from each node in turn and verifies it with -crl_check
        -crl_download, the CRL coming from the other node; both nodes
        serve the same CRL.
        """
        require_tool("openssl")
        pki = make_origin_pki(_new_dir(self))
        origin = await start_nginx(self, pki=pki.valid, root_files={"allowed.bin": SMALL})
        shared = _new_dir(self)
        port_a, port_b = free_port(), free_port()
        while port_b == port_a:
            port_b = free_port()
        policy = write_policy(self, "<ssl-intercept>\n    ssl.forward_proxy(yes)\n")

        def config(own: int, other: int) -> str:
            return workers_config(
                self, policy, listen="haproxy:tcp:0:interface=127.0.0.1", state_dir=shared,
                ssl={"upstream_ca_bundle": pki.ca_pem_path, "crl_host": f"127.0.0.1:{other}",
                     "crl_listen": f"tcp:{own}:interface=127.0.0.1"},
            )

        node_a = await start_txgate(self, config(port_a, port_b), extra_services=("admin",))
        issuer = os.path.join(shared, "ca", "issuer.pem")
        await wait_for(lambda: os.path.exists(issuer), timeout=5, description="the shared issuer.pem")
        node_b = await start_txgate(self, config(port_b, port_a), extra_services=("admin",))
        lb = await start_haproxy(self, haproxy_tcp_config([node_a.addresses["explicit"], node_b.addresses["explicit"]]))
        for port in (port_a, port_b):
            await wait_for(lambda: _accepts_on(port), timeout=10, description=f"the CRL listener on {port}")

        cdps = []
        for _ in range(2):
            done = await s_client(
                ["-connect", origin.authority, "-servername", "origin.test", "-proxy", "127.0.0.1:%d" % lb.port,
                 "-CAfile", issuer, "-crl_check", "-crl_download", "-verify_return_error", "-showcerts"]
            )
            self.assertEqual(done.code, 0, done.describe() + "\n" + node_a.output() + "\n" + node_b.output())
            self.assertIn("Verify return code: 0 (ok)", done.text)
            leaf = pem_certificates(done.stdout)[0]
            cdps += _urls(leaf)["crl"]
        self.assertEqual(
            sorted(cdps), sorted([f"http://127.0.0.1:{port_a}/txgate.crl", f"http://127.0.0.1:{port_b}/txgate.crl"]),
            "haproxy should have sent one s_client to each node, whose leaf names the other's CRL",
        )
        crls = [(await http_get(f"http://127.0.0.1:{port}/txgate.crl"))[2] for port in (port_a, port_b)]
        self.assertEqual(crls[0], crls[1], "the two nodes serve different CRLs")
        with open(issuer, "rb") as f:
            ca = x509.load_pem_x509_certificate(f.read())
        self.assertTrue(_load_crl(crls[0]).is_signature_valid(ca.public_key()))


def _accepts_on(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
