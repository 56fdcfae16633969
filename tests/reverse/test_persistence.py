"""
Tests for L{txgate.reverse.persistence}: the key file, signed cookies,
rendezvous hashing and the three persistence modes.
"""

from __future__ import annotations

import base64
import os
import stat
from collections import Counter

from hypothesis import given, strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import ConfigError
from txgate.reverse.balancing import RealServer, RoundRobin
from txgate.reverse.persistence import (
    KEY_SIZE,
    Choice,
    CookiePersistence,
    CookieSigner,
    NoPersistence,
    SourceIPPersistence,
    load_or_create_key,
    rendezvous,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _servers(n: int, weight: int = 1) -> list[RealServer]:
    return [RealServer(f"10.0.0.{i + 1}:4443", weight=weight) for i in range(n)]


def _clients(n: int) -> list[str]:
    return [f"192.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


class LoadOrCreateKeyTests(SynchronousTestCase):
    """
    L{load_or_create_key} creates a private key file once and refuses unsafe ones.
    """

    def setUp(self) -> None:
        self.base = FilePath(self.mktemp())
        self.base.makedirs()
        self.path = self.base.child("reverse").child("persistence.key").path

    def test_created_private(self) -> None:
        """
        The first call creates 32 random bytes in a 0600 file in a 0700
        directory, leaving no temporary files.
        """
        key = load_or_create_key(self.path)
        self.assertEqual(len(key), KEY_SIZE)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertEqual(os.listdir(os.path.dirname(self.path)), ["persistence.key"])
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), key)

    def test_reused(self) -> None:
        """
        Later calls read the same key.
        """
        self.assertEqual(load_or_create_key(self.path), load_or_create_key(self.path))

    def test_random(self) -> None:
        """
        Two key files hold different keys.
        """
        other = self.base.child("other.key").path
        self.assertNotEqual(load_or_create_key(self.path), load_or_create_key(other))

    def test_readable_by_others(self) -> None:
        """
        A key file group or others can read is refused, naming the file and the mode.
        """
        load_or_create_key(self.path)
        os.chmod(self.path, 0o640)
        e = self.assertRaises(ConfigError, load_or_create_key, self.path)
        self.assertEqual(e.path, self.path)
        self.assertIn("0640", e.message)

    def test_wrong_size(self) -> None:
        """
        A key file of the wrong size is refused, and left alone.
        """
        os.makedirs(os.path.dirname(self.path))
        for data in (b"", b"x" * 16, b"x" * 33):
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, data)
            os.close(fd)
            e = self.assertRaises(ConfigError, load_or_create_key, self.path)
            self.assertEqual(e.path, self.path)
            self.assertIn("32 bytes", e.message)
            with open(self.path, "rb") as f:
                self.assertEqual(f.read(), data)

    def test_not_a_file(self) -> None:
        """
        A directory where the key should be is refused.
        """
        os.makedirs(self.path)
        e = self.assertRaises(ConfigError, load_or_create_key, self.path)
        self.assertEqual(e.path, self.path)

    def test_symlink(self) -> None:
        """
        A symbolic link is not followed.
        """
        target = self.base.child("elsewhere.key").path
        load_or_create_key(target)
        os.makedirs(os.path.dirname(self.path))
        os.symlink(target, self.path)
        e = self.assertRaises(ConfigError, load_or_create_key, self.path)
        self.assertIn("symbolic link", e.message)


