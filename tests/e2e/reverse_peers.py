# -*- test-case-name: tests.e2e.test_reverse -*-
"""
Peers for the end-to-end tests of reverse mode (C{twistd txgate reverse}):
the real servers behind it, the load balancer in front of it, and the
clients, each usable without txgate (L{tests.e2e.test_reverse.FixtureTests}
proves them), so a failure seen through txgate is txgate's:

    pki = make_reverse_pki(directory)        # internal CA + real-server cert,
                                             # public CA + one cert for ALLOWED_HOSTS
    rs1 = await start_real_nginx(self, "rs1", pki)      # TLS real server (nginx)
    await rs1.stop(); await rs1.start()                  # same port again
    be = await start_reverse_backend(self, "be1", pki)  # reverse_backend.py
    lb = await start_haproxy(self, haproxy_tcp_config([n1, n2]))
    result = await https_fetch(self, proxy.addresses["web"], "meet.example.test",
                               "/meet/x", cafile=pki.public_ca_path, interface=CLIENT_IP)
    reply = await tls_exchange_raw(address, b"GET / HTTP/1.1\\r\\n...", server_name=..., cafile=...)
    echo = await websocket_echo(address, "lyncweb.example.test", cafile, b"hello")

All of it listens on and connects to loopback addresses only.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import socket
import ssl
import struct
import sys
import unittest
from typing import Any, Callable, Sequence

import attrs
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import FailTest

from tests.e2e.harness import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    RawReply,
    TxgateProcess,
    _accepts,
    _Child,
    _child_env,
    _free_port,
    _new_dir,
    _stop_child,
    _tail,
    read_http_head,
    require_tool,
    run_curl,
    send_and_read,
    wait_for,
)
from tests.e2e.tls_origins import _listening

__all__ = [
    "ALLOWED_HOSTS",
    "CLIENT_IP",
    "INTERNAL_NAME",
    "Haproxy",
    "RealNginx",
    "ReverseBackend",
    "ReversePki",
    "ReverseResult",
    "WebSocketEcho",
    "esp_lines",
    "haproxy_tcp_config",
    "https_fetch",
    "make_reverse_pki",
    "parse_user_line",
    "start_haproxy",
    "start_real_nginx",
    "start_reverse_backend",
    "tls_connect",
    "tls_exchange_raw",
    "wait_for_esp_line",
    "websocket_echo",
]

ALLOWED_HOSTS = ("lyncweb.example.test", "meet.example.test", "dialin.example.test", "lyncdiscover.example.test")
"""The public names: all in the one public certificate, all allowed by the tests' configs."""

INTERNAL_NAME = "fe.internal.test"
"""The name in the real servers' certificate (with 127.0.0.1), checked by txgate as C{server_name}."""

CLIENT_IP = "127.0.0.5"
"""A client source address distinct from 127.0.0.1 (curl C{--interface}), so logs show whose it is."""

BACKEND_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reverse_backend.py")


# ---------------------------------------------------------------- certificates


@attrs.frozen
class ReversePki:
    """
    The two trust domains of a reverse proxy, as PEM files.

    @ivar internal_ca_path: the internal CA (txgate's C{ca_bundle}).
    @ivar real_server_cert_path: the real servers' certificate then the
        internal CA, for C{INTERNAL_NAME} and 127.0.0.1.
    @ivar real_server_key_path: its key.
    @ivar public_ca_path: the public CA (the clients' C{--cacert}).
    @ivar public_pem_path: key, then the public certificate for
        L{ALLOWED_HOSTS}, then the public CA, in one file (mode 0600): what
        txgate's C{certificates} takes.
    """

    directory: str
    internal_ca_path: str
    real_server_cert_path: str
    real_server_key_path: str
    public_ca_path: str
    public_pem_path: str


