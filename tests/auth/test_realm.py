"""
Tests for L{txgate.auth.realm} and L{txgate.auth.load_realms}: Basic
credentials checked against a realm, the cache of verified values, and the
C{[realm.NAME]} configuration.
"""

from __future__ import annotations

import base64
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.auth.test_htpasswd import bcrypt_hash, ssha_hash
from txgate import auth
from txgate.auth import Authenticated, CredentialCache, Htpasswd, Realm, Refused, load_realms, parse_htpasswd
from txgate.config import RealmConfig, parse_config
from txgate.errors import ConfigError, ConfigErrors

SERVICE = '[[service]]\nname = "explicit"\nkind = "explicit-http"\nlisten = "tcp:0:interface=127.0.0.1"\n'


def basic(user: str, password: str) -> bytes:
    """A C{Proxy-Authorization} value for Basic credentials."""
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8"))


def counting_verify(testcase: SynchronousTestCase) -> list[tuple[str, bytes]]:
    """Patch L{Htpasswd.verify} to record each call; return the record."""
    calls: list[tuple[str, bytes]] = []
    real = Htpasswd.verify

    def verify(self: Htpasswd, user: str, password: bytes | str) -> bool:
        calls.append((user, password if isinstance(password, bytes) else password.encode()))
        return real(self, user, password)

    testcase.patch(Htpasswd, "verify", verify)
    return calls


class RealmTests(SynchronousTestCase):
    """
    L{Realm.authenticate} reads one request's C{Proxy-Authorization}.
    """

    def setUp(self) -> None:
        users = parse_htpasswd(
            f"alice:{bcrypt_hash(b'secret')}\nbob:{ssha_hash(b'pa:ss word')}\nzoë:{bcrypt_hash('pw'.encode())}\n",
            "users",
        )
        self.realm = Realm("corp", users, credentials_ttl=300)

    def test_challenge(self) -> None:
        """The challenge names the realm."""
        self.assertEqual(self.realm.challenge, b'Basic realm="corp"')

    def test_valid(self) -> None:
        """Right Basic credentials give the user; the scheme is case-insensitive; passwords may hold ':'."""
        self.assertEqual(self.realm.authenticate([basic("alice", "secret")], 0), Authenticated("alice"))
        self.assertEqual(self.realm.authenticate([basic("bob", "pa:ss word")], 0), Authenticated("bob"))
        value = b"bAsIc   " + base64.b64encode(b"alice:secret") + b" "
        self.assertEqual(self.realm.authenticate([value], 0), Authenticated("alice"))
        self.assertEqual(self.realm.authenticate([basic("zoë", "pw")], 0), Authenticated("zoë"))

    def test_missing(self) -> None:
        """No credentials: authentication required."""
        self.assertEqual(self.realm.authenticate([], 0), Refused("authentication required"))

    def test_invalid(self) -> None:
        """
        A wrong password, an unknown user, malformed Basic values and two
        headers are all invalid credentials; no reason holds the password.
        """
        invalid = Refused("invalid credentials for realm corp")
        for values in [
            [basic("alice", "wrong")],
            [basic("mallory", "secret")],
            [basic("", "secret")],
            [b"Basic " + base64.b64encode(b"alice")],
            [b"Basic !!!"],
            [b"Basic"],
            [b"Basic " + base64.b64encode(b"\xffalice:secret")],
            [basic("alice", "secret"), basic("alice", "secret")],
        ]:
            self.assertEqual(self.realm.authenticate(values, 0), invalid, msg=f"values {values!r}")

    def test_other_scheme(self) -> None:
        """Another scheme (NTLM, Negotiate) is answered with the Basic challenge, saying why."""
        outcome = self.realm.authenticate([b"NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw=="], 0)
        self.assertEqual(outcome, Refused("authentication required (scheme 'NTLM' is not supported; Basic is)"))

    def test_cached(self) -> None:
        """
        A value verified once is not hashed again within the TTL; after it,
        it is. Wrong passwords are never cached.
        """
        calls = counting_verify(self)
        value = basic("alice", "secret")
        for now in (0, 1, 299.9):
            self.assertEqual(self.realm.authenticate([value], now), Authenticated("alice"))
        self.assertEqual(len(calls), 1)
        self.assertEqual(self.realm.authenticate([value], 300), Authenticated("alice"))
        self.assertEqual(len(calls), 2)
        wrong = basic("alice", "wrong")
        self.realm.authenticate([wrong], 301)
        self.realm.authenticate([wrong], 302)
        self.assertEqual(len(calls), 4)

    def test_ttl_zero(self) -> None:
        """With C{credentials_ttl = 0}, every request is hashed."""
        calls = counting_verify(self)
        realm = Realm("corp", self.realm.htpasswd, credentials_ttl=0)
        realm.authenticate([basic("alice", "secret")], 0)
        realm.authenticate([basic("alice", "secret")], 0)
        self.assertEqual(len(calls), 2)


