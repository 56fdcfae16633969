"""
The side-by-side benchmark suite of issue 8: txgate against mitmproxy,
proxy.py, squid, haproxy and nginx, every candidate in turn in one run on
loopback.

    .venv/bin/python bench/suite.py [--scenarios S1,S2,...] [--only txgate,squid,...]
                                    [--seconds 10] [--repeat 3] [--clients 2] [--keep]

C{make bench} installs the peers (C{make bench-peers}) and runs this.

Scenarios (bench/README.md has the details):

- S1 CONNECT tunnel bulk: one 1 GiB file from nginx (HTTPS, sendfile)
  fetched with C{curl -p -x} through each proxy, against C{direct}: MB/s.
- S2 TLS interception, a new client connection per request, warm
  certificate cache: req/s, proxy CPU-ms/req, p99.
- S3 as S2, a new host name per request (C{h<N>.bench.test}); the origin
  presents a certificate of each name's own, so a mimicking proxy mints a
  fresh certificate for every request.
- S4 reverse proxy, TLS both sides: bench/reverse.py's keep-alive (wrk
  -c50) and new-connection scenarios.
- S5 memory per idle intercepted TLS connection: 2,000 connections held
  open, (RSS after - before) / N over the proxy's processes.
- S6 policy decision cost, 10 and 10,000 rules (bench/policy_decisions.py).
- S7 txgate C{--workers 2} against C{--workers 1}, S2's loop; then again
  with each worker held to L{S7_CAP} of a core (cgroups) and
  L{S7_CAP_CLIENTS} clients, so that the workers and the clients fit on
  two cores, as the target's "client with a core of its own" needs.

The proxy's CPU time is utime + stime of its processes, children included,
from /proc. The clients and the proxy share the machine, so on two cores
req/s is a lower bound and CPU-ms/req the figure that survives noise.

A peer that is not installed, or that does not start, is reported as
"unavailable (why)" and the run goes on. Writes
bench/results/suite-<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from common import (
    HERE, IO_TIMEOUT, LOOPBACK, NGINX_TEMP_PATHS, SBIN_PATH, Tally, BenchError, Children, CpuCaps, child_env, connect,
    cpu_ms, machine_busy_ms, make_ca, make_server_cert, process_tree,
    raise_nofile, read_response, clean_up, report, rss_kb, start_server, tail, tool_version, validity, venv_twistd, write_pem,
)

PEERS = os.path.join(HERE, ".peers")
MITMDUMP = os.path.join(PEERS, "mitmproxy", "bin", "mitmdump")
PROXY_PY = os.path.join(PEERS, "proxy.py", "bin", "proxy")
FORWARD = ("txgate", "squid", "mitmproxy", "proxy.py")
REVERSE = ("txgate", "haproxy", "nginx", "mitmproxy", "proxy.py")
CANDIDATES = ("txgate", "squid", "mitmproxy", "proxy.py", "haproxy", "nginx")
SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "S7")
DOMAIN = "bench.test"
S2_NAME = f"www.{DOMAIN}"
BODY = b"txgate bench\n" * 64  # GET / (832 bytes)
BULK_BYTES = 1 << 30  # S1: the file fetched through each tunnel
STARTUP_TIMEOUT = 30.0  # mitmproxy and squid take a few seconds
CURL_TIMEOUT = 180.0  # one S1 fetch, whatever the proxy
MAX_REQUESTS = 100_000  # per client process per run, whatever --seconds says
MAX_ERRORS = 20  # failed requests after which a client process stops
WARMUP = 5  # requests through the proxy before measuring (the first mints)
S3_NAMES_PER_RUN = 6000  # host names one S3 run may use; a client stops when out of names
S5_CONNECTIONS = 2000
S7_CAP = 0.35
"""
S7's capped rows hold each worker to this share of a core: two capped
workers (0.7 of a core), the clients and the origin then fit on two cores.
"""
S7_CAP_CLIENTS = 4
"""Client processes in S7's capped rows: two keep one capped worker busy, not two."""
S5_CONCURRENCY = 50  # S5 handshakes in flight at once
S5_DEADLINE = 240.0  # seconds to open all S5 connections
S5_SETTLE = 2.0  # seconds between the last S5 handshake and reading RSS
POLICY = "<ssl-intercept>\n    ssl.forward_proxy(yes)\n"


# ---------------------------------------------------------------- the origin


class Origin:
    """
    The origin nginx: HTTPS on one port, C{*.bench.test} and 127.0.0.1. Host
    names C{h<N>.bench.test} get a certificate of their own (SANs
    C{h<N>.bench.test} and C{*.bench.test}), made here before the clock
    starts and picked by nginx from the SNI; every other name gets the
    wildcard certificate. C{/} is BODY, C{/bulk} a sparse 1 GiB file.
    """

    def __init__(self, tmp: str, s3_names: int) -> None:
        self.tmp = tmp
        self.dir = os.path.join(tmp, "origin")
        os.makedirs(os.path.join(self.dir, "docroot"))
        os.makedirs(os.path.join(self.dir, "hosts"))
        start, end = validity()
        self.ca, self.ca_key = make_ca("txgate bench origin CA", start, end)
        self.ca_path = os.path.join(tmp, "origin-ca.pem")
        write_pem(self.ca_path, self.ca)
        leaf, self.key = make_server_cert(self.ca, self.ca_key, [f"*.{DOMAIN}", DOMAIN], [LOOPBACK],
                                          not_before=start, not_after=end)
        write_pem(os.path.join(self.dir, "wildcard.pem"), leaf, self.ca)
        write_pem(os.path.join(self.dir, "key.pem"), key=self.key)
        with open(os.path.join(self.dir, "docroot", "index.html"), "wb") as f:
            f.write(BODY)
        with open(os.path.join(self.dir, "docroot", "bulk"), "wb") as f:
            f.truncate(BULK_BYTES)
        self.names: list[str] = []
        self.add_names(s3_names)
        self.port = 0
        self.pid = 0

    def add_names(self, count: int) -> None:
        """Certificates for C{count} more names C{h<N>.bench.test}."""
        from cryptography.hazmat.primitives import serialization
        start, end = validity()
        pem = serialization.Encoding.PEM
        ca_pem = self.ca.public_bytes(pem)
        first = len(self.names)
        for i in range(first, first + count):
            name = f"h{i}.{DOMAIN}"
            leaf, _ = make_server_cert(self.ca, self.ca_key, [name, f"*.{DOMAIN}"], not_before=start,
                                       not_after=end, key=self.key)
            with open(os.path.join(self.dir, "hosts", name + ".pem"), "wb") as f:
                f.write(leaf.public_bytes(pem) + ca_pem)
            self.names.append(name)

    def start(self, children: Children) -> None:
        nginx_bin = shutil.which("nginx", path=SBIN_PATH)
        if nginx_bin is None:
            raise BenchError("nginx not found; `make bench-peers` installs it")
        d = self.dir

        def write_conf(port: int) -> str:
            conf = os.path.join(d, "nginx.conf")
            with open(conf, "w") as f:
                f.write(ORIGIN_CONF.format(dir=d, host=LOOPBACK, port=port, domain=DOMAIN.replace(".", r"\.")))
            return conf

        proc, self.port = start_server(
            children, d, "origin-nginx",
            lambda conf: [nginx_bin, "-p", d + "/", "-c", conf, "-e", os.path.join(d, "error.log")], write_conf)
        self.pid = proc.pid


