# -*- test-case-name: tests.pki.test_serials -*-
"""
Serial numbers that say who issued them: 64 random bits followed by a 64-bit
HMAC-SHA256 tag of those bits, keyed by a secret derived from the issuer's
private key.

The OCSP responder answers C{good} only for certificates txgate issued. With
these serials it can tell without a database, across restarts, and on every
node that shares the keyring.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives import serialization

__all__ = ["SerialIssuer"]

_LABEL = b"txgate serial numbers v1\x00"
_HALF = 64


class SerialIssuer:
    """Makes and recognises txgate's serial numbers."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def from_key(cls, issuer_key) -> SerialIssuer:
        """The issuer whose secret derives from C{issuer_key} (same key, same secret)."""
        der = issuer_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(hashlib.sha256(_LABEL + der).digest())

    def _tag(self, nonce: int) -> int:
        digest = hmac.new(self._secret, nonce.to_bytes(8, "big"), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big")

    def new(self) -> int:
        """A fresh serial: positive, at most 128 bits (17 DER bytes)."""
        nonce = secrets.randbits(_HALF) | (1 << (_HALF - 1))  # never a short serial
        return (nonce << _HALF) | self._tag(nonce)

    def issued(self, serial: int) -> bool:
        """Whether C{serial} came from L{new} with this secret."""
        if serial <= 0 or serial.bit_length() > 2 * _HALF:
            return False
        nonce, tag = serial >> _HALF, serial & ((1 << _HALF) - 1)
        return hmac.compare_digest(self._tag(nonce).to_bytes(8, "big"), tag.to_bytes(8, "big"))
