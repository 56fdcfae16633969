"""
Cost of SSL interception (issue 5): emulated certificates minted per second
for fresh host names, and TLS handshakes per second through the interceptor
with a warm certificate cache, against the same loop straight to the origin.

    .venv/bin/python bench/intercept.py [--seconds 3] [--mint-seconds 2]

Minting runs the real code in-process: C{template_from_upstream} on a fresh
upstream certificate (a new host name each time) and one signature by the
keyring's issuer, through C{txgate.pki.authority.Authority.mint} when that
module exists, else C{mint_leaf}. The issuer is RSA-2048 whatever the leaf
key, so both key types cost about one RSA signature.

Handshakes start nginx (TLS, an origin CA made here) and
C{twistd -n txgate forward} with C{ssl.forward_proxy(yes)}, all on
127.0.0.1. Each client connection is new: CONNECT, a full TLS handshake (no
session reuse, SNI origin.test, trusting C{<state>/ca/issuer.pem}), one
C{GET /}, close. The proxy's CPU time per connection comes from
/proc/<pid>/stat. Client, proxy and origin share the machine's cores, so on
two cores the figures are a lower bound; compare ratios, not absolutes.

Prints a table and writes JSON to bench/results/intercept-<date>.json. Exits
non-zero, saying why, when nginx or txgate does not start or a handshake
through the proxy fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import attrs
from cryptography import x509

from txgate.config import SSLConfig
from txgate.pki.authority import Authority
from txgate.pki.keyring import generate_keyring
from txgate.pki.mint import KEY_TYPE_ECDSA, KEY_TYPE_RSA, template_from_upstream
from txgate.testing import make_ca, make_server_cert, write_pem

from common import LOOPBACK, BenchError, Children, connect, cpu_ms
from common import accepts as _accepts
from common import free_port as _free_port
from common import clean_up, read_response, report
from common import tail as _tail

ORIGIN_NAME = "origin.test"
STARTUP_TIMEOUT = 20.0  # seconds nginx or txgate gets to listen
ISSUER_GRACE = 5.0  # seconds after "listening:" for <state>/ca/issuer.pem to appear
WARMUP = 5  # connections through the proxy before measuring (the first mints)
MAX_CONNECTIONS = 100_000  # per client, whatever --seconds says
BODY = b"txgate bench\n" * 64  # what GET / returns (832 bytes)
POLICY = "<ssl-intercept>\n    ssl.forward_proxy(yes)\n"


# ---------------------------------------------------------------- certificates


def _origin_ca(now: datetime.datetime) -> tuple[x509.Certificate, Any]:
    return make_ca("txgate bench origin CA", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))


def _origin_leaf(ca: x509.Certificate, ca_key: Any, host: str, now: datetime.datetime, key: Any = None) -> tuple[x509.Certificate, Any]:
    """A server certificate for C{host} (and 127.0.0.1), as an upstream would present it."""
    return make_server_cert(
        ca, ca_key, [host], [LOOPBACK],
        not_before=now - datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30), key=key,
    )


# ---------------------------------------------------------------- minting


def measure_minting(seconds: float, limit: int) -> dict[str, Any]:
    """
    Certificates per second for fresh host names, per leaf key type. The
    upstream certificates (one per host, ECDSA-signed) are made before the
    clock starts; the timed loop is C{template_from_upstream} + mint.
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    keyring = generate_keyring(now)
    with tempfile.TemporaryDirectory(prefix="txgate-bench-ca-") as ca_dir:
        # The running proxy's path: serials, CDP and AIA URLs included.
        authority = Authority(keyring, attrs.evolve(SSLConfig(), crl_host=f"{LOOPBACK}:8080"), ca_dir, lambda: now)
        return _mint_rows("Authority.mint", authority.mint, keyring, now, seconds, limit)