ORIGIN_CONF = """\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
""" + NGINX_TEMP_PATHS + """\
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    client_header_timeout 600s;
    keepalive_timeout 600s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:origin:10m;
    server {{
        listen {host}:{port} ssl default_server;
        server_name _;
        root "{dir}/docroot";
        ssl_certificate "{dir}/wildcard.pem";
        ssl_certificate_key "{dir}/key.pem";
        location / {{ }}
    }}
    server {{
        listen {host}:{port} ssl;
        server_name ~^h[0-9]+\\.{domain}$;
        root "{dir}/docroot";
        ssl_certificate "{dir}/hosts/$ssl_server_name.pem";
        ssl_certificate_key "{dir}/key.pem";
        location / {{ }}
    }}
}}
"""


# ---------------------------------------------------------------- forward candidates


class Running:
    """A started forward proxy: its pid (CPU and RSS are read over its tree), port, and the CA clients trust."""

    def __init__(self, name: str, pid: int, port: int, client_ca: str, log: str, mapping: str,
                 proc: subprocess.Popen[bytes]) -> None:
        self.name, self.pid, self.port, self.client_ca = name, pid, port, client_ca
        self.log, self.mapping, self.proc = log, mapping, proc


def _hosts_file(path: str, names: list[str]) -> str:
    """An /etc/hosts-format file mapping C{names} to loopback."""
    with open(path, "w") as f:
        f.write(f"{LOOPBACK} {S2_NAME}\n")
        for name in names:
            f.write(f"{LOOPBACK} {name}\n")
    return path


def _txgate_has_hosts_file() -> bool:
    import attrs

    from txgate.config import TxgateConfig
    return any(a.name == "hosts_file" for a in attrs.fields(TxgateConfig))


def start_txgate(children: Children, tmp: str, origin: Origin, intercept: bool, workers: int = 1) -> Running:
    """
    C{twistd -n --pidfile= txgate forward --workers N --config FILE}, admin
    off, the origin CA trusted upstream; with C{intercept}, the policy
    C{ssl.forward_proxy(yes)}. Host names reach loopback through
    C{[txgate] hosts_file} with a C{*.bench.test} wildcard.
    """
    twistd = venv_twistd()
    d = tempfile.mkdtemp(prefix="txgate-", dir=tmp)
    policy = os.path.join(d, "intercept.cpl")
    with open(policy, "w") as f:
        f.write(POLICY if intercept else "")
    hosts = os.path.join(d, "hosts")
    with open(hosts, "w") as f:
        f.write(f"{LOOPBACK} *.{DOMAIN}\n")
    if not _txgate_has_hosts_file():
        raise BenchError("this txgate has no [txgate] hosts_file to map *.bench.test to loopback")
    # The same kind of issuer squid gets below (P-256): a leaf signed per
    # new host name costs ~0.05 ms with it, ~0.3 ms with txgate's generated
    # RSA-2048 issuer.
    ca, ca_key = make_ca("txgate bench CA", *validity())
    ca_pem, key_pem = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    write_pem(ca_pem, ca)
    write_pem(key_pem, key=ca_key)
    conf = os.path.join(d, "forward.toml")

    def write_conf(port: int) -> str:
        with open(conf, "w") as f:
            f.write(
                "[txgate]\n"
                f"state_dir = {json.dumps(os.path.join(d, 'var'))}\n"
                f"access_log = {json.dumps(os.path.join(d, 'access.log'))}\n"
                f"policy = {json.dumps(policy if intercept else '')}\n"
                f"hosts_file = {json.dumps(hosts)}\n"
                "\n[admin]\nlisten = \"\"\n"
                "\n[ssl]\n"
                f"issuer_cert = {json.dumps(ca_pem)}\n"
                f"issuer_key = {json.dumps(key_pem)}\n"
                f"upstream_ca_bundle = {json.dumps(origin.ca_path)}\n"
                "\n[[service]]\n"
                'name = "explicit"\n'
                'kind = "explicit-http"\n'
                f'listen = "tcp:{port}:interface={LOOPBACK}"\n'
                'clients = ["127.0.0.0/8"]\n'
            )
        return conf

    issuer = os.path.join(d, "var", "ca", "issuer.pem")
    proc, port = start_server(
        children, d, "txgate",
        lambda path: [twistd, "-n", "--pidfile=", "txgate", "forward", "--workers", str(workers), "--config", path],
        write_conf, marker="listening:", timeout=STARTUP_TIMEOUT, ready=lambda: os.path.exists(issuer))
    return Running("txgate", proc.pid, port, ca_pem, os.path.join(d, "txgate.out"),
                   f"[txgate] hosts_file: '{LOOPBACK} *.{DOMAIN}' (wildcard)", proc)


SQUID_CONF = """\
http_port {host}:{port}{bump}
{ssl}
acl bench_clients src 127.0.0.0/8
http_access allow bench_clients
http_access deny all
cache deny all
cache_mem 8 MB
access_log stdio:{dir}/access.log
cache_log {dir}/cache.log
cache_store_log none
pid_filename none
coredump_dir {dir}
hosts_file {hosts}
dns_nameservers 127.0.0.1
max_filedescriptors 65536
workers 1
shutdown_lifetime 1 seconds
cache_effective_user proxy
client_persistent_connections on
request_start_timeout 10 minutes
read_timeout 10 minutes
"""

SQUID_SSL = """\
sslcrtd_program /usr/lib/squid/security_file_certgen -s {dir}/ssl_db -M 64MB
sslcrtd_children 8 startup=1 idle=1
ssl_bump bump all
tls_outgoing_options cafile={origin_ca}
sslproxy_cert_error deny all"""


