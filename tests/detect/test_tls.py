"""
Tests for L{txgate.detect.tls}: ClientHello parsing and the C{tls} detector.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import msturn, tls
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected

from .samples import RANDOM_A, assert_detects, assert_not_mine, capture


def handshake_of(data: bytes) -> bytes:
    """The handshake bytes carried by the records in C{data}."""
    out = b""
    while data:
        length = int.from_bytes(data[3:5], "big")
        out += data[5 : 5 + length]
        data = data[5 + length :]
    return out


def records(handshake: bytes, size: int, version: bytes = b"\x03\x01") -> bytes:
    """C{handshake} split into handshake records of at most C{size} bytes."""
    return b"".join(
        b"\x16" + version + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (handshake[i : i + size] for i in range(0, len(handshake), size))
    )


def client_hello(
    extensions: list[tuple[int, bytes]] | None,
    *,
    version: int = 0x0303,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    raw_extensions: bytes | None = None,
) -> bytes:
    """A ClientHello handshake message (header included)."""
    body = version.to_bytes(2, "big") + RANDOM_A
    body += bytes([len(session_id)]) + session_id
    body += len(suites).to_bytes(2, "big") + suites
    body += bytes([len(compression)]) + compression
    if raw_extensions is not None:
        body += raw_extensions
    elif extensions is not None:
        block = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
        body += len(block).to_bytes(2, "big") + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni(name: bytes) -> tuple[int, bytes]:
    entry = b"\x00" + len(name).to_bytes(2, "big") + name
    return (0x0000, len(entry).to_bytes(2, "big") + entry)


def alpn(*names: bytes) -> tuple[int, bytes]:
    block = b"".join(bytes([len(n)]) + n for n in names)
    return (0x0010, len(block).to_bytes(2, "big") + block)


def versions(*vs: int) -> tuple[int, bytes]:
    block = b"".join(v.to_bytes(2, "big") for v in vs)
    return (0x002B, bytes([len(block)]) + block)


OPENSSL_FACTS = {
    "sni": "meet.example.com",
    "alpn": ("h2", "http/1.1"),
    "versions": (0x0304, 0x0303, 0x0302, 0x0301),
    "ech": False,
}


class CaptureTests(SynchronousTestCase):
    """The ClientHellos real clients sent are C{ssl}, whole, byte by byte, and followed by more."""

    def test_openssl(self) -> None:
        assert_detects(self, tls.detect, capture("tls_openssl"), Detected("ssl", OPENSSL_FACTS), "openssl")

    def test_curl(self) -> None:
        facts = dict(OPENSSL_FACTS, alpn=("http/1.1",))
        assert_detects(self, tls.detect, capture("tls_curl"), Detected("ssl", facts), "curl")

    def test_two_records(self) -> None:
        """openssl's ClientHello in a 512-byte and a 463-byte record is reassembled."""
        data = capture("tls_openssl_split")
        self.assertEqual(data[:5], b"\x16\x03\x01\x02\x00")
        hello = tls.parse_client_hello(data)
        assert hello is not None
        self.assertEqual(hello.sni, "meet.example.com")
        self.assertEqual(len(hello.alpn), 18)
        self.assertEqual(hello.alpn[-1], "x-long-protocol-name-15-padding-padding")
        verdict = tls.detect(data)
        assert isinstance(verdict, Detected)
        assert_detects(self, tls.detect, data, verdict, "two records")
        # Without its second record, it is not complete yet.
        self.assertIs(tls.detect(data[:517]), NEED_MORE)

    def test_resplit(self) -> None:
        """The same hello split into records of 1, 7 and 100 bytes is still read."""
        handshake = handshake_of(capture("tls_openssl"))
        for size in (1, 7, 100):
            data = records(handshake, size)
            self.assertEqual(tls.detect(data), Detected("ssl", OPENSSL_FACTS), msg=f"records of {size}")

    def test_parse_fields(self) -> None:
        hello = tls.parse_client_hello(capture("tls_openssl"))
        assert hello is not None
        self.assertEqual(hello.legacy_version, 0x0303)
        self.assertEqual(len(hello.random), 32)
        self.assertEqual(len(hello.session_id), 32)
        self.assertIn(0x1301, hello.cipher_suites)
        self.assertEqual([t for t, _ in hello.extensions][:1], [0x0000])
        self.assertFalse(hello.ech)