class CookieSignerTests(SynchronousTestCase):
    """
    L{CookieSigner} tokens name a server and cannot be forged.
    """

    def test_round_trip(self) -> None:
        """
        A token issued for a server reads back as that server among the
        configured ones.
        """
        signer = CookieSigner(KEY)
        keys = ("10.0.0.11:4443", "[2001:db8::1]:4443", "fe1.corp.example.com:443")
        for key in keys:
            self.assertEqual(signer.server_of(signer.issue(key), keys), key)

    def test_opaque_and_cookie_safe(self) -> None:
        """
        Tokens hold only base64url characters, and do not reveal the
        server's internal address.
        """
        token = CookieSigner(KEY).issue("10.0.0.11:4443")
        self.assertRegex(token, r"^[A-Za-z0-9_-]{22}$")
        self.assertNotIn(base64.urlsafe_b64encode(b"10.0.0.11").decode()[:8], token)

    def test_shared_key_agrees(self) -> None:
        """
        Two signers with the same key (two nodes) issue and accept the same tokens.
        """
        a, b = CookieSigner(KEY), CookieSigner(bytes(KEY))
        self.assertEqual(a.issue("10.0.0.11:4443"), b.issue("10.0.0.11:4443"))
        self.assertEqual(b.server_of(a.issue("10.0.0.11:4443"), ["10.0.0.11:4443"]), "10.0.0.11:4443")

    def test_other_key(self) -> None:
        """
        A token made with another key is refused.
        """
        token = CookieSigner(OTHER_KEY).issue("10.0.0.11:4443")
        self.assertIsNone(CookieSigner(KEY).server_of(token, ["10.0.0.11:4443"]))

    def test_unconfigured_server(self) -> None:
        """
        A genuine token for a server that is no longer configured is refused.
        """
        signer = CookieSigner(KEY)
        self.assertIsNone(signer.server_of(signer.issue("10.0.0.9:4443"), ["10.0.0.11:4443"]))

    def test_forged(self) -> None:
        """
        Changing any character of a token is refused.
        """
        signer = CookieSigner(KEY)
        keys = ["10.0.0.11:4443", "10.0.0.12:4443"]
        token = signer.issue(keys[0])
        for i in range(len(token)):
            flipped = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
            self.assertIsNone(signer.server_of(flipped, keys), msg=f"position {i}")

    def test_truncated(self) -> None:
        """
        Every proper prefix of a token is refused.
        """
        signer = CookieSigner(KEY)
        token = signer.issue("10.0.0.11:4443")
        for i in range(len(token)):
            self.assertIsNone(signer.server_of(token[:i], ["10.0.0.11:4443"]), msg=f"prefix {token[:i]!r}")

    def test_malformed(self) -> None:
        """
        Junk of every kind is refused without raising.
        """
        signer = CookieSigner(KEY)
        token = signer.issue("10.0.0.11:4443")
        for junk in ("", ".", token + ".", token + "=", "é" + token, "x" * 10_000, " " + token, token + " ", None, 42, b"bytes"):
            self.assertIsNone(signer.server_of(junk, ["10.0.0.11:4443"]), msg=f"junk {junk!r}")  # type: ignore[arg-type]

    @given(st.text(max_size=80))
    def test_never_raises(self, junk: str) -> None:
        """
        Any string at all gives a key or C{None}, never an exception.
        """
        self.assertIsNone(CookieSigner(KEY).server_of(junk, ["10.0.0.11:4443"]))

    def test_short_key(self) -> None:
        """
        A key too short to be a secret is a L{ValueError}.
        """
        self.assertRaises(ValueError, CookieSigner, b"short")


class RendezvousTests(SynchronousTestCase):
    """
    L{rendezvous} maps clients to servers stably and in proportion to weight.
    """

    def test_none(self) -> None:
        """
        No eligible server: C{None}.
        """
        servers = _servers(2)
        servers[0].up = False
        servers[1].weight = 0
        self.assertIsNone(rendezvous("192.0.2.1", servers))
        self.assertIsNone(rendezvous("192.0.2.1", []))

    def test_stable(self) -> None:
        """
        The answer depends on the server keys, not on list order or objects
        (as on another node).
        """
        servers = _servers(5)
        copies = [RealServer(s.key) for s in reversed(servers)]
        for client in _clients(200):
            self.assertEqual(rendezvous(client, servers).key, rendezvous(client, copies).key)

    @given(st.integers(2, 8), st.data())
    def test_down_moves_only_its_clients(self, n: int, data: st.DataObject) -> None:
        """
        Over 1,000 clients, a server going Down moves exactly the clients it
        had; every other client keeps its server.
        """
        servers = [RealServer(f"10.1.{i}.1:4443", weight=data.draw(st.integers(1, 4))) for i in range(n)]
        clients = _clients(1000)
        before = {c: rendezvous(c, servers) for c in clients}
        victim = servers[data.draw(st.integers(0, n - 1))]
        victim.up = False
        for client in clients:
            after = rendezvous(client, servers)
            if before[client] is victim:
                self.assertIsNot(after, victim)
            else:
                self.assertIs(after, before[client], msg=client)
        victim.up = True
        self.assertEqual({c: rendezvous(c, servers) for c in clients}, before)

    def test_spread(self) -> None:
        """
        Equal servers get roughly equal shares; weights shift shares in proportion.
        """
        clients = _clients(6000)
        servers = _servers(3)
        counts = Counter(rendezvous(c, servers).key for c in clients)
        for server in servers:
            self.assertTrue(1700 < counts[server.key] < 2300, counts)
        servers[0].weight = 2
        counts = Counter(rendezvous(c, servers).key for c in clients)
        self.assertTrue(2700 < counts[servers[0].key] < 3300, counts)