def start_squid(children: Children, tmp: str, origin: Origin, intercept: bool) -> Running:
    """
    C{squid -N} (one worker, no cache), C{ssl_bump bump all} with
    C{security_file_certgen} helpers when intercepting. Names reach loopback
    through squid's C{hosts_file}, which lists every name the run uses.
    """
    squid = shutil.which("squid", path=SBIN_PATH)
    certgen = "/usr/lib/squid/security_file_certgen"
    if squid is None:
        raise BenchError("squid not installed (`make bench-peers`: apt-get install squid-openssl)")
    if intercept:
        if not os.access(certgen, os.X_OK):
            raise BenchError(f"{certgen} missing: squid without TLS (install squid-openssl)")
        if "--with-openssl" not in _tool_output([squid, "-v"]):
            raise BenchError("this squid is built without OpenSSL (install squid-openssl)")
    d = tempfile.mkdtemp(prefix="squid-", dir=tmp)
    os.chmod(d, 0o755)
    ca, ca_key = make_ca("squid bench CA", *validity())
    ca_pem, key_pem = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    write_pem(ca_pem, ca)
    write_pem(key_pem, key=ca_key)
    hosts = _hosts_file(os.path.join(d, "hosts"), origin.names)
    import pwd
    proxy_user = pwd.getpwnam("proxy")
    for path in (d, key_pem, hosts, ca_pem):
        os.chown(path, proxy_user.pw_uid, proxy_user.pw_gid)
    if intercept:
        db = os.path.join(d, "ssl_db")
        done = subprocess.run([certgen, "-c", "-s", db, "-M", "64MB"], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BenchError(f"security_file_certgen -c failed: {done.stdout}{done.stderr}")
        for root, dirs, files in os.walk(db):
            for each in dirs + files:
                os.chown(os.path.join(root, each), proxy_user.pw_uid, proxy_user.pw_gid)
        os.chown(db, proxy_user.pw_uid, proxy_user.pw_gid)
    conf = os.path.join(d, "squid.conf")
    bump = (f" ssl-bump tls-cert={ca_pem} tls-key={key_pem} generate-host-certificates=on"
            " dynamic_cert_mem_cache_size=64MB") if intercept else ""

    def write_conf(port: int) -> str:
        with open(conf, "w") as f:
            f.write(SQUID_CONF.format(
                host=LOOPBACK, port=port, bump=bump, dir=d, hosts=hosts,
                ssl=SQUID_SSL.format(dir=d, origin_ca=origin.ca_path) if intercept else ""))
        return conf

    proc, port = start_server(children, d, "squid", lambda path: [squid, "-N", "-f", path], write_conf,
                              timeout=STARTUP_TIMEOUT)
    return Running("squid", proc.pid, port, ca_pem, os.path.join(d, "squid.out"),
                   "squid hosts_file (every name listed)", proc)


def _tool_output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    return done.stdout + done.stderr


MITM_ADDON = '''\
"""Connect *.bench.test to loopback; SNI and the certificate still carry the name."""


def server_connect(data):
    host, port = data.server.address
    if host.endswith(".bench.test"):
        data.server.address = ("127.0.0.1", port)
'''


def start_mitmproxy(children: Children, tmp: str, origin: Origin, intercept: bool) -> Running:
    """
    C{mitmdump -q} (one process), its CA generated in a fresh confdir,
    upstream verified against the origin CA. Tunnel mode ignores every host
    (C{--ignore-hosts .*}). Names reach loopback through a C{server_connect}
    addon.
    """
    if not os.access(MITMDUMP, os.X_OK):
        raise BenchError(f"{MITMDUMP} missing (`make bench-peers` pip-installs mitmproxy)")
    d = tempfile.mkdtemp(prefix="mitmproxy-", dir=tmp)
    addon = os.path.join(d, "benchhosts.py")
    with open(addon, "w") as f:
        f.write(MITM_ADDON)
    ca = os.path.join(d, "conf", "mitmproxy-ca-cert.pem")

    def argv_for(port_text: str) -> list[str]:
        argv = [MITMDUMP, "-q", "--listen-host", LOOPBACK, "--listen-port", port_text,
                "--set", f"confdir={os.path.join(d, 'conf')}",
                "--set", f"ssl_verify_upstream_trusted_ca={origin.ca_path}",
                "--set", "flow_detail=0", "-s", addon]
        if not intercept:
            argv += ["--ignore-hosts", ".*"]
        return argv

    proc, port = start_server(children, d, "mitmproxy", argv_for, lambda port: str(port),
                              timeout=STARTUP_TIMEOUT, ready=lambda: os.path.exists(ca))
    return Running("mitmproxy", proc.pid, port, ca, os.path.join(d, "mitmproxy.out"),
                   "mitmproxy addon: server_connect hook sets the address to 127.0.0.1", proc)


PROXY_PY_PLUGIN = '''\
"""Resolve *.bench.test to loopback (proxy.py's resolve_dns hook)."""
from proxy.http.proxy import HttpProxyBasePlugin


class BenchHosts(HttpProxyBasePlugin):
    def resolve_dns(self, host, port):
        if host.endswith(".bench.test"):
            return "127.0.0.1", None
        return None, None
'''


def start_proxy_py(children: Children, tmp: str, origin: Origin, intercept: bool) -> Running:
    """
    C{proxy} with one worker and one acceptor; intercepting with
    C{--ca-key-file --ca-cert-file --ca-signing-key-file --ca-cert-dir}
    (it runs C{openssl} per new host name) and C{--ca-file} for upstream.
    Names reach loopback through a C{resolve_dns} plugin.
    """
    if not os.access(PROXY_PY, os.X_OK):
        raise BenchError(f"{PROXY_PY} missing (`make bench-peers` pip-installs proxy.py)")
    d = tempfile.mkdtemp(prefix="proxypy-", dir=tmp)
    with open(os.path.join(d, "benchhosts.py"), "w") as f:
        f.write(PROXY_PY_PLUGIN)
    ca, ca_key = make_ca("proxy.py bench CA", *validity())
    ca_pem, key_pem, signing = (os.path.join(d, n) for n in ("ca.pem", "ca.key", "signing.key"))
    write_pem(ca_pem, ca)
    write_pem(key_pem, key=ca_key)
    from cryptography.hazmat.primitives.asymmetric import ec
    write_pem(signing, key=ec.generate_private_key(ec.SECP256R1()))
    os.makedirs(os.path.join(d, "certs"))
    env = child_env()
    env["PYTHONPATH"] = d

    def argv_for(port_text: str) -> list[str]:
        argv = [PROXY_PY, "--hostname", LOOPBACK, "--port", port_text, "--num-workers", "1",
                "--num-acceptors", "1", "--timeout", "600", "--open-file-limit", "65536",
                "--log-level", "WARNING", "--plugins", "benchhosts.BenchHosts"]
        if intercept:
            argv += ["--ca-key-file", key_pem, "--ca-cert-file", ca_pem, "--ca-signing-key-file", signing,
                     "--ca-cert-dir", os.path.join(d, "certs"), "--ca-file", origin.ca_path]
        return argv

    proc, port = start_server(children, d, "proxy.py", argv_for, lambda port: str(port),
                              timeout=STARTUP_TIMEOUT, env=env)
    return Running("proxy.py", proc.pid, port, ca_pem, os.path.join(d, "proxy.py.out"),
                   "proxy.py plugin: resolve_dns returns 127.0.0.1", proc)


FORWARD_STARTERS: dict[str, Callable[..., Running]] = {
    "txgate": start_txgate, "squid": start_squid, "mitmproxy": start_mitmproxy, "proxy.py": start_proxy_py,
}


# ---------------------------------------------------------------- request loops (S2, S3, S7)


def client_context(cafile: str) -> ssl.SSLContext:
    """Verify against C{cafile}, offer http/1.1, never resume: every request is a full handshake."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_TICKET
    return context


def one_request(proxy_port: int | None, host: str, origin_port: int, context: ssl.SSLContext) -> None:
    """
    A new connection (through the proxy with CONNECT C{host}, else straight
    to the origin), a full TLS handshake with SNI C{host}, C{GET /}, the
    whole body checked, close.
    """
    raw = connect(origin_port, proxy_port, host)
    sock: Any = raw
    try:
        sock = context.wrap_socket(raw, server_hostname=host)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}:{origin_port}\r\nUser-Agent: txgate-bench\r\nConnection: close\r\n\r\n"
                     .encode())
        status, body = read_response(sock)
        if status != 200:
            raise ConnectionError(f"GET / answered {status}")
        if body != BODY:
            raise ConnectionError(f"GET / returned {len(body)} bytes, expected {len(BODY)}")
    finally:
        sock.close()


def _client(args: tuple[int | None, list[str], int, str, float, float]) -> dict[str, Any]:
    proxy_port, names, origin_port, cafile, start_at, deadline = args
    context = client_context(cafile)
    tally = Tally()
    while time.monotonic() < start_at:
        time.sleep(0.001)
    tally.start()
    i = 0
    while (len(tally.times) < MAX_REQUESTS and tally.error_count < MAX_ERRORS and i < len(names)
           and time.monotonic() < deadline):
        host = names[i]
        i += 1
        tally.time(lambda: one_request(proxy_port, host, origin_port, context))
    return tally.result(out_of_names=i >= len(names))


def measure_requests(pool: Any, clients: int, proxy_port: int | None, names_for: Callable[[int], list[str]],
                     origin_port: int, cafile: str, seconds: float, pid: int | None) -> dict[str, Any]:
    """C{clients} processes run the request loop for C{seconds}; C{pid}'s CPU time is read around it."""
    start_at = time.monotonic() + 0.2
    before = cpu_ms(pid) if pid else 0.0
    machine_before = machine_busy_ms()
    results = pool.map(_client, [(proxy_port, names_for(c), origin_port, cafile, start_at, start_at + seconds)
                                 for c in range(clients)])
    after = cpu_ms(pid) if pid else 0.0
    machine = machine_busy_ms() - machine_before
    count = sum(r["count"] for r in results)
    elapsed = max(r["ended"] for r in results) - start_at
    times = sorted(t for r in results for t in r["times"])
    errors = sum(r["error_count"] for r in results)
    row: dict[str, Any] = {
        "requests": count,
        "seconds": round(elapsed, 3),
        "errors": errors,
        "requests_per_second": round(count / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": round(statistics.median(times) * 1000, 2) if times else None,
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))] * 1000, 2) if times else None,
    }
    if pid:
        row["cpu_ms_per_request"] = round((after - before) / count, 3) if count else None
        row["cpu_percent"] = round((after - before) / (elapsed * 10), 1) if elapsed > 0 else None
    # Where the rest of the machine's time went: the client processes' own
    # CPU, and how busy all cores were (from the start of the loop until the
    # last client returned, a little past its end).
    row["client_cpu_ms_per_request"] = round(sum(r["cpu_seconds"] for r in results) * 1000 / count, 3) if count else None
    row["machine_busy_percent"] = round(machine / (elapsed * 10 * (os.cpu_count() or 1)), 1) if elapsed > 0 else None
    if errors:
        row["error_samples"] = sorted({m for r in results for m in r["errors"]})[:5]
    if any(r["out_of_names"] for r in results):
        row["note"] = "a client ran out of host names before --seconds ended"
    return row