def _mint_rows(how: str, mint: Callable[[Any, str], x509.Certificate], keyring: Any,
               now: datetime.datetime, seconds: float, limit: int) -> dict[str, Any]:
    ca, ca_key = _origin_ca(now)
    upstream_key = _origin_leaf(ca, ca_key, "h.bench.test", now)[1]
    upstreams = [_origin_leaf(ca, ca_key, f"h{i}.bench.test", now, upstream_key)[0] for i in range(limit)]
    rows = []
    for key_type in (KEY_TYPE_ECDSA, KEY_TYPE_RSA):
        mint(template_from_upstream(upstreams[0], now=now), key_type)  # first-call costs out of the loop
        count = 0
        started = time.perf_counter()
        deadline = started + seconds
        while count < limit and time.perf_counter() < deadline:
            template = template_from_upstream(upstreams[count], now=now)
            mint(template, key_type)
            count += 1
        elapsed = time.perf_counter() - started
        rows.append({
            "key_type": key_type,
            "minted": count,
            "seconds": round(elapsed, 3),
            "certs_per_second": round(count / elapsed, 1),
            "ms_per_cert": round(elapsed / count * 1000, 3),
        })
    return {"via": how, "issuer_key": f"rsa-{keyring.issuer_key.key_size}", "rows": rows}


# ---------------------------------------------------------------- child processes


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    default_type application/octet-stream;
    server {{
        listen {host}:{port} ssl;
        server_name localhost {name};
        root "{tmp}/docroot";
        ssl_certificate "{tmp}/origin.pem";
        ssl_certificate_key "{tmp}/origin.key";
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{ }}
    }}
}}
"""


def start_nginx(children: Children, tmp: str) -> tuple[int, int, str]:
    """
    nginx serving BODY over TLS on 127.0.0.1: C{(pid, port, ca_pem_path)}.
    """
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    nginx = shutil.which("nginx", path=search)
    if nginx is None:
        raise BenchError("nginx not found; `make system-deps` installs it")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca, ca_key = _origin_ca(now)
    leaf, key = _origin_leaf(ca, ca_key, ORIGIN_NAME, now)
    ca_path = os.path.join(tmp, "origin-ca.pem")
    write_pem(ca_path, ca)
    write_pem(os.path.join(tmp, "origin.pem"), leaf, ca)
    write_pem(os.path.join(tmp, "origin.key"), key=key)
    os.makedirs(os.path.join(tmp, "docroot"))
    with open(os.path.join(tmp, "docroot", "index.html"), "wb") as f:
        f.write(BODY)
    conf = os.path.join(tmp, "nginx.conf")
    log = os.path.join(tmp, "nginx.out")
    for _ in range(3):  # a port found free may be taken before nginx binds it
        port = _free_port()
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, host=LOOPBACK, port=port, name=ORIGIN_NAME))
        proc = children.start("nginx", [nginx, "-p", tmp + "/", "-c", conf, "-e", os.path.join(tmp, "error.log")], tmp, log)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline and not _accepts(port):
            time.sleep(0.05)
        if proc.poll() is None and _accepts(port):
            return proc.pid, port, ca_path
        errors = _tail(os.path.join(tmp, "error.log"))
        if "Address already in use" not in errors:
            break
    raise BenchError(f"nginx did not start on {LOOPBACK}:{port}:\n{_tail(log)}\nerror.log:\n{errors}")


def start_txgate(children: Children, tmp: str, origin_ca: str) -> tuple[int, int, str]:
    """
    C{twistd -n --pidfile= txgate forward --config FILE} intercepting every
    CONNECT: C{(pid, port, issuer_pem_path)}. The port is read from the
    service's "listening:" log line.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        raise BenchError(f"{twistd} not found: run this with the venv's python (make bench-intercept)")
    policy = os.path.join(tmp, "intercept.cpl")
    with open(policy, "w") as f:
        f.write(POLICY)
    config = os.path.join(tmp, "forward.toml")
    with open(config, "w") as f:
        f.write(
            "[txgate]\n"
            f"state_dir = {json.dumps(os.path.join(tmp, 'var'))}\n"
            f"access_log = {json.dumps(os.path.join(tmp, 'access.log'))}\n"
            f"policy = {json.dumps(policy)}\n"
            "\n[ssl]\n"
            f"upstream_ca_bundle = {json.dumps(origin_ca)}\n"
            "\n[[service]]\n"
            'name = "explicit"\n'
            'kind = "explicit-http"\n'
            'listen = "tcp:0:interface=127.0.0.1"\n'
            'clients = ["127.0.0.0/8"]\n'
        )
    log = os.path.join(tmp, "twistd.out")
    proc = children.start("txgate", [twistd, "-n", "--pidfile=", "txgate", "forward", "--config", config], tmp, log)
    issuer = os.path.join(tmp, "var", "ca", "issuer.pem")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    port = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"txgate exited with status {proc.returncode} before listening"
                f" (config refused?):\n{_tail(log)}\nconfig {config}:\n{_tail(config)}"
            )
        if port is None:
            with open(log, errors="replace") as f:
                for line in f:
                    if "listening: service=explicit " in line:
                        port = int(line.rsplit("address=", 1)[1].split()[0].rpartition(":")[2])
                        # The keyring is made before services listen; allow
                        # a little for a slow disk, not the whole timeout.
                        deadline = min(deadline, time.monotonic() + ISSUER_GRACE)
        if port is not None and os.path.exists(issuer):
            return proc.pid, port, issuer
        time.sleep(0.05)
    if port is None:
        raise BenchError(f"txgate did not log 'listening: service=explicit' within {STARTUP_TIMEOUT}s:\n{_tail(log)}")
    raise BenchError(
        f"txgate listens on {LOOPBACK}:{port} but wrote no {issuer} within {ISSUER_GRACE}s of listening:"
        f" the [ssl] section or the certificate authority is not wired into this build yet.\n{_tail(log)}"
    )