def make_reverse_pki(directory: str, public_names: Sequence[str] = ALLOWED_HOSTS) -> ReversePki:
    """Generate L{ReversePki}'s files in C{directory} (P-256, valid from yesterday for 30 days)."""
    from txgate.testing import make_ca, make_server_cert, write_pem

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = {"not_before": now - datetime.timedelta(days=1), "not_after": now + datetime.timedelta(days=30)}
    path = lambda name: os.path.join(directory, name)  # noqa: E731
    pki = ReversePki(
        directory, path("internal-ca.pem"), path("real-server.pem"), path("real-server.key"),
        path("public-ca.pem"), path("public.pem"),
    )
    internal, internal_key = make_ca("txgate e2e internal CA", **validity)
    leaf, leaf_key = make_server_cert(internal, internal_key, [INTERNAL_NAME], [LOOPBACK], **validity)
    write_pem(pki.internal_ca_path, internal)
    write_pem(pki.real_server_cert_path, leaf, internal)
    write_pem(pki.real_server_key_path, key=leaf_key)

    public, public_key = make_ca("txgate e2e public CA", **validity)
    web, web_key = make_server_cert(public, public_key, list(public_names), [], **validity)
    write_pem(pki.public_ca_path, public)
    write_pem(pki.public_pem_path, key=web_key)  # created 0600
    chain = path("public-chain.pem")
    write_pem(chain, web, public)
    with open(pki.public_pem_path, "ab") as out, open(chain, "rb") as f:
        out.write(f.read())
    os.remove(chain)
    return pki


# ---------------------------------------------------------------- nginx real servers

SLOW_BYTES = 64 * 1024
"""Size of nginx's C{/slow} file."""

SLOW_RATE = 16 * 1024
"""nginx's C{limit_rate} on C{/slow}: about SLOW_BYTES / SLOW_RATE = 4 s a download."""

BIG_BYTES = 1 << 30
"""Size of nginx's sparse C{/big} file."""

_REAL_NGINX_CONF = r"""
daemon off;
master_process off;
worker_processes 1;
pid "@TMP@/nginx.pid";
error_log "@TMP@/error.log" info;
events { worker_connections 1024; }
http {
    log_format reverse escape=json '{"server":"@NAME@","remote":"$remote_addr:$remote_port",'
        '"connection":"$connection","scheme":"$scheme","method":"$request_method",'
        '"host":"$host","http_host":"$http_host","request_uri":"$request_uri","uri":"$uri",'
        '"status":"$status","request_length":"$request_length","bytes_sent":"$bytes_sent",'
        '"xff":"$http_x_forwarded_for","xfp":"$http_x_forwarded_proto","forwarded":"$http_forwarded",'
        '"cookie":"$http_cookie","authorization":"$http_authorization","user_agent":"$http_user_agent",'
        '"time":"$msec"}';
    access_log "@TMP@/access.log" reverse;
    client_body_temp_path "@TMP@/client_body";
    proxy_temp_path "@TMP@/proxy";
    fastcgi_temp_path "@TMP@/fastcgi";
    uwsgi_temp_path "@TMP@/uwsgi";
    scgi_temp_path "@TMP@/scgi";
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 300s;
    keepalive_requests 100000;
    server {
        listen 127.0.0.1:@PORT@ ssl;
@PLAIN@
        server_name _;
        ssl_certificate "@CERT@";
        ssl_certificate_key "@KEY@";
        ssl_protocols TLSv1.2 TLSv1.3;
        root "@DOCROOT@";
        client_max_body_size 0;
        add_header X-Real-Server "@NAME@" always;
        location = /healthcheck.html { }
        location = /slow { limit_rate @RATE@; }
        location = /big { }
        location /upload/ {
            alias "@TMP@/uploads/";
            dav_methods PUT;
            create_full_put_path on;
        }
        location = /redirect {
            return 302 https://@INTERNAL@:$server_port/meet/moved;
        }
        location / {
            default_type text/plain;
            return 200 "@NAME@ $host $request_uri\n";
        }
    }
}
"""