def median_row(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Per-figure medians over the repeats, errors summed, every run kept."""
    merged: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rows if r.get(key) is not None]
        merged[key] = round(statistics.median(values), 3) if values else None
    merged["errors"] = sum(r.get("errors", 0) for r in rows)
    samples = sorted({m for r in rows for m in r.get("error_samples", [])})
    if samples:
        merged["error_samples"] = samples[:5]
    notes = sorted({r["note"] for r in rows if r.get("note")})
    if notes:
        merged["note"] = "; ".join(notes)
    merged["runs"] = rows
    return merged


REQUEST_KEYS = ("requests_per_second", "cpu_ms_per_request", "cpu_percent", "p50_ms", "p99_ms",
                "client_cpu_ms_per_request", "machine_busy_percent")


# ---------------------------------------------------------------- S1


def curl_fetch(proxy_port: int | None, origin: Origin, cafile: str) -> dict[str, Any]:
    """C{curl -p -x} (or straight) of C{/bulk} over HTTPS: MB/s as curl measured it."""
    curl = shutil.which("curl", path=SBIN_PATH)
    if curl is None:
        raise BenchError("curl not found")
    url = f"https://{S2_NAME}:{origin.port}/bulk"
    argv = [curl, "-sS", "-o", "/dev/null", "--max-time", str(int(CURL_TIMEOUT)), "--cacert", cafile,
            "-w", "%{http_code} %{size_download} %{time_total} %{speed_download}"]
    if proxy_port:
        argv += ["-p", "-x", f"http://{LOOPBACK}:{proxy_port}"]
    else:
        argv += ["--resolve", f"{S2_NAME}:{origin.port}:{LOOPBACK}"]
    argv.append(url)
    try:
        done = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=CURL_TIMEOUT + 30)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"curl ran past {CURL_TIMEOUT + 30:.0f}s") from e
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 4 or fields[0] != "200" or int(fields[1]) != BULK_BYTES:
        raise BenchError(f"curl exited {done.returncode}: {done.stdout.strip()} {done.stderr.strip()}")
    return {"bytes": int(fields[1]), "seconds": float(fields[2]), "mb_per_second": round(float(fields[3]) / 1e6, 1)}


def _timed_fetch(proxy_port: int | None, origin: Origin, cafile: str) -> dict[str, Any]:
    """
    L{curl_fetch}, with the whole machine's busy time per GiB: what a path
    costs curl, nginx and the kernel counts, not only the proxy's process.
    """
    before = machine_busy_ms()
    row = curl_fetch(proxy_port, origin, cafile)
    row["machine_cpu_ms_per_gib"] = round((machine_busy_ms() - before) * (1 << 30) / row["bytes"])
    return row


def scenario_s1(ctx: Context, name: str) -> dict[str, Any]:
    if name == "direct":
        # The first read of the sparse file fills the page cache at about a third of
        # the later speed: one untimed fetch, so direct is not undersold.
        curl_fetch(None, ctx.origin, ctx.origin.ca_path)
        rows = [_timed_fetch(None, ctx.origin, ctx.origin.ca_path) for _ in range(ctx.args.repeat)]
        return median_row(rows, ("mb_per_second", "machine_cpu_ms_per_gib"))
    running = ctx.start(name, intercept=False)
    # Untimed too, as for direct: a proxy that has just started may still be
    # settling (txgate's worker finishes loading after it listens), which
    # cost txgate's first 1 GiB twice the CPU of the next ones.
    curl_fetch(running.port, ctx.origin, ctx.origin.ca_path)
    rows = []
    for _ in range(ctx.args.repeat):
        before = cpu_ms(running.pid)
        row = _timed_fetch(running.port, ctx.origin, ctx.origin.ca_path)
        row["cpu_ms_per_gib"] = round(cpu_ms(running.pid) - before, 1)
        rows.append(row)
    result = median_row(rows, ("mb_per_second", "cpu_ms_per_gib", "machine_cpu_ms_per_gib"))
    result["mapping"] = running.mapping
    return result


# ---------------------------------------------------------------- S2, S3, S7


def _warm(running: Running, ctx: Context, host: str) -> None:
    context = client_context(running.client_ca)
    for i in range(WARMUP):
        try:
            one_request(running.port, host, ctx.origin.port, context)
        except Exception as e:
            raise BenchError(f"warm-up request {i + 1} through {running.name} failed: {type(e).__name__}: {e}"
                             f"\n{running.name} output:\n{tail(running.log)}") from e


def _check_alive(running: Running, row: dict[str, Any]) -> None:
    if running.proc.poll() is not None:
        row["error"] = f"{running.name} exited with status {running.proc.returncode} during the run"
        row["log_tail"] = tail(running.log, 30)
    elif row.get("errors"):
        row["log_tail"] = tail(running.log, 30)


def scenario_s2(ctx: Context, name: str, workers: int = 1) -> dict[str, Any]:
    same = lambda c: [S2_NAME] * MAX_REQUESTS  # noqa: E731
    if name == "direct":
        rows = [measure_requests(ctx.pool, ctx.args.clients, None, same, ctx.origin.port, ctx.origin.ca_path,
                                 ctx.args.seconds, ctx.origin.pid) for _ in range(ctx.args.repeat)]
        return median_row(rows, REQUEST_KEYS)
    running = ctx.start(name, intercept=True, workers=workers)
    _warm(running, ctx, S2_NAME)
    rows = [measure_requests(ctx.pool, ctx.args.clients, running.port, same, ctx.origin.port, running.client_ca,
                             ctx.args.seconds, running.pid) for _ in range(ctx.args.repeat)]
    result = median_row(rows, REQUEST_KEYS)
    result["mapping"] = running.mapping
    _check_alive(running, result)
    return result


def scenario_s3(ctx: Context, name: str) -> dict[str, Any]:
    names = ctx.origin.names
    clients = ctx.args.clients

    def names_for(run: int) -> Callable[[int], list[str]]:
        # Run r uses names [r * PER_RUN, (r + 1) * PER_RUN), split between the clients.
        block = names[run * S3_NAMES_PER_RUN:(run + 1) * S3_NAMES_PER_RUN]
        return lambda c: block[c::clients]

    if name == "direct":
        rows = [measure_requests(ctx.pool, clients, None, names_for(r), ctx.origin.port, ctx.origin.ca_path,
                                 ctx.args.seconds, ctx.origin.pid) for r in range(ctx.args.repeat)]
        return median_row(rows, REQUEST_KEYS)
    # Each repeat starts the proxy afresh, so each starts from an empty
    # certificate cache: squid's on-disk certificate database, for one,
    # costs more per name as it grows (5.9, 8.5, 11.1 CPU-ms/req over three
    # 10 s repeats in one process).
    rows = []
    for r in range(ctx.args.repeat):
        ctx.candidate_children.stop_all()
        running = ctx.start(name, intercept=True)
        _warm(running, ctx, S2_NAME)  # loads the code paths, not the names
        rows.append(measure_requests(ctx.pool, clients, running.port, names_for(r), ctx.origin.port,
                                     running.client_ca, ctx.args.seconds, running.pid))
        _check_alive(running, rows[-1])
    result = median_row(rows, REQUEST_KEYS)
    result["mapping"] = running.mapping
    _check_alive(running, result)
    died = [row["error"] for row in rows if row.get("error")]
    if died:
        result.setdefault("error", died[0])
    return result


def scenario_s7(ctx: Context, name: str) -> dict[str, Any]:
    workers = int(name.split("-")[1])
    if not name.endswith("-capped"):
        return scenario_s2(ctx, "txgate", workers=workers)
    why = CpuCaps.unavailable()
    if why:
        raise Unavailable(why)
    caps = CpuCaps(S7_CAP)
    try:
        running = ctx.start("txgate", intercept=True, workers=workers)
        for pid in _worker_pids(running, workers):
            caps.cap(pid)
        _warm(running, ctx, S2_NAME)
        same = lambda c: [S2_NAME] * MAX_REQUESTS  # noqa: E731
        with multiprocessing.get_context("fork").Pool(S7_CAP_CLIENTS) as pool:
            rows = [measure_requests(pool, S7_CAP_CLIENTS, running.port, same, ctx.origin.port, running.client_ca,
                                     ctx.args.seconds, running.pid) for _ in range(ctx.args.repeat)]
        result = median_row(rows, REQUEST_KEYS)
        _check_alive(running, result)
    finally:
        ctx.candidate_children.stop_all()
        caps.release()
    result["cap"] = f"each worker {S7_CAP:g} of a core (1 ms every {caps.period_us} us), {S7_CAP_CLIENTS} clients"
    return result


def _worker_pids(running: Running, workers: int) -> list[int]:
    """The worker processes of a txgate started with C{--workers N} (its master's children)."""
    deadline = time.monotonic() + 10.0
    while True:
        pids = [pid for pid in process_tree(running.pid) if pid != running.pid]
        if len(pids) == workers:
            return pids
        if time.monotonic() > deadline:
            raise BenchError(f"txgate --workers {workers}: found {len(pids)} worker processes")
        time.sleep(0.1)


# ---------------------------------------------------------------- S5


async def _hold(proxy_port: int, origin_port: int, cafile: str, count: int) -> tuple[list[Any], list[str]]:
    context = client_context(cafile)
    semaphore = asyncio.Semaphore(S5_CONCURRENCY)
    writers: list[Any] = []
    errors: list[str] = []

    async def one() -> None:
        async with semaphore:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, proxy_port), IO_TIMEOUT)
            try:
                writer.write(f"CONNECT {S2_NAME}:{origin_port} HTTP/1.1\r\nHost: {S2_NAME}:{origin_port}\r\n\r\n"
                             .encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
                if head.split(b" ")[1:2] != [b"200"]:
                    raise ConnectionError(f"CONNECT answered {head.splitlines()[0]!r}")
                await asyncio.wait_for(writer.start_tls(context, server_hostname=S2_NAME), IO_TIMEOUT)
            except BaseException:
                writer.close()
                raise
            writers.append(writer)

    async def guarded() -> None:
        try:
            await one()
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")

    try:
        await asyncio.wait_for(asyncio.gather(*(guarded() for _ in range(count))), S5_DEADLINE)
    except asyncio.TimeoutError:
        errors.append(f"not all {count} connections were open after {S5_DEADLINE:.0f}s")
    return writers, errors


def scenario_s5(ctx: Context, name: str) -> dict[str, Any]:
    """
    N connections through the proxy, each CONNECT + a completed TLS
    handshake with the proxy, then idle; RSS of the proxy's processes before
    (after warm-up) and after, per connection. Each repeat starts the proxy
    afresh: memory freed by closed connections is seldom given back, and
    would be reused by the next repeat.
    """
    count = ctx.args.s5_connections
    rows = []
    running = None
    for repeat in range(ctx.args.repeat):
        if running is not None:
            ctx.candidate_children.stop_all()
        running = ctx.start(name, intercept=True)
        _warm(running, ctx, S2_NAME)
        time.sleep(S5_SETTLE)
        before = rss_kb(running.pid)
        loop = asyncio.new_event_loop()
        try:
            writers, errors = loop.run_until_complete(_hold(running.port, ctx.origin.port, running.client_ca, count))
            time.sleep(S5_SETTLE)
            after = rss_kb(running.pid)
            alive = running.proc.poll() is None
            for writer in writers:
                writer.close()
            loop.run_until_complete(asyncio.sleep(0.5))
        finally:
            loop.close()
        opened = len(writers)
        row = {"connections": opened, "rss_before_kb": before, "rss_after_kb": after,
               "kb_per_connection": round((after - before) / opened, 1) if opened else None,
               "errors": len(errors)}
        if errors:
            row["error_samples"] = sorted(set(errors))[:5]
        if not alive:
            row["note"] = f"{name} exited while holding the connections"
        rows.append(row)
    result = median_row(rows, ("kb_per_connection", "connections", "rss_before_kb", "rss_after_kb"))
    assert running is not None
    result["mapping"] = running.mapping
    _check_alive(running, result)
    return result


# ---------------------------------------------------------------- S4, S6


def scenario_s4(ctx: Context, name: str) -> dict[str, Any]:
    import reverse
    if ctx.reverse is None:
        tmp = os.path.join(ctx.tmp, "reverse")
        os.makedirs(tmp)
        certs = reverse.make_certificates(tmp)
        servers = reverse.start_real_servers(ctx.children, tmp, certs)
        ctx.reverse = (tmp, certs, [port for _, port in servers])
    tmp, certs, real = ctx.reverse
    args = argparse.Namespace(seconds=ctx.args.seconds, repeat=ctx.args.repeat, connections=50, clients=1)
    outcome = reverse.run_candidate(name, tmp, certs, real, args, ctx.pool)
    if "error" in outcome:
        raise BenchError(outcome["error"])
    for sub in ("keepalive", "newconn"):
        if not outcome[sub].get("requests"):
            samples = outcome[sub].get("error_samples") or [outcome[sub].get("wrk_output", "")[-300:]]
            raise BenchError(f"{name} {sub}: no request completed ({'; '.join(samples)})\n"
                             f"{name} output:\n{outcome.get('log_tail') or ''}")
    return outcome


def _reverse_txgate_one_worker() -> None:
    """bench/reverse.py starts txgate with the default workers (one per core); the suite runs one, admin off."""
    import reverse

    def start(children: Children, tmp: str, certs: dict[str, str], real: list[int]) -> tuple[int, int]:
        twistd = venv_twistd()
        conf = os.path.join(tmp, "reverse.toml")

        def write_conf(port: int) -> str:
            with open(conf, "w") as f:
                f.write("[admin]\nlisten = \"\"\n\n" + reverse.txgate_config(port, tmp, certs, real))
            return conf

        proc, port = start_server(
            children, tmp, "txgate",
            lambda path: [twistd, "-n", "--pidfile=", "txgate", "reverse", "--workers", "1", "--config", path],
            write_conf, marker="listening:")
        return proc.pid, port

    reverse.STARTERS["txgate"] = start
    reverse.STARTERS["mitmproxy"] = _start_mitmproxy_reverse
    reverse.STARTERS["proxy.py"] = _start_proxy_py_reverse


PROXY_PY_REVERSE = '''\
"""Every path to one of the two real servers (proxy.py picks at random)."""
from proxy.http.server import ReverseProxyBasePlugin


class BenchReverse(ReverseProxyBasePlugin):
    def routes(self):
        return [(r"/.*", [b"https://127.0.0.1:{port1}/", b"https://127.0.0.1:{port2}/"])]
'''


def _start_proxy_py_reverse(children: Children, tmp: str, certs: dict[str, str], real: list[int]) -> tuple[int, int]:
    """
    C{proxy --enable-reverse-proxy} with a route plugin, one worker and one
    acceptor, TLS on the listener with the published certificate.
    """
    if not os.access(PROXY_PY, os.X_OK):
        raise BenchError(f"{PROXY_PY} missing (`make bench-peers` pip-installs proxy.py)")
    d = os.path.join(tmp, "proxypy-reverse")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "benchreverse.py"), "w") as f:
        f.write(PROXY_PY_REVERSE.format(port1=real[0], port2=real[1]))
    env = child_env()
    env["PYTHONPATH"] = d
    proc, port = start_server(
        children, tmp, "proxy.py",
        lambda port_text: [PROXY_PY, "--hostname", LOOPBACK, "--port", port_text, "--num-workers", "1",
                           "--num-acceptors", "1", "--threaded", "--enable-reverse-proxy", "--plugins", "benchreverse.BenchReverse",
                           "--cert-file", certs["public_chain"], "--key-file", certs["public_key"],
                           "--ca-file", certs["internal_ca"], "--log-level", "WARNING", "--timeout", "600"],
        lambda port: str(port), timeout=STARTUP_TIMEOUT, env=env)
    return proc.pid, port


