# -*- test-case-name: tests.auth.test_realm -*-
"""
Authentication realms: an htpasswd file, the Basic credentials a client sends
in C{Proxy-Authorization}, and a short-lived cache of the ones verified.

Pure: the caller passes the time (C{now}); nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
from typing import Sequence

import attrs

from txgate.auth.htpasswd import Htpasswd

__all__ = ["Realm", "Authenticated", "Refused", "CredentialCache", "CACHE_SIZE"]

CACHE_SIZE = 10_000
"""
Verified C{Proxy-Authorization} values a realm remembers. Each entry is a
digest and a user name (about 200 bytes), so the cache stays near 2 MB; past
the limit the oldest entry goes, and its next use runs the hash again.
"""


@attrs.frozen
class Authenticated:
    """The credentials are valid: the request is C{user}'s."""

    user: str


@attrs.frozen
class Refused:
    """
    The client must (re)authenticate: answer 407 with a challenge.

    @ivar reason: for the log and the error page; never holds the password.
    """

    reason: str


class CredentialCache:
    """
    Remembers which C{Proxy-Authorization} values were valid, keyed by their
    SHA-256, so a slow password hash (bcrypt) runs once per TTL per client
    rather than once per request.

    Only valid values are remembered: a wrong password costs a hash every
    time, as it should.
    """

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._entries: collections.OrderedDict[bytes, tuple[str, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, now: float) -> str | None:
        """The user C{key} was verified for, unless that has expired."""
        found = self._entries.get(key)
        if found is None:
            return None
        user, expires = found
        if now >= expires:
            del self._entries[key]
            return None
        return user

    def put(self, key: bytes, user: str, expires: float) -> None:
        """Remember C{key} as C{user}'s until C{expires}; evict the oldest past the size."""
        self._entries.pop(key, None)
        self._entries[key] = (user, expires)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)


def _basic(value: bytes) -> tuple[str, bytes] | str:
    """
    The user and password of a C{Basic} credentials value (RFC 7617), or
    the reason it cannot be read.
    """
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return "unsupported"
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "malformed"
    user, colon, password = decoded.partition(b":")
    if not colon or not user:
        return "malformed"
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return "malformed"


@attrs.frozen
class Realm:
    """
    One C{[realm.NAME]}: the users of its htpasswd file.

    @ivar name: the realm, sent in C{Proxy-Authenticate: Basic realm="NAME"}.
    @ivar credentials_ttl: seconds a verified C{Proxy-Authorization} value is
        accepted again without hashing; 0 hashes every request.
    """

    name: str
    htpasswd: Htpasswd
    credentials_ttl: float = 300.0
    _cache: CredentialCache = attrs.field(factory=CredentialCache, eq=False, repr=False)

    @property
    def challenge(self) -> bytes:
        """The C{Proxy-Authenticate} value asking for this realm's credentials."""
        return b'Basic realm="' + self.name.encode("ascii") + b'"'

    def authenticate(self, values: Sequence[bytes], now: float) -> Authenticated | Refused:
        """
        Check the C{Proxy-Authorization} values of one request.

        @param values: every C{Proxy-Authorization} header value, in order.
        @param now: the current time, for the cache.
        """
        if not values:
            return Refused("authentication required")
        invalid = Refused(f"invalid credentials for realm {self.name}")
        if len(values) > 1:
            return invalid
        value = values[0]
        key = hashlib.sha256(value).digest()
        user = self._cache.get(key, now)
        if user is not None:
            return Authenticated(user)
        parsed = _basic(value)
        if parsed == "unsupported":
            scheme = value.strip().partition(b" ")[0][:32].decode("ascii", "replace")
            return Refused(f"authentication required (scheme {scheme!r} is not supported; Basic is)")
        if isinstance(parsed, str):
            return invalid
        user, password = parsed
        if not self.htpasswd.verify(user, password):
            return invalid
        if self.credentials_ttl > 0:
            self._cache.put(key, user, now + self.credentials_ttl)
        return Authenticated(user)
