# -*- test-case-name: tests.pki.test_serials -*-
"""
Tests for L{txgate.pki.serials}: serials that prove txgate issued them.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.pki.serials import SerialIssuer

from .helpers import keyring


class SerialTests(SynchronousTestCase):
    def test_recognised_by_any_issuer_of_the_same_key(self) -> None:
        """Two nodes (or a restart) sharing the keyring agree."""
        a, b = SerialIssuer.from_key(keyring().issuer_key), SerialIssuer.from_key(keyring().issuer_key)
        serial = a.new()
        self.assertTrue(b.issued(serial))

    def test_other_key_does_not_recognise(self) -> None:
        mine, other = SerialIssuer.from_key(keyring().issuer_key), SerialIssuer.from_key(keyring().untrusted_key)
        self.assertFalse(other.issued(mine.new()))

    def test_shape(self) -> None:
        """Positive, 128 bits, distinct."""
        issuer = SerialIssuer(b"k")
        serials = {issuer.new() for _ in range(100)}
        self.assertEqual(len(serials), 100)
        self.assertTrue(all(s.bit_length() == 128 for s in serials))

    @given(st.integers(min_value=-(2**130), max_value=2**130))
    def test_random_serials_not_issued(self, serial: int) -> None:
        self.assertFalse(SerialIssuer(b"k").issued(serial))