class CredentialCacheTests(SynchronousTestCase):
    """
    The cache is bounded and forgets the oldest entry first.
    """

    def test_bounded(self) -> None:
        """Past its size, the oldest entry goes; a refreshed entry counts as new."""
        cache = CredentialCache(size=3)
        for key in (b"a", b"b", b"c"):
            cache.put(key, key.decode(), 100)
        cache.put(b"a", "a", 100)  # refreshed: now the newest
        cache.put(b"d", "d", 100)
        self.assertEqual(len(cache), 3)
        self.assertIsNone(cache.get(b"b", 0))
        self.assertEqual([cache.get(k, 0) for k in (b"a", b"c", b"d")], ["a", "c", "d"])

    def test_expiry(self) -> None:
        """An expired entry is forgotten when looked up."""
        cache = CredentialCache()
        cache.put(b"k", "alice", 10)
        self.assertEqual(cache.get(b"k", 9.99), "alice")
        self.assertIsNone(cache.get(b"k", 10))
        self.assertEqual(len(cache), 0)

    def test_default_size(self) -> None:
        """The default bound is L{txgate.auth.realm.CACHE_SIZE} (10,000)."""
        cache = CredentialCache()
        for i in range(10_001):
            cache.put(str(i).encode(), "u", 1)
        self.assertEqual(len(cache), 10_000)
        self.assertIsNone(cache.get(b"0", 0))