class SyntheticTests(SynchronousTestCase):
    """Built ClientHellos cover what the captures do not."""

    def test_uint16s(self) -> None:
        """TLS lists of 16-bit numbers, big-endian; an odd last byte is left out."""
        self.assertEqual(tls.uint16s(b"\x13\x01\xc0\x2b"), (0x1301, 0xC02B))
        self.assertEqual(tls.uint16s(b"\x03\x04\x03"), (0x0304,))
        self.assertEqual(tls.uint16s(b""), ())

    def test_ech(self) -> None:
        data = records(client_hello([sni(b"public.example.com"), (0xFE0D, b"\x00\x01\x02")]), 1000)
        self.assertEqual(
            tls.detect(data),
            Detected("ssl", {"sni": "public.example.com", "alpn": (), "versions": (0x0303,), "ech": True}),
        )

    def test_no_extensions(self) -> None:
        """A TLS 1.0 hello without extensions is C{ssl}, versions from client_version."""
        data = records(client_hello(None, version=0x0301, suites=b"\x00\x2f"), 1000)
        self.assertEqual(
            tls.detect(data), Detected("ssl", {"sni": None, "alpn": (), "versions": (0x0301,), "ech": False})
        )

    def test_supported_versions(self) -> None:
        data = records(client_hello([versions(0x0304), alpn(b"h2")]), 1000)
        self.assertEqual(
            tls.detect(data), Detected("ssl", {"sni": None, "alpn": ("h2",), "versions": (0x0304,), "ech": False})
        )

    def test_incomplete_is_none(self) -> None:
        data = records(client_hello([sni(b"a.example")]), 1000)
        for i in range(len(data)):
            self.assertIsNone(tls.parse_client_hello(data[:i]), msg=f"prefix of {i} bytes")

    def test_malformed(self) -> None:
        """Each malformed hello raises ValueError from the parser and is NOT_MINE to the detector."""
        good = client_hello([sni(b"a.example")])
        cases = {
            "application data record": b"\x17\x03\x03\x00\x05hello",
            "record version 2.0": b"\x16\x02\x00" + records(good, 1000)[3:],
            "record version 3.5": b"\x16\x03\x05" + records(good, 1000)[3:],
            "empty record": b"\x16\x03\x01\x00\x00" + records(good, 1000),
            "record too long": b"\x16\x03\x01\x40\x01" + good,
            "server hello": records(b"\x02" + good[1:], 1000),
            "client_version 2.0": records(client_hello(None, version=0x0200), 1000),
            "long session id": records(client_hello(None, session_id=bytes(33)), 1000),
            "odd cipher suites": records(client_hello(None, suites=b"\x13\x01\x13"), 1000),
            "no cipher suites": records(client_hello(None, suites=b""), 1000),
            "no compression": records(client_hello(None, compression=b""), 1000),
            "duplicate extension": records(client_hello([sni(b"a"), sni(b"b")]), 1000),
            "extension overrun": records(client_hello(None, raw_extensions=b"\x00\x08\x00\x00\x00\x09"), 1000),
            "bytes after extensions": records(client_hello(None, raw_extensions=b"\x00\x00\xff"), 1000),
            "non-ASCII SNI": records(client_hello([sni("bücher.example".encode())]), 1000),
            "empty ALPN name": records(client_hello([alpn(b"")]), 1000),
            "odd supported_versions": records(client_hello([(0x002B, b"\x03\x03\x04\x03")]), 1000),
            "handshake too short": b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00",
        }
        for label, data in cases.items():
            with self.assertRaises(ValueError, msg=label):
                tls.parse_client_hello(data)
            self.assertIs(tls.detect(data), NOT_MINE, msg=label)

    def test_not_tls(self) -> None:
        """An SSLv2-format hello (pseudo-SSL's) and plain text are not C{ssl}."""
        assert_not_mine(self, tls.detect, b"\x80\x46\x01\x03\x01", "SSLv2")
        assert_not_mine(self, tls.detect, b"GET / HTTP/1.1\r\n", "HTTP")

    def test_empty(self) -> None:
        self.assertIs(tls.detect(b""), NEED_MORE)


class PseudoTlsTests(SynchronousTestCase):
    """The [MS-TURN] pseudo-TLS hello parses as TLS 1.0 but is not claimed as C{ssl}."""

    def test_not_claimed(self) -> None:
        for random in (RANDOM_A, bytes(32)):
            data = msturn.build_pseudo_tls_client_hello(random)
            hello = tls.parse_client_hello(data)
            assert hello is not None
            self.assertEqual(hello.cipher_suites, (0x0018,))
            self.assertIs(tls.detect(data), NOT_MINE)
            self.assertIs(tls.detect(data + b"\x02\x00\x00\x00"), NOT_MINE)
            for i in range(len(data)):
                self.assertIs(tls.detect(data[:i]), NEED_MORE, msg=f"prefix of {i} bytes")


class FuzzTests(SynchronousTestCase):
    """The parser raises only ValueError, and the detector never raises."""

    @given(st.binary(max_size=600))
    def test_arbitrary(self, data: bytes) -> None:
        try:
            tls.parse_client_hello(data)
        except ValueError:
            pass
        self.assertIn(type(tls.detect(data)).__name__, ("Detected", "_Sentinel"))

    @given(st.binary(max_size=300))
    def test_after_record_header(self, data: bytes) -> None:
        """Random bytes behind a plausible header exercise the handshake parser."""
        framed = b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data
        try:
            tls.parse_client_hello(framed)
        except ValueError:
            pass
        tls.detect(framed)

    @given(st.integers(0, 339), st.integers(0, 255))
    def test_mutated_capture(self, index: int, value: int) -> None:
        data = bytearray(capture("tls_openssl"))
        data[index] = value
        try:
            tls.parse_client_hello(bytes(data))
        except ValueError:
            pass
        tls.detect(bytes(data))
