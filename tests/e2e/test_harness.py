"""
The end-to-end harness checked on its own, without txgate: the origins and
clients it provides behave as the tests in this package assume, so a failure
there points at txgate, not at the harness.
"""

from __future__ import annotations

import json

import hashlib
import os

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e.harness import (
    RESET_DECLARED,
    RESET_SENT,
    exchange_raw,
    fetch,
    parse_access_line,
    start_echo_origin,
    start_nginx,
    write_pattern_file,
)


class OriginTests(TestCase):
    """
    nginx and the echo origin answer curl directly as documented.
    """

    timeout = 30

    async def test_nginx_tls(self) -> None:
        """
        nginx serves its docroot over HTTPS with a certificate the test CA
        verifies for 127.0.0.1, and answers garbage with 400.
        """
        nginx = await start_nginx(self, tls=True, root_files={"dir/f.txt": b"content\n"})

        result = await fetch(self, nginx.url("/dir/f.txt"), extra=["--cacert", nginx.ca_pem_path])

        self.assertEqual((result.exit_code, result.status, result.body), (0, 200, b"content\n"))
        plain = await start_nginx(self)
        reply = await exchange_raw(plain.address, b"\x00\xffgarbage\r\n\r\n")
        self.assertEqual(reply.status, 400)

    async def test_echo_origin(self) -> None:
        """
        The echo origin echoes a POST body, streams /chunked whole, and cuts
        /reset short after L{RESET_SENT} of L{RESET_DECLARED} bytes.
        """
        echo = await start_echo_origin(self)

        posted = await fetch(self, echo.url("/p?q=1"), extra=["--data-binary", "abc"])
        chunked = await fetch(self, echo.url("/chunked"))
        reset = await fetch(self, echo.url("/reset"))

        self.assertEqual((posted.status, posted.body), (200, b"abc"))
        self.assertEqual((echo.requests[0].method, echo.requests[0].path), ("POST", "/p"))
        self.assertEqual(echo.requests[0].target, "/p?q=1")
        self.assertEqual((chunked.exit_code, chunked.body), (0, echo.chunked_body))
        self.assertNotEqual(reset.exit_code, 0)
        self.assertEqual(len(reset.body), RESET_SENT)
        self.assertLess(RESET_SENT, RESET_DECLARED)


class HelperTests(SynchronousTestCase):
    """
    The pure helpers.
    """

    def test_parse_access_line(self) -> None:
        """
        A text access line parses into the JSON format's shape, with the
        quoted reason unescaped and C{-} as None.
        """
        line = (
            '2026-11-21T16:00:00.123Z 1f.2 127.0.0.1:5555 alice explicit http no GET '
            'http://h:80/p 502 allow 77 310 12 - "dns lookup failed for \\"h\\""'
        )
        self.assertEqual(
            parse_access_line(line),
            {
                "time": "2026-11-21T16:00:00.123Z",
                "session": "1f",
                "seq": 2,
                "client": "127.0.0.1:5555",
                "user": "alice",
                "service": "explicit",
                "client_protocol": "http",
                "tunneled": False,
                "method": "GET",
                "target": "http://h:80/p",
                "status": 502,
                "verdict": "allow",
                "bytes_in": 77,
                "bytes_out": 310,
                "duration_ms": 12,
                "upstream": None,
                "reason": 'dns lookup failed for "h"',
            },
        )

    def test_parse_what_txgate_writes(self) -> None:
        """The parser reads txgate's own text format back into the JSON shape."""
        from txgate.accesslog import FIELDS, format_json, format_text

        record = {name: None for name in FIELDS}
        record.update(
            time=1795276800.5, session="ab-1", seq=3, client="[::1]:4000", service="explicit",
            client_protocol="tcp", tunneled=True, method="CONNECT", target="h:443", status=200,
            verdict="allow", bytes_in=1, bytes_out=2, duration_ms=3, upstream="new", reason="closed by both sides",
        )
        self.assertEqual(parse_access_line(format_text(record)), json.loads(format_json(record)))

    def test_pattern_file(self) -> None:
        """
        The pattern file has the asked size, the returned digest is its
        SHA-256, and no two of its 1 MiB blocks are equal.
        """
        path = self.mktemp()
        size = 3 * (1 << 20) + 5
        digest = write_pattern_file(path, size)
        with open(path, "rb") as f:
            data = f.read()
        self.assertEqual((len(data), hashlib.sha256(data).hexdigest()), (size, digest))
        self.assertEqual(len({data[i : i + (1 << 20)] for i in range(0, size, 1 << 20)}), 4)
        self.assertEqual(write_pattern_file(path + "2", size), digest)
        os.remove(path)
        os.remove(path + "2")
