"""
The admin console end to end (issue 7): what an administrator sees.

  - While a SIP call over TLS (sipp behind socat, CONNECT through the explicit
    service, intercepted), a slow curl download (intercepted HTTPS) and a raw
    CONNECT tunnel are live, headless Chromium loads C{/sessions}: filtered
    by C{protocol=sips} the DOM has exactly the SIP session, rendered
    C{ssl > sips}; unfiltered, all three. The JSON API agrees; screenshots
    are kept under the test's C{_trial_temp} directory.
  - C{DELETE /api/sessions/ID} ends the tunnel (its client reads EOF); the
    page's terminate button ends the download.
  - C{/metrics} parses with prometheus-client's text parser.
  - Bound to a non-loopback address, the admin needs a token file to start at
    all, and then answers 401 without C{Authorization: Bearer TOKEN}.
"""

from __future__ import annotations

import json
import os
import subprocess
import socket
import time
from typing import Any, Callable

from twisted.internet import reactor, task, threads
from twisted.logger import Logger
from twisted.trial.unittest import FailTest, TestCase

from tests.e2e.admin_peers import (
    AdminReply,
    SessionsPage,
    admin_request,
    chromium_dump_dom,
    chromium_screenshot,
    parse_metrics,
    parse_sessions_page,
    start_loopback_sips_uas,
    start_sips_uac_via_proxy,
)
from tests.e2e.harness import (
    _Child,
    _child_env,
    _new_dir,
    _stop_child,
    read_http_head,
    require_tool,
    start_nginx,
    start_txgate,
    wait_for,
    write_pattern_file,
)
from tests.e2e.netns import PROXY_CLIENT_SIDE4, make_topology, run_in
from tests.e2e.tls_origins import UNKNOWN_PAYLOAD, free_port, make_origin_pki, start_listener

log = Logger()

SESSION_KEYS = {
    "id", "client", "service", "destination", "sni", "protocol", "stack", "tunneled", "intercepted",
    "user", "bytes_in", "bytes_out", "age", "idle", "worker",
}
"""The session dict of the JSON API, exactly (the contract)."""

INTERCEPT = "<ssl-intercept>\n    ssl.forward_proxy(yes)\n"
TOKEN = "e2e-admin-token-5f1d0c7b9e"
SLOW_SIZE = 32 << 20
"""The slow download's file: at 64 KiB/s it lasts far longer than the test."""
SLOW_RATE = "64k"


def admin_config(testcase: TestCase, *, ssl: dict[str, Any] | None = None, admin: dict[str, Any] | None = None,
                 policy: str = INTERCEPT, explicit_listen: str = "tcp:0:interface=127.0.0.1") -> str:
    """
    A forward config: an C{explicit} service, C{policy} in a file of its
    own, C{[ssl]} C{ssl}, and C{[admin]} listening on a free loopback port
    unless C{admin} says otherwise.
    """
    policy_dir = _new_dir(testcase)
    policy_path = os.path.join(policy_dir, "admin.cpl")
    with open(policy_path, "w") as f:
        f.write(policy)
    admin_settings = {"listen": "tcp:0:interface=127.0.0.1", **(admin or {})}
    lines = [
        "[txgate]",
        'state_dir = "{tmp}/var"',
        'access_log = "{tmp}/access.log"',
        'access_log_format = "text"',
        f"policy = {json.dumps(policy_path)}",
        "",
        "[ssl]",
        *(f"{k} = {json.dumps(v)}" for k, v in (ssl or {}).items()),
        "",
        "[admin]",
        *(f"{k} = {json.dumps(v)}" for k, v in admin_settings.items()),
        "",
        "[[service]]",
        'name = "explicit"',
        'kind = "explicit-http"',
        f"listen = {json.dumps(explicit_listen)}",
    ]
    return "\n".join(lines) + "\n"


def issuer_path(proxy: Any) -> str:
    return os.path.join(proxy.state_dir, "ca", "issuer.pem")


async def poll_api(
    where: Any, path: str, predicate: Callable[[Any], Any], *, timeout: float = 15.0, token: str | None = None
) -> Any:
    """GET C{path} until C{predicate(json)} is true; fire with the JSON. Fails naming the last answer."""
    deadline = reactor.seconds() + timeout
    last: AdminReply | str | None = None
    while True:
        try:
            last = await admin_request(where, path, token=token)
            if last.status == 200 and predicate(last.json()):
                return last.json()
        except (OSError, ValueError) as e:
            last = repr(e)
        if reactor.seconds() >= deadline:
            shown = last.describe() if isinstance(last, AdminReply) else last
            raise FailTest(f"GET {path}: no satisfying answer within {timeout}s; last: {shown}")
        await task.deferLater(reactor, 0.2, lambda: None)