def _start_mitmproxy_reverse(children: Children, tmp: str, certs: dict[str, str], real: list[int]) -> tuple[int, int]:
    """
    C{mitmdump --mode reverse:https://127.0.0.1:<real 1>} with the published
    certificate, upstream verified against the internal CA: mitmproxy's
    reverse mode has one upstream, so it gets the first real server only.
    """
    if not os.access(MITMDUMP, os.X_OK):
        raise BenchError(f"{MITMDUMP} missing (`make bench-peers` pip-installs mitmproxy)")
    d = os.path.join(tmp, "mitmproxy-reverse")
    os.makedirs(d, exist_ok=True)
    proc, port = start_server(
        children, tmp, "mitmproxy",
        lambda port_text: [MITMDUMP, "-q", "--mode", f"reverse:https://{LOOPBACK}:{real[0]}",
                           "--listen-host", LOOPBACK, "--listen-port", port_text, "--set", f"confdir={d}",
                           "--certs", f"*={certs['public']}", "--set", "flow_detail=0",
                           "--set", f"ssl_verify_upstream_trusted_ca={certs['internal_ca']}"],
        lambda port: str(port), timeout=STARTUP_TIMEOUT)
    return proc.pid, port


def scenario_s6(ctx: Context, name: str) -> dict[str, Any]:
    import policy_decisions
    seconds = min(ctx.args.seconds, 2.0)
    rows = {}
    for rules in (10, 10_000):
        runs = [policy_decisions.measure(rules, seconds) for _ in range(ctx.args.repeat)]
        rows[str(rules)] = median_row(runs, ("us_per_decision", "decisions_per_second", "compile_ms"))
    rows["ratio"] = round(rows["10000"]["us_per_decision"] / rows["10"]["us_per_decision"], 2)
    return rows


