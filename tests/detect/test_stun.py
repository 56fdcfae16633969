"""
Tests for L{txgate.detect.stun}: STUN/TURN over TCP.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import stun
from txgate.interfaces import NEED_MORE, Detected

from .samples import assert_detects, assert_not_mine, capture

PLAIN = Detected("stun", {"framing": "plain", "cookie": True})
FRAMED = Detected("stun", {"framing": "rfc4571", "cookie": True})
CLASSIC = Detected("stun", {"framing": "plain", "cookie": False})


def classic(message_type: int, attributes: bytes) -> bytes:
    """An RFC 3489-style message: no cookie, a 16-byte transaction id."""
    return message_type.to_bytes(2, "big") + len(attributes).to_bytes(2, "big") + bytes(range(16)) + attributes


CHANGE_REQUEST = bytes.fromhex("00030004 00000000".replace(" ", ""))


class StunTests(SynchronousTestCase):
    def test_turnutils_allocate(self) -> None:
        """coturn's Allocate over TCP: RFC 5389 cookie, no framing."""
        data = capture("stun_turnutils")
        self.assertEqual(data[4:8], stun.MAGIC_COOKIE)
        assert_detects(self, stun.detect, data, PLAIN, "turnutils_uclient")

    def test_rfc4571(self) -> None:
        """The same message behind an RFC 4571 length: cookie at offset 6."""
        data = capture("stun_turnutils")
        framed = len(data).to_bytes(2, "big") + data
        self.assertEqual(framed[6:10], stun.MAGIC_COOKIE)
        assert_detects(self, stun.detect, framed, FRAMED, "RFC 4571")

    def test_binding(self) -> None:
        binding = bytes.fromhex("0001 0000 2112a442".replace(" ", "")) + bytes(12)
        assert_detects(self, stun.detect, binding, PLAIN, "Binding request")

    def test_classic(self) -> None:
        for label, data in (
            ("Binding, no attributes", classic(0x0001, b"")),
            ("Binding, CHANGE-REQUEST", classic(0x0001, CHANGE_REQUEST)),
            ("Allocate, padded attribute", classic(0x0003, bytes.fromhex("00060003 616263 00".replace(" ", "")))),
        ):
            assert_detects(self, stun.detect, data, CLASSIC, label)

    def test_not_stun(self) -> None:
        cases = {
            "top bits set": bytes.fromhex("4001 0000 2112a442") + bytes(12),
            "length not multiple of 4": bytes.fromhex("0001 0002 2112a442") + bytes(14),
            "classic Binding response": classic(0x0101, b""),
            "classic Send indication": classic(0x0004, CHANGE_REQUEST),
            "classic attributes overrun": classic(0x0001, bytes.fromhex("00030008 00000000")),
            "classic too long": classic(0x0003, bytes(4) * 1000),
            "RFC 4571 length mismatch": b"\x00\x30" + capture("stun_turnutils"),
            "RFC 4571 without cookie": b"\x00\x14" + classic(0x0001, b""),
            "TLS": capture("tls_openssl"),
            "MS-TURN frame": b"\x02\x00\x00\x1c" + classic(0x0003, bytes.fromhex("000f000472c64bc6")),
            "HTTP": b"GET / HTTP/1.1\r\n",
        }
        for label, data in cases.items():
            assert_not_mine(self, stun.detect, data, label)

    def test_empty(self) -> None:
        self.assertIs(stun.detect(b""), NEED_MORE)

    @given(st.binary(max_size=120))
    def test_never_raises(self, data: bytes) -> None:
        stun.detect(data)
        stun.detect(b"\x00\x01" + data)
        stun.detect(b"\x00\x03\x00\x08" + bytes(16) + data)