# ---------------------------------------------------------------- a raw tunnel


def _open_tunnel(proxy: tuple[str, int], target: tuple[str, int]) -> socket.socket:
    """Blocking: CONNECT through C{proxy}, send the unknown payload, read its echo; the open socket."""
    sock = socket.create_connection(proxy, timeout=15)
    try:
        authority = "%s:%d" % target
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        head, rest = read_http_head(sock)
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"CONNECT {authority} answered {head!r}")
        sock.sendall(UNKNOWN_PAYLOAD)
        echoed = bytearray(rest)
        while len(echoed) < len(UNKNOWN_PAYLOAD):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"tunnel closed after echoing {bytes(echoed)!r}")
            echoed += chunk
        if bytes(echoed) != UNKNOWN_PAYLOAD:
            raise ConnectionError(f"tunnel echoed {bytes(echoed)!r}")
        return sock
    except BaseException:
        sock.close()
        raise


def _reads_eof(sock: socket.socket, timeout: float) -> bool | str:
    """Blocking: C{True} once the peer closes (FIN or RST), else what arrived by C{timeout}."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(4096)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return "nothing (timed out)"
    return True if data == b"" else f"data {data!r}"


# ---------------------------------------------------------------- the sessions page


class SessionsPageTests(TestCase):
    """Chromium on the sessions page, with three live sessions of three protocols."""

    timeout = 180

    async def test_filter_by_sips_in_chromium(self) -> None:
        """
        With a sips call, an https download and a tcp tunnel live: Chromium's
        DOM of C{/sessions?protocol=sips} has exactly one row, the SIP
        session, rendered C{ssl > sips}; C{/sessions} has all three; the
        API agrees; DELETE ends the tunnel and the terminate button the
        download; C{/metrics} parses.
        """
        require_tool("chromium")
        pki = make_origin_pki(_new_dir(self))
        docroot = _new_dir(self)
        await threads.deferToThread(write_pattern_file, os.path.join(docroot, "slow.bin"), SLOW_SIZE)
        nginx = await start_nginx(self, pki=pki.valid, docroot=docroot)
        uas = await start_loopback_sips_uas(self, pki.valid)
        socat = require_tool("socat")
        echo_port = free_port()
        await start_listener(
            self, [socat, f"TCP-LISTEN:{echo_port},bind=127.0.0.1,reuseaddr,fork", "PIPE"], echo_port, "socat echo"
        )
        proxy = await start_txgate(
            self, admin_config(self, ssl={"upstream_ca_bundle": pki.ca_pem_path}), extra_services=("admin",)
        )
        self.assertEqual(proxy.kinds.get("admin"), "admin", proxy.output())
        admin = proxy.addresses["admin"]
        base = "http://%s:%d" % admin
        await wait_for(lambda: os.path.exists(issuer_path(proxy)), timeout=5, description="issuer.pem")

        # 1. SIP over TLS, intercepted.
        call = await start_sips_uac_via_proxy(self, proxy, uas.address, issuer_path(proxy))
        # 2. A slow download of intercepted HTTPS.
        curl = require_tool("curl")
        body_path = os.path.join(_new_dir(self), "slow.bin")
        host, port = proxy.addresses["explicit"]
        curl_child = _Child()
        curl_argv = [curl, "-q", "--silent", "--show-error", "--proxy", f"http://{host}:{port}", "--cacert",
                     issuer_path(proxy), "--limit-rate", SLOW_RATE, "--output", body_path, nginx.url("/slow.bin")]
        curl_transport = reactor.spawnProcess(curl_child, curl, curl_argv, env=_child_env())
        self.addCleanup(_stop_child, curl_child, curl_transport, "curl")
        # 3. A raw CONNECT tunnel (undetected bytes: tcp).
        tunnel = await threads.deferToThread(_open_tunnel, proxy.addresses["explicit"], ("127.0.0.1", echo_port))
        self.addCleanup(tunnel.close)

        def three_live(answer: Any) -> bool:
            return {s["protocol"] for s in answer["sessions"]} >= {"sips", "https", "tcp"}

        try:
            listing = await poll_api(admin, "/api/sessions", three_live, timeout=30)
        except FailTest as e:
            raise FailTest(f"{e}\n{call.output()}\ncurl: {curl_child.lines}\n{proxy.output()}") from None
        sessions = listing["sessions"]
        for session in sessions:
            self.assertEqual(set(session), SESSION_KEYS, session)
        self.assertEqual(len(sessions), 3, json.dumps(sessions, indent=1))
        by_protocol = {s["protocol"]: s for s in sessions}
        sip, download, raw = by_protocol["sips"], by_protocol["https"], by_protocol["tcp"]
        self.assertEqual(
            (sip["stack"], sip["intercepted"], sip["tunneled"], sip["destination"], sip["service"], sip["worker"]),
            (["ssl", "sips"], True, False, "%s:%d" % uas.address, "explicit", 0),
            sip,
        )
        self.assertEqual((download["intercepted"], download["tunneled"]), (True, False), download)
        self.assertEqual(download["destination"], nginx.authority, download)
        self.assertEqual((raw["intercepted"], raw["tunneled"], raw["destination"]),
                         (False, True, f"127.0.0.1:{echo_port}"), raw)
        self.assertTrue(all(s["client"].startswith("127.0.0.1:") for s in sessions), sessions)

        # Chromium: filtered, then not.
        dom = await chromium_dump_dom(f"{base}/sessions?protocol=sips")
        page = parse_sessions_page(dom)
        self._check_page_shape(page, dom)
        self.assertEqual(len(page.rows), 1, f"rows: {page.rows}\nDOM:\n{dom}")
        [row] = page.rows
        self.assertEqual((row.protocol, row.session), ("sips", sip["id"]), row)
        self.assertIn("ssl > sips", row.text, row)
        self.assertTrue((page.count or "").startswith("1 "), page.count)
        self.assertIn(f"/sessions/{sip['id']}/terminate", row.forms, row)

        dom_all = await chromium_dump_dom(f"{base}/sessions")
        page_all = parse_sessions_page(dom_all)
        self._check_page_shape(page_all, dom_all)
        self.assertEqual(
            sorted((r.protocol, r.session) for r in page_all.rows),
            sorted((s["protocol"], s["id"]) for s in sessions),
            f"DOM:\n{dom_all}",
        )
        self.assertTrue((page_all.count or "").startswith("3 "), page_all.count)

        dom_tcp = await chromium_dump_dom(f"{base}/sessions?protocol=tcp")
        self.assertEqual([(r.protocol, r.session) for r in parse_sessions_page(dom_tcp).rows], [("tcp", raw["id"])])

        shots = _new_dir(self)
        for name, url in (("sessions-sips.png", f"{base}/sessions?protocol=sips"), ("sessions-all.png", f"{base}/sessions"),
                          ("forward.png", f"{base}/forward")):
            path = await chromium_screenshot(url, os.path.join(shots, name))
            log.info("admin console screenshot kept: {path}", path=path)
            self.assertGreater(os.path.getsize(path), 1000, path)

        # The API's filters agree with the page.
        for query, expected in (("protocol=sips", [sip["id"]]), ("protocol=https", [download["id"]]),
                                ("protocol=ms-turn", [])):
            answer = await admin_request(admin, f"/api/sessions?{query}")
            self.assertEqual(answer.status, 200, answer.describe())
            self.assertEqual([s["id"] for s in answer.json()["sessions"]], expected, query)

        # DELETE ends the tunnel: its client reads EOF.
        deleted = await admin_request(admin, f"/api/sessions/{raw['id']}", method="DELETE")
        self.assertEqual((deleted.status, deleted.json()), (200, {"terminated": raw["id"]}), deleted.describe())
        eof = await threads.deferToThread(_reads_eof, tunnel, 10.0)
        self.assertIs(eof, True, f"after DELETE the tunnel's client read {eof}")
        await poll_api(admin, "/api/sessions", lambda a: raw["id"] not in {s["id"] for s in a["sessions"]})
        again = await admin_request(admin, f"/api/sessions/{raw['id']}", method="DELETE")
        self.assertEqual(again.status, 404, again.describe())

        # The page's terminate button (a POST form) ends the download: txgate
        # resets the client's connection at once (the client's socket leaves
        # ESTABLISHED). curl itself notices only after reading what its
        # kernel already buffered, which at --limit-rate takes a while.
        curl_port = int(download["client"].rsplit(":", 1)[1])
        self.assertEqual(await _established(curl_port, port), 1, "curl's connection to the proxy before terminate")
        posted = await admin_request(
            admin, f"/sessions/{download['id']}/terminate", method="POST", body=b"",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        self.assertEqual(posted.status, 303, posted.describe())
        self.assertTrue(posted.headers.get("location", "").endswith("/sessions"), posted.headers)
        await wait_for_async(lambda: _established(curl_port, port), 0, timeout=3,
                             description="curl's connection to the proxy reset by terminate")
        await poll_api(admin, "/api/sessions", lambda a: download["id"] not in {s["id"] for s in a["sessions"]})
        self.assertTrue(await curl_child.wait_ended(120), "curl never saw the reset")
        self.assertNotEqual(getattr(curl_child.ended.value, "exitCode", None), 0, curl_child.lines)
        self.assertLess(os.path.getsize(body_path), SLOW_SIZE)

        left = await poll_api(admin, "/api/sessions", lambda a: len(a["sessions"]) == 1)
        self.assertEqual([s["id"] for s in left["sessions"]], [sip["id"]])

        # /metrics, once two transactions (the tunnel, the download) have ended.
        for _ in range(25):  # a transaction's record (and counter) follows its end closely
            metrics = await admin_request(admin, "/metrics")
            self.assertEqual(metrics.status, 200, metrics.describe())
            families = parse_metrics(metrics.body)
            samples = {s.name for family in families.values() for s in family.samples}
            if "txgate_transactions_total" in samples:
                break
            await task.deferLater(reactor, 0.2, lambda: None)
        self.assertTrue(metrics.headers.get("content-type", "").startswith("text/plain"), metrics.headers)
        self.assertIn("txgate_transactions_total", samples, sorted(samples))
        self.assertTrue(all(name.startswith("txgate_") for name in families), sorted(families))
        self.assertIn("txgate_sessions", families, sorted(families))
        by_labels = {tuple(sorted(s.labels.items())): s.value for s in families["txgate_sessions"].samples}
        sips_gauge = [v for labels, v in by_labels.items() if ("protocol", "sips") in labels]
        self.assertEqual(sum(sips_gauge), 1.0, f"txgate_sessions samples: {by_labels}")

        self.assertEqual(proxy.tracebacks(), [], proxy.output())

    def _check_page_shape(self, page: SessionsPage, dom: str) -> None:
        """Server-rendered, refreshing itself, nothing loaded from elsewhere, links to the other pages."""
        self.assertIsNotNone(page.refresh, f"no meta refresh:\n{dom}")
        self.assertEqual(page.external, (), "the page loads outside assets")
        self.assertTrue({"/forward", "/reverse"} <= {link.split("?")[0] for link in page.links}, page.links)

    async def test_api_basics(self) -> None:
        """
        Without live sessions: C{/} redirects to C{/sessions}, the empty list
        is C{{"sessions": []}}, status names forward mode and the explicit
        service, realservers is empty, an unknown path is a JSON 404, a
        wrong method 405, and C{POST /api/reload} answers ok.
        """
        proxy = await start_txgate(self, admin_config(self), extra_services=("admin",))
        admin = proxy.addresses["admin"]
        root = await admin_request(admin, "/")
        self.assertIn(root.status, (301, 302, 303, 307, 308), root.describe())
        self.assertTrue(root.headers.get("location", "").endswith("/sessions"), root.headers)
        empty = await admin_request(admin, "/api/sessions")
        self.assertEqual((empty.status, empty.json()), (200, {"sessions": []}), empty.describe())
        status = await admin_request(admin, "/api/status")
        self.assertEqual(status.status, 200, status.describe())
        self.assertEqual(status.json()["mode"], "forward")
        self.assertIn("explicit", [s["name"] for s in status.json()["services"]], status.json())
        real = await admin_request(admin, "/api/realservers")
        self.assertEqual((real.status, real.json()), (200, {"virtual_services": []}), real.describe())
        missing = await admin_request(admin, "/api/nosuch")
        self.assertEqual(missing.status, 404, missing.describe())
        missing.json()  # JSON, not HTML
        wrong = await admin_request(admin, "/api/sessions", method="PUT", body=b"")
        self.assertEqual(wrong.status, 405, wrong.describe())
        reload = await admin_request(admin, "/api/reload", method="POST", body=b"")
        self.assertEqual((reload.status, reload.json().get("ok")), (200, True), reload.describe())


# ---------------------------------------------------------------- the token


def _curl_in(topo: Any, url: str, *headers: str, directory: str) -> Any:
    """curl C{url} inside the client namespace; fires with (status, headers text, body)."""
    curl = require_tool("curl")
    body_path = os.path.join(directory, f"body-{time.monotonic_ns()}")
    head_path = body_path + ".head"
    argv = [curl, "-q", "--silent", "--show-error", "--noproxy", "*", "--max-time", "10", "--output", body_path,
            "--dump-header", head_path, "--write-out", "%{http_code}"]
    for header in headers:
        argv += ["--header", header]

    def done(outcome: tuple[bytes, bytes, int]) -> tuple[int, str, bytes]:
        out, err, code = outcome
        if code != 0:
            raise FailTest(f"curl {url} in {topo.client} exited {code}: {err!r}")
        with open(head_path, encoding="latin-1") as f:
            head = f.read()
        with open(body_path, "rb") as f:
            body = f.read()
        return int(out), head, body

    return run_in(topo, topo.client, [*argv, url], timeout=20).addCallback(done)


class TokenTests(TestCase):
    """A non-loopback admin listener: a token file to start, the bearer token on every request."""

    timeout = 90

    async def test_non_loopback_without_token_file_refused(self) -> None:
        """Listening on 0.0.0.0 without token_file, txgate refuses to start, naming admin.token_file."""
        try:
            proxy = await start_txgate(
                self, admin_config(self, admin={"listen": "tcp:0:interface=0.0.0.0"}), extra_services=("admin",)
            )
        except FailTest as e:
            message = str(e)
        else:
            self.fail(f"txgate started with a non-loopback admin and no token file:\n{proxy.output()}")
        self.assertIn("exited before listening", message)
        self.assertIn("admin.token_file", message)
        self.assertNotIn("Traceback", message)

    async def test_bearer_token_from_another_namespace(self) -> None:
        """
        txgate in a network namespace, its admin on the veth address: from
        the client namespace a request without the token, or with a wrong
        one, gets 401 with C{WWW-Authenticate: Bearer}; with
        C{Authorization: Bearer TOKEN} 200; the HTML page with C{?token=} 200.
        """
        topo = make_topology(self)
        directory = _new_dir(self)
        token_file = os.path.join(directory, "admin.token")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(TOKEN + "\n")
        config = admin_config(self, admin={"listen": f"tcp:0:interface={PROXY_CLIENT_SIDE4}", "token_file": token_file})
        proxy = await start_txgate(self, config, prefix=topo.exec_prefix(topo.proxy), extra_services=("admin",))
        host, port = proxy.addresses["admin"]
        self.assertEqual(host, PROXY_CLIENT_SIDE4)
        api = f"http://{host}:{port}/api/sessions"

        status, head, body = await _curl_in(topo, api, directory=directory)
        self.assertEqual(status, 401, f"{head}{body!r}")
        self.assertRegex(head, r"(?im)^www-authenticate:\s*bearer")
        status, head, body = await _curl_in(topo, api, "Authorization: Bearer wrong-token", directory=directory)
        self.assertEqual(status, 401, f"{head}{body!r}")
        status, head, body = await _curl_in(topo, api, f"Authorization: Bearer {TOKEN}", directory=directory)
        self.assertEqual((status, json.loads(body)), (200, {"sessions": []}), head)
        status, head, body = await _curl_in(topo, f"http://{host}:{port}/sessions", directory=directory)
        self.assertEqual(status, 401, f"{head}{body!r}")
        status, head, body = await _curl_in(topo, f"http://{host}:{port}/sessions?token={TOKEN}", directory=directory)
        self.assertEqual(status, 200, f"{head}{body!r}")
        self.assertIsNotNone(parse_sessions_page(body.decode("utf-8")).count, body[:2000])
        status, head, body = await _curl_in(topo, f"http://{host}:{port}/metrics", directory=directory)
        self.assertEqual(status, 401, f"{head}{body!r}")


async def _established(source_port: int, port: int) -> int:
    """How many ESTABLISHED TCP connections go from local port C{source_port} to C{port} (as ss shows them)."""
    ss = require_tool("ss")
    out = await threads.deferToThread(
        subprocess.run, [ss, "-Htn", "state", "established", f"( sport = :{source_port} and dport = :{port} )"],
        capture_output=True, text=True, timeout=10,
    )
    return len([line for line in out.stdout.splitlines() if line.strip()])


async def wait_for_async(measure: Any, expected: Any, *, timeout: float, description: str) -> None:
    """Poll the coroutine C{measure()} until it returns C{expected}, at most C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = await measure()
        if got == expected:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{description}: still {got!r} after {timeout} s")
        await task.deferLater(reactor, 0.1, lambda: None)
