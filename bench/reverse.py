"""
Reverse proxy with TLS on both sides (issue 6, scenario S4 of issue 8):
txgate reverse side by side with haproxy and nginx, each in front of the
same two nginx real servers.

    .venv/bin/python bench/reverse.py [--seconds 5] [--only txgate,haproxy,nginx] [--repeat 1]

Everything listens on 127.0.0.1. Two nginx real servers serve a 1 KiB body
over TLS under an internal CA (certificate name realserver.bench.internal).
Each candidate in turn listens with a certificate for lyncweb.bench.test
under a separate public CA, lets only that Host through, balances
round-robin over both real servers with TLS verified against the internal
CA, and keeps idle connections to them for reuse:

- txgate: C{twistd -n txgate reverse}, one process, no persistence, health
  checks and ESP logs off;
- haproxy: one thread, mode http, C{http-reuse always}, C{ssl verify
  required ca-file};
- nginx: one process, C{proxy_pass https://} to an upstream with a
  C{keepalive} pool, C{proxy_ssl_verify on}, HTTP/1.1 and C{Connection ""}.

Scenarios, one candidate at a time:

- keepalive: C{wrk -t1 -c50 --latency} for C{--seconds} (wrk does not
  verify certificates; it connects to 127.0.0.1 with C{Host:
  lyncweb.bench.test});
- newconn: C{--clients} Python processes, each doing sequential requests
  for C{--seconds}, every one on a new connection with a full handshake (no
  session offered, SNI lyncweb.bench.test, the public CA verified).

The proxy's CPU time per request is utime + stime of its process (and any
children) from /proc, read before and after. The load generator, the proxy
and the real servers share the machine's cores, so req/s is a lower bound;
CPU-ms per request is the steadier figure, and ratios to haproxy from the
same run are what to compare.

Prints a table and writes JSON to bench/results/reverse-<date>.json. Exits
non-zero when a candidate could not be measured (it says why, with the tail
of the candidate's output).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from txgate.testing import make_ca, make_server_cert, write_pem

from common import IO_TIMEOUT, LOOPBACK, NGINX_TEMP_PATHS, SBIN_PATH, BenchError, Children, Tally, cpu_ms
from common import child_env as _child_env
from common import clean_up, read_response, report
from common import start_server as _start_server
from common import tail as _tail
from common import tool_version as _version
from common import which as _which

PUBLIC_NAME = "lyncweb.bench.test"  # what clients ask for (SNI and Host)
REAL_NAME = "realserver.bench.internal"  # what the real servers' certificate says
OTHER_HOST = "evil.bench.test"  # a Host no candidate may let through
CANDIDATES = ("txgate", "haproxy", "nginx")
BASELINE = "haproxy"
WRK_GRACE = 30.0  # seconds wrk may run past its -d before it is killed
MAX_REQUESTS = 200_000  # per new-connection client, whatever --seconds says
MAX_ERRORS = 50  # failed requests after which a new-connection client stops
WARMUP_REQUESTS = 20  # new-connection requests before measuring (pools, code paths)
BODY = (b"txgate reverse bench " * 49)[:1023] + b"\n"  # what GET / returns (1024 bytes)


# ---------------------------------------------------------------- certificates


def make_certificates(tmp: str) -> dict[str, str]:
    """
    The internal CA and the real servers' certificate, and the public CA and
    the published certificate (P-256 throughout): paths by role. C{public}
    is key + leaf + CA in one file, as txgate and haproxy take it; nginx takes
    C{public_chain} and C{public_key}.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    internal_ca, internal_key = make_ca("txgate bench internal CA", start, end)
    real, real_key = make_server_cert(internal_ca, internal_key, [REAL_NAME], [LOOPBACK], not_before=start, not_after=end)
    public_ca, public_ca_key = make_ca("txgate bench public CA", start, end)
    leaf, leaf_key = make_server_cert(public_ca, public_ca_key, [PUBLIC_NAME], not_before=start, not_after=end)
    paths = {name: os.path.join(tmp, f"{name}.pem") for name in (
        "internal_ca", "real_chain", "real_key", "public_ca", "public_chain", "public_key", "public")}
    write_pem(paths["internal_ca"], internal_ca)
    write_pem(paths["real_chain"], real, internal_ca)
    write_pem(paths["real_key"], key=real_key)
    write_pem(paths["public_ca"], public_ca)
    write_pem(paths["public_chain"], leaf, public_ca)
    write_pem(paths["public_key"], key=leaf_key)
    with open(paths["public_key"], "rb") as k, open(paths["public_chain"], "rb") as c:
        combined = k.read() + c.read()
    with open(os.open(paths["public"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(combined)
    return paths


# ---------------------------------------------------------------- child processes


NGINX_COMMON = """\
daemon off;
master_process off;
worker_processes 1;
pid "{dir}/nginx.pid";
error_log "{dir}/error.log" warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
""" + NGINX_TEMP_PATHS + """\
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
{body}
}}
"""

REAL_SERVER = """\
    server {{
        listen {host}:{port} ssl;
        server_name {name};
        root "{docroot}";
        ssl_certificate "{chain}";
        ssl_certificate_key "{key}";
        location / {{ }}
    }}
"""

NGINX_PROXY = """\
    upstream real_servers {{
        server {host}:{port1};
        server {host}:{port2};
        keepalive 32;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }}
    server {{
        listen {host}:{port} ssl;
        server_name {public};
        ssl_certificate "{chain}";
        ssl_certificate_key "{key}";
        if ($host != "{public}") {{ return 403 "forbidden\\n"; }}
        location / {{
            proxy_pass https://real_servers;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate "{ca}";
            proxy_ssl_name {real};
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }}
    }}
"""


def _nginx(children: Children, tmp: str, what: str, body_for: Any) -> tuple[subprocess.Popen[bytes], int]:
    """One nginx process (C{master_process off}) in C{tmp/what}, with the http block C{body_for(port)}."""
    nginx = _which("nginx", "`make system-deps` installs it")
    directory = os.path.join(tmp, what)
    os.makedirs(directory, exist_ok=True)
    conf = os.path.join(directory, "nginx.conf")

    def write_conf(port: int) -> str:
        with open(conf, "w") as f:
            f.write(NGINX_COMMON.format(dir=directory, body=body_for(port)))
        return conf

    def argv_for(path: str) -> list[str]:
        return [nginx, "-p", directory + "/", "-c", path, "-e", os.path.join(directory, "error.log")]

    try:
        return _start_server(children, tmp, what, argv_for, write_conf)
    except BenchError as e:
        raise BenchError(f"{e}\nerror.log:\n{_tail(os.path.join(directory, 'error.log'))}") from e


def start_real_servers(children: Children, tmp: str, certs: dict[str, str]) -> list[tuple[int, int]]:
    """Two nginx real servers serving BODY at / over TLS: C{[(pid, port), ...]}."""
    docroot = os.path.join(tmp, "docroot")
    os.makedirs(docroot, exist_ok=True)
    with open(os.path.join(docroot, "index.html"), "wb") as f:
        f.write(BODY)
    servers = []
    for i in (1, 2):
        proc, port = _nginx(children, tmp, f"real{i}", lambda port: REAL_SERVER.format(
            host=LOOPBACK, port=port, name=REAL_NAME, docroot=docroot,
            chain=certs["real_chain"], key=certs["real_key"]))
        servers.append((proc.pid, port))
    return servers


def start_nginx_proxy(children: Children, tmp: str, certs: dict[str, str], real: list[int]) -> tuple[int, int]:
    proc, port = _nginx(children, tmp, "nginx", lambda port: NGINX_PROXY.format(
        host=LOOPBACK, port=port, port1=real[0], port2=real[1], public=PUBLIC_NAME, real=REAL_NAME,
        chain=certs["public_chain"], key=certs["public_key"], ca=certs["internal_ca"]))
    return proc.pid, port


HAPROXY = """\
global
    nbthread 1
    maxconn 4096
    tune.ssl.default-dh-param 2048

defaults
    mode http
    timeout connect 10s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 75s
    option http-keep-alive
    http-reuse always

frontend lyncweb
    bind {host}:{port} ssl crt "{public}"
    http-request deny deny_status 403 unless {{ req.hdr(host),field(1,:) -i {name} }}
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend real_servers

backend real_servers
    balance roundrobin
    server real1 {host}:{port1} ssl verify required ca-file "{ca}" sni str({real}) verifyhost {real}
    server real2 {host}:{port2} ssl verify required ca-file "{ca}" sni str({real}) verifyhost {real}
"""


def start_haproxy(children: Children, tmp: str, certs: dict[str, str], real: list[int]) -> tuple[int, int]:
    haproxy = _which("haproxy", "`make system-deps` installs it")
    conf = os.path.join(tmp, "haproxy.cfg")

    def write_conf(port: int) -> str:
        with open(conf, "w") as f:
            f.write(HAPROXY.format(host=LOOPBACK, port=port, port1=real[0], port2=real[1], name=PUBLIC_NAME,
                                   public=certs["public"], ca=certs["internal_ca"], real=REAL_NAME))
        return conf

    proc, port = _start_server(children, tmp, "haproxy", lambda path: [haproxy, "-db", "-f", path], write_conf)
    return proc.pid, port


def txgate_config(port: int, tmp: str, certs: dict[str, str], real: list[int]) -> str:
    """C{twistd txgate reverse}'s TOML: one virtual service, round-robin, no persistence, no checks, logs off."""
    servers = "".join(
        "\n[[virtual_service.real_server]]\n"
        f'address = "{LOOPBACK}:{p}"\n'
        "tls = true\n"
        f"ca_bundle = {json.dumps(certs['internal_ca'])}\n"
        f'server_name = "{REAL_NAME}"\n'
        for p in real
    )
    return (
        "[txgate]\n"
        f"state_dir = {json.dumps(os.path.join(tmp, 'txgate-var'))}\n"
        "\n[logs]\n"
        'connection_log = ""\n'
        'security_log = ""\n'
        'user_log = ""\n'
        "\n[[virtual_service]]\n"
        'name = "lyncweb"\n'
        f'listen = "tcp:{port}:interface={LOOPBACK}"\n'
        f"certificates = [{json.dumps(certs['public'])}]\n"
        f'allowed_hosts = ["{PUBLIC_NAME}"]\n'
        'allowed_paths = ["/*"]\n'
        'scheduling = "round-robin"\n'
        'persistence = { mode = "none" }\n'
        "health_check = { enabled = false }\n"
        + servers
    )


def start_txgate(children: Children, tmp: str, certs: dict[str, str], real: list[int]) -> tuple[int, int]:
    """C{twistd -n --pidfile= txgate reverse --config FILE}, ready once it logs C{listening:} and accepts."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        raise BenchError(f"{twistd} not found: run this with the venv's python (make bench-reverse)")
    conf = os.path.join(tmp, "reverse.toml")

    def write_conf(port: int) -> str:
        with open(conf, "w") as f:
            f.write(txgate_config(port, tmp, certs, real))
        return conf

    try:
        proc, port = _start_server(
            children, tmp, "txgate",
            lambda path: [twistd, "-n", "--pidfile=", "txgate", "reverse", "--config", path],
            write_conf, marker="listening:")
    except BenchError as e:
        raise BenchError(f"{e}\nconfig {conf}:\n{_tail(conf, 60)}") from e
    return proc.pid, port


STARTERS = {"txgate": start_txgate, "haproxy": start_haproxy, "nginx": start_nginx_proxy}


# ---------------------------------------------------------------- clients


def client_context(cafile: str) -> ssl.SSLContext:
    """
    Verify against C{cafile}, offer http/1.1, never offer a session: the
    socket module only resumes when given C{session=}, which this never does,
    and no ticket is asked for.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    context.options |= ssl.OP_NO_TICKET
    return context


def one_request(port: int, context: ssl.SSLContext, host: str = PUBLIC_NAME) -> tuple[int, bytes]:
    """
    A new connection with a full handshake (SNI lyncweb.bench.test), C{GET /}
    with C{Host: host}, the whole response, close: C{(status, body)}.
    """
    raw = socket.create_connection((LOOPBACK, port), timeout=IO_TIMEOUT)
    sock: Any = raw
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = context.wrap_socket(raw, server_hostname=PUBLIC_NAME)
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: txgate-bench\r\nConnection: close\r\n\r\n".encode())
        return read_response(sock)
    finally:
        sock.close()


def _new_connection_client(args: tuple[int, str, float, float]) -> dict[str, Any]:
    port, cafile, start_at, deadline = args
    context = client_context(cafile)
    tally = Tally()
    while time.monotonic() < start_at:
        time.sleep(0.001)

    def request() -> None:
        status, body = one_request(port, context)
        if status != 200 or body != BODY:
            raise ConnectionError(f"GET / answered {status} with {len(body)} bytes")

    while len(tally.times) < MAX_REQUESTS and tally.error_count < MAX_ERRORS and time.monotonic() < deadline:
        tally.time(request)
    return tally.result()


def _percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def measure_new_connection(port: int, cafile: str, seconds: float, clients: int, pid: int, pool: Any) -> dict[str, Any]:
    """C{clients} processes run the new-connection loop for C{seconds}; C{pid}'s CPU time is read around it."""
    start_at = time.monotonic() + 0.2
    before = cpu_ms(pid)
    results = pool.map(_new_connection_client, [(port, cafile, start_at, start_at + seconds)] * clients)
    after = cpu_ms(pid)
    count = sum(r["count"] for r in results)
    elapsed = max(r["ended"] for r in results) - start_at
    times = sorted(t for r in results for t in r["times"])
    errors = sum(r["error_count"] for r in results)
    row: dict[str, Any] = {
        "requests": count,
        "seconds": round(elapsed, 3),
        "errors": errors,
        "requests_per_second": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(times) * 1000, 2) if times else None,
        "p99_ms": round(_percentile(times, 0.99) * 1000, 2) if times else None,
        "cpu_ms_per_request": round((after - before) / count, 3) if count else None,
        "cpu_percent": round((after - before) / (elapsed * 10), 1),
    }
    if errors:
        row["error_samples"] = sorted({m for r in results for m in r["errors"]})[:5]
    return row


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> dict[str, Any]:
    """wrk --latency's report: requests, req/s, p50/p99 and the error counts it prints."""
    row: dict[str, Any] = {}
    match = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.M)
    if match is None:
        raise ValueError("no 'N requests in' line")
    row["requests"] = int(match.group(1))
    row["seconds"] = round(_ms(match.group(2) + match.group(3)) / 1000, 3)
    match = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if match is None:
        raise ValueError("no 'Requests/sec:' line")
    row["requests_per_second"] = round(float(match.group(1)), 1)
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", output, re.M)
        row[f"p{pct}_ms"] = round(_ms(match.group(1)), 2) if match else None
    errors = 0
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if match:
        row["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, match.groups())))
        errors += sum(row["socket_errors"].values())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if match:
        row["non_2xx"] = int(match.group(1))
        errors += row["non_2xx"]
    row["errors"] = errors
    return row


def run_wrk(port: int, seconds: float, connections: int) -> tuple[str, list[str]]:
    """C{wrk -t1 -cN -dSs --latency} against the proxy with C{Host: lyncweb.bench.test}: (output, argv)."""
    wrk = _which("wrk", "`make bench-reverse` installs it (apt-get install wrk)")
    argv = [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "-H", f"Host: {PUBLIC_NAME}", f"https://{LOOPBACK}:{port}/"]
    try:
        done = subprocess.run(argv, env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=seconds + WRK_GRACE)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"wrk ran {seconds + WRK_GRACE:.0f}s and was killed: {e.stdout!r}") from e
    if done.returncode != 0:
        raise BenchError(f"wrk exited with status {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout, argv


def measure_keepalive(port: int, seconds: float, connections: int, pid: int) -> dict[str, Any]:
    before = cpu_ms(pid)
    output, _ = run_wrk(port, seconds, connections)
    after = cpu_ms(pid)
    try:
        row = parse_wrk(output)
    except ValueError as e:
        raise BenchError(f"cannot read wrk's report ({e}):\n{output}") from e
    row["cpu_ms_per_request"] = round((after - before) / row["requests"], 3) if row["requests"] else None
    row["cpu_percent"] = round((after - before) / (row["seconds"] * 10), 1) if row["seconds"] else None
    if row["errors"]:
        row["wrk_output"] = output
    return row


# ---------------------------------------------------------------- one candidate


def _check(port: int, certs: dict[str, str]) -> dict[str, Any]:
    """
    Before measuring: GET / with the public Host returns the body (certificate
    verified), and another Host is refused; fails loudly on the first.
    """
    context = client_context(certs["public_ca"])
    status, body = one_request(port, context)
    if status != 200 or body != BODY:
        raise BenchError(f"GET / through the proxy answered {status} with {len(body)} bytes: {body[:200]!r}")
    status, _ = one_request(port, context, OTHER_HOST)
    return {"other_host_status": status}


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-figure medians over the repeats, errors summed; the runs themselves kept."""
    if len(rows) == 1:
        return dict(rows[0])
    merged: dict[str, Any] = {}
    for key in ("requests_per_second", "p50_ms", "p99_ms", "cpu_ms_per_request", "cpu_percent"):
        values = [r[key] for r in rows if r.get(key) is not None]
        merged[key] = round(statistics.median(values), 3) if values else None
    merged["requests"] = sum(r["requests"] for r in rows)
    merged["errors"] = sum(r["errors"] for r in rows)
    merged["runs"] = rows
    return merged


def run_candidate(name: str, tmp: str, certs: dict[str, str], real: list[int], args: argparse.Namespace,
                  pool: Any) -> dict[str, Any]:
    """Start C{name}, check it, run both scenarios C{--repeat} times, stop it."""
    children = Children()
    log = os.path.join(tmp, f"{name}.out")
    try:
        pid, port = STARTERS[name](children, tmp, certs, real)
        try:
            check = _check(port, certs)
            for _ in range(WARMUP_REQUESTS):
                one_request(port, client_context(certs["public_ca"]))
            run_wrk(port, 1, args.connections)  # fills the keep-alive pools, warms code paths
            keepalive, newconn = [], []
            for _ in range(args.repeat):
                keepalive.append(measure_keepalive(port, args.seconds, args.connections, pid))
                newconn.append(measure_new_connection(port, certs["public_ca"], args.seconds, args.clients, pid, pool))
        except (BenchError, OSError, ssl.SSLError) as e:
            raise BenchError(f"{name}: {type(e).__name__}: {e}\n{name} output:\n{_tail(log)}") from e
        alive = children.procs[-1][1].poll() is None
        result = {
            "pid": pid, "port": port, **check,
            "keepalive": _median_row(keepalive), "newconn": _median_row(newconn),
            "log_tail": _tail(log, 20) if (not alive or any(r["errors"] for r in keepalive + newconn)) else None,
        }
        if not alive:
            result["error"] = f"{name} exited during the run"
        return result
    finally:
        children.stop_all()


# ---------------------------------------------------------------- main


def versions() -> dict[str, str]:
    found = {}
    for name, argv in (("haproxy", ["-v"]), ("nginx", ["-v"]), ("wrk", ["-v"])):
        path = shutil.which(name, path=SBIN_PATH)
        found[name] = _version([path, *argv]) if path else "not installed"
    found["python"] = sys.version.split()[0]
    found["openssl"] = ssl.OPENSSL_VERSION
    try:
        from importlib.metadata import version
        found["txgate"] = version("txgate")
        found["twisted"] = version("twisted")
    except Exception as e:
        found["txgate"] = f"({e})"
    return found


SCENARIOS = {
    "keepalive": "keep-alive, wrk -t1 -c{connections}",
    "newconn": "new connection + full handshake per request, {clients} sequential client(s)",
}


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _print_table(results: dict[str, Any]) -> None:
    print(f"reverse proxy, TLS both sides, 2 nginx real servers (1 KiB body), {results['seconds']:g}s per run,"
          f" median of {results['repeat']}")
    for scenario, text in SCENARIOS.items():
        print(f"  {scenario}: {text.format(**results)}")
    print(f"\n  {'candidate':<9} {'scenario':<9} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'CPU-ms/req':>10}"
          f" {'CPU %':>6} {'req/s vs haproxy':>16} {'CPU vs haproxy':>14} {'errors':>6}")
    candidates = results["candidates"]
    base = candidates.get(BASELINE, {})
    for name, outcome in candidates.items():
        if "keepalive" not in outcome:
            print(f"  {name:<9} not measured: {outcome.get('error', '?').splitlines()[0]} (details below)")
            continue
        for scenario in SCENARIOS:
            row = outcome[scenario]
            ref = base.get(scenario) or {}
            ratio = cpu_ratio = None
            if ref.get("requests_per_second"):
                ratio = row["requests_per_second"] / ref["requests_per_second"]
            if ref.get("cpu_ms_per_request") and row.get("cpu_ms_per_request") is not None:
                cpu_ratio = row["cpu_ms_per_request"] / ref["cpu_ms_per_request"]
            print(f"  {name:<9} {scenario:<9} {row['requests_per_second']:>9.0f} {_fmt(row['p50_ms'], '.2f'):>7}"
                  f" {_fmt(row['p99_ms'], '.2f'):>7} {_fmt(row['cpu_ms_per_request'], '.3f'):>10}"
                  f" {_fmt(row['cpu_percent'], '.0f'):>6} {_fmt(ratio, '.2f'):>15}x {_fmt(cpu_ratio, '.2f'):>13}x"
                  f" {row['errors']:>6}")
    for name, outcome in candidates.items():
        if outcome.get("other_host_status") not in (None, 403):
            print(f"  note: {name} answered {outcome['other_host_status']} (not 403) for Host {OTHER_HOST}")
        for scenario in SCENARIOS:
            row = outcome.get(scenario) or {}
            if row.get("errors"):
                detail = row.get("socket_errors") or row.get("error_samples") or ""
                non = f", non-2xx {row['non_2xx']}" if row.get("non_2xx") else ""
                print(f"  note: {name} {scenario}: {row['errors']} errors{non} {detail}")
        if outcome.get("log_tail"):
            print(f"  {name} output (tail):\n    " + outcome["log_tail"].replace("\n", "\n    "))
    print(f"\n  each proxy runs one process/thread: txgate one twistd process (ESP logs off: connection_log,"
          f" security_log, user_log = \"\"; health checks off), haproxy nbthread 1, nginx master_process off;"
          f" all reach the real servers at {LOOPBACK} by address, verifying {REAL_NAME}")
    print(f"  CPU = utime+stime of the proxy's processes from /proc; wrk, the clients, the proxy and both real"
          f" servers share {results['cpus']} CPU(s), so req/s is a lower bound and CPU-ms/req the steadier figure")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per scenario run (default 5 s)")
    parser.add_argument("--only", default=",".join(CANDIDATES),
                        help=f"comma-separated candidates, run in this order (default {','.join(CANDIDATES)})")
    parser.add_argument("--repeat", type=int, default=1, help="runs per scenario; the table shows medians (default 1)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections in keepalive (default 50)")
    parser.add_argument("--clients", type=int, default=1,
                        help="client processes in newconn, each sequential (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args()
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CANDIDATES]
    if unknown or not only:
        parser.error(f"--only takes some of {','.join(CANDIDATES)}; not {','.join(unknown) or 'nothing'}")
    if args.repeat < 1 or args.seconds <= 0 or args.connections < 1 or args.clients < 1:
        parser.error("--repeat, --seconds, --connections and --clients must be positive")

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "repeat": args.repeat,
        "connections": args.connections,
        "clients": args.clients,
        "versions": versions(),
        "setup": {
            "public_name": PUBLIC_NAME, "real_server_name": REAL_NAME, "body_bytes": len(BODY),
            "keys": "ECDSA P-256 (public and internal)",
            "txgate": "one twistd process; round-robin, persistence none, health checks off, ESP logs off",
            "haproxy": "nbthread 1, mode http, http-reuse always, ssl verify required ca-file, roundrobin",
            "nginx": "master_process off (one process), upstream keepalive 32, proxy_ssl_verify on, HTTP/1.1",
            "name_mapping": "every candidate is configured with the real servers' 127.0.0.1 addresses",
        },
        "candidates": {},
    }
    status = 0
    tmp = tempfile.mkdtemp(prefix="txgate-bench-reverse-")
    children = Children()
    try:
        certs = make_certificates(tmp)
        try:
            servers = start_real_servers(children, tmp, certs)
        except BenchError as e:
            results["error"] = str(e)
            servers = []
            status = 1
        real = [port for _, port in servers]
        if servers:
            with multiprocessing.get_context("fork").Pool(args.clients) as pool:
                for name in only:
                    try:
                        outcome = run_candidate(name, tmp, certs, real, args, pool)
                    except BenchError as e:
                        outcome = {"error": str(e)}
                    if "error" in outcome:
                        status = 1
                    results["candidates"][name] = outcome
                    print(f"{name}: {'not measured' if 'error' in outcome else 'done'}", file=sys.stderr, flush=True)
    finally:
        clean_up(children, tmp, args.keep)

    report(results, f"reverse-{datetime.date.today().isoformat()}", args.json, _print_table)
    if "error" in results:
        print(f"\nbench-reverse: not measured: {results['error']}", file=sys.stderr)
    for name, outcome in results["candidates"].items():
        if "error" in outcome:
            print(f"\nbench-reverse: {name}: {outcome['error']}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