class ConfigTests(SynchronousTestCase):
    """
    C{[realm.NAME]} tables are validated with the rest of the configuration,
    and L{load_realms} reads their files.
    """

    def _errors(self, text: str) -> list[str]:
        errors = self.assertRaises(ConfigErrors, parse_config, text + SERVICE, "forward.toml").errors
        return [str(e) for e in errors]

    def test_parsed(self) -> None:
        """A realm table gives a L{RealmConfig}; C{credentials_ttl} defaults to 300."""
        config = parse_config(
            SERVICE + '[realm.corp]\nhtpasswd = "/etc/txgate/corp.htpasswd"\n'
            '[realm.guests]\nhtpasswd = "guests"\ncredentials_ttl = 0\n',
            "forward.toml",
        )
        self.assertEqual(
            dict(config.realms),
            {
                "corp": RealmConfig("corp", "/etc/txgate/corp.htpasswd", 300.0),
                "guests": RealmConfig("guests", "guests", 0.0),
            },
        )

    def test_none(self) -> None:
        """Without realm tables, there are no realms."""
        self.assertEqual(dict(parse_config(SERVICE, "forward.toml").realms), {})

    def test_mistakes(self) -> None:
        """Each mistake names C{realm.NAME.key} and what was expected."""
        self.assertEqual(
            self._errors(
                '[realm.corp]\nhtpasswd = 3\ncredentials_ttl = -1\nttl = 5\n'
                '[realm.empty]\n'
                '[realm."two words"]\nhtpasswd = "x"\n'
                '[realm.no]\nhtpasswd = "x"\n'
                '[realm.flag]\nhtpasswd = "x"\ncredentials_ttl = true\n'
            ),
            [
                "forward.toml: realm.corp.htpasswd: expected a string, got a number",
                "forward.toml: realm.corp.credentials_ttl: expected a number of seconds, 0 or more, got -1",
                "forward.toml: realm.corp.ttl: unknown key (known: credentials_ttl, htpasswd)",
                "forward.toml: realm.empty.htpasswd: required key is missing",
                "forward.toml: realm.two words: expected a realm name of letters, digits, '_', '.', '-'"
                " (at most 64), got 'two words'",
                "forward.toml: realm.no: 'no' cannot name a realm: authenticate(no) turns authentication off",
                "forward.toml: realm.flag.credentials_ttl: expected a number of seconds, 0 or more, got true",
            ],
        )

    def test_not_tables(self) -> None:
        """C{realm} must be a table of tables."""
        self.assertEqual(self._errors('realm = "corp"\n'), ["forward.toml: realm: expected tables of realms ([realm.NAME])"])
        self.assertEqual(self._errors("[realm]\ncorp = 1\n"), ["forward.toml: realm.corp: expected a table, got a number"])

    def test_load_realms(self) -> None:
        """L{load_realms} reads each realm's file into a L{Realm}."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "corp.htpasswd")
        with open(path, "w") as f:
            f.write(f"alice:{bcrypt_hash(b'secret')}\n")
        config = parse_config(
            SERVICE + f'[realm.corp]\nhtpasswd = "{path}"\ncredentials_ttl = 60\n', "forward.toml"
        )
        realms = load_realms(config)
        self.assertEqual(list(realms), ["corp"])
        realm = realms["corp"]
        self.assertEqual((realm.name, realm.credentials_ttl, realm.htpasswd.users), ("corp", 60.0, ("alice",)))
        self.assertEqual(realm.authenticate([basic("alice", "secret")], 0), Authenticated("alice"))
        self.assertEqual(dict(load_realms(parse_config(SERVICE, "forward.toml"))), {})

    def test_load_realms_errors(self) -> None:
        """
        Every refused line of every file is reported with file:line, and a
        missing file with the key that names it.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        bad = os.path.join(directory, "bad.htpasswd")
        with open(bad, "w") as f:
            f.write("# users\nalice:secret\nbob:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=\n")
        missing = os.path.join(directory, "missing.htpasswd")
        config = parse_config(
            SERVICE + f'[realm.corp]\nhtpasswd = "{bad}"\n[realm.guests]\nhtpasswd = "{missing}"\n', "forward.toml"
        )
        errors = self.assertRaises(ConfigErrors, load_realms, config).errors
        self.assertEqual([(e.path, e.line) for e in errors[:2]], [(bad, 2), (bad, 3)])
        self.assertTrue(str(errors[0]).startswith(f"{bad}:2: user 'alice': not a bcrypt or {{SSHA}} hash"))
        self.assertEqual(
            str(errors[2]),
            f"forward.toml: realm.guests.htpasswd: {missing!r}: cannot read: No such file or directory",
        )
        self.assertIsInstance(errors[2], ConfigError)

    def test_exports(self) -> None:
        """The package re-exports its public names from their modules."""
        from txgate.auth import exempt, htpasswd, realm

        self.assertIs(auth.Realm, realm.Realm)
        self.assertIs(auth.Htpasswd, htpasswd.Htpasswd)
        self.assertIs(auth.is_revocation_fetch, exempt.is_revocation_fetch)
        for name in auth.__all__:
            self.assertTrue(hasattr(auth, name), name)


class NoReactorTests(SynchronousTestCase):
    """
    The authentication cores are pure: importing them installs no reactor.
    """

    def test_no_reactor(self) -> None:
        """A fresh interpreter importing L{txgate.auth} has no C{twisted.internet.reactor}."""
        import subprocess
        import sys

        script = (
            "import sys, txgate.auth\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        result = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout), (0, "False\n"), msg=result.stderr)
