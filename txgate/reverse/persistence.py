# -*- test-case-name: tests.reverse.test_persistence -*-
"""
Keeping a client on the real server it started with.

Persistence is meant to hold across nodes and worker processes without
them talking to each other:

  - active-cookie: the cookie value is the server's key with an HMAC tag,
    so any node holding the same key file reads and issues the same tokens,
    and a client cannot steer itself to a server of its choosing;
  - source-IP: rendezvous hashing maps a client address to the same server
    on every node; a small table on top honours the configured timeout (a
    client keeps its server for C{timeout} seconds even if a server that
    comes back Up would now win the hash).

Everything here is pure apart from L{load_or_create_key}, which reads or
creates the shared key file.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import math
import os
import secrets
import stat
from collections import OrderedDict
from typing import Iterable, Sequence

import attrs

from txgate.errors import ConfigError
from txgate.pki.keyring import _write_atomically, private_directory
from txgate.reverse.balancing import RealServer, Scheduler

__all__ = [
    "KEY_SIZE",
    "load_or_create_key",
    "CookieSigner",
    "rendezvous",
    "Choice",
    "CookiePersistence",
    "SourceIPPersistence",
    "NoPersistence",
]

KEY_SIZE = 32
"""Bytes of the persistence key (HMAC-SHA256 key)."""

TAG_SIZE = 16
"""Bytes of the HMAC tag kept in a token: 128 bits, far beyond guessing."""

MAX_TOKEN_LENGTH = 512
"""Longer cookie values are refused before any decoding (server keys are short)."""

_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_DOMAIN = b"txgate reverse persistence v1\0"


def load_or_create_key(path: str) -> bytes:
    """
    The persistence key in C{path}: created on first use (L{KEY_SIZE} random
    bytes, file 0600 in a 0700 directory), read afterwards.

    The file appears complete or not at all: it is written under a temporary
    name and linked into place, and if another process (a worker, a second
    node on shared storage) created it first, that file wins and is read,
    so everyone ends up with the same key.

    @raise ConfigError: naming C{path}, when the file is not a regular file,
        is readable or writable by group or others, cannot be read, or does
        not hold exactly L{KEY_SIZE} bytes.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.lexists(path):
        try:
            private_directory(directory)
            _create_key(path)
        except OSError as e:
            raise ConfigError(path, "", f"cannot create the persistence key: {e.strerror or e}") from None
    return _read_key(path)


