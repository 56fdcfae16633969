"""
Reverse mode end to end (issue 6, "Proof"): C{twistd txgate reverse} in
front of real nginx and Python real servers under an internal CA, driven by
curl with C{--resolve} for the public names, by raw TLS clients for what
curl never sends, and behind a real haproxy.

The peers come from L{tests.e2e.reverse_peers}; L{FixtureTests} checks them
without txgate, so a failure elsewhere is txgate's.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any, Sequence

from twisted.internet import defer, reactor, task, threads
from twisted.logger import Logger
from twisted.trial.unittest import FailTest, TestCase

from tests.e2e.harness import LOOPBACK, TxgateProcess, rss_peak_kb, start_txgate, wait_for
from tests.e2e.reverse_peers import (
    ALLOWED_HOSTS,
    BIG_BYTES,
    CLIENT_IP,
    INTERNAL_NAME,
    RealNginx,
    ReverseBackend,
    ReversePki,
    ReverseResult,
    esp_lines,
    haproxy_tcp_config,
    https_fetch,
    make_reverse_pki,
    parse_user_line,
    start_haproxy,
    start_real_nginx,
    start_reverse_backend,
    tls_connect,
    tls_exchange_raw,
    wait_for_esp_line,
    websocket_echo,
)
from tests.e2e.tls_origins import free_port

WEB = "lyncweb.example.test"
MEET = "meet.example.test"
LISTEN = "tcp:0:interface=127.0.0.1"
LYNC_PATHS = ("/", "/meet/*", "/dialin/*", "/healthcheck.html", "/redirect", "/slow", "/upload/*", "/big")
COOKIE_PERSISTENCE = '{ mode = "active-cookie", cookie = "MS-WSMAN" }'
FAST_HEALTH = "{ interval = 0.5, rise = 2, fall = 2, timeout = 0.5 }"  # timeout <= interval, the config insists
# For the test that moves a GiB each way: the real nginx runs one worker,
# which on a loaded two-core machine can leave health checks unanswered for
# seconds while it streams or stores the file, taking the only real server
# Down under the transfer; that test is about the transfer.
NO_HEALTH = "{ enabled = false }"
RSS_LIMIT_KB = 150 * 1024

_log = Logger()


# ---------------------------------------------------------------- configs


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def virtual_service(
    name: str,
    pki: ReversePki,
    servers: Sequence[tuple[str, int]],
    *,
    listen: str = LISTEN,
    allowed_paths: Sequence[str] = ("/*",),
    scheduling: str = "least-connection",
    persistence: str = COOKIE_PERSISTENCE,
    health_check: str = FAST_HEALTH,
    extra: str = "",
    tls: bool = True,
    real_tls: bool = True,
) -> str:
    """
    One C{[[virtual_service]]} (HTTPS with the public certificate, or plain
    HTTP without C{tls}) with real servers at C{servers}: TLS under the
    internal CA with C{server_name} checked, or plain without C{real_tls}.
    """
    certificates = f'certificates = ["{pki.public_pem_path}"]\n' if tls else ""
    text = (
        f"\n[[virtual_service]]\n"
        f'name = "{name}"\n'
        f'listen = "{listen}"\n'
        f"{certificates}"
        f"allowed_hosts = {_toml_list(ALLOWED_HOSTS)}\n"
        f"allowed_paths = {_toml_list(allowed_paths)}\n"
        f'scheduling = "{scheduling}"\n'
        f"persistence = {persistence}\n"
        f"health_check = {health_check}\n"
        f"{extra}"
    )
    for host, port in servers:
        text += f'\n[[virtual_service.real_server]]\naddress = "{host}:{port}"\n'
        if real_tls:
            text += f'tls = true\nca_bundle = "{pki.internal_ca_path}"\nserver_name = "{INTERNAL_NAME}"\n'
        else:
            text += "tls = false\n"
    return text


def reverse_config(*services: str, state_dir: str = "var") -> str:
    """A whole reverse config: C{state_dir}, the three ESP logs under C{var/log}, then C{services}."""
    return (
        f'[txgate]\nstate_dir = "{state_dir}"\n\n'
        "[logs]\n"
        'connection_log = "var/log/esp-connection.log"\n'
        'security_log = "var/log/esp-security.log"\n'
        'user_log = "var/log/esp-user.log"\n' + "".join(services)
    )


def _pki(testcase: TestCase) -> ReversePki:
    directory = os.path.abspath(testcase.mktemp())
    os.makedirs(directory)
    return make_reverse_pki(directory)


def start_reverse(testcase: TestCase, config: str) -> defer.Deferred[TxgateProcess]:
    return start_txgate(testcase, config, mode="reverse")


async def until_serving(
    testcase: TestCase, proc: TxgateProcess, service: str, pki: ReversePki, path: str = "/healthcheck.html",
    timeout: float = 15.0, **kwargs: Any,
) -> ReverseResult:
    """Request C{path} until a real server answers 200 (health checks may start them Down)."""
    deadline = reactor.seconds() + timeout
    while True:
        result = await https_fetch(testcase, proc.addresses[service], WEB, path, cafile=pki.public_ca_path, **kwargs)
        if result.status == 200:
            return result
        if reactor.seconds() > deadline:
            raise FailTest(f"{service} never answered 200 for {path}: {result.describe()}\n{proc.output()}")
        await task.deferLater(reactor, 0.25, lambda: None)


def _client_ips(lines: Sequence[str]) -> list[str]:
    return [m.group(1) for m in (re.search(r' client "([^"]+):\d+"', line) for line in lines) if m]


# ---------------------------------------------------------------- fixtures


class FixtureTests(TestCase):
    """
    The peers behave as the tests assume, without txgate in the way.
    """

    timeout = 60

    async def test_real_nginx(self) -> None:
        """
        nginx answers each route with its X-Real-Server name, logs the
        request as JSON, stores a PUT, and comes back on the same port after
        a stop.
        """
        pki = _pki(self)
        rs = await start_real_nginx(self, "rs1", pki)
        ca = pki.internal_ca_path
        echo = await https_fetch(self, rs.address, INTERNAL_NAME, "/meet/x?y=1", cafile=ca,
                                 extra=["-H", "X-Forwarded-For: 192.0.2.1", "-H", "Cookie: MS-WSMAN=t"])
        redirect = await https_fetch(self, rs.address, INTERNAL_NAME, "/redirect", cafile=ca)
        upload = await https_fetch(self, rs.address, INTERNAL_NAME, "/upload/a", cafile=ca, extra=["-T", ca])

        self.assertEqual((echo.status, echo.header("x-real-server"), echo.body),
                         (200, "rs1", b"rs1 fe.internal.test /meet/x?y=1\n"), echo.describe())
        self.assertEqual(redirect.header("location"), f"https://{INTERNAL_NAME}:{rs.port}/meet/moved")
        self.assertEqual(upload.status, 201, upload.describe())
        with open(ca, "rb") as f, open(os.path.join(rs.uploads, "a"), "rb") as g:
            self.assertEqual(f.read(), g.read())
        first = rs.access()[0]
        self.assertEqual((first["host"], first["request_uri"], first["xff"], first["cookie"]),
                         (INTERNAL_NAME, "/meet/x?y=1", "192.0.2.1", "MS-WSMAN=t"))

        await rs.stop()
        down = await https_fetch(self, rs.address, INTERNAL_NAME, "/", cafile=ca)
        await rs.start()
        up = await https_fetch(self, rs.address, INTERNAL_NAME, "/", cafile=ca)
        self.assertEqual((down.exit_code, up.status), (7, 200), (down.describe(), up.describe()))

    async def test_backend(self) -> None:
        """
        reverse_backend.py completes curl's NTLM exchange on one connection,
        refuses a type-3 message on another, echoes a WebSocket frame, and
        logs a smuggling vector it was sent directly (so its log would show
        one that got through txgate).
        """
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        ca = pki.internal_ca_path
        ntlm = await https_fetch(self, be.address, INTERNAL_NAME, "/ntlm", cafile=ca,
                                 extra=["--ntlm", "-u", "CORP\\bob:pw"])
        type3 = next(r for r in be.requests() if r["headers"] and "TlRMTVNTUAAD" in str(r["headers"]))
        authorization = next(v for n, v in type3["headers"] if n == "Authorization")
        elsewhere = await https_fetch(self, be.address, INTERNAL_NAME, "/ntlm", cafile=ca,
                                      extra=["-H", f"Authorization: {authorization}"])
        ws = await websocket_echo(be.address, INTERNAL_NAME, ca, b"fixture")
        smuggled = await tls_exchange_raw(
            be.address,
            b"POST /echo?vector=fixture HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            server_name=INTERNAL_NAME, cafile=ca, read_timeout=2,
        )

        self.assertEqual((ntlm.status, json.loads(ntlm.body)["user"]), (200, "bob"), ntlm.describe())
        self.assertEqual((elsewhere.status, elsewhere.body), (401, b"not the connection that started the handshake\n"))
        self.assertEqual((ws.accept_ok, ws.opcode, ws.echoed), (True, 1, b"fixture"), ws)
        self.assertEqual(smuggled.status, 200)
        self.assertIn("/echo?vector=fixture", [r["target"] for r in be.requests()])

    async def test_haproxy(self) -> None:
        """haproxy (mode tcp, round robin) alternates between two nginx."""
        pki = _pki(self)
        a = await start_real_nginx(self, "rs1", pki)
        b = await start_real_nginx(self, "rs2", pki)
        lb = await start_haproxy(self, haproxy_tcp_config([a.address, b.address], send_proxy=""))
        seen = []
        for _ in range(4):
            result = await https_fetch(self, lb.address, INTERNAL_NAME, "/", cafile=pki.internal_ca_path)
            seen.append(result.header("x-real-server"))
        self.assertEqual(sorted(seen), ["rs1", "rs1", "rs2", "rs2"])


# ---------------------------------------------------------------- 1. hosts, paths, headers, logs


TRAVERSALS = (
    "/%2e%2e/",
    "/%2e%2e/admin",
    "/meet/../admin",
    "/meet/%2e%2e/admin",
    "//admin",
    "/meet/..\\admin",
    "/meet\\..\\admin",
    "/meet/..%2fadmin",
    "/meet/..%2Fadmin",
    "/meet/..%5cadmin",
    "/meet;/../admin",
    "/meet/%c0%ae%c0%ae/admin",
    "/meet/%00/../../admin",
)
"""Paths that try to leave /meet/* for /admin; every one must be refused (400) or denied (403)."""


class RoutingTests(TestCase):
    """
    Two TLS nginx real servers behind one virtual service: what reaches them
    and what is refused, and what the ESP logs say.
    """

    timeout = 90

    async def _setup(self) -> tuple[ReversePki, TxgateProcess, RealNginx, RealNginx]:
        pki = _pki(self)
        rs1 = await start_real_nginx(self, "rs1", pki)
        rs2 = await start_real_nginx(self, "rs2", pki)
        proc = await start_reverse(
            self, reverse_config(virtual_service("web", pki, [rs1.address, rs2.address], allowed_paths=LYNC_PATHS))
        )
        await until_serving(self, proc, "web", pki)
        return pki, proc, rs1, rs2

    def _fetch(self, proc: TxgateProcess, pki: ReversePki, host: str, path: str, **kwargs: Any) -> defer.Deferred[ReverseResult]:
        return https_fetch(self, proc.addresses["web"], host, path, cafile=pki.public_ca_path, interface=CLIENT_IP, **kwargs)

    async def test_allowed_hosts_reach_a_real_server(self) -> None:
        """
        Each allowed host reaches a real server with its Host intact and
        X-Forwarded-For, X-Forwarded-Proto and Forwarded naming the client;
        a Location naming the real server comes back as the public URL.
        """
        pki, proc, rs1, rs2 = await self._setup()
        port = proc.addresses["web"][1]
        results = {host: await self._fetch(proc, pki, host, f"/meet/x?h={host}") for host in ALLOWED_HOSTS}
        redirect = await self._fetch(proc, pki, MEET, "/redirect")

        for host, result in results.items():
            self.assertEqual(result.status, 200, f"{host}: {result.describe()}")
            served = result.header("x-real-server")
            self.assertIn(served, ("rs1", "rs2"), result.describe())
            self.assertEqual(result.body.decode(), f"{served} {host} /meet/x?h={host}\n")
        records = {r["request_uri"]: r for r in rs1.access() + rs2.access() if r["request_uri"].startswith("/meet/x")}
        for host in ALLOWED_HOSTS:
            record = records[f"/meet/x?h={host}"]
            self.assertEqual(record["http_host"].lower(), f"{host}:{port}", record)
            self.assertEqual(record["xff"].split(",")[-1].strip(), CLIENT_IP, record)
            self.assertEqual(record["xfp"], "https", record)
            self.assertIn(f"for={CLIENT_IP}", record["forwarded"].replace('"', ""), record)
            self.assertIn("proto=https", record["forwarded"], record)
        self.assertEqual(redirect.status, 302, redirect.describe())
        self.assertEqual(redirect.header("location"), f"https://{MEET}:{port}/meet/moved")

    async def test_disallowed_host_and_path(self) -> None:
        """
        A Host not in allowed_hosts (with the SNI of an allowed one) and a
        path not in allowed_paths get 403 with a small body and a
        security-log line each; neither reaches a real server.
        """
        pki, proc, rs1, rs2 = await self._setup()
        host = await self._fetch(proc, pki, MEET, "/meet/x", extra=["-H", "Host: evil.example.test"])
        path = await self._fetch(proc, pki, MEET, "/admin/")

        self.assertEqual(host.status, 403, host.describe())
        self.assertLess(len(host.body), 512)
        self.assertEqual(path.status, 403, path.describe())
        self.assertLess(len(path.body), 512)
        line = await wait_for_esp_line(proc, "security_log", lambda l: 'denied host "evil.example.test"' in l)
        self.assertIn(f'client "{CLIENT_IP}:', line)
        line = await wait_for_esp_line(proc, "security_log", lambda l: 'denied path "/admin/"' in l)
        self.assertIn(f'client "{CLIENT_IP}:', line)
        reached = [r for r in rs1.access() + rs2.access() if "evil" in r["http_host"] or "admin" in r["request_uri"]]
        self.assertEqual(reached, [])

    async def test_traversal_never_escapes(self) -> None:
        """
        Each path of L{TRAVERSALS} is refused (400) or denied (403) with a
        security-log line, and the real servers never see C{admin}.
        """
        pki, proc, rs1, rs2 = await self._setup()
        before = len(esp_lines(proc, "security_log"))
        results = await defer.gatherResults(
            [self._fetch(proc, pki, MEET, path, extra=["--path-as-is"]) for path in TRAVERSALS]
        )
        wrong = [(path, r.status) for path, r in zip(TRAVERSALS, results) if r.status not in (400, 403)]
        self.assertEqual(wrong, [], "traversal paths not refused")
        await wait_for(lambda: len(esp_lines(proc, "security_log")) - before >= len(TRAVERSALS), timeout=5,
                       description="a security-log line per traversal")
        leaked = [r["request_uri"] for r in rs1.access() + rs2.access() if "admin" in (r["request_uri"] + r["uri"])]
        self.assertEqual(leaked, [])

    async def test_logs(self) -> None:
        """
        The user log names the Basic user (and C{-} without one) in the
        documented format; the connection log shows the client opening and
        closing its connection with byte counts.
        """
        pki, proc, rs1, rs2 = await self._setup()
        port = proc.addresses["web"][1]
        alice = await self._fetch(proc, pki, MEET, "/meet/alice", extra=["-u", "alice:pw"])
        anonymous = await self._fetch(proc, pki, MEET, "/meet/anonymous")
        self.assertEqual((alice.status, anonymous.status), (200, 200))

        line = await wait_for_esp_line(proc, "user_log", lambda l: '"/meet/alice"' in l)
        fields = parse_user_line(line)
        self.assertIsNotNone(fields, f"not in the documented format: {line!r}")
        rs = rs1 if alice.header("x-real-server") == "rs1" else rs2
        self.assertEqual(
            (fields["vs"], fields["rs"], fields["user"], fields["method"], fields["uri"]),
            (f"127.0.0.1:{port}", f"127.0.0.1:{rs.port}", "alice", "GET", "/meet/alice"),
            line,
        )
        self.assertTrue(fields["agent"].startswith("curl/"), line)
        line = await wait_for_esp_line(proc, "user_log", lambda l: '"/meet/anonymous"' in l)
        self.assertRegex(line, r' User - requested "GET" "/meet/anonymous" ')

        closed = await wait_for_esp_line(proc, "connection_log", lambda l: f'client "{CLIENT_IP}:' in l and " closed after " in l)
        self.assertRegex(closed, r'closed after \d+\.\d{3} s, \d+ bytes in, \d+ bytes out$')
        opened = [l for l in esp_lines(proc, "connection_log") if l.endswith(" opened")]
        self.assertEqual(set(_client_ips(opened)) - {"127.0.0.1"}, {CLIENT_IP}, opened)


class HeaderTests(TestCase):
    """
    The request as the real server receives it (reverse_backend.py's
    C{/echo} returns its head): forwarding headers appended, hop-by-hop
    headers removed, framing kept straight over keep-alive.
    """

    timeout = 60

    async def test_forwarded_headers(self) -> None:
        """
        Host is kept; X-Forwarded-For and Forwarded get the client appended
        to what it sent; X-Forwarded-Proto is set (the client's is not
        believed); Connection, the headers it names, Keep-Alive,
        Proxy-Connection and TE are not forwarded.
        """
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        proc = await start_reverse(self, reverse_config(virtual_service("web", pki, [be.address])))
        await until_serving(self, proc, "web", pki)
        port = proc.addresses["web"][1]
        result = await https_fetch(self, proc.addresses["web"], MEET, "/echo?h=1", cafile=pki.public_ca_path,
                                   interface=CLIENT_IP, extra=[
                                       "-H", "X-Forwarded-For: 192.0.2.1",
                                       "-H", "X-Forwarded-Proto: http",
                                       "-H", "Forwarded: for=192.0.2.1",
                                       "-H", "Connection: X-Secret, keep-alive",
                                       "-H", "X-Secret: 1",
                                       "-H", "Keep-Alive: timeout=5",
                                       "-H", "Proxy-Connection: keep-alive",
                                       "-H", "TE: trailers",
                                   ])
        self.assertEqual(result.status, 200, result.describe())
        echoed = json.loads(result.body)
        headers: dict[str, list[str]] = {}
        for name, value in echoed["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        self.assertEqual(headers["host"], [f"{MEET}:{port}"])
        xff = ", ".join(headers.get("x-forwarded-for", []))
        self.assertEqual([p.strip() for p in xff.split(",")], ["192.0.2.1", CLIENT_IP], headers)
        self.assertEqual(headers.get("x-forwarded-proto"), ["https"], headers)
        forwarded = ", ".join(headers.get("forwarded", [])).replace('"', "")
        self.assertRegex(forwarded, rf"^for=192\.0\.2\.1, *for={re.escape(CLIENT_IP)};", headers)
        self.assertIn("proto=https", forwarded)
        self.assertIn(f"host={MEET}", forwarded)
        leaked = sorted({"x-secret", "keep-alive", "proxy-connection", "te"} & headers.keys())
        self.assertEqual(leaked, [], headers)
        self.assertNotIn("x-secret", ",".join(headers.get("connection", [])).lower())

    async def test_pipelined_keep_alive(self) -> None:
        """
        Three pipelined requests on one client connection (a POST with a
        Content-Length body, a chunked POST, a GET) each reach the real
        server once, with their bodies framed right, and are answered in order.
        """
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        proc = await start_reverse(self, reverse_config(virtual_service("web", pki, [be.address])))
        await until_serving(self, proc, "web", pki)
        data = (
            f"POST /echo?n=1 HTTP/1.1\r\nHost: {WEB}\r\nContent-Length: 11\r\n\r\nGET /x HTTP"
            f"POST /echo?n=2 HTTP/1.1\r\nHost: {WEB}\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            f"GET /echo?n=3 HTTP/1.1\r\nHost: {WEB}\r\nConnection: close\r\n\r\n"
        ).encode()
        reply = await tls_exchange_raw(proc.addresses["web"], data, server_name=WEB, cafile=pki.public_ca_path)
        bodies = [json.loads(b) for b in re.findall(rb"\r\n\r\n(\{.*?\})(?=HTTP/1\.1 |$)", reply.data, re.S)]
        self.assertEqual([(b["target"], b["body_length"]) for b in bodies],
                         [("/echo?n=1", 11), ("/echo?n=2", 11), ("/echo?n=3", 0)], reply.data[:2000])
        self.assertEqual([r["target"] for r in be.requests()], ["/echo?n=1", "/echo?n=2", "/echo?n=3"])


class LimitsTests(TestCase):
    """
    What txgate answers itself: the plain-HTTP service, oversize and stalled
    heads, an unreachable real server.
    """

    timeout = 60

    async def test_plain_http_service(self) -> None:
        """
        A service without certificates (the 80 -> 8080 one) carries plain
        HTTP to a plain real server, with X-Forwarded-Proto http.
        """
        pki = _pki(self)
        rs = await start_real_nginx(self, "rs1", pki, plain=True)
        assert rs.plain_port is not None
        proc = await start_reverse(self, reverse_config(
            virtual_service("discover", pki, [(LOOPBACK, rs.plain_port)], tls=False, real_tls=False)
        ))
        self.assertEqual(proc.kinds["discover"], "reverse-http")
        result = await https_fetch(self, proc.addresses["discover"], "lyncdiscover.example.test", "/x",
                                   cafile=None, scheme="http", interface=CLIENT_IP)
        self.assertEqual((result.status, result.header("x-real-server")), (200, "rs1"), result.describe())
        # The real server's log also has txgate's health checks: take the request.
        [record] = [r for r in rs.access() if r["request_uri"] == "/x"]
        self.assertEqual((record["scheme"], record["xfp"], record["xff"]), ("http", "http", CLIENT_IP), record)

    async def test_oversize_and_stalled_heads(self) -> None:
        """
        A head over max_header_size gets 431, a head not finished within
        header_timeout gets 408 and the connection closed; neither reaches
        the real server.
        """
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        proc = await start_reverse(self, reverse_config(virtual_service(
            "web", pki, [be.address], extra="max_header_size = 8192\nheader_timeout = 1\n"
        )))
        await until_serving(self, proc, "web", pki)
        address = proc.addresses["web"]
        big = f"GET /echo?limit=big HTTP/1.1\r\nHost: {WEB}\r\nX-Big: {'b' * 10000}\r\n\r\n".encode()
        stalled = f"GET /echo?limit=stalled HTTP/1.1\r\nHost: {WEB}\r\nX-Part: ".encode()

        oversize = await tls_exchange_raw(address, big, server_name=WEB, cafile=pki.public_ca_path)
        slow = await tls_exchange_raw(address, stalled, server_name=WEB, cafile=pki.public_ca_path, read_timeout=10)

        self.assertEqual(oversize.status, 431, oversize)
        self.assertEqual((slow.status, slow.closed), (408, True), slow)
        self.assertLess(slow.elapsed, 5, slow)
        self.assertEqual([r["target"] for r in be.requests() if "limit=" in r["target"]], [])

    async def test_unreachable_real_server(self) -> None:
        """With health checks off and nothing listening at the real server's address, clients get 502."""
        pki = _pki(self)
        port = free_port()
        proc = await start_reverse(self, reverse_config(
            virtual_service("web", pki, [(LOOPBACK, port)], health_check="{ enabled = false }")
        ))
        result = await https_fetch(self, proc.addresses["web"], WEB, "/meet/x", cafile=pki.public_ca_path)
        self.assertEqual(result.status, 502, result.describe())


# ---------------------------------------------------------------- 2. balancing, persistence, health


class BalancingTests(TestCase):
    """
    Scheduling, persistence and health checks with two nginx real servers.
    """

    timeout = 90

    async def _servers(self, pki: ReversePki) -> tuple[RealNginx, RealNginx]:
        return await start_real_nginx(self, "rs1", pki), await start_real_nginx(self, "rs2", pki)

    async def test_least_connection(self) -> None:
        """Four concurrent slow downloads land two on each real server."""
        pki = _pki(self)
        rs1, rs2 = await self._servers(pki)
        proc = await start_reverse(self, reverse_config(
            virtual_service("web", pki, [rs1.address, rs2.address], persistence='{ mode = "none" }', allowed_paths=LYNC_PATHS)
        ))
        await until_serving(self, proc, "web", pki)
        results = await defer.gatherResults([
            https_fetch(self, proc.addresses["web"], WEB, "/slow", cafile=pki.public_ca_path) for _ in range(4)
        ])
        served = sorted(r.header("x-real-server") or f"status {r.status}" for r in results)
        self.assertEqual(served, ["rs1", "rs1", "rs2", "rs2"], [r.describe()[:300] for r in results])

    async def test_cookie_persistence(self) -> None:
        """
        The first response sets C{MS-WSMAN} (no expiry, not HttpOnly); ten
        more requests with the cookie jar reach the same real server and get
        no new cookie.
        """
        pki = _pki(self)
        rs1, rs2 = await self._servers(pki)
        proc = await start_reverse(self, reverse_config(virtual_service("web", pki, [rs1.address, rs2.address])))
        await until_serving(self, proc, "web", pki)
        jar = os.path.abspath(self.mktemp())
        first = await https_fetch(self, proc.addresses["web"], WEB, "/meet/1", cafile=pki.public_ca_path, cookie_jar=jar)
        cookie = first.header("set-cookie") or ""
        self.assertTrue(cookie.startswith("MS-WSMAN="), first.describe())
        attributes = [a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]]
        self.assertEqual([a for a in attributes if a in ("expires", "max-age", "httponly")], [], cookie)
        rest = [
            await https_fetch(self, proc.addresses["web"], WEB, f"/meet/{i}", cafile=pki.public_ca_path, cookie_jar=jar)
            for i in range(2, 12)
        ]
        self.assertEqual({r.header("x-real-server") for r in rest}, {first.header("x-real-server")})
        self.assertEqual([r.header("set-cookie") for r in rest if r.header("set-cookie")], [])
        sent = [r["cookie"] for r in rs1.access() + rs2.access() if r["request_uri"].startswith("/meet/")]
        self.assertTrue(all(c.startswith("MS-WSMAN=") for c in sent[1:]), sent)

    async def test_source_ip_persistence(self) -> None:
        """With source-ip persistence, ten requests from one client address all reach one real server."""
        pki = _pki(self)
        rs1, rs2 = await self._servers(pki)
        proc = await start_reverse(self, reverse_config(
            virtual_service("web", pki, [rs1.address, rs2.address]),
            virtual_service("web-src", pki, [rs1.address, rs2.address], persistence='{ mode = "source-ip", timeout = 1200 }'),
        ))
        await until_serving(self, proc, "web-src", pki)
        for client in (CLIENT_IP, "127.0.0.6"):
            served = [
                (await https_fetch(self, proc.addresses["web-src"], WEB, "/meet/s", cafile=pki.public_ca_path,
                                   interface=client)).header("x-real-server")
                for _ in range(10)
            ]
            self.assertEqual(len(set(served)), 1, f"{client}: {served}")
            self.assertIn(served[0], ("rs1", "rs2"))

    async def test_health_down_and_up(self) -> None:
        """
        Stopping one nginx marks it Down after C{fall} checks: its cookie and
        source-IP clients move to the other server while the other's clients
        stay; restarting it brings it Up after C{rise}; with both down,
        clients get 503.
        """
        pki = _pki(self)
        rs1, rs2 = await self._servers(pki)
        servers = [rs1.address, rs2.address]
        proc = await start_reverse(self, reverse_config(
            virtual_service("web", pki, servers, scheduling="round-robin"),
            virtual_service("web-src", pki, servers, persistence='{ mode = "source-ip", timeout = 1200 }'),
        ))
        await until_serving(self, proc, "web", pki)
        await until_serving(self, proc, "web-src", pki)
        by_name = {"rs1": rs1, "rs2": rs2}

        async def cookie_client(jar: str) -> str | None:
            r = await https_fetch(self, proc.addresses["web"], WEB, "/meet/c", cafile=pki.public_ca_path, cookie_jar=jar)
            return r.header("x-real-server") if r.status == 200 else f"status {r.status}"

        async def ip_client(ip: str) -> str | None:
            r = await https_fetch(self, proc.addresses["web-src"], WEB, "/meet/i", cafile=pki.public_ca_path, interface=ip)
            return r.header("x-real-server") if r.status == 200 else f"status {r.status}"

        jars = [os.path.abspath(self.mktemp()) for _ in range(6)]
        ips = [f"127.0.0.{n}" for n in range(5, 17)]
        cookie_pins = {jar: await cookie_client(jar) for jar in jars}
        ip_pins = {ip: await ip_client(ip) for ip in ips}
        self.assertEqual(set(cookie_pins.values()), {"rs1", "rs2"}, cookie_pins)
        self.assertEqual(set(ip_pins.values()) - {"rs1", "rs2"}, set(), ip_pins)
        self.assertEqual({await cookie_client(jar) for jar in jars if cookie_pins[jar] == "rs1"}, {"rs1"})

        victim = "rs1" if list(ip_pins.values()).count("rs1") else "rs2"
        other = "rs2" if victim == "rs1" else "rs1"
        down_line = f"real server 127.0.0.1:{by_name[victim].port} of web is Down"
        await by_name[victim].stop()
        await wait_for(lambda: any(down_line in l for l in proc.log_lines), timeout=10,
                       description=f"'{down_line}' in txgate's log")
        await wait_for(lambda: any(f"real server 127.0.0.1:{by_name[victim].port} of web-src is Down" in l
                                   for l in proc.log_lines), timeout=10, description="web-src Down")
        after_cookie = {jar: await cookie_client(jar) for jar in jars}
        after_ip = {ip: await ip_client(ip) for ip in ips}
        self.assertEqual(set(after_cookie.values()), {other}, after_cookie)
        self.assertEqual(set(after_ip.values()), {other}, after_ip)
        self.assertEqual({jar: after_cookie[jar] for jar in jars if cookie_pins[jar] == other},
                         {jar: other for jar in jars if cookie_pins[jar] == other})

        stopped_at = len(proc.log_lines)
        await by_name[victim].start()
        up_line = f"real server 127.0.0.1:{by_name[victim].port} of web is Up"
        await wait_for(lambda: any(up_line in l for l in proc.log_lines[stopped_at:]), timeout=10,
                       description=f"'{up_line}' in txgate's log")
        again_ip = {ip: await ip_client(ip) for ip in ips}
        stayed = {ip: again_ip[ip] for ip in ips if ip_pins[ip] == other}
        self.assertEqual(stayed, {ip: other for ip in stayed}, "the other server's clients moved when it came back")
        await wait_for(lambda: any(f"real server 127.0.0.1:{by_name[victim].port} of web-src is Up" in l
                                   for l in proc.log_lines[stopped_at:]), timeout=10, description="web-src Up")
        back = await cookie_client(os.path.abspath(self.mktemp()))
        self.assertIn(back, ("rs1", "rs2"), "a new client after the restart")

        await rs1.stop()
        await rs2.stop()
        for rs in (rs1, rs2):
            line = f"real server 127.0.0.1:{rs.port} of web is Down"
            await wait_for(lambda: any(line in l for l in proc.log_lines[stopped_at:]), timeout=10, description=line)
        none_up = await https_fetch(self, proc.addresses["web"], WEB, "/meet/c", cafile=pki.public_ca_path)
        self.assertEqual(none_up.status, 503, none_up.describe())


# ---------------------------------------------------------------- 3. long poll, big bodies, upgrade, NTLM


class LongHaulTests(TestCase):
    """
    What Lync clients do besides short GETs: a long poll, big transfers, a
    WebSocket, an NTLM handshake.
    """

    timeout = 240

    async def _backend_proxy(self) -> tuple[ReversePki, ReverseBackend, TxgateProcess]:
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        proc = await start_reverse(self, reverse_config(virtual_service("web", pki, [be.address])))
        await until_serving(self, proc, "web", pki)
        return pki, be, proc

    async def test_long_poll(self) -> None:
        """A request the real server answers after 120 s completes with 200."""
        pki, be, proc = await self._backend_proxy()
        result = await https_fetch(self, proc.addresses["web"], WEB, "/poll?seconds=120",
                                   cafile=pki.public_ca_path, timeout=180)
        self.assertEqual((result.exit_code, result.status, result.body), (0, 200, b"polled 120 s\n"), result.describe())

    test_long_poll.timeout = 200  # type: ignore[attr-defined]

    async def test_big_download_and_upload(self) -> None:
        """
        1 GiB down from nginx and 1 GiB up to it pass whole, and txgate's
        peak resident memory stays under 150 MiB (it streams, never buffers
        a body).
        """
        pki = _pki(self)
        rs = await start_real_nginx(self, "rs1", pki, big=True)
        proc = await start_reverse(self, reverse_config(
            virtual_service("web", pki, [rs.address], allowed_paths=LYNC_PATHS, health_check=NO_HEALTH)
        ))
        await until_serving(self, proc, "web", pki)
        upload = os.path.abspath(self.mktemp())
        with open(upload, "wb") as f:
            f.truncate(BIG_BYTES)

        down = await https_fetch(self, proc.addresses["web"], WEB, "/big", cafile=pki.public_ca_path,
                                 output=os.devnull, timeout=180)
        up = await https_fetch(self, proc.addresses["web"], WEB, "/upload/big", cafile=pki.public_ca_path,
                               extra=["-T", upload], timeout=180)
        peak = rss_peak_kb(proc.pid)
        _log.info("txgate reverse peak RSS after 1 GiB down and 1 GiB up: {peak} KiB", peak=peak)

        self.assertEqual((down.exit_code, down.status, down.size_download), (0, 200, BIG_BYTES), down.describe())
        self.assertIn(up.status, (201, 204), up.describe())
        self.assertEqual(up.size_upload, BIG_BYTES, up.describe())
        record = next(r for r in rs.access() if r["method"] == "PUT")
        self.assertGreaterEqual(record["request_length"], BIG_BYTES, record)
        self.assertEqual(os.path.getsize(os.path.join(rs.uploads, "big")), BIG_BYTES)
        self.assertLess(peak, RSS_LIMIT_KB, f"txgate's peak RSS {peak} KiB")

        def counted(line: str) -> tuple[int, int]:
            m = re.search(r" (\d+) bytes in, (\d+) bytes out$", line)
            return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

        # Each connection's line is written when txgate sees it closed, which
        # on a loaded machine can come after curl has exited.
        await wait_for_esp_line(proc, "connection_log", lambda l: counted(l)[1] >= BIG_BYTES, description="the download's line")
        await wait_for_esp_line(proc, "connection_log", lambda l: counted(l)[0] >= BIG_BYTES, description="the upload's line")

    test_big_download_and_upload.timeout = 400  # type: ignore[attr-defined]

    async def test_websocket(self) -> None:
        """A WebSocket handshake and a masked frame's echo pass through txgate."""
        pki, be, proc = await self._backend_proxy()
        echo = await websocket_echo(proc.addresses["web"], WEB, pki.public_ca_path, b"hello through txgate")
        self.assertTrue(echo.status_line.startswith("HTTP/1.1 101"), echo)
        self.assertTrue(echo.accept_ok, echo)
        self.assertEqual((echo.opcode, echo.echoed), (1, b"hello through txgate"))
        frames = be.events("ws-frame")
        self.assertEqual((frames[0]["opcode"], frames[0]["masked"], frames[0]["length"]), (1, True, 20))

    async def test_ntlm_stays_on_one_connection(self) -> None:
        """
        curl's NTLM exchange (three concurrent clients) succeeds, which the
        real server allows only when type-1 and type-3 came on one of its
        connections; the user log names the NTLM user.
        """
        pki, be, proc = await self._backend_proxy()
        results = await defer.gatherResults([
            https_fetch(self, proc.addresses["web"], WEB, "/ntlm", cafile=pki.public_ca_path,
                        extra=["--ntlm", "-u", f"CORP\\{user}:pw"])
            for user in ("bob", "carol", "dave")
        ])
        for user, result in zip(("bob", "carol", "dave"), results):
            self.assertEqual(result.status, 200, f"{user}: {result.describe()}")
            self.assertEqual(json.loads(result.body)["user"], user)
        self.assertEqual([e for e in be.events("ntlm-type3") if not e["same_connection"]], [])
        line = await wait_for_esp_line(proc, "user_log", lambda l: "bob" in l and '"/ntlm"' in l)
        fields = parse_user_line(line)
        self.assertIsNotNone(fields, line)
        self.assertIn(fields["user"], ("bob", "CORP\\bob"), line)


# ---------------------------------------------------------------- 4. two nodes behind haproxy


class HaproxyTests(TestCase):
    """
    Two txgate reverse nodes sharing a persistence key behind haproxy with
    PROXY v2.
    """

    timeout = 90

    async def test_two_nodes_behind_haproxy(self) -> None:
        """
        A cookie issued by node 1 routes to the same real server through
        node 2 and through haproxy (which alternates nodes); both nodes log
        the client's real address, never haproxy's.
        """
        pki = _pki(self)
        rs1 = await start_real_nginx(self, "rs1", pki)
        rs2 = await start_real_nginx(self, "rs2", pki)
        shared = os.path.abspath(self.mktemp())
        os.makedirs(shared)
        config = reverse_config(
            virtual_service("web", pki, [rs1.address, rs2.address], listen="haproxy:tcp:0:interface=127.0.0.1",
                            scheduling="round-robin"),
            state_dir=shared,
        )
        node1 = await start_reverse(self, config)
        node2 = await start_reverse(self, config)
        key = os.path.join(shared, "reverse", "persistence.key")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        lb = await start_haproxy(self, haproxy_tcp_config([node1.addresses["web"], node2.addresses["web"]]))
        proxied = ["--haproxy-protocol"]
        await until_serving(self, node1, "web", pki, extra=proxied)
        await until_serving(self, node2, "web", pki, extra=proxied)

        def fetch(address: tuple[str, int], jar: str, extra: Sequence[str] = ()) -> defer.Deferred[ReverseResult]:
            return https_fetch(self, address, WEB, "/meet/n", cafile=pki.public_ca_path, cookie_jar=jar,
                               interface=CLIENT_IP, extra=extra)

        jars = [os.path.abspath(self.mktemp()) for _ in range(4)]
        issued = {jar: await fetch(node1.addresses["web"], jar, proxied) for jar in jars}
        for jar, first in issued.items():
            self.assertTrue((first.header("set-cookie") or "").startswith("MS-WSMAN="), first.describe())
        pins = {jar: r.header("x-real-server") for jar, r in issued.items()}
        self.assertEqual(set(pins.values()), {"rs1", "rs2"}, pins)

        via_node2 = {jar: (await fetch(node2.addresses["web"], jar, proxied)).header("x-real-server") for jar in jars}
        self.assertEqual(via_node2, pins, "node 2 routed node 1's cookies differently")
        via_lb = {jar: [(await fetch(lb.address, jar)).header("x-real-server") for _ in range(4)] for jar in jars}
        self.assertEqual(via_lb, {jar: [pin] * 4 for jar, pin in pins.items()}, "through haproxy")

        counts = []
        for node in (node1, node2):
            await wait_for_esp_line(node, "user_log", lambda l: '"/meet/n"' in l)
            opened = [l for l in esp_lines(node, "connection_log") if l.endswith(" opened")]
            # until_serving's probes say 127.0.0.1 in curl's own PROXY header; haproxy's
            # address would show as 127.0.0.1 too, so every /meet/n connection must say CLIENT_IP.
            counts.append(_client_ips(opened).count(CLIENT_IP))
            users = [parse_user_line(l) for l in esp_lines(node, "user_log") if '"/meet/n"' in l]
            self.assertTrue(all(u is not None for u in users), users)
        # 4 direct to each node, then 16 through haproxy's round robin: 8 more on each.
        self.assertEqual(sum(counts), len(jars) * 6, f"client connections logged as {CLIENT_IP}: {counts}")
        self.assertTrue(all(c > len(jars) for c in counts), f"haproxy did not reach both nodes: {counts}")
        xff = {r["xff"].split(",")[-1].strip() for r in rs1.access() + rs2.access() if r["request_uri"] == "/meet/n"}
        self.assertEqual(xff, {CLIENT_IP})


# ---------------------------------------------------------------- 5. smuggling


def _vectors(host: str) -> dict[str, bytes]:
    """Name -> raw request; each smuggles C{GET /smuggled?vector=NAME} and asks for C{/echo?vector=NAME}."""

    def inner(name: str) -> bytes:
        return f"GET /smuggled?vector={name} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def head(name: str, *lines: str, method: str = "POST", eol: str = "\r\n") -> bytes:
        return (eol.join([f"{method} /echo?vector={name} HTTP/1.1", f"Host: {host}", *lines]) + eol + eol).encode()

    vectors = {
        "cl-te": head("cl-te", "Content-Length: 4", "Transfer-Encoding: chunked") + b"0\r\n\r\n" + inner("cl-te"),
        "te-cl": head("te-cl", "Transfer-Encoding: chunked", "Content-Length: 4") + b"5c\r\n" + inner("te-cl") + b"\r\n0\r\n\r\n",
        "two-cl": head("two-cl", "Content-Length: 0", "Content-Length: 45") + inner("two-cl"),
        "plus-cl": head("plus-cl", "Content-Length: +5") + b"hello" + inner("plus-cl"),
        "te-chunked-identity": head("te-chunked-identity", "Transfer-Encoding: chunked, identity")
        + b"0\r\n\r\n" + inner("te-chunked-identity"),
        "obs-fold": head("obs-fold", "X-Folded: one", " two", "Content-Length: 0") + inner("obs-fold"),
        "obs-fold-te": head("obs-fold-te", "Transfer-Encoding:", " chunked", "Content-Length: 3") + b"0\r\n\r\n" + inner("obs-fold-te"),
        "bare-lf": head("bare-lf", "Content-Length: 0", eol="\n") + inner("bare-lf"),
        "bare-cr": head("bare-cr", "X-A: a\rX-B: b", "Content-Length: 0") + inner("bare-cr"),
        "bad-chunk-size": head("bad-chunk-size", "Transfer-Encoding: chunked") + b"zz\r\nabc\r\n0\r\n\r\n" + inner("bad-chunk-size"),
    }
    return vectors


class SmugglingTests(TestCase):
    """
    Request smuggling vectors, sent raw over TLS, get 400 and never reach
    the real server (its own log is the witness).
    """

    timeout = 90

    async def test_vectors_refused_before_the_real_server(self) -> None:
        """
        A well-formed request reaches the real server; each vector gets 400,
        a security-log line, and leaves no trace in the real server's log
        (neither the outer request nor the smuggled one).
        """
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        proc = await start_reverse(self, reverse_config(virtual_service("web", pki, [be.address])))
        await until_serving(self, proc, "web", pki)
        address = proc.addresses["web"]

        def send(data: bytes) -> defer.Deferred[Any]:
            return tls_exchange_raw(address, data, server_name=WEB, cafile=pki.public_ca_path, read_timeout=5)

        control = await send(f"GET /echo?control=1 HTTP/1.1\r\nHost: {WEB}\r\nConnection: close\r\n\r\n".encode())
        self.assertEqual(control.status, 200, control)
        before = len(esp_lines(proc, "security_log"))
        vectors = _vectors(WEB)
        replies = dict(zip(vectors, await defer.gatherResults([send(data) for data in vectors.values()])))

        statuses = {name: reply.status for name, reply in replies.items()}
        self.assertEqual(statuses, {name: 400 for name in vectors}, {n: r.data[:200] for n, r in replies.items()})
        await wait_for(lambda: len(esp_lines(proc, "security_log")) - before >= len(vectors), timeout=5,
                       description="a security-log line per vector")
        refused = esp_lines(proc, "security_log")[before:]
        self.assertTrue(all(" refused request: " in line for line in refused), refused)
        reached = [r["request_line"] for r in be.requests() if "vector=" in r["request_line"]]
        self.assertEqual(reached, [], "smuggling vectors reached the real server")
        self.assertEqual(be.events("bad-framing"), [])

    async def _proxy_to_backend(self) -> tuple[ReversePki, ReverseBackend, TxgateProcess]:
        pki = _pki(self)
        be = await start_reverse_backend(self, "be1", pki)
        proc = await start_reverse(self, reverse_config(virtual_service("web", pki, [be.address])))
        await until_serving(self, proc, "web", pki)
        return pki, be, proc

    async def test_chunk_line_edge_cases(self) -> None:
        """
        Chunk-size lines ended by a bare LF, and a chunk size too large for
        64 bits, are bad framing too: 400 at once, and the request never
        reaches the real server.
        """
        pki, be, proc = await self._proxy_to_backend()
        vectors = {
            "chunk-bare-lf": f"POST /echo?vector=chunk-bare-lf HTTP/1.1\r\nHost: {WEB}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n".encode(),
            "chunk-size-overflow": f"POST /echo?vector=chunk-size-overflow HTTP/1.1\r\nHost: {WEB}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n".encode(),
        }
        replies = await defer.gatherResults([
            tls_exchange_raw(proc.addresses["web"], data, server_name=WEB, cafile=pki.public_ca_path, read_timeout=5)
            for data in vectors.values()
        ])
        statuses = {name: (r.status, r.closed) for name, r in zip(vectors, replies)}
        reached = [r["request_line"] for r in be.requests() if "vector=" in r["request_line"]]
        self.assertEqual((statuses, reached), ({name: (400, True) for name in vectors}, []))

    async def test_only_websocket_upgrades_tunnel(self) -> None:
        """
        An C{Upgrade: h2c} request must not turn the connection into an
        unchecked tunnel (h2c smuggling): even when the real server says
        101, a following request for a denied host and path never reaches it.
        """
        pki, be, proc = await self._proxy_to_backend()
        data = (
            f"GET /upgrade-any HTTP/1.1\r\nHost: {WEB}\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        ).encode()

        def exchange() -> bytes:
            with tls_connect(proc.addresses["web"], WEB, pki.public_ca_path, 5) as sock:
                sock.sendall(data)
                time.sleep(1)
                sock.sendall(b"GET /admin HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
                time.sleep(1)
                sock.settimeout(2)
                received = b""
                try:
                    while True:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        received += chunk
                except OSError:
                    pass
                return received

        await threads.deferToThread(exchange)
        tunnelled = "".join(e["data"] for e in be.events("tunnel-bytes"))
        requested = [r["request_line"] for r in be.requests()]
        self.assertNotIn("/admin", tunnelled + " ".join(requested), "a request past the checks reached the real server")