# ---------------------------------------------------------------- the run


class Context:
    """What every scenario shares in one run: the origin, the client pool, the options, the started processes."""

    def __init__(self, args: argparse.Namespace, tmp: str, pool: Any, origin: Origin, children: Children) -> None:
        self.args, self.tmp, self.pool, self.origin = args, tmp, pool, origin
        self.children = children  # the origin and S4's real servers: live for the whole run
        self.candidate_children = Children()  # the proxy under test: stopped after each scenario
        self.reverse: tuple[str, dict[str, str], list[int]] | None = None

    def start(self, name: str, intercept: bool, workers: int = 1) -> Running:
        starter = FORWARD_STARTERS[name]
        try:
            if name == "txgate":
                return starter(self.candidate_children, self.tmp, self.origin, intercept, workers)
            return starter(self.candidate_children, self.tmp, self.origin, intercept)
        except BenchError as e:
            raise Unavailable(str(e)) from e


class Unavailable(BenchError):
    """The candidate is not installed or did not start."""


SCENARIO_CANDIDATES: dict[str, tuple[str, ...]] = {
    "S1": ("direct",) + FORWARD,
    "S2": ("direct",) + FORWARD,
    "S3": ("direct",) + FORWARD,
    "S4": REVERSE,
    "S5": FORWARD,
    "S6": ("txgate",),
    "S7": ("txgate-1", "txgate-2", "txgate-1-capped", "txgate-2-capped"),
}

