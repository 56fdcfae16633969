"""
The explicit proxy end to end: C{twistd txgate forward} with an
C{explicit-http} service, driven by curl and raw sockets, in front of nginx
and an in-process echo origin, all on 127.0.0.1. What is asserted is what a
user checks: status codes, bodies byte for byte, the access log's fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from typing import Any

import attrs
from twisted.internet import threads
from twisted.trial.unittest import TestCase

from tests.e2e.harness import (
    RESET_DECLARED,
    BackgroundFetcher,
    access_records,
    exchange_raw,
    fetch,
    read_http_head,
    rss_kb,
    rss_peak_kb,
    run_curl,
    start_echo_origin,
    start_nginx,
    start_txgate,
    wait_for_record,
    write_pattern_file,
)

HELLO = hashlib.shake_256(b"hello through txgate").digest(48 * 1024)
"""A static file bigger than one read, binary so any re-encoding shows."""


def explicit_config(**options: Any) -> str:
    """
    A config with one C{explicit-http} service named C{explicit} on
    127.0.0.1 and a free port, its state and access log in the process's
    directory, and C{options} as more keys of the service.
    """
    lines = [
        "[txgate]",
        'state_dir = "{tmp}/var"',
        'access_log = "{tmp}/access.log"',
        'access_log_format = "text"',
        "",
        "[[service]]",
        'name = "explicit"',
        'kind = "explicit-http"',
        'listen = "tcp:0:interface=127.0.0.1"',
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    return "\n".join(lines) + "\n"


class ExplicitProxyTests(TestCase):
    """
    Well-formed traffic through the explicit proxy arrives intact and is
    logged as the contract says.
    """

    timeout = 60

    async def test_get_static_file(self) -> None:
        """
        C{curl -x} GET of a file on nginx returns it with 200, and the access
        log records an allowed, untunneled C{http} transaction for the
        absolute URL from the client's loopback address, on a new upstream
        connection.
        """
        nginx = await start_nginx(self, root_files={"hello.bin": HELLO})
        proxy = await start_txgate(self, explicit_config())

        result = await fetch(self, nginx.url("/hello.bin"), proxy=proxy.addresses["explicit"])

        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        self.assertEqual(result.body, HELLO)
        record = await wait_for_record(proxy, lambda r: r["method"] == "GET")
        self.assertEqual(
            {k: record[k] for k in ("service", "client_protocol", "tunneled", "target", "status",
                                    "verdict", "upstream", "seq")},
            {
                "service": "explicit",
                "client_protocol": "http",
                "tunneled": False,
                "target": nginx.url("/hello.bin"),
                "status": 200,
                "verdict": "allow",
                "upstream": "new",
                "seq": 1,
            },
        )
        self.assertRegex(record["client"], r"^127\.0\.0\.1:\d+$")
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertGreaterEqual(record["bytes_out"], len(HELLO))
        self.assertGreater(record["bytes_in"], 0)

    async def test_post_body_echoed(self) -> None:
        """
        A 1 MiB POST body reaches the origin whole, and the origin's echo of
        it comes back whole.
        """
        echo = await start_echo_origin(self)
        proxy = await start_txgate(self, explicit_config())
        body = hashlib.shake_256(b"post body").digest(1 << 20)
        body_path = os.path.abspath(self.mktemp())
        with open(body_path, "wb") as f:
            f.write(body)

        result = await fetch(
            self,
            echo.url("/upload"),
            proxy=proxy.addresses["explicit"],
            extra=["--data-binary", "@" + body_path, "-H", "Content-Type: application/octet-stream"],
        )

        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        self.assertEqual(len(result.body), len(body))
        self.assertEqual(result.body, body)
        self.assertEqual([(r.method, r.path) for r in echo.requests], [("POST", "/upload")])
        self.assertEqual(echo.requests[0].body, body)
        record = await wait_for_record(proxy, lambda r: r["method"] == "POST")
        self.assertGreaterEqual(record["bytes_in"], len(body))
        self.assertGreaterEqual(record["bytes_out"], len(body))

    async def test_https_through_connect(self) -> None:
        """
        curl fetches a file from nginx over HTTPS through a CONNECT tunnel,
        verifying nginx's certificate with the test CA: the proxy does not
        touch the TLS. The tunnel is logged when it ends, with the CONNECT
        target C{host:port}, status 200, C{tunneled yes} and C{ssl} (TLS that
        was not decrypted) as its protocol.
        """
        nginx = await start_nginx(self, tls=True, root_files={"hello.bin": HELLO})
        proxy = await start_txgate(self, explicit_config())

        result = await fetch(
            self,
            nginx.url("/hello.bin"),
            proxy=proxy.addresses["explicit"],
            extra=["--cacert", nginx.ca_pem_path],
        )

        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        self.assertEqual(result.body, HELLO)
        record = await wait_for_record(proxy, lambda r: r["method"] == "CONNECT")
        self.assertEqual(
            {k: record[k] for k in ("target", "status", "tunneled", "client_protocol", "verdict")},
            {
                "target": nginx.authority,
                "status": 200,
                "tunneled": True,
                "client_protocol": "ssl",
                "verdict": "allow",
            },
        )
        self.assertGreater(record["bytes_out"], len(HELLO))

    async def test_keep_alive(self) -> None:
        """
        One curl run fetching two URLs of one origin sends both on one
        client connection, and the proxy sends the second on the upstream
        connection the first used: the access log shows one session with
        seq 1 and 2, the second with upstream C{reused}.
        """
        nginx = await start_nginx(self, root_files={"a.bin": HELLO, "b.bin": HELLO[::-1]})
        proxy = await start_txgate(self, explicit_config())
        host, port = proxy.addresses["explicit"]
        out_a, out_b = os.path.abspath(self.mktemp()), os.path.abspath(self.mktemp())

        out, err, code = await run_curl(
            [
                "--silent", "--show-error", "--proxy", f"http://{host}:{port}",
                "--write-out", "%{http_code} %{num_connects}\n",
                "-o", out_a, nginx.url("/a.bin"),
                "-o", out_b, nginx.url("/b.bin"),
            ]
        )

        self.assertEqual(code, 0, err)
        self.assertEqual(
            out.decode().split("\n"), ["200 1", "200 0", ""], "two 200s, the second without a new connect"
        )
        with open(out_a, "rb") as a, open(out_b, "rb") as b:
            self.assertEqual((a.read(), b.read()), (HELLO, HELLO[::-1]))
        await wait_for_record(proxy, lambda r: r["target"] == nginx.url("/b.bin"))
        records = [r for r in access_records(proxy) if r["method"] == "GET"]
        self.assertEqual(
            [(r["target"], r["seq"], r["upstream"]) for r in records],
            [(nginx.url("/a.bin"), 1, "new"), (nginx.url("/b.bin"), 2, "reused")],
        )
        self.assertEqual(records[0]["session"], records[1]["session"])

    async def test_chunked_response(self) -> None:
        """
        A chunked response streamed by the origin in many small pieces
        arrives whole.
        """
        echo = await start_echo_origin(self)
        proxy = await start_txgate(self, explicit_config())

        result = await fetch(self, echo.url("/chunked"), proxy=proxy.addresses["explicit"])

        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        self.assertEqual(result.body, echo.chunked_body)

    async def test_via_header(self) -> None:
        """
        The request the origin receives carries C{Via: 1.1 txgate}.
        """
        echo = await start_echo_origin(self)
        proxy = await start_txgate(self, explicit_config())

        result = await fetch(self, echo.url("/headers"), proxy=proxy.addresses["explicit"])

        self.assertEqual((result.exit_code, result.status), (0, 200), result.stderr)
        [seen] = echo.requests
        self.assertEqual(seen.target, "/headers", "origin-form target upstream")
        self.assertIn("1.1 txgate", ", ".join(seen.headers.get("via", [])))


@attrs.frozen
class _Download:
    connect_head: bytes
    response_head: bytes
    content_length: int
    received: int
    sha256: str
    proxy_rss_after_stall_kb: int


def _download_through_tunnel(
    proxy: tuple[str, int], origin: tuple[str, int], path: str, stall: float, proxy_pid: int
) -> _Download:
    """
    Blocking (run in a thread): CONNECT to C{origin} through C{proxy}, GET
    C{path} over the tunnel, read nothing for C{stall} seconds, then read and
    hash the whole body.
    """
    authority = "%s:%d" % origin
    with socket.create_connection(proxy, timeout=30) as sock:
        sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        connect_head, rest = read_http_head(sock)
        if not connect_head.startswith(b"HTTP/1.1 200"):
            return _Download(connect_head, b"", 0, 0, "", 0)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode())
        time.sleep(stall)  # a slow receiver: the proxy must stop reading from nginx
        rss_after_stall = rss_kb(proxy_pid)
        head, rest = read_http_head(sock, rest)
        match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        length = int(match.group(1)) if match else -1
        digest = hashlib.sha256(rest)
        received = len(rest)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        while received < length:
            n = sock.recv_into(view, min(len(buffer), length - received))
            if n == 0:
                break
            digest.update(view[:n])
            received += n
        return _Download(connect_head, head, length, received, digest.hexdigest(), rss_after_stall)


class TunnelVolumeTests(TestCase):
    """
    A CONNECT tunnel carries a large transfer byte for byte, with memory
    bounded by backpressure when the client is slow.
    """

    timeout = 120

    SIZE = 1 << 30
    RSS_LIMIT_KB = 100 * 1024

    async def test_one_gib_slow_receiver(self) -> None:
        """
        1 GiB from nginx through a CONNECT tunnel to a client that reads
        nothing for 3 s after its request arrives with the file's SHA-256,
        and the proxy's peak RSS stays under 100 MiB.
        """
        docroot = os.path.abspath(self.mktemp())
        os.makedirs(docroot)
        big = os.path.join(docroot, "big")
        self.addCleanup(lambda: os.path.exists(big) and os.remove(big))
        expected = await threads.deferToThread(write_pattern_file, big, self.SIZE)
        nginx = await start_nginx(self, docroot=docroot)
        proxy = await start_txgate(self, explicit_config())

        started = time.monotonic()
        download = await threads.deferToThread(
            _download_through_tunnel, proxy.addresses["explicit"], nginx.address, "/big", 3.0, proxy.pid
        )
        elapsed = time.monotonic() - started
        peak = rss_peak_kb(proxy.pid)

        self.assertEqual(download.connect_head.split(b"\r\n")[0], b"HTTP/1.1 200 Connection established")
        self.assertRegex(download.response_head.split(b"\r\n")[0], rb"^HTTP/1\.1 200 ")
        self.assertEqual(download.content_length, self.SIZE)
        self.assertEqual(download.received, self.SIZE)
        self.assertEqual(download.sha256, expected)
        self.assertLess(
            peak,
            self.RSS_LIMIT_KB,
            f"proxy peak RSS {peak} KiB (after the stall {download.proxy_rss_after_stall_kb} KiB); "
            f"transfer took {elapsed:.1f}s",
        )


class BadInputTests(TestCase):
    """
    Bad clients and a bad upstream get the contract's answers, and none of
    it disturbs a well-behaved client served at the same time.
    """

    timeout = 90

    async def test_bad_input_does_not_disturb_good_clients(self) -> None:
        """
        While a good client keeps fetching through the proxy: garbage gets
        400, a request line over 64 KiB 414, 70 KiB of headers 431 (each then
        closed); a head stalled mid-way gets 408 and a close after the 2 s
        idle timeout; an upstream reset mid-body truncates the client's
        response and the access log says why; an unresolvable host gets a
        502 naming it. The good client saw only complete 200s, a GET after
        it all still works, and txgate logged no traceback.
        """
        nginx = await start_nginx(self, root_files={"hello.bin": HELLO})
        echo = await start_echo_origin(self)
        proxy = await start_txgate(self, explicit_config(idle_timeout=2, connect_timeout=5))
        address = proxy.addresses["explicit"]
        good = BackgroundFetcher(self, nginx.url("/hello.bin"), address, max_requests=150, pause=0.1)
        target = nginx.url("/hello.bin").encode()
        host = nginx.authority.encode()

        garbage = await exchange_raw(address, b"\x00\xffgarbage\r\n\r\n")
        self.assertEqual((garbage.status, garbage.closed), (400, True), garbage)

        long_line = await exchange_raw(
            address, b"GET " + target + b"?" + b"a" * (70 * 1024) + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
        )
        self.assertEqual((long_line.status, long_line.closed), (414, True), long_line.data[:200])

        padding = b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"p" * 1010) for i in range(70))
        big_head = await exchange_raw(
            address, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + padding + b"\r\n"
        )
        self.assertEqual((big_head.status, big_head.closed), (431, True), big_head.data[:200])

        stalled = await exchange_raw(
            address, b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\nX-Half: ", read_timeout=10
        )
        self.assertEqual((stalled.status, stalled.closed), (408, True), stalled)
        self.assertTrue(1.0 <= stalled.elapsed <= 6.0, f"closed after {stalled.elapsed:.1f}s, idle_timeout 2")

        reset = await fetch(self, echo.url("/reset"), proxy=address)
        self.assertNotEqual(reset.exit_code, 0, "curl must see the truncation")
        self.assertLess(len(reset.body), RESET_DECLARED)
        record = await wait_for_record(proxy, lambda r: (r["target"] or "").endswith("/reset"))
        self.assertRegex(
            record["reason"] or "-",
            r"(?i)reset|truncat|abort|closed|lost|incomplete",
            "the access log says why the response was cut",
        )

        missing = await fetch(self, "http://nosuch.invalid/", proxy=address)
        self.assertEqual(missing.status, 502, missing.stderr)
        self.assertIn(b"nosuch.invalid", missing.body)

        results = await good.stop()
        self.assertIsNone(good.error)
        self.assertGreaterEqual(len(results), 3, "the good client kept going")
        failed = [r for r in results if (r.exit_code, r.status, r.body) != (0, 200, HELLO)]
        self.assertEqual(
            [(r.exit_code, r.status, len(r.body), r.stderr) for r in failed],
            [],
            f"every good request got the whole file ({len(results)} requests)",
        )
        after = await fetch(self, nginx.url("/hello.bin"), proxy=address)
        self.assertEqual((after.exit_code, after.status, after.body), (0, 200, HELLO))
        self.assertEqual(proxy.tracebacks(), [], proxy.output())


class ClientAclTests(TestCase):
    """
    The service's C{clients} list decides who may use the proxy.
    """

    timeout = 30

    async def test_client_not_in_clients_refused(self) -> None:
        """
        With C{clients = ["10.0.0.0/8"]}, a request from 127.0.0.1 gets 403,
        never reaches the origin, and is logged with verdict C{deny} and
        reason "client not allowed".
        """
        echo = await start_echo_origin(self)
        proxy = await start_txgate(self, explicit_config(clients=["10.0.0.0/8"]))

        result = await fetch(self, echo.url("/anything"), proxy=proxy.addresses["explicit"])

        self.assertEqual(result.status, 403, result.stderr)
        self.assertEqual(echo.requests, [])
        record = await wait_for_record(proxy, lambda r: r["verdict"] == "deny")
        self.assertEqual((record["status"], record["reason"]), (403, "client not allowed"))
