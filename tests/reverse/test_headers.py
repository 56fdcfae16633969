"""
Tests for L{txgate.reverse.headers}: what the reverse proxy changes in the
messages it forwards and what it reads from them.
"""

from __future__ import annotations

from base64 import b64decode, b64encode

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse.headers import (
    cookie_value,
    downstream_response_headers,
    location_rewriter,
    set_cookie_value,
    upstream_request_headers,
    user_of,
    wants_upgrade,
)


def _ntlm_authenticate(domain: bytes, user: bytes, flags: int | None = 0x1, message_type: int = 3) -> bytes:
    """An NTLM AUTHENTICATE_MESSAGE carrying C{domain} and C{user}, C{flags} at 60 (or none)."""
    header = 64 if flags is not None else 52
    payload = domain + user + b"WS"
    fields = b""
    offset = header
    for data in [b"", b"", domain, user, b"WS", b""][: (6 if flags is not None else 5)]:
        fields += len(data).to_bytes(2, "little") * 2 + offset.to_bytes(4, "little")
        offset += len(data)
    # The LM/NT responses and the key are empty, so their offsets point at the payload start.
    message = b"NTLMSSP\x00" + message_type.to_bytes(4, "little") + fields
    if flags is not None:
        message += flags.to_bytes(4, "little")
    message += payload
    return b"NTLM " + b64encode(message)


class UpstreamRequestHeadersTests(SynchronousTestCase):
    """
    L{upstream_request_headers} keeps Host, drops hop-by-hop headers and
    says who the client is.
    """

    def test_forwarded(self) -> None:
        """Host first, others in order, forwarding headers appended or replaced."""
        headers = [
            (b"user-agent", b"ua"),
            (b"host", b"meet.example.com"),
            (b"connection", b"keep-alive, x-drop"),
            (b"x-forwarded-for", b"10.1.1.1"),
            (b"x-drop", b"1"),
            (b"accept", b"*/*"),
            (b"x-forwarded-proto", b"http"),
            (b"forwarded", b"for=10.1.1.1"),
            (b"keep-alive", b"300"),
            (b"te", b"trailers"),
            (b"proxy-authorization", b"Basic eA=="),
            (b"content-length", b"5"),
        ]
        self.assertEqual(
            upstream_request_headers(headers, "192.0.2.7", "https", False),
            [
                (b"host", b"meet.example.com"),
                (b"user-agent", b"ua"),
                (b"accept", b"*/*"),
                (b"content-length", b"5"),
                (b"x-forwarded-for", b"10.1.1.1, 192.0.2.7"),
                (b"x-forwarded-proto", b"https"),
                (b"forwarded", b"for=10.1.1.1, for=192.0.2.7;proto=https;host=meet.example.com"),
            ],
        )

    def test_fresh(self) -> None:
        """Without client-supplied values, the proxy's own are set; IPv6 and ports are quoted."""
        out = upstream_request_headers(
            [(b"host", b"[2001:db8::5]:8443"), (b"transfer-encoding", b"chunked")], "2001:db8::1", "http", False,
            chunked=True,
        )
        self.assertEqual(
            out,
            [
                (b"host", b"[2001:db8::5]:8443"),
                (b"transfer-encoding", b"chunked"),
                (b"x-forwarded-for", b"2001:db8::1"),
                (b"x-forwarded-proto", b"http"),
                (b"forwarded", b'for="[2001:db8::1]";proto=http;host="[2001:db8::5]:8443"'),
            ],
        )

    def test_host_protected(self) -> None:
        """Naming Host in Connection does not strip it; a host that cannot be quoted is left out of Forwarded."""
        out = upstream_request_headers(
            [(b"host", b'a"b\x01'), (b"connection", b"host")], "192.0.2.7", "https", False
        )
        self.assertEqual(out[0], (b"host", b'a"b\x01'))
        self.assertEqual(out[-1], (b"forwarded", b"for=192.0.2.7;proto=https"))
        out = upstream_request_headers([(b"host", b'a"b\\')], "192.0.2.7", "https", False)
        self.assertEqual(out[-1], (b"forwarded", b'for=192.0.2.7;proto=https;host="a\\"b\\\\"'))

    def test_no_host(self) -> None:
        """An HTTP/1.0 request without Host gets no Host and no C{host=}."""
        out = upstream_request_headers([(b"accept", b"*/*")], "192.0.2.7", "http", False)
        self.assertEqual(out[0], (b"accept", b"*/*"))
        self.assertEqual(out[-1], (b"forwarded", b"for=192.0.2.7;proto=http"))

    def test_upgrade(self) -> None:
        """With C{keep_upgrade}, Upgrade is kept with C{Connection: upgrade}; without it, both go."""
        headers = [(b"host", b"h"), (b"connection", b"Upgrade, keep-alive"), (b"upgrade", b"websocket"),
                   (b"sec-websocket-key", b"k")]
        kept = upstream_request_headers(headers, "192.0.2.7", "https", True)
        self.assertEqual(
            kept[:4],
            [(b"host", b"h"), (b"sec-websocket-key", b"k"), (b"upgrade", b"websocket"), (b"connection", b"upgrade")],
        )
        dropped = upstream_request_headers(headers, "192.0.2.7", "https", False)
        names = [n for n, _ in dropped]
        self.assertNotIn(b"upgrade", names)
        self.assertNotIn(b"connection", names)