def _create_key(path: str) -> None:
    tmp = f"{path}.new{os.getpid()}"
    _write_atomically(tmp, secrets.token_bytes(KEY_SIZE), 0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass  # someone else was first: use theirs
    finally:
        os.unlink(tmp)


def _read_key(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # no link, no FIFO wait
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(path, "", "persistence key is a symbolic link; a regular file is required") from None
        raise ConfigError(path, "", f"persistence key cannot be read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, "", "persistence key is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                path, "", f"persistence key is accessible by others (mode {mode:04o}); chmod 600 it"
            )
        try:
            data = os.read(fd, KEY_SIZE + 1)
        except OSError as e:
            raise ConfigError(path, "", f"persistence key cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) != KEY_SIZE:
        size = f"{KEY_SIZE}+" if len(data) > KEY_SIZE else str(len(data))
        raise ConfigError(
            path, "", f"persistence key must be exactly {KEY_SIZE} bytes, found {size}; delete it to make a new one"
        )
    return data


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class CookieSigner:
    """
    Issues and reads the active-cookie tokens: the first L{TAG_SIZE} bytes
    of HMAC-SHA256 over the server key, base64url. Opaque, so a cookie does
    not tell internet clients the real servers' internal addresses; only
    characters a cookie value may hold unquoted (letters, digits, C{-},
    C{_}).

    Deterministic: the same key and server give the same token on every
    node, so tokens issued by one node are honoured by the others.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError(f"persistence key too short ({len(key)} bytes, 16 at least)")
        self._key = bytes(key)
        self._tokens: dict[str, str] = {}
        """The token of each server key met so far (the configured ones)."""

    def issue(self, server_key: str) -> str:
        """The cookie value naming C{server_key}."""
        token = self._tokens.get(server_key)
        if token is None:
            tag = hmac.new(self._key, _DOMAIN + server_key.encode("utf-8"), hashlib.sha256).digest()[:TAG_SIZE]
            token = self._tokens[server_key] = _b64(tag)
        return token

    def server_of(self, token: str | None, server_keys: Iterable[str]) -> str | None:
        """
        Which of C{server_keys} C{token} names, or C{None} when none: a
        malformed, forged or truncated token, one made with another key, or
        one for a server no longer configured. Never raises: a cookie is
        whatever a client sent.
        """
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            return None
        for key in server_keys:
            if hmac.compare_digest(self.issue(key), token):
                return key
        return None


_UNIT = 1.0 / (1 << 53)


def rendezvous(client: str, servers: Sequence[RealServer]) -> RealServer | None:
    """
    The server C{client} hashes to among those Up with weight above 0
    (weighted rendezvous, or highest random weight, hashing).

    Each server scores C{-weight / ln(u)}, C{u} a uniform value in (0, 1)
    drawn from a hash of the client and the server key; the highest score
    wins. A server's share of clients is proportional to its weight, every
    node computes the same answer from the same list, and a server going
    Down moves only the clients that were on it (the others' winners are
    unchanged).

    @param client: the client's identity, normally its IP address.
    """
    prefix = client.encode("utf-8", "surrogateescape") + b"\0"
    best: RealServer | None = None
    best_score = 0.0
    for server in servers:
        if not (server.up and server.weight > 0):
            continue
        digest = hashlib.blake2b(prefix + server.key.encode("utf-8"), digest_size=8).digest()
        # The top 53 bits, centred in their interval: exactly representable,
        # strictly between 0 and 1, so the logarithm is finite and negative.
        u = ((int.from_bytes(digest, "big") >> 11) + 0.5) * _UNIT
        score = -server.weight / math.log(u)
        if best is None or score > best_score or (score == best_score and server.key < best.key):
            best = server
            best_score = score
    return best


@attrs.frozen
class Choice:
    """
    Where persistence sends one request.

    @ivar server: the real server, or C{None} when none is Up (a 503).
    @ivar hit: whether persistence kept the client on a server it had before.
    @ivar set_cookie: a cookie value to send in the response, when the
        client needs a new one.
    """

    server: RealServer | None
    hit: bool = False
    set_cookie: str | None = None


def _up(key: str, servers: Sequence[RealServer]) -> RealServer | None:
    """
    The server named C{key} if it is Up. Its weight does not matter: weight
    0 drains a server, which keeps its persistent clients and takes no new ones.
    """
    for server in servers:
        if server.key == key:
            return server if server.up else None
    return None


@attrs.define
class CookiePersistence:
    """
    Active-cookie persistence: a request with a valid token for an Up server
    goes there; any other gets a server from the scheduler and a new token.

    @ivar name: the cookie's name (C{MS-WSMAN} for Lync/Skype web services).
    """

    signer: CookieSigner
    name: str = "MS-WSMAN"

    def choose(
        self, cookie: str | None, client_ip: str, servers: Sequence[RealServer], scheduler: Scheduler, now: float
    ) -> Choice:
        """
        @param cookie: the value of the request's cookie named L{name}, if any
            (see L{txgate.reverse.headers.cookie_value}).
        """
        if cookie is not None:
            key = self.signer.server_of(cookie, (s.key for s in servers))
            if key is not None:
                server = _up(key, servers)
                if server is not None:
                    server.persistence_hits += 1
                    return Choice(server, True, None)
        server = scheduler.choose(servers)
        if server is None:
            return Choice(None, False, None)
        return Choice(server, False, self.signer.issue(server.key))


class SourceIPPersistence:
    """
    Source-IP persistence: rendezvous hashing, plus a table remembering each
    client's server for C{timeout} seconds after its last request.

    The table is what honours the timeout when servers change: a client
    stays on its server while that server is Up, even if another server's
    return would now win the hash; after C{timeout} idle seconds it follows
    the hash again. Entries are refreshed on use, dropped lazily once
    expired, and the least recently seen go first when the table is full,
    so memory is bounded whatever the clients do.

    @ivar timeout: seconds an idle client keeps its server.
    @ivar max_entries: clients remembered at most.
    """

    def __init__(self, timeout: float, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.timeout = timeout
        self.max_entries = max_entries
        # client IP -> (server key, last seen); ordered least recently seen
        # first, as long as C{now} never goes backwards.
        self._table: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def choose(
        self, cookie: str | None, client_ip: str, servers: Sequence[RealServer], scheduler: Scheduler, now: float
    ) -> Choice:
        """The cookie and scheduler are ignored: the client's address decides."""
        table = self._table
        self._expire(now)
        entry = table.get(client_ip)
        if entry is not None and now - entry[1] <= self.timeout:
            server = _up(entry[0], servers)
            if server is not None:
                table[client_ip] = (server.key, now)
                table.move_to_end(client_ip)
                server.persistence_hits += 1
                return Choice(server, True, None)
        server = rendezvous(client_ip, servers)
        if server is None:
            return Choice(None, False, None)
        table[client_ip] = (server.key, now)
        table.move_to_end(client_ip)
        while len(table) > self.max_entries:
            table.popitem(last=False)
        return Choice(server, False, None)

    def _expire(self, now: float, budget: int = 8) -> None:
        """Drop a few expired entries from the old end: amortised O(1) per request."""
        table = self._table
        while budget and table:
            client, (_, seen) = next(iter(table.items()))
            if now - seen <= self.timeout:
                return
            del table[client]
            budget -= 1


@attrs.define
class NoPersistence:
    """Every request goes where the scheduler says."""

    def choose(
        self, cookie: str | None, client_ip: str, servers: Sequence[RealServer], scheduler: Scheduler, now: float
    ) -> Choice:
        return Choice(scheduler.choose(servers), False, None)