RUNNERS: dict[str, Callable[[Context, str], dict[str, Any]]] = {
    "S1": scenario_s1, "S2": scenario_s2, "S3": scenario_s3, "S4": scenario_s4, "S5": scenario_s5,
    "S6": scenario_s6, "S7": scenario_s7,
}

TITLES = {
    "S1": "CONNECT tunnel bulk: 1 GiB over HTTPS, curl -p -x (MB/s; ratio to direct)",
    "S2": "TLS interception, new connection per request, warm certificate cache (ratio of req/s to squid)",
    "S3": "TLS interception, a new host name per request (ratio of req/s to squid)",
    "S4": "reverse proxy, TLS both sides (bench/reverse.py; ratio of req/s to haproxy)",
    "S5": "memory per idle intercepted TLS connection",
    "S6": "policy decision cost (bench/policy_decisions.py)",
    "S7": "txgate --workers 2 vs --workers 1, S2's loop (capped: each worker held to a share of a core)",
}


def run_scenario(ctx: Context, scenario: str, name: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        row = RUNNERS[scenario](ctx, name)
    except Unavailable as e:
        row = {"status": "unavailable", "why": str(e)}
    except (BenchError, OSError, ssl.SSLError, ValueError) as e:
        row = {"status": "failed", "why": f"{type(e).__name__}: {e}"}
    except Exception as e:  # a bug in the suite: say so, keep the traceback, measure the others
        import traceback
        row = {"status": "failed", "why": f"suite bug? {type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    finally:
        ctx.candidate_children.stop_all()
    row.setdefault("status", "failed" if row.get("error") else "ok")
    row["wall_seconds"] = round(time.monotonic() - started, 1)
    return row


def peer_versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name, argv in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]), ("squid", ["squid", "-v"]),
                       ("wrk", ["wrk", "-v"]), ("curl", ["curl", "-V"])):
        path = shutil.which(argv[0], path=SBIN_PATH)
        found[name] = tool_version([path, *argv[1:]]) if path else "not installed"
    found["mitmproxy"] = tool_version([MITMDUMP, "--version"]) if os.access(MITMDUMP, os.X_OK) else "not installed"
    found["proxy.py"] = tool_version([PROXY_PY, "--version"]) if os.access(PROXY_PY, os.X_OK) else "not installed"
    found["txgate commit"] = _commit()
    found["python"] = sys.version.split()[0]
    found["openssl (python)"] = ssl.OPENSSL_VERSION
    try:
        from importlib.metadata import version
        found["txgate"] = version("txgate")
        found["twisted"] = version("twisted")
        found["pyopenssl"] = version("pyopenssl")
        from cryptography.hazmat.backends.openssl import backend
        found["openssl (txgate, via cryptography)"] = backend.openssl_version_text()
    except Exception as e:  # a checkout that is not installed
        found["txgate"] = f"({e})"
    return found


def _commit() -> str:
    """The checkout's commit, with C{+changes} when the work tree differs from it."""
    top = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "-C", top, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "status", "--porcelain", "--untracked-files=no", "--", "txgate"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    return (head or "?") + (" +changes under txgate/" if dirty else "")


# ---------------------------------------------------------------- the table


