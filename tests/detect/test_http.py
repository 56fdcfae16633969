"""
Tests for L{txgate.detect.http}: HTTP/1.x request lines.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import http
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected

from .samples import assert_detects, assert_not_mine, capture


def request(method: str, target: str) -> Detected:
    return Detected("http", {"method": method, "target": target})


class HttpTests(SynchronousTestCase):
    def test_curl(self) -> None:
        assert_detects(self, http.detect, capture("http_curl"), request("GET", "/"), "curl")

    def test_requests(self) -> None:
        cases = {
            b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n": request("GET", "/index.html"),
            b"POST /Autodiscover/AutodiscoverService.svc/root HTTP/1.1\r\n": request(
                "POST", "/Autodiscover/AutodiscoverService.svc/root"
            ),
            b"CONNECT sip.example.com:443 HTTP/1.0\r\n": request("CONNECT", "sip.example.com:443"),
            b"OPTIONS * HTTP/1.1\r\n": request("OPTIONS", "*"),
            b"PROPFIND /dav/ HTTP/1.1\r\n": request("PROPFIND", "/dav/"),
            b"X-CUSTOM_1 http://a.example/?q=1 HTTP/1.1\r\n": request("X-CUSTOM_1", "http://a.example/?q=1"),
            b"\r\n\r\nGET / HTTP/1.1\r\n": request("GET", "/"),
            b"GET / HTTP/1.1\n": request("GET", "/"),
            b"HEAD / HTTP/1.9\r\n": request("HEAD", "/"),
        }
        for data, expected in cases.items():
            assert_detects(self, http.detect, data, expected, repr(data))

    def test_not_http(self) -> None:
        cases = [
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / http/1.1\r\n",
            b"GET / HTTP/1.10\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET\t/ HTTP/1.1\r\n",
            b"GET /\r\n",
            b"GET / HTTP/1.1 extra\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n",
            b"GET / HTTP/1.1\rX",
            b"INVITE sip:bob@example.com SIP/2.0\r\n",
            b"SIP/2.0 200 OK\r\n",
            b" GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x00\x2d",
        ]
        for data in cases:
            assert_not_mine(self, http.detect, data, repr(data))

    def test_line_cap(self) -> None:
        """A request line up to the cap is read; longer is not HTTP."""
        head = b"GET /"
        tail = b" HTTP/1.1\r\n"
        target = b"a" * (http.MAX_START_LINE - len(head) - len(tail) + 2)
        at_cap = head + target + tail
        self.assertEqual(len(at_cap) - 2, http.MAX_START_LINE)
        self.assertEqual(http.detect(at_cap), request("GET", "/" + target.decode()))
        self.assertIs(http.detect(head + target + b"a" + tail), NOT_MINE)
        self.assertIs(http.detect(head + target), NEED_MORE)
        self.assertIs(http.detect(head + target * 2), NOT_MINE)

    def test_keepalives_alone(self) -> None:
        for data in (b"", b"\r", b"\r\n", b"\r\n\r\n", b"\n"):
            self.assertIs(http.detect(data), NEED_MORE, msg=repr(data))

    @given(st.binary(max_size=200))
    def test_never_raises(self, data: bytes) -> None:
        http.detect(data)
        http.detect(b"GET " + data)
        http.detect(b"GET / " + data)

    @given(st.text(alphabet="GET /HTP1.\r\n", max_size=30))
    def test_near_misses(self, text: str) -> None:
        """Strings of request-line characters never raise and claim only valid lines."""
        verdict = http.detect(text.encode())
        if isinstance(verdict, Detected):
            self.assertRegex(text.lstrip("\r\n"), r"^[A-Z]+ [^ \r\n]+ HTTP/1\.[0-9]\r?\n")