class CookiePersistenceTests(SynchronousTestCase):
    """
    L{CookiePersistence} keeps clients with a valid cookie on their server.
    """

    def setUp(self) -> None:
        self.signer = CookieSigner(KEY)
        self.persistence = CookiePersistence(self.signer)
        self.servers = _servers(3)
        self.scheduler = RoundRobin()

    def choose(self, cookie: str | None) -> Choice:
        return self.persistence.choose(cookie, "192.0.2.1", self.servers, self.scheduler, 0.0)

    def test_name(self) -> None:
        """
        The cookie is called C{MS-WSMAN} unless configured otherwise.
        """
        self.assertEqual(self.persistence.name, "MS-WSMAN")
        self.assertEqual(CookiePersistence(self.signer, "LB").name, "LB")

    def test_no_cookie(self) -> None:
        """
        Without a cookie the scheduler chooses and a cookie naming its choice
        is issued.
        """
        choice = self.choose(None)
        self.assertEqual(choice, Choice(self.servers[0], False, self.signer.issue(self.servers[0].key)))
        self.assertEqual(self.servers[0].persistence_hits, 0)

    def test_valid_cookie(self) -> None:
        """
        A valid cookie for an Up server is a hit: that server, no new cookie.
        """
        cookie = self.signer.issue(self.servers[2].key)
        for i in range(3):
            self.assertEqual(self.choose(cookie), Choice(self.servers[2], True, None))
        self.assertEqual(self.servers[2].persistence_hits, 3)

    def test_draining_server(self) -> None:
        """
        A server of weight 0 keeps its persistent clients.
        """
        self.servers[2].weight = 0
        self.assertEqual(self.choose(self.signer.issue(self.servers[2].key)), Choice(self.servers[2], True, None))

    def test_server_down(self) -> None:
        """
        A cookie for a Down server gets another server and a new cookie.
        """
        self.servers[0].up = False
        choice = self.choose(self.signer.issue(self.servers[0].key))
        self.assertEqual(choice, Choice(self.servers[1], False, self.signer.issue(self.servers[1].key)))
        self.assertEqual(self.servers[0].persistence_hits, 0)

    def test_unknown_or_forged(self) -> None:
        """
        A cookie for a server not in the list, a forged one, or junk is
        treated as no cookie.
        """
        for cookie in (self.signer.issue("10.9.9.9:4443"), CookieSigner(OTHER_KEY).issue(self.servers[1].key),
                       "garbage", ""):
            choice = self.choose(cookie)
            self.assertFalse(choice.hit)
            self.assertEqual(choice.set_cookie, self.signer.issue(choice.server.key))

    def test_nothing_up(self) -> None:
        """
        With no server Up there is no server and no cookie.
        """
        for server in self.servers:
            server.up = False
        self.assertEqual(self.choose(self.signer.issue(self.servers[0].key)), Choice(None, False, None))
        self.assertEqual(self.choose(None), Choice(None, False, None))


