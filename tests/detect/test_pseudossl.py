"""
Tests for L{txgate.detect.pseudossl}: libjingle's canned SSLv2 hello.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import pseudossl
from txgate.detect.pseudossl import PSEUDO_SSL_CLIENT_HELLO
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected

from .samples import assert_detects, assert_not_mine


class PseudoSslTests(SynchronousTestCase):
    def test_layout(self) -> None:
        """72 bytes: an SSLv2 record of 70 bytes, CLIENT-HELLO 3.1, 15 specs, 16-byte challenge."""
        hello = PSEUDO_SSL_CLIENT_HELLO
        self.assertEqual(len(hello), 72)
        self.assertEqual((hello[0] & 0x7F) << 8 | hello[1], len(hello) - 2)
        self.assertEqual(hello[2:5], b"\x01\x03\x01")
        specs, session, challenge = (int.from_bytes(hello[i : i + 2], "big") for i in (5, 7, 9))
        self.assertEqual((specs, session, challenge), (45, 0, 16))
        self.assertEqual(11 + specs + session + challenge, len(hello))

    def test_detected(self) -> None:
        assert_detects(self, pseudossl.detect, PSEUDO_SSL_CLIENT_HELLO, Detected("pseudo-ssl"), "canned hello")

    def test_any_other_byte(self) -> None:
        """Any changed byte makes it not the canned hello (libjingle's server accepts only it)."""
        for index in range(len(PSEUDO_SSL_CLIENT_HELLO)):
            data = bytearray(PSEUDO_SSL_CLIENT_HELLO)
            data[index] ^= 0x80
            self.assertIs(pseudossl.detect(bytes(data)), NOT_MINE, msg=f"byte {index} changed")

    def test_others(self) -> None:
        assert_not_mine(self, pseudossl.detect, b"\x16\x03\x01\x00\x2d", "TLS record")
        assert_not_mine(self, pseudossl.detect, b"\x80\x46\x01\x03\x00", "SSL 3.0 SSLv2 hello")
        self.assertIs(pseudossl.detect(b""), NEED_MORE)

    @given(st.binary(max_size=100))
    def test_never_raises(self, data: bytes) -> None:
        pseudossl.detect(data)
        pseudossl.detect(PSEUDO_SSL_CLIENT_HELLO[:40] + data)