class DownstreamResponseHeadersTests(SynchronousTestCase):
    """
    L{downstream_response_headers} drops hop-by-hop headers, rewrites
    Location and adds the persistence cookie.
    """

    def test_response(self) -> None:
        """Everything changed at once, other headers in order."""
        rewrite = location_rewriter(b"meet.example.com", "https", [("fe1.corp", 4443)])
        out = downstream_response_headers(
            [
                (b"content-type", b"text/html"),
                (b"connection", b"close"),
                (b"location", b"https://FE1.corp:4443/meet/x?y"),
                (b"transfer-encoding", b"chunked"),
                (b"set-cookie", b"a=b"),
            ],
            rewrite,
            b"MS-WSMAN=t; Path=/",
            False,
        )
        self.assertEqual(
            out,
            [
                (b"content-type", b"text/html"),
                (b"location", b"https://meet.example.com/meet/x?y"),
                (b"set-cookie", b"a=b"),
                (b"set-cookie", b"MS-WSMAN=t; Path=/"),
            ],
        )

    def test_plain(self) -> None:
        """Without rewrite or cookie, only hop-by-hop headers go."""
        headers = [(b"location", b"https://fe1.corp:4443/"), (b"keep-alive", b"5")]
        self.assertEqual(downstream_response_headers(headers, None, None, False), headers[:1])

    def test_switching_protocols(self) -> None:
        """A tunnelled 101 keeps Upgrade and C{Connection: upgrade}."""
        out = downstream_response_headers(
            [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", b"a")],
            None, None, True,
        )
        self.assertEqual(
            out, [(b"sec-websocket-accept", b"a"), (b"upgrade", b"websocket"), (b"connection", b"upgrade")]
        )


class LocationRewriterTests(SynchronousTestCase):
    """
    L{location_rewriter} replaces a real server's own address with the
    public one.
    """

    def test_rewrites(self) -> None:
        """Internal (host, effective port) pairs are rewritten; everything else is unchanged."""
        rewrite = location_rewriter(b"meet.example.com", "https", [("fe1.corp", 4443), ("10.0.0.11", 443), ("[::1]", 80)])
        cases = [
            (b"https://fe1.corp:4443/x", b"https://meet.example.com/x"),
            (b"HTTPS://FE1.CORP:4443/x?a#b", b"https://meet.example.com/x?a#b"),
            (b"http://fe1.corp:4443", b"https://meet.example.com"),
            (b"https://10.0.0.11/y", b"https://meet.example.com/y"),
            (b"https://10.0.0.11:443/y", b"https://meet.example.com/y"),
            (b"http://[::1]/z", b"https://meet.example.com/z"),
            (b"https://fe1.corp/x", b"https://fe1.corp/x"),
            (b"https://fe1.corp:443/x", b"https://fe1.corp:443/x"),
            (b"https://other.example:4443/x", b"https://other.example:4443/x"),
            (b"https://user@fe1.corp:4443/x", b"https://user@fe1.corp:4443/x"),
            (b"ftp://fe1.corp:4443/x", b"ftp://fe1.corp:4443/x"),
            (b"/relative", b"/relative"),
            (b"//fe1.corp:4443/x", b"//fe1.corp:4443/x"),
            (b"https://fe1.corp:44a/x", b"https://fe1.corp:44a/x"),
            (b"https://[::1/x", b"https://[::1/x"),
            (b"", b""),
        ]
        for location, expected in cases:
            self.assertEqual(rewrite(location), expected, msg=f"input {location!r}")

    @given(st.binary(max_size=60))
    def test_never_raises(self, location: bytes) -> None:
        """Any bytes give bytes back."""
        rewrite = location_rewriter(b"meet.example.com", "https", [("fe1.corp", 4443)])
        self.assertIsInstance(rewrite(location), bytes)


class UserOfTests(SynchronousTestCase):
    """
    L{user_of} finds the user in Basic and NTLM credentials, and never raises.
    """

    def test_basic(self) -> None:
        """Basic gives the part before the first colon."""
        self.assertEqual(user_of(b"Basic " + b64encode(b"alice:se:cret")), "alice")
        self.assertEqual(user_of(b"basic " + b64encode("j\u00fcrgen:x".encode())), "j\u00fcrgen")
        self.assertEqual(user_of(b"Basic " + b64encode(b"j\xfcrgen:x")), "j\u00fcrgen")
        self.assertIsNone(user_of(b"Basic " + b64encode(b":x")))
        self.assertIsNone(user_of(b"Basic !!!"))
        self.assertIsNone(user_of(b"Basic"))

    def test_ntlm(self) -> None:
        """An NTLM AUTHENTICATE message gives C{DOMAIN\\user}, Unicode or OEM."""
        self.assertEqual(
            user_of(_ntlm_authenticate("CORP".encode("utf-16-le"), "alice".encode("utf-16-le"))), "CORP\\alice"
        )
        self.assertEqual(user_of(_ntlm_authenticate(b"CORP", b"bob", flags=0x2)), "CORP\\bob")
        self.assertEqual(user_of(_ntlm_authenticate(b"", b"bob", flags=None)), "bob")
        self.assertEqual(user_of(_ntlm_authenticate(b"", "\u00e9".encode("utf-16-le"))), "\u00e9")

    def test_no_user(self) -> None:
        """Negotiate, NTLM negotiate/challenge messages, anonymous NTLM and other schemes show no user."""
        for value in [
            None,
            b"",
            b"Negotiate YIIB",
            b"Bearer abc",
            _ntlm_authenticate(b"", b"", flags=0x1),
            _ntlm_authenticate(b"D", b"u", message_type=1),
            _ntlm_authenticate(b"D", b"u", message_type=2),
            b"NTLM " + b64encode(b"NTLMSSP\x00\x01\x00\x00\x00" + b"\x00" * 20),
        ]:
            self.assertIsNone(user_of(value), msg=f"input {value!r}")

    def test_malformed_ntlm(self) -> None:
        """Offsets past the end, odd Unicode lengths and bad UTF-16 give C{None}."""
        good = bytearray(b64decode(_ntlm_authenticate(b"DD", b"uu")[5:]))
        past = bytearray(good)
        past[40:44] = (1000).to_bytes(4, "little")
        odd = bytearray(good)
        odd[36:38] = (3).to_bytes(2, "little")
        surrogate = _ntlm_authenticate(b"", b"\x00\xd8")
        for message in [bytes(past), bytes(odd), b"NTLMSSP\x00", b"XXXXXXXX" + bytes(good[8:])]:
            self.assertIsNone(user_of(b"NTLM " + b64encode(message)), msg=f"input {message!r}")
        self.assertIsNone(user_of(surrogate))
        self.assertIsNone(user_of(b"NTLM ####"))

    @given(st.binary(max_size=120))
    def test_never_raises(self, data: bytes) -> None:
        """Arbitrary NTLM and Basic tokens give a string or C{None}."""
        for value in [b"NTLM " + b64encode(data), b"Basic " + b64encode(data),
                      b"NTLM " + b64encode(b"NTLMSSP\x00\x03\x00\x00\x00" + data), data]:
            result = user_of(value)
            self.assertTrue(result is None or isinstance(result, str))


class ConnectionTests(SynchronousTestCase):
    """
    L{wants_upgrade} reads how a connection is used.
    """

    def test_wants_upgrade(self) -> None:
        """Both Upgrade and the C{upgrade} Connection token are needed."""
        self.assertTrue(wants_upgrade([(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")]))
        self.assertFalse(wants_upgrade([(b"upgrade", b"websocket")]))
        self.assertTrue(wants_upgrade([(b"connection", b"Upgrade"), (b"upgrade", b"WebSocket")]))
        for other in (b"h2c", b"websocket, h2c", b"TLS/1.2"):
            self.assertFalse(wants_upgrade([(b"connection", b"Upgrade"), (b"upgrade", other)]), other)
        self.assertFalse(wants_upgrade([(b"connection", b"upgrade")]))
        self.assertFalse(wants_upgrade([(b"connection", b"upgrades"), (b"upgrade", b"websocket")]))
        self.assertFalse(wants_upgrade([(b"connection", b"upgrade"), (b"upgrade", b"")]))


class CookieTests(SynchronousTestCase):
    """
    L{cookie_value} and L{set_cookie_value} carry the persistence cookie.
    """

    def test_cookie_value(self) -> None:
        """The named cookie, across headers and pairs; exact, case-sensitive names."""
        headers = [(b"cookie", b"a=1; MS-WSMAN=tok-en; b=2"), (b"cookie", b"c=3")]
        self.assertEqual(cookie_value(headers, "MS-WSMAN"), "tok-en")
        self.assertEqual(cookie_value(headers, "c"), "3")
        self.assertEqual(cookie_value([(b"cookie", b"x=;y=v=w")], "y"), "v=w")
        self.assertEqual(cookie_value([(b"cookie", b"x=;y=v")], "x"), "")
        self.assertIsNone(cookie_value(headers, "ms-wsman"))
        self.assertIsNone(cookie_value(headers, "WSMAN"))
        self.assertIsNone(cookie_value([(b"set-cookie", b"MS-WSMAN=t")], "MS-WSMAN"))
        self.assertIsNone(cookie_value([(b"cookie", b"MS-WSMAN")], "MS-WSMAN"))

    def test_set_cookie_value(self) -> None:
        """A session cookie for the whole site, without expiry or flags."""
        self.assertEqual(set_cookie_value("MS-WSMAN", "abc_-.="), b"MS-WSMAN=abc_-.=; Path=/")
        for name, value in [("a b", "x"), ("a", "x;y"), ("a", 'x"'), ("a", "x y"), ("", "x")]:
            self.assertRaises(ValueError, set_cookie_value, name, value)