class SourceIPPersistenceTests(SynchronousTestCase):
    """
    L{SourceIPPersistence} keeps a client on its server for C{timeout}
    seconds after its last request.
    """

    def setUp(self) -> None:
        self.servers = _servers(4)
        self.scheduler = RoundRobin()

    def test_first_request_follows_hash(self) -> None:
        """
        A new client goes to its rendezvous server; it is not a hit.
        """
        p = SourceIPPersistence(timeout=60)
        for client in _clients(50):
            choice = p.choose(None, client, self.servers, self.scheduler, 0.0)
            self.assertEqual(choice, Choice(rendezvous(client, self.servers), False, None))

    def test_hit_within_timeout(self) -> None:
        """
        Within the timeout the client keeps its server even when the hash
        would now choose another (here its server drains, weight 0), and
        each request refreshes the timeout.
        """
        p = SourceIPPersistence(timeout=60)
        client = "192.0.2.7"
        home = rendezvous(client, self.servers)
        # Pin the client to home, then make home lose the hash: it wins
        # among the servers only when one that beats it is absent.
        first = p.choose(None, client, self.servers, self.scheduler, 0.0)
        self.assertEqual(first, Choice(home, False, None))
        home.weight = 0  # drains: no new clients, persistent ones stay
        self.assertIsNot(rendezvous(client, self.servers), home)
        for now in (30.0, 89.0, 149.0):
            choice = p.choose(None, client, self.servers, self.scheduler, now)
            self.assertEqual(choice, Choice(home, True, None))
        self.assertEqual(home.persistence_hits, 3)

    def test_timeout(self) -> None:
        """
        After C{timeout} idle seconds the client follows the hash again.
        """
        p = SourceIPPersistence(timeout=60)
        client = "192.0.2.7"
        home = rendezvous(client, self.servers)
        rest = [s for s in self.servers if s is not home]
        pinned = p.choose(None, client, rest, self.scheduler, 0.0).server
        self.assertIsNot(pinned, home)
        self.assertEqual(p.choose(None, client, self.servers, self.scheduler, 60.0), Choice(pinned, True, None))
        self.assertEqual(p.choose(None, client, self.servers, self.scheduler, 120.5), Choice(home, False, None))

    def test_server_down(self) -> None:
        """
        A client whose server went Down moves (by the hash over the rest) and
        stays on its new server when the old one returns.
        """
        p = SourceIPPersistence(timeout=60)
        client = "192.0.2.7"
        home = p.choose(None, client, self.servers, self.scheduler, 0.0).server
        home.up = False
        moved = p.choose(None, client, self.servers, self.scheduler, 1.0)
        self.assertFalse(moved.hit)
        self.assertIsNot(moved.server, home)
        home.up = True
        self.assertEqual(p.choose(None, client, self.servers, self.scheduler, 2.0), Choice(moved.server, True, None))

    def test_ignores_cookie(self) -> None:
        """
        A cookie makes no difference.
        """
        p = SourceIPPersistence(timeout=60)
        cookie = CookieSigner(KEY).issue(self.servers[0].key)
        for client in _clients(20):
            self.assertEqual(p.choose(cookie, client, self.servers, self.scheduler, 0.0).server,
                             rendezvous(client, self.servers))

    def test_nothing_up(self) -> None:
        """
        No server Up: no server, and nothing remembered.
        """
        p = SourceIPPersistence(timeout=60)
        for server in self.servers:
            server.up = False
        self.assertEqual(p.choose(None, "192.0.2.1", self.servers, self.scheduler, 0.0), Choice(None, False, None))
        self.assertEqual(len(p), 0)

    def test_bounded(self) -> None:
        """
        The table never holds more than C{max_entries}; the least recently
        seen client is dropped first.
        """
        p = SourceIPPersistence(timeout=1000, max_entries=3)
        for i, client in enumerate(["a", "b", "c"]):
            p.choose(None, client, self.servers, self.scheduler, float(i))
        p.choose(None, "a", self.servers, self.scheduler, 3.0)  # refresh a: b is now the oldest
        p.choose(None, "d", self.servers, self.scheduler, 4.0)
        self.assertEqual(len(p), 3)
        self.assertTrue(p.choose(None, "a", self.servers, self.scheduler, 5.0).hit)
        self.assertTrue(p.choose(None, "c", self.servers, self.scheduler, 5.0).hit)
        self.assertFalse(p.choose(None, "b", self.servers, self.scheduler, 5.0).hit)

    def test_expired_dropped(self) -> None:
        """
        Expired entries are dropped as later requests come, so an idle table
        shrinks without a timer.
        """
        p = SourceIPPersistence(timeout=10)
        for client in _clients(5):
            p.choose(None, client, self.servers, self.scheduler, 0.0)
        self.assertEqual(len(p), 5)
        p.choose(None, "198.51.100.1", self.servers, self.scheduler, 11.0)
        self.assertEqual(len(p), 1)

    def test_validation(self) -> None:
        """
        A table of no entries is refused.
        """
        self.assertRaises(ValueError, SourceIPPersistence, 60, 0)


class NoPersistenceTests(SynchronousTestCase):
    """
    L{NoPersistence} asks the scheduler every time.
    """

    def test_scheduler(self) -> None:
        """
        Each request goes where the scheduler says; never a hit, never a cookie.
        """
        servers = _servers(3)
        scheduler = RoundRobin()
        p = NoPersistence()
        choices = [p.choose("cookie", "192.0.2.1", servers, scheduler, 0.0) for _ in range(3)]
        self.assertEqual(choices, [Choice(s, False, None) for s in servers])
        servers[0].up = servers[1].up = servers[2].up = False
        self.assertEqual(p.choose(None, "192.0.2.1", servers, scheduler, 0.0), Choice(None, False, None))
