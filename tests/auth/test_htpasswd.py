"""
Tests for L{txgate.auth.htpasswd}: which hashes an htpasswd-style file may
hold, how each is verified, and the errors naming file:line for the rest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

import bcrypt
from twisted.trial.unittest import SynchronousTestCase

from txgate.auth import htpasswd as module
from txgate.auth.htpasswd import BCRYPT_MAX_PASSWORD, Htpasswd, load_htpasswd, parse_htpasswd
from txgate.errors import ConfigError, ConfigErrors

PATH = "/etc/txgate/users.htpasswd"


def bcrypt_hash(password: bytes, prefix: bytes = b"$2b$", cost: int = 4) -> str:
    """A bcrypt entry as C{htpasswd -B} writes it (cost 4 keeps tests fast)."""
    hashed = bcrypt.hashpw(password, bcrypt.gensalt(cost))
    return (prefix + hashed[4:]).decode("ascii")


def ssha_hash(password: bytes, salt: bytes = b"s4lt") -> str:
    """An C{{SSHA}} entry as C{slappasswd} writes it."""
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password + salt).digest() + salt).decode("ascii")


def _refused(testcase: SynchronousTestCase, text: str) -> list[ConfigError]:
    errors = testcase.assertRaises(ConfigErrors, parse_htpasswd, text, PATH).errors
    for error in errors:
        testcase.assertEqual(error.path, PATH)
        testcase.assertIsNotNone(error.line)
    return list(errors)


class ParseTests(SynchronousTestCase):
    """
    A file of C{user:hash} lines, with comments and blank lines.
    """

    def test_accepted(self) -> None:
        """
        bcrypt entries of every accepted prefix and C{{SSHA}} entries are
        read; comments, blank lines, surrounding blanks and CRLF are skipped.
        """
        text = (
            "# users of the corp realm\r\n"
            "\r\n"
            f"alice:{bcrypt_hash(b'secret', b'$2y$')}\r\n"
            f"  bob:{bcrypt_hash(b'hunter2', b'$2a$')}  \n"
            f"carol:{bcrypt_hash(b'pw', b'$2b$')}\n"
            "    # indented comment\n"
            f"dave:{ssha_hash(b'dave pw')}\n"
        )
        users = parse_htpasswd(text, PATH)
        self.assertEqual(users.users, ("alice", "bob", "carol", "dave"))
        self.assertEqual(users.path, PATH)

    def test_empty(self) -> None:
        """A file of comments only has no users, and verifies nobody."""
        users = parse_htpasswd("# nobody yet\n\n", PATH)
        self.assertEqual(users.users, ())
        self.assertFalse(users.verify("alice", b"secret"))

    def test_refused_formats(self) -> None:
        """
        Every unaccepted hash is refused with C{file:line}, the user, and
        what was wrong; the hash itself (maybe a plaintext password) is never
        part of the message.
        """
        crypt_des = "abJnggxhB/yWI"
        cases = [
            ("plain:secretpassword", "plaintext passwords are refused"),
            ("sha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "unsalted {SHA}"),
            ("apr:$apr1$salt1234$OnLMdsTBqb0OJ4D4g7XLO1", "Apache MD5 ($apr1$)"),
            (f"des:{crypt_des}", "crypt(3) DES"),
            ("md5:$1$saltsalt$2vnaRpHa6Jxjz5n83ok8Z0", "MD5-crypt ($1$)"),
            ("s256:$5$rounds=5000$saltsalt$Gcm6FsVtF/Qa77ZKD.iwsJlCVPY0XSMgLJL0Hnww/c1", "SHA-256-crypt ($5$)"),
            ("s512:$6$saltsalt$IxDD3jeSOb5eB1CX5LBsqZFVkJdido3OUILO5Ifz5iwMuTS4XMS130MTSuDDl3aCI6WouIL9AjRbLCelDCy.g.", "SHA-512-crypt ($6$)"),
            ("x:$2x$04$" + "." * 53, "$2x$"),
            ("short:$2b$04$tooshort", "malformed bcrypt hash"),
            ("cost:$2b$03$" + "." * 53, "bcrypt cost must be from 4 to 31, got 3"),
            ("pbkdf:{PBKDF2}10000$abc$def", "{PBKDF2} hashes are not supported"),
            ("argon:$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "unknown $...$ hash scheme"),
            ("bad64:{SSHA}not*base64", "malformed {SSHA} hash: expected base64"),
            ("nosalt:" + ssha_hash(b"pw", salt=b"ab"), "at least 4 bytes of salt, got 22 bytes"),
            ("empty:", "plaintext passwords are refused"),
        ]
        for line, expected in cases:
            [error] = _refused(self, f"# header\n{line}\n")
            user, _, hashed = line.partition(":")
            message = str(error)
            self.assertTrue(message.startswith(f"{PATH}:2: user {user!r}: "), msg=f"line {line!r}: {message}")
            self.assertIn(expected, message, msg=f"line {line!r}")
            if hashed:
                self.assertNotIn(hashed, message, msg=f"line {line!r}")

    def test_every_refused_line_reported(self) -> None:
        """All bad lines of a file are reported at once, each with its line."""
        text = (
            f"alice:{bcrypt_hash(b'secret')}\n"
            "bob:plain\n"
            "no colon here\n"
            ":$2b$04$" + "." * 53 + "\n"
            f"alice:{ssha_hash(b'again')}\n"
        )
        errors = _refused(self, text)
        self.assertEqual(
            [(e.line, e.message) for e in errors][1:],
            [
                (3, "expected user:hash, found no ':'"),
                (4, "empty user name"),
                (5, "user 'alice' is already listed on line 1"),
            ],
        )
        self.assertEqual(errors[0].line, 2)

    def test_load_file(self) -> None:
        """L{load_htpasswd} reads a file; an unreadable or non-UTF-8 one is refused naming it."""
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(f"alice:{bcrypt_hash(b'secret')}\n")
        self.assertTrue(load_htpasswd(path).verify("alice", b"secret"))
        [error] = self.assertRaises(ConfigErrors, load_htpasswd, path + ".missing").errors
        self.assertEqual((error.path, error.message), (path + ".missing", "cannot read: No such file or directory"))
        with open(path, "wb") as f:
            f.write(b"# ok\n\xff:x\n")
        [error] = self.assertRaises(ConfigErrors, load_htpasswd, path).errors
        self.assertEqual(str(error), f"{path}:2:1: not UTF-8: byte 0xff cannot be decoded")


class VerifyTests(SynchronousTestCase):
    """
    L{Htpasswd.verify} accepts a user's password and nothing else.
    """

    def setUp(self) -> None:
        self.users = parse_htpasswd(
            f"alice:{bcrypt_hash(b'secret', b'$2y$')}\n"
            f"bob:{bcrypt_hash(b'hunter2', b'$2a$')}\n"
            f"carol:{ssha_hash(b'carol pw')}\n"
            f"dan:{bcrypt_hash('pässword'.encode())}\n"
            f"long:{bcrypt_hash(b'x' * BCRYPT_MAX_PASSWORD)}\n",
            PATH,
        )

    def test_bcrypt(self) -> None:
        """bcrypt entries ($2y$, $2a$) verify their password only."""
        self.assertTrue(self.users.verify("alice", b"secret"))
        self.assertTrue(self.users.verify("alice", "secret"))
        self.assertFalse(self.users.verify("alice", b"Secret"))
        self.assertFalse(self.users.verify("alice", b""))
        self.assertFalse(self.users.verify("alice", b"secret\x00"))
        self.assertTrue(self.users.verify("bob", b"hunter2"))
        self.assertFalse(self.users.verify("bob", b"secret"))

    def test_ssha(self) -> None:
        """C{{SSHA}} entries verify their password only."""
        self.assertTrue(self.users.verify("carol", b"carol pw"))
        self.assertFalse(self.users.verify("carol", b"carol pw "))
        self.assertFalse(self.users.verify("carol", b""))

    def test_utf8(self) -> None:
        """A text password is compared as its UTF-8 bytes."""
        self.assertTrue(self.users.verify("dan", "pässword"))
        self.assertFalse(self.users.verify("dan", "pässword".encode("latin-1")))

    def test_over_long_bcrypt_password(self) -> None:
        """
        A password of more than 72 bytes never verifies against bcrypt (which
        would look at its first 72 bytes only), without raising.
        """
        self.assertTrue(self.users.verify("long", b"x" * BCRYPT_MAX_PASSWORD))
        self.assertFalse(self.users.verify("long", b"x" * (BCRYPT_MAX_PASSWORD + 1)))
        self.assertFalse(self.users.verify("alice", b"y" * 1000))

    def test_unknown_user(self) -> None:
        """An unknown user is refused, whatever the password."""
        self.assertFalse(self.users.verify("mallory", b"secret"))
        self.assertFalse(self.users.verify("", b""))

    def test_unknown_user_runs_bcrypt(self) -> None:
        """
        An unknown user costs a bcrypt check at the file's usual cost, as a
        wrong password does, so user names cannot be probed by timing.
        """
        calls: list[bytes] = []
        real = bcrypt.checkpw

        def counting(password: bytes, hashed: bytes) -> bool:
            calls.append(hashed)
            return real(password, hashed)

        self.patch(module.bcrypt, "checkpw", counting)
        users = parse_htpasswd(
            "".join(f"u{i}:{bcrypt_hash(b'pw', cost=5 if i else 4)}\n" for i in range(3)), PATH
        )
        self.assertFalse(users.verify("mallory", b"pw"))
        [hashed] = calls
        self.assertEqual(hashed[:7], b"$2b$05$")

    def test_unknown_user_timing(self) -> None:
        """
        Refusing an unknown user takes about as long as refusing a known
        user's wrong password (cost 8: a few ms, well above timer noise).
        """
        users = parse_htpasswd(f"alice:{bcrypt_hash(b'secret', cost=8)}\n", PATH)

        def best(user: str) -> float:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                users.verify(user, b"wrong")
                times.append(time.perf_counter() - started)
            return min(times)

        known, unknown = best("alice"), best("mallory")
        self.assertGreater(unknown, known / 3, msg=f"known {known:.4f}s, unknown {unknown:.4f}s")
        self.assertLess(unknown, known * 3, msg=f"known {known:.4f}s, unknown {unknown:.4f}s")

    def test_unknown_user_ssha_only(self) -> None:
        """A file of C{{SSHA}} entries refuses unknown users with a SHA-1 check."""
        users = parse_htpasswd(f"carol:{ssha_hash(b'pw')}\n", PATH)
        self.assertFalse(users.verify("mallory", b"pw"))

    def test_repr_hides_hashes(self) -> None:
        """The repr of a file names it without showing any hash."""
        self.assertEqual(repr(self.users), f"Htpasswd(path={PATH!r})")
        self.assertIsInstance(self.users, Htpasswd)
