"""
Tests for L{txgate.http.proxying}: request targets and forwarded headers.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import PeerProtocolError
from txgate.http.proxying import (
    connection_auth,
    Target,
    error_page,
    parse_target,
    request_headers_upstream,
    response_headers_downstream,
)


class ParseTargetTests(SynchronousTestCase):
    """
    The request target of a proxy request names where it goes.
    """

    def test_valid(self) -> None:
        """Authority-form for CONNECT and absolute-form otherwise, default ports filled in."""
        cases = [
            (b"CONNECT", b"lync.example.com:443", Target(None, "lync.example.com", 443, b""), "lync.example.com:443"),
            (b"CONNECT", b"[::1]:5061", Target(None, "::1", 5061, b""), "[::1]:5061"),
            (b"GET", b"http://Example.COM/a?b=c", Target("http", "example.com", 80, b"/a?b=c"), "http://example.com/a?b=c"),
            (b"GET", b"http://example.com", Target("http", "example.com", 80, b"/"), "http://example.com/"),
            (b"POST", b"http://10.0.0.1:8080/x", Target("http", "10.0.0.1", 8080, b"/x"), "http://10.0.0.1:8080/x"),
            (b"GET", b"https://[2001:db8::1]/", Target("https", "2001:db8::1", 443, b"/"), "https://[2001:db8::1]/"),
        ]
        for method, raw, expected, url in cases:
            target = parse_target(method, raw)
            self.assertEqual(target, expected, msg=f"input {raw!r}")
            self.assertEqual(target.url(), url, msg=f"input {raw!r}")

    def test_invalid(self) -> None:
        """Anything a proxy cannot route is a C{PeerProtocolError} with a 400 hint naming the target."""
        cases = [
            (b"CONNECT", b"example.com"),
            (b"CONNECT", b"example.com:0"),
            (b"CONNECT", b"example.com:99999"),
            (b"CONNECT", b"[::1:443"),
            (b"GET", b"/index.html"),
            (b"GET", b"*"),
            (b"GET", b"ftp://example.com/"),
            (b"GET", b"http://user:pw@example.com/"),
            (b"GET", b"http:///nohost"),
            (b"GET", b"http://exa mple.com/"),
        ]
        for method, raw in cases:
            with self.assertRaises(PeerProtocolError, msg=f"input {raw!r}") as caught:
                parse_target(method, raw)
            self.assertEqual((caught.exception.protocol, caught.exception.status_hint), ("http", 400))

    @given(st.binary(max_size=200), st.sampled_from([b"GET", b"CONNECT", b"POST"]))
    def test_never_crashes(self, raw: bytes, method: bytes) -> None:
        """Any target either parses or raises C{PeerProtocolError}."""
        try:
            parse_target(method, raw)
        except PeerProtocolError:
            pass


class HeaderTests(SynchronousTestCase):
    """
    Hop-by-hop headers stay on their hop; Via records the proxy.
    """

    def test_request(self) -> None:
        """
        Upstream requests lose hop-by-hop headers (and those named in
        Connection), get Host from the URI and a Via appended to any existing
        one.
        """
        headers = [
            (b"host", b"wrong.example"),
            (b"connection", b"keep-alive, x-private"),
            (b"proxy-connection", b"keep-alive"),
            (b"proxy-authorization", b"Basic eDp5"),
            (b"x-private", b"1"),
            (b"te", b"trailers"),
            (b"upgrade", b"websocket"),
            (b"via", b"1.1 other"),
            (b"accept", b"*/*"),
        ]
        target = parse_target(b"GET", b"http://origin.example:8080/")
        self.assertEqual(
            request_headers_upstream(headers, target, chunked=False),
            [(b"host", b"origin.example:8080"), (b"accept", b"*/*"), (b"via", b"1.1 other, 1.1 txgate")],
        )

    def test_request_chunked(self) -> None:
        """A chunked request body keeps its framing header upstream."""
        target = parse_target(b"POST", b"http://o/")
        out = request_headers_upstream([(b"transfer-encoding", b"chunked")], target, chunked=True)
        self.assertIn((b"transfer-encoding", b"chunked"), out)

    def test_response(self) -> None:
        """Responses keep end-to-end headers and Content-Length, lose hop-by-hop ones."""
        out = response_headers_downstream(
            [(b"content-length", b"5"), (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"), (b"set-cookie", b"a=b")]
        )
        self.assertEqual(out, [(b"content-length", b"5"), (b"set-cookie", b"a=b"), (b"via", b"1.1 txgate")])

    def test_error_page(self) -> None:
        """Error pages say txgate, the status and the reason, with a matching length."""
        headers, body = error_page(502, "DNS lookup failed for nosuch.invalid")
        self.assertEqual(body, b"txgate: 502: DNS lookup failed for nosuch.invalid\n")
        self.assertIn((b"content-length", str(len(body)).encode()), headers)


class ConnectionAuthTests(SynchronousTestCase):
    """L{connection_auth} tells when a connection, not a request, is being authenticated."""

    def test_connection_auth(self) -> None:
        """NTLM or Negotiate in the request, or offered by a 401, pins the connection."""
        self.assertTrue(connection_auth([(b"authorization", b"NTLM TlRMTVNTUAAB")]))
        self.assertTrue(connection_auth([(b"authorization", b"negotiate YII=")]))
        self.assertFalse(connection_auth([(b"authorization", b"Basic eDp5")]))
        self.assertFalse(connection_auth([]))
        offers = [(b"www-authenticate", b'Basic realm="x"'), (b"www-authenticate", b"Negotiate")]
        self.assertTrue(connection_auth([], 401, offers))
        self.assertTrue(connection_auth([], 401, [(b"www-authenticate", b'Basic realm="x", NTLM')]))
        self.assertFalse(connection_auth([], 200, offers))
        self.assertFalse(connection_auth([], 401, [(b"www-authenticate", b'Basic realm="NTLMx"')]))
        self.assertFalse(connection_auth([], 401, [(b"www-authenticate", b"Bearer")]))