def _f(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: Any, b: Any) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def print_table(results: dict[str, Any]) -> None:
    out = print
    out(f"txgate benchmark suite {results['date']}: {results['cpus']} CPU(s), load before {results['load_before']},"
        f" {results['seconds']:g}s per run, median of {results['repeat']}, {results['clients']} client process(es),"
        f" txgate {results['versions'].get('txgate commit', '?')}")
    for scenario, rows in results["scenarios"].items():
        out(f"\n{scenario} {TITLES[scenario]}")
        if not rows:
            out("  nothing run (--only names no candidate of this scenario)")
            continue
        if scenario == "S6":
            r = rows["txgate"]
            if r.get("status") != "ok":
                out(f"  txgate {r.get('status')}: {r.get('why', '')}")
                continue
            for rules in ("10", "10000"):
                out(f"  {rules:>6} rules: {r[rules]['us_per_decision']:>8} us/decision,"
                    f" compile {r[rules]['compile_ms']} ms")
            out(f"  ratio 10,000 / 10: {r['ratio']}x")
            continue
        if scenario == "S4":
            base = rows.get("haproxy", {})
            out(f"  {'candidate':<10} {'scenario':<9} {'req/s':>8} {'CPU-ms/req':>10} {'p99 ms':>7}"
                f" {'vs haproxy':>10} {'errors':>6}")
            for name, r in rows.items():
                if r.get("status") != "ok":
                    out(f"  {name:<10} {r['status']} ({r.get('why', '').splitlines()[0] if r.get('why') else ''})")
                    continue
                for sub in ("keepalive", "newconn"):
                    row = r[sub]
                    ref = (base.get(sub) or {}).get("requests_per_second")
                    out(f"  {name:<10} {sub:<9} {_f(row['requests_per_second'], '.0f'):>8}"
                        f" {_f(row['cpu_ms_per_request'], '.3f'):>10} {_f(row['p99_ms'], '.2f'):>7}"
                        f" {_ratio(row['requests_per_second'], ref):>10} {row['errors']:>6}")
            continue
        if scenario == "S1":
            base = rows.get("direct", {}).get("mb_per_second")
            out(f"  {'candidate':<10} {'MB/s':>8} {'vs direct':>9} {'CPU-ms/GiB':>10} {'machine CPU-ms/GiB':>18}")
            for name, r in rows.items():
                if r.get("status") != "ok":
                    out(f"  {name:<10} {r['status']} ({_why(r)})")
                    continue
                out(f"  {name:<10} {_f(r['mb_per_second'], '.0f'):>8} {_ratio(r['mb_per_second'], base):>9}"
                    f" {_f(r.get('cpu_ms_per_gib'), '.0f'):>10} {_f(r.get('machine_cpu_ms_per_gib'), '.0f'):>18}")
            continue
        if scenario == "S5":
            out(f"  {'candidate':<10} {'KB/conn':>8} {'conns':>6} {'RSS before KB':>13} {'RSS after KB':>12}"
                f" {'errors':>6}")
            for name, r in rows.items():
                if r.get("status") != "ok":
                    out(f"  {name:<10} {r['status']} ({_why(r)})")
                    continue
                out(f"  {name:<10} {_f(r['kb_per_connection'], '.1f'):>8} {_f(r['connections'], '.0f'):>6}"
                    f" {_f(r['rss_before_kb'], '.0f'):>13} {_f(r['rss_after_kb'], '.0f'):>12} {r['errors']:>6}")
            continue
        ref_name = "txgate-1" if scenario == "S7" else "squid"
        width = max(10, *(len(name) for name in rows))
        out(f"  {'candidate':<{width}} {'req/s':>8} {'CPU-ms/req':>10} {'CPU %':>6} {'p50 ms':>7} {'p99 ms':>7}"
            f" {'vs ' + ref_name:>12} {'errors':>6} {'client ms':>9} {'busy %':>6}")
        for name, r in rows.items():
            if r.get("status") != "ok":
                out(f"  {name:<{width}} {r['status']} ({_why(r)})")
                continue
            # S7's capped rows compare with the capped single worker.
            ref = ref_name + ("-capped" if name.endswith("-capped") else "")
            base = rows.get(ref, {}).get("requests_per_second")
            out(f"  {name:<{width}} {_f(r['requests_per_second'], '.0f'):>8} {_f(r.get('cpu_ms_per_request'), '.2f'):>10}"
                f" {_f(r.get('cpu_percent'), '.0f'):>6} {_f(r['p50_ms'], '.2f'):>7} {_f(r['p99_ms'], '.2f'):>7}"
                f" {_ratio(r['requests_per_second'], base):>12} {r['errors']:>6}"
                f" {_f(r.get('client_cpu_ms_per_request'), '.2f'):>9} {_f(r.get('machine_busy_percent'), '.0f'):>6}")
    notes = []
    for scenario, rows in results["scenarios"].items():
        for name, r in rows.items():
            if r.get("mapping") and scenario == "S3":
                notes.append(f"S3 {name} name mapping: {r['mapping']}")
            if r.get("error_samples"):
                notes.append(f"{scenario} {name} errors: {'; '.join(r['error_samples'][:3])}")
            if r.get("note"):
                notes.append(f"{scenario} {name}: {r['note']}")
            if r.get("error"):
                notes.append(f"{scenario} {name}: {r['error']}")
    if "S7" in results["scenarios"]:
        notes.append(f"S7: the target (2 workers >= 1.7x one) assumes the clients have a core of their own; with"
                     f" {results['cpus']} CPU(s) the uncapped rows share them with the clients. The capped rows hold"
                     f" each worker to {S7_CAP:g} of a core (cgroups) with {S7_CAP_CLIENTS} clients, so that"
                     " workers, clients and origin fit: compare txgate-2-capped with txgate-1-capped")
    if notes:
        out("\nnotes:")
        for n in notes:
            out(f"  {n}")
    out("\nCPU = utime+stime (children included) of the proxy's processes from /proc; clients, proxy and origin"
        " share the machine, so req/s is a lower bound and CPU-ms/req the steadier figure.")


def _why(row: dict[str, Any]) -> str:
    why = row.get("why") or row.get("error") or ""
    return why.strip().splitlines()[0][:160] if why.strip() else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all, S1-S7)")
    parser.add_argument("--only", default=",".join(CANDIDATES),
                        help=f"comma-separated candidates (default {','.join(CANDIDATES)}); direct always runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per run (default 10 s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the table shows medians (default 3)")
    parser.add_argument("--clients", type=int, default=2, help="client processes in S2, S3, S7 (default 2)")
    parser.add_argument("--s5-connections", type=int, default=S5_CONNECTIONS,
                        help=f"idle connections held in S5 (default {S5_CONNECTIONS})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args()
    scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    if not scenarios or any(s not in SCENARIOS for s in scenarios):
        parser.error(f"--scenarios takes some of {','.join(SCENARIOS)}")
    if not only or any(c not in CANDIDATES for c in only):
        parser.error(f"--only takes some of {','.join(CANDIDATES)}")
    if args.repeat < 1 or args.seconds <= 0 or args.clients < 1 or not 1 <= args.s5_connections <= 20000:
        parser.error("--repeat, --seconds, --clients must be positive; --s5-connections 1 to 20000")

    nofile = raise_nofile(65536)
    started = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "seconds": args.seconds, "repeat": args.repeat, "clients": args.clients,
        "s5_connections": args.s5_connections, "nofile": nofile,
        "versions": peer_versions(),
        "setup": {
            "txgate": "twistd txgate forward --workers 1 (S7: 1 and 2), [admin] listen = \"\", access log to a file",
            "squid": "squid -N, workers 1, no cache, ssl_bump bump all + security_file_certgen, access log to a file",
            "mitmproxy": "mitmdump -q, one process; tunnel mode --ignore-hosts .*",
            "proxy.py": "--num-workers 1 --num-acceptors 1, TLS interception with --ca-* (openssl per new host)",
            "origin": "nginx, one process, TLS 1.2/1.3, ECDSA P-256; S3 names get a certificate each",
            "clients": "Python processes, new TCP connection + full TLS handshake per request (no resumption)",
        },
        "scenarios": {},
    }
    tmp = tempfile.mkdtemp(prefix="txgate-bench-suite-")
    os.chmod(tmp, 0o755)  # squid's helpers run as the proxy user
    children = Children()
    status = 0
    try:
        s3_runs = args.repeat if "S3" in scenarios else 0
        origin = Origin(tmp, s3_runs * S3_NAMES_PER_RUN)
        origin.start(children)
        _reverse_txgate_one_worker()
        with multiprocessing.get_context("fork").Pool(args.clients) as pool:
            ctx = Context(args, tmp, pool, origin, children)
            for scenario in scenarios:
                rows: dict[str, Any] = {}
                for name in SCENARIO_CANDIDATES[scenario]:
                    base = name.split("-")[0] if scenario == "S7" else name
                    if base != "direct" and base not in only:
                        continue
                    print(f"{scenario} {name} ...", file=sys.stderr, flush=True)
                    rows[name] = run_scenario(ctx, scenario, name)
                    if rows[name]["status"] == "failed" and name.startswith("txgate"):
                        status = 1
                    print(f"{scenario} {name}: {rows[name]['status']} ({rows[name]['wall_seconds']}s)"
                          + (f" {_why(rows[name])}" if rows[name]["status"] != "ok" else ""),
                          file=sys.stderr, flush=True)
                results["scenarios"][scenario] = rows
    except BenchError as e:
        results["error"] = str(e)
        status = 1
    finally:
        clean_up(children, tmp, args.keep)
    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    # Named after the start (UTC): a run of some scenarios does not overwrite the day's full run.
    report(results, f"suite-{started.strftime('%Y-%m-%d-%H%M%S')}", args.json, print_table)
    if "error" in results:
        print(f"\nbench: not measured: {results['error']}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
