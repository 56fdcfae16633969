# -*- test-case-name: tests.auth.test_htpasswd -*-
"""
htpasswd-style password files: C{user:hash}, one a line.

Only hashes that are salted are accepted: bcrypt (C{$2a$}, C{$2b$}, C{$2y$},
as C{htpasswd -B} writes them) and salted SHA-1 (C{{SSHA}}, as
C{slappasswd} writes them). Anything else is refused when the file is read,
with the file and line, rather than accepted and checked weakly: plaintext,
unsalted C{{SHA}}, Apache MD5 (C{$apr1$}), crypt(3) DES and MD5, SHA-crypt.

Pure: parsing takes text and verifying takes a password; nothing here reads
a clock or a socket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Mapping

import attrs
import bcrypt

from txgate.config._files import read_text
from txgate.errors import ConfigError, ConfigErrors

__all__ = ["Htpasswd", "parse_htpasswd", "load_htpasswd", "BCRYPT_MAX_PASSWORD"]

BCRYPT_MAX_PASSWORD = 72
"""
bcrypt reads at most 72 bytes of a password and ignores the rest. A longer
password never verifies against a bcrypt entry: accepting it would accept
every password sharing its first 72 bytes.
"""

SSHA_MIN_SALT = 4
"""Bytes of salt an C{{SSHA}} entry needs (C{slappasswd} uses 4)."""

_BCRYPT = re.compile(rb"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_CRYPT_DES = re.compile(r"[./A-Za-z0-9]{13}")

_REFUSED_PREFIXES = (
    ("$apr1$", "Apache MD5 ($apr1$) hashes are refused: they are fast to guess"),
    ("{SHA}", "unsalted {SHA} hashes are refused: they are fast to guess and precomputable"),
    ("$1$", "MD5-crypt ($1$) hashes are refused: they are fast to guess"),
    ("$5$", "SHA-256-crypt ($5$) hashes are not supported"),
    ("$6$", "SHA-512-crypt ($6$) hashes are not supported"),
    ("$2x$", "bcrypt $2x$ hashes come from a buggy implementation and are refused"),
    ("$2$", "bcrypt $2$ hashes are an obsolete variant and are refused"),
)

_ADVICE = "; re-create the entry with `htpasswd -B` (bcrypt)"


class _Entry:
    """A stored hash that can check a password."""

    def check(self, password: bytes) -> bool:
        raise NotImplementedError()


@attrs.frozen(repr=False)
class _Bcrypt(_Entry):
    hashed: bytes

    def check(self, password: bytes) -> bool:
        # Always run bcrypt, even for an over-long password, so the answer
        # takes as long whatever the password.
        matched = bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], self.hashed)
        return matched and len(password) <= BCRYPT_MAX_PASSWORD

    @property
    def cost(self) -> int:
        return int(self.hashed[4:6])


@attrs.frozen(repr=False)
class _Ssha(_Entry):
    digest: bytes
    salt: bytes

    def check(self, password: bytes) -> bool:
        return hmac.compare_digest(hashlib.sha1(password + self.salt).digest(), self.digest)


def _dummy_for(entries: Mapping[str, _Entry]) -> _Entry:
    """
    An entry no password matches, as costly to check as the file's own: an
    unknown user then takes as long to refuse as a wrong password, so user
    names cannot be probed by timing.
    """
    costs = [e.cost for e in entries.values() if isinstance(e, _Bcrypt)]
    if costs:
        # The most common cost (the highest among equals): what a wrong
        # password for a typical user costs.
        cost = max(set(costs), key=lambda c: (costs.count(c), c))
        # Any syntactically valid hash will do: bcrypt computes the hash of
        # the password with this salt and cost, then finds it differs.
        return _Bcrypt(b"$2b$%02d$" % cost + b"." * 53)
    return _Ssha(b"\x00" * 20, b"\x00" * SSHA_MIN_SALT)


@attrs.frozen
class Htpasswd:
    """
    The users of one password file.

    @ivar path: the file, for messages.
    @ivar users: the user names, in file order.
    """

    path: str
    _entries: Mapping[str, _Entry] = attrs.field(repr=False)
    _dummy: _Entry = attrs.field(repr=False)

    @property
    def users(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def verify(self, user: str, password: bytes | str) -> bool:
        """
        Whether C{password} is C{user}'s. An unknown user costs as much time
        as a wrong password.

        @param password: as the client sent it (bytes), or text, which is
            encoded as UTF-8.
        """
        if isinstance(password, str):
            password = password.encode("utf-8")
        entry = self._entries.get(user)
        if entry is None:
            self._dummy.check(password)
            return False
        return entry.check(password)


def _parse_hash(text: str) -> _Entry:
    """
    @raise ValueError: with the reason the hash is refused. The message never
        includes the hash: a refused "hash" may be a plaintext password.
    """
    for prefix, why in _REFUSED_PREFIXES:
        if text.startswith(prefix):
            raise ValueError(why + _ADVICE)
    if text.startswith("$2"):
        raw = text.encode("ascii", "replace")
        match = _BCRYPT.fullmatch(raw)
        if match is None:
            raise ValueError("malformed bcrypt hash: expected $2b$NN$ and 53 characters of [./A-Za-z0-9]")
        cost = int(match.group(1))
        if not 4 <= cost <= 31:
            raise ValueError(f"bcrypt cost must be from 4 to 31, got {cost}")
        return _Bcrypt(raw)
    if text.startswith("{SSHA}"):
        try:
            raw = base64.b64decode(text[len("{SSHA}"):].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("malformed {SSHA} hash: expected base64 after {SSHA}") from None
        if len(raw) < 20 + SSHA_MIN_SALT:
            raise ValueError(
                f"malformed {{SSHA}} hash: expected a 20-byte SHA-1 digest and at least"
                f" {SSHA_MIN_SALT} bytes of salt, got {len(raw)} bytes"
            )
        return _Ssha(raw[:20], raw[20:])
    if text.startswith("{"):
        scheme = text[: text.find("}") + 1] if "}" in text else "{...}"
        if re.fullmatch(r"\{[A-Za-z0-9-]{1,16}\}", scheme):
            raise ValueError(f"{scheme} hashes are not supported (accepted: bcrypt, {{SSHA}})" + _ADVICE)
    if text.startswith("$"):
        raise ValueError("unknown $...$ hash scheme (accepted: bcrypt $2a$/$2b$/$2y$, {SSHA})" + _ADVICE)
    if _CRYPT_DES.fullmatch(text):
        raise ValueError("crypt(3) DES hashes are refused: they use 8 characters of the password at most" + _ADVICE)
    raise ValueError("not a bcrypt or {SSHA} hash; plaintext passwords are refused" + _ADVICE)


def parse_htpasswd(text: str, path: str) -> Htpasswd:
    """
    Read the text of an htpasswd-style file: C{user:hash} per line; blank
    lines and lines starting with C{#} are skipped.

    @raise ConfigErrors: naming C{path}:line for every refused line
        (unaccepted hash, no colon, empty user, user listed twice).
    """
    entries: dict[str, _Entry] = {}
    lines: dict[str, int] = {}
    errors: list[ConfigError] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        user, colon, hashed = stripped.partition(":")
        if not colon:
            errors.append(ConfigError(path, "", "expected user:hash, found no ':'", number))
            continue
        if not user:
            errors.append(ConfigError(path, "", "empty user name", number))
            continue
        if user in lines:
            errors.append(ConfigError(path, "", f"user {user!r} is already listed on line {lines[user]}", number))
            continue
        try:
            entry = _parse_hash(hashed.strip())
        except ValueError as e:
            errors.append(ConfigError(path, "", f"user {user!r}: {e}", number))
            continue
        entries[user] = entry
        lines[user] = number
    if errors:
        raise ConfigErrors(tuple(errors))
    return Htpasswd(path, entries, _dummy_for(entries))


def load_htpasswd(path: str) -> Htpasswd:
    """
    Read and parse the htpasswd-style file at C{path}.

    @raise ConfigErrors: the file cannot be read, is not UTF-8, or has
        refused lines (each naming C{path}:line).
    """
    text = read_text(path)
    return parse_htpasswd(text, path)