# ---------------------------------------------------------------- the client loop


def one_connection(target: tuple[int, int | None], context: ssl.SSLContext) -> None:
    """
    One fresh connection: to the proxy (CONNECT, then TLS inside) when
    C{target[1]} names the proxy's port, else straight to the origin; a full
    handshake, C{GET /}, the whole response, close.
    """
    origin_port, proxy_port = target
    raw: Any = connect(origin_port, proxy_port)
    try:
        tls = context.wrap_socket(raw, server_hostname=ORIGIN_NAME)
        raw = tls
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {ORIGIN_NAME}\r\nConnection: close\r\n\r\n".encode())
        status, body = read_response(tls)
        if status != 200:
            raise ConnectionError(f"GET / answered {status}")
        if body != BODY:
            raise ConnectionError(f"GET / returned {len(body)} bytes, expected {len(BODY)}")
    finally:
        raw.close()


def client_context(cafile: str) -> ssl.SSLContext:
    """What every client connection uses: verify against C{cafile}, offer http/1.1."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _client(args: tuple[tuple[int, int | None], str, float, float]) -> dict[str, Any]:
    target, cafile, start_at, deadline = args
    context = client_context(cafile)
    times: list[float] = []
    error = None
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while len(times) < MAX_CONNECTIONS and time.monotonic() < deadline:
        began = time.perf_counter()
        try:
            one_connection(target, context)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            break
        times.append(time.perf_counter() - began)
    return {"count": len(times), "ended": time.monotonic(), "times": times, "error": error}


def measure_handshakes(
    label: str, target: tuple[int, int | None], cafile: str, seconds: float, clients: int, pids: dict[str, int],
    pool: Any,
) -> dict[str, Any]:
    """
    C{clients} processes each run the connection loop for C{seconds}; the
    CPU time of each process in C{pids} is read before and after.
    """
    start_at = time.monotonic() + 0.2
    before = {name: cpu_ms(pid) for name, pid in pids.items()}
    results = pool.map(_client, [(target, cafile, start_at, start_at + seconds)] * clients)
    after = {name: cpu_ms(pid) for name, pid in pids.items()}
    errors = [r["error"] for r in results if r["error"]]
    if errors:
        raise BenchError(f"{label}: a connection failed: {errors[0]}")
    count = sum(r["count"] for r in results)
    elapsed = max(r["ended"] for r in results) - start_at
    times = sorted(t for r in results for t in r["times"])
    row: dict[str, Any] = {
        "path": label,
        "connections": count,
        "seconds": round(elapsed, 3),
        "handshakes_per_second": round(count / elapsed, 1),
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "p90_ms": round(times[int(len(times) * 0.9)] * 1000, 2),
    }
    for name in pids:
        row[f"{name}_cpu_ms_per_conn"] = round((after[name] - before[name]) / count, 3)
        row[f"{name}_cpu_percent"] = round((after[name] - before[name]) / (elapsed * 10), 1)
    return row


def handshakes(seconds: float, clients: int, keep: bool) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="txgate-bench-intercept-")
    children = Children()
    try:
        nginx_pid, origin_port, origin_ca = start_nginx(children, tmp)
        txgate_pid, proxy_port, issuer = start_txgate(children, tmp, origin_ca)
        twistd_log = os.path.join(tmp, "twistd.out")
        try:
            one_connection((origin_port, None), client_context(origin_ca))
        except Exception as e:
            raise BenchError(f"a connection straight to nginx failed: {type(e).__name__}: {e}") from e
        context = client_context(issuer)
        for i in range(WARMUP):  # the first connection mints; the rest find the cache warm
            try:
                one_connection((origin_port, proxy_port), context)
            except Exception as e:
                raise BenchError(
                    f"connection {i + 1} through the proxy failed: {type(e).__name__}: {e}\n"
                    f"twistd output:\n{_tail(twistd_log)}"
                ) from e
        with multiprocessing.get_context("fork").Pool(clients) as pool:
            direct = measure_handshakes(
                "direct", (origin_port, None), origin_ca, seconds, clients, {"nginx": nginx_pid}, pool
            )
            try:
                proxied = measure_handshakes(
                    "intercepted", (origin_port, proxy_port), issuer, seconds, clients,
                    {"txgate": txgate_pid, "nginx": nginx_pid}, pool,
                )
            except BenchError as e:
                raise BenchError(f"{e}\ntwistd output:\n{_tail(twistd_log)}") from e
        return {
            "rows": [direct, proxied],
            "ratio": round(proxied["handshakes_per_second"] / direct["handshakes_per_second"], 3),
        }
    finally:
        clean_up(children, tmp, keep)


# ---------------------------------------------------------------- main


def _print_table(results: dict[str, Any]) -> None:
    mint = results["minting"]
    print(f"minting: fresh host names, issuer {mint['issuer_key']}, via {mint['via']}")
    print(f"  {'leaf key':<11} {'minted':>7} {'certs/s':>9} {'ms/cert':>8}")
    for r in mint["rows"]:
        print(f"  {r['key_type']:<11} {r['minted']:>7} {r['certs_per_second']:>9} {r['ms_per_cert']:>8}")
    hs = results.get("handshakes")
    if hs is None:
        return
    print(f"\nhandshakes: new connection + full TLS handshake + GET / each, {results['clients']} client processes,"
          f" warm certificate cache")
    print(f"  {'path':<12} {'conns':>6} {'handshakes/s':>13} {'p50 ms':>7} {'p90 ms':>7}"
          f" {'txgate CPU ms/conn':>19} {'txgate CPU %':>13} {'nginx CPU ms/conn':>18}")
    for r in hs["rows"]:
        print(f"  {r['path']:<12} {r['connections']:>6} {r['handshakes_per_second']:>13} {r['p50_ms']:>7}"
              f" {r['p90_ms']:>7} {r.get('txgate_cpu_ms_per_conn', '-'):>19} {r.get('txgate_cpu_percent', '-'):>13}"
              f" {r['nginx_cpu_ms_per_conn']:>18}")
    print(f"  intercepted / direct: {hs['ratio']:.2f}x")
    proxied = hs["rows"][1]
    if proxied["txgate_cpu_percent"] < 70:
        print(f"  txgate was busy {proxied['txgate_cpu_percent']}% of one core: the intercepted rate is bound by"
              " latency, not proxy CPU (a p50 near 40 ms points at Nagle + delayed ACK)")
    print(f"  note: client, txgate and nginx share {results['cpus']} CPU(s); with 2 cores they compete,"
          " so handshakes/s is a lower bound and CPU ms/conn the steadier figure")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per handshake loop (default 3 s)")
    parser.add_argument("--mint-seconds", type=float, default=2.0, help="time per leaf key type (default 2 s)")
    parser.add_argument("--mint-max", type=int, default=2000, help="most certificates per key type (default 2000)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--no-handshakes", action="store_true", help="measure minting only")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "seconds": args.seconds,
        "minting": measure_minting(args.mint_seconds, args.mint_max),
    }
    status = 0
    if not args.no_handshakes:
        try:
            results["handshakes"] = handshakes(args.seconds, args.clients, args.keep)
        except BenchError as e:
            results["error"] = str(e)
            status = 1

    report(results, f"intercept-{datetime.date.today().isoformat()}", args.json, _print_table)
    if status:
        print(f"\nbench-intercept: handshakes not measured: {results['error']}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