@attrs.define
class RealNginx:
    """
    An nginx real server named C{name} on 127.0.0.1:C{port} (TLS with the
    internal certificate) and, if asked, C{plain_port} (HTTP). Every
    response carries C{X-Real-Server: name}. Routes:

     - C{/healthcheck.html}: 200 (a static file).
     - C{/slow}: L{SLOW_BYTES} sent at L{SLOW_RATE} bytes/s.
     - C{/big}: L{BIG_BYTES} of zeros (a sparse file).
     - C{PUT /upload/NAME}: stored in C{uploads/NAME} (WebDAV, any size), 201.
     - C{/redirect}: 302 to C{https://INTERNAL_NAME:PORT/meet/moved}.
     - anything else: 200 C{"NAME HOST REQUEST_URI\\n"}.

    The access log is one JSON object per request (L{access}).
    """

    name: str
    port: int
    plain_port: int | None
    directory: str
    _testcase: unittest.TestCase = attrs.field(repr=False)
    _argv: list[str] = attrs.field(repr=False)
    _child: _Child | None = attrs.field(default=None, repr=False)
    _transport: Any = attrs.field(default=None, repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    @property
    def access_log_path(self) -> str:
        return os.path.join(self.directory, "access.log")

    @property
    def uploads(self) -> str:
        return os.path.join(self.directory, "uploads")

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    def access(self) -> list[dict[str, Any]]:
        """Every access-log record so far (numbers as ints)."""
        try:
            with open(self.access_log_path, encoding="utf-8") as f:
                lines = f.read().split("\n")[:-1]
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            record = json.loads(line)
            for key in ("status", "request_length", "bytes_sent"):
                record[key] = int(record[key]) if record[key].isdigit() else record[key]
            records.append(record)
        return records

    def start(self) -> defer.Deferred[None]:
        """Start (or restart) nginx on the same ports; fires once it accepts."""
        return defer.Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        if self.running:
            raise FailTest(f"nginx {self.name} is already running")
        child = _Child()
        transport = reactor.spawnProcess(child, self._argv[0], self._argv, env=_child_env(), path=self.directory)
        self._child, self._transport = child, transport
        self._testcase.addCleanup(_stop_child, child, transport, f"nginx {self.name}")
        await wait_for(
            lambda: (not child.running) or _accepts(self.address),
            timeout=STARTUP_TIMEOUT,
            description=f"nginx {self.name} to accept on port {self.port}",
        )
        if not child.running:
            with open(os.path.join(self.directory, "error.log"), errors="replace") as f:
                errors = f.read()
            raise FailTest(f"nginx {self.name} exited ({child.describe_end()}):\n{_tail(child.lines)}\n{errors}")

    def stop(self) -> defer.Deferred[None]:
        """Stop nginx (SIGTERM) and wait for it to exit: its port refuses connections after."""
        assert self._child is not None
        return defer.Deferred.fromCoroutine(_stop_child(self._child, self._transport, f"nginx {self.name}"))


def start_real_nginx(
    testcase: unittest.TestCase,
    name: str,
    pki: ReversePki,
    *,
    plain: bool = False,
    big: bool = False,
) -> defer.Deferred[RealNginx]:
    """
    Start a L{RealNginx} on free ports (a cleanup stops it). With C{big},
    its docroot gets the 1 GiB sparse C{/big}.
    """

    async def start() -> RealNginx:
        nginx = require_tool("nginx")
        directory = _new_dir(testcase)
        docroot = os.path.join(directory, "docroot")
        os.makedirs(docroot)
        os.makedirs(os.path.join(directory, "uploads"))
        with open(os.path.join(docroot, "healthcheck.html"), "w") as f:
            f.write("OK\n")
        with open(os.path.join(docroot, "slow"), "wb") as f:
            f.write(b"s" * SLOW_BYTES)
        if big:
            with open(os.path.join(docroot, "big"), "wb") as f:
                f.truncate(BIG_BYTES)
        conf_path = os.path.join(directory, "nginx.conf")
        error_log = os.path.join(directory, "error.log")
        for _attempt in range(3):
            port = _free_port()
            plain_port = _free_port() if plain else None
            text = _REAL_NGINX_CONF
            for token, value in {
                "@TMP@": directory, "@NAME@": name, "@PORT@": str(port), "@CERT@": pki.real_server_cert_path,
                "@KEY@": pki.real_server_key_path, "@DOCROOT@": docroot, "@RATE@": str(SLOW_RATE),
                "@INTERNAL@": INTERNAL_NAME,
                "@PLAIN@": f"        listen 127.0.0.1:{plain_port};" if plain_port else "",
            }.items():
                text = text.replace(token, value)
            with open(conf_path, "w") as f:
                f.write(text)
            server = RealNginx(
                name, port, plain_port, directory, testcase,
                [nginx, "-p", directory + "/", "-c", conf_path, "-e", error_log],
            )
            try:
                await server.start()
                return server
            except FailTest as e:
                if "Address already in use" not in str(e):
                    raise
        raise FailTest(f"nginx {name}: no free port in 3 attempts")

    return defer.Deferred.fromCoroutine(start())


# ---------------------------------------------------------------- Python real server


@attrs.define
class ReverseBackend:
    """
    A running L{tests.e2e.reverse_backend} on 127.0.0.1:C{port} (TLS with the
    internal certificate). L{events} reads its log.
    """

    name: str
    port: int
    log_path: str
    child: _Child = attrs.field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Its log records so far, only those of C{kind} (C{"request"} ...) if given."""
        try:
            with open(self.log_path, encoding="utf-8") as f:
                lines = f.read().split("\n")[:-1]
        except FileNotFoundError:
            return []
        records = [json.loads(line) for line in lines]
        return [r for r in records if kind is None or r["event"] == kind]

    def requests(self, exclude_health: bool = True) -> list[dict[str, Any]]:
        """Its C{"request"} records, by default without the health checks."""
        return [
            r for r in self.events("request")
            if not (exclude_health and r["target"].startswith("/healthcheck.html"))
        ]


def start_reverse_backend(testcase: unittest.TestCase, name: str, pki: ReversePki) -> defer.Deferred[ReverseBackend]:
    """Start C{reverse_backend.py} on a free port with the real-server certificate; a cleanup stops it."""

    async def start() -> ReverseBackend:
        directory = _new_dir(testcase)
        log_path = os.path.join(directory, "backend.jsonl")
        argv = [
            sys.executable, BACKEND_SCRIPT, "--port", "0", "--name", name, "--log", log_path,
            "--cert", pki.real_server_cert_path, "--key", pki.real_server_key_path,
        ]
        child = _Child()
        transport = reactor.spawnProcess(child, argv[0], argv, env=_child_env(), path=directory)
        testcase.addCleanup(_stop_child, child, transport, f"backend {name}")

        def port() -> int | None:
            for line in child.lines:
                if line.startswith('{"listening"'):
                    return json.loads(line)["listening"]
            return None if child.running else -1

        found = await wait_for(port, timeout=STARTUP_TIMEOUT, description=f"backend {name} to listen")
        if found == -1:
            raise FailTest(f"backend {name} exited ({child.describe_end()}):\n{_tail(child.lines)}")
        return ReverseBackend(name, found, log_path, child)

    return defer.Deferred.fromCoroutine(start())


# ---------------------------------------------------------------- haproxy


@attrs.frozen
class Haproxy:
    """A running C{haproxy -db} whose frontend listens on 127.0.0.1:C{port}."""

    port: int
    config_path: str
    child: _Child = attrs.field(repr=False)

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def output(self) -> str:
        return _tail(self.child.lines)


def haproxy_tcp_config(nodes: Sequence[tuple[str, int]], *, send_proxy: str = "send-proxy-v2") -> str:
    """
    A C{mode tcp} haproxy config with C{balance roundrobin} over C{nodes},
    each server line with C{send_proxy}; C{{port}} marks the frontend port
    L{start_haproxy} fills in.
    """
    servers = "\n".join(
        f"    server n{i} {host}:{port} {send_proxy}" for i, (host, port) in enumerate(nodes, 1)
    )
    return (
        "global\n    maxconn 512\n"
        "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n"
        "frontend public\n    bind 127.0.0.1:{port}\n    default_backend nodes\n"
        f"backend nodes\n    balance roundrobin\n{servers}\n"
    )


def start_haproxy(testcase: unittest.TestCase, config_text: str) -> defer.Deferred[Haproxy]:
    """
    Start C{haproxy -f CFG -db} with C{config_text}, its C{{port}} replaced
    by a free port; fires once that port listens (checked with C{ss}, so the
    round robin does not spend a turn on a probe). A cleanup stops it.
    """

    async def start() -> Haproxy:
        haproxy = require_tool("haproxy")
        directory = _new_dir(testcase)
        config_path = os.path.join(directory, "haproxy.cfg")
        for _attempt in range(3):
            port = _free_port()
            with open(config_path, "w") as f:
                f.write(config_text.replace("{port}", str(port)))
            child = _Child()
            argv = [haproxy, "-f", config_path, "-db"]
            transport = reactor.spawnProcess(child, haproxy, argv, env=_child_env(), path=directory)
            testcase.addCleanup(_stop_child, child, transport, "haproxy")
            await wait_for(
                lambda: (not child.running) or _listening(port),
                timeout=STARTUP_TIMEOUT, description=f"haproxy to listen on {port}",
            )
            if child.running:
                return Haproxy(port, config_path, child)
            if "Address already in use" not in "\n".join(child.lines):
                break
        raise FailTest(f"haproxy exited ({child.describe_end()}):\n{_tail(child.lines)}")

    return defer.Deferred.fromCoroutine(start())


# ---------------------------------------------------------------- curl


@attrs.frozen
class ReverseResult:
    """
    One curl transfer: exit code (0 = complete), the last response's status
    (0 when none arrived), its headers (lower-case name -> values), the body,
    curl's stderr.
    """

    exit_code: int
    status: int
    headers: dict[str, list[str]]
    body: bytes
    stderr: str
    size_download: int = 0
    size_upload: int = 0

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    def describe(self) -> str:
        return f"exit {self.exit_code}, status {self.status}, headers {self.headers}, body {self.body[:300]!r}, stderr {self.stderr[-500:]!r}"


def _parse_dumped_headers(path: str) -> dict[str, list[str]]:
    try:
        with open(path, "rb") as f:
            text = f.read().decode("latin-1")
    except FileNotFoundError:
        return {}
    blocks = [b for b in re.split(r"\r?\n\r?\n", text) if b.strip()]
    headers: dict[str, list[str]] = {}
    if blocks:
        for line in blocks[-1].splitlines()[1:]:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    return headers


def https_fetch(
    testcase: unittest.TestCase,
    address: tuple[str, int],
    host: str,
    path: str = "/",
    *,
    cafile: str | None,
    interface: str | None = None,
    cookie_jar: str | None = None,
    extra: Sequence[str] = (),
    timeout: float = 30.0,
    scheme: str = "https",
    output: str | None = None,
) -> defer.Deferred[ReverseResult]:
    """
    curl C{scheme://host:PORT/path} with C{--resolve host:PORT:ADDRESS}, so
    the request carries C{host} (and SNI) but goes to C{address}; trusting
    C{cafile}; from source address C{interface} if given; reading and
    writing C{cookie_jar} if given. C{extra} goes before the URL
    (C{--path-as-is}, C{-u}, C{-T}, C{--haproxy-protocol} ...). The body
    goes to C{output} if given (C{os.devnull} for a big one; C{body} is
    then empty), else it is read into L{ReverseResult.body}.
    """
    ip, port = address
    base = os.path.abspath(testcase.mktemp())  # type: ignore[attr-defined]
    body_path, header_path = output or base + ".body", base + ".headers"
    args = [
        "--silent", "--show-error", "--output", body_path, "--dump-header", header_path,
        "--write-out", "%{http_code} %{size_download} %{size_upload}", "--resolve", f"{host}:{port}:{ip}",
    ]
    if cafile is not None:
        args += ["--cacert", cafile]
    if interface is not None:
        args += ["--interface", interface]
    if cookie_jar is not None:
        args += ["--cookie", cookie_jar, "--cookie-jar", cookie_jar]

    def result(outcome: tuple[bytes, bytes, int]) -> ReverseResult:
        out, err, code = outcome
        body = b""
        if output is None:
            try:
                with open(body_path, "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                pass
        figures = [int(n) if n.isdigit() else 0 for n in out.split()] + [0, 0, 0]
        return ReverseResult(
            code, figures[0], _parse_dumped_headers(header_path), body, err.decode("utf-8", "replace"),
            figures[1], figures[2],
        )

    return run_curl([*args, *extra, f"{scheme}://{host}:{port}{path}"], timeout).addCallback(result)


# ---------------------------------------------------------------- raw TLS clients


def tls_connect(address: tuple[str, int], server_name: str, cafile: str, timeout: float) -> ssl.SSLSocket:
    """Blocking: a TLS client socket to C{address}, SNI and name check C{server_name}, trusting C{cafile}."""
    context = ssl.create_default_context(cafile=cafile)
    sock = socket.create_connection(address, timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=server_name)
    except BaseException:
        sock.close()
        raise


def _tls_exchange_raw(
    address: tuple[str, int], data: bytes, server_name: str, cafile: str, read_timeout: float, max_bytes: int
) -> RawReply:
    with tls_connect(address, server_name, cafile, read_timeout) as sock:
        return send_and_read(sock, data, read_timeout, max_bytes)


def tls_exchange_raw(
    address: tuple[str, int],
    data: bytes,
    *,
    server_name: str,
    cafile: str,
    read_timeout: float = 10.0,
    max_bytes: int = 1 << 20,
) -> defer.Deferred[RawReply]:
    """
    In a thread: TLS to C{address} (SNI and name check C{server_name},
    trusting C{cafile}), send C{data} exactly as given, read until the peer
    closes, C{read_timeout} passes or C{max_bytes} arrive. For bytes curl
    would never send (smuggling vectors).
    """
    return threads.deferToThread(_tls_exchange_raw, address, data, server_name, cafile, read_timeout, max_bytes)


@attrs.frozen
class WebSocketEcho:
    """
    A WebSocket round trip: the handshake's status line and headers, whether
    C{Sec-WebSocket-Accept} was right, and the payload of the frame that came back.
    """

    status_line: str
    headers: dict[str, str]
    accept_ok: bool
    opcode: int | None
    echoed: bytes | None


def _recv_exact(sock: ssl.SSLSocket, n: int, buffered: bytearray) -> bytes:
    while len(buffered) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {len(buffered)} of {n} bytes")
        buffered += chunk
    out = bytes(buffered[:n])
    del buffered[:n]
    return out


def _websocket_echo(address: tuple[str, int], host: str, cafile: str, message: bytes, path: str, timeout: float) -> WebSocketEcho:
    key = base64.b64encode(os.urandom(16)).decode()
    expected = base64.b64encode(hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85").digest()).decode()
    with tls_connect(address, host, cafile, timeout) as sock:
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: txgate-e2e-ws\r\n\r\n"
            ).encode()
        )
        head, rest = read_http_head(sock)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        accept_ok = headers.get("sec-websocket-accept") == expected
        if not lines[0].startswith("HTTP/1.1 101"):
            return WebSocketEcho(lines[0], headers, accept_ok, None, None)
        mask = os.urandom(4)
        masked = bytes(c ^ mask[i % 4] for i, c in enumerate(message))
        assert len(message) < 126
        sock.sendall(bytes([0x81, 0x80 | len(message)]) + mask + masked)
        buffered = bytearray(rest)
        b0, b1 = _recv_exact(sock, 2, buffered)
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack(">H", _recv_exact(sock, 2, buffered))[0]
        elif length == 127:
            length = struct.unpack(">Q", _recv_exact(sock, 8, buffered))[0]
        payload = _recv_exact(sock, length, buffered)
        close_mask = os.urandom(4)
        sock.sendall(bytes([0x88, 0x80]) + close_mask)  # an empty close frame
        return WebSocketEcho(lines[0], headers, accept_ok, b0 & 0x0F, payload)


def websocket_echo(
    address: tuple[str, int], host: str, cafile: str, message: bytes = b"hello through txgate",
    *, path: str = "/ws", timeout: float = 10.0,
) -> defer.Deferred[WebSocketEcho]:
    """In a thread: a WebSocket handshake over TLS to C{address} as C{host}, one masked text frame, its echo."""
    return threads.deferToThread(_websocket_echo, address, host, cafile, message, path, timeout)


# ---------------------------------------------------------------- ESP logs


def esp_lines(proc: TxgateProcess, log: str) -> list[str]:
    """
    The complete lines so far of one of txgate reverse's ESP logs: C{log} is
    its C{[logs]} key (C{"security_log"}, C{"user_log"}, C{"connection_log"}).
    """
    try:
        with open(proc.esp_logs[log], encoding="utf-8") as f:
            return f.read().split("\n")[:-1]
    except FileNotFoundError:
        return []


def wait_for_esp_line(
    proc: TxgateProcess, log: str, predicate: Callable[[str], bool], timeout: float = 10.0, description: str = ""
) -> defer.Deferred[str]:
    """Fire with the first line of C{log} matching C{predicate}; fail with the log's content on timeout."""

    def find() -> str | None:
        return next((line for line in esp_lines(proc, log) if predicate(line)), None)

    def explain(f: Any) -> Any:
        f.trap(AssertionError)
        raise FailTest(f"{f.value}\n{log}:\n" + "\n".join(esp_lines(proc, log)[-40:]))

    return wait_for(find, timeout, description=description or f"a line in {log}").addErrback(explain)


_QUOTED = r'"(?:[^"\\]|\\.)*"'
_USER_LINE = re.compile(
    r'^(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (?P<vs>Q) \((?P<rs>Q)\) '
    r'User (?P<user>-|Q) requested (?P<method>Q) (?P<uri>Q) (?P<agent>-|Q)$'.replace("Q", _QUOTED)
)


def _unquote(value: str) -> str | None:
    if value == "-":
        return None
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def parse_user_line(line: str) -> dict[str, str | None] | None:
    """
    A user-log line's fields (time, vs, rs, user, method, uri, agent;
    unquoted, C{None} for a C{-}), or C{None} if it is not one.
    """
    match = _USER_LINE.match(line)
    if match is None:
        return None
    fields = {k: _unquote(v) for k, v in match.groupdict().items()}
    fields["time"] = match["time"]
    return fields
