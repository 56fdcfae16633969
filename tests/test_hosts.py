"""
Tests for L{txgate.hosts}: parsing a hosts file, looking names up, and
errors that name C{file:line}.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from txgate.config import Config, parse_config
from txgate.errors import ConfigError, ConfigErrors
from txgate.hosts import Hosts, load_configured, load_hosts, parse_hosts

PATH = "etc/hosts.test"

GOOD = """\
# the benchmark's names
127.0.0.1   origin.bench.test  Upstream.Example.   # trailing comment
::1         v6.bench.test
\t
10.0.0.7    *.bench.test
10.0.0.8    *.deep.bench.test
"""


class LookupTests(SynchronousTestCase):
    """
    A name is found ignoring case and one trailing dot; an exact name wins
    over any wildcard, a longer wildcard over a shorter one; IP literals
    and unknown names are not found.
    """

    def setUp(self) -> None:
        self.hosts = parse_hosts(GOOD, PATH)

    def test_table(self) -> None:
        """Each lookup gives the address of the entry that should win."""
        cases = [
            ("origin.bench.test", "127.0.0.1"),
            ("ORIGIN.bench.test.", "127.0.0.1"),
            ("upstream.example", "127.0.0.1"),
            ("v6.bench.test", "::1"),
            ("www.bench.test", "10.0.0.7"),
            ("a.b.bench.test", "10.0.0.7"),
            ("x.deep.bench.test", "10.0.0.8"),
            ("deep.bench.test", "10.0.0.7"),
            ("bench.test", None),
            ("other.test", None),
            ("notbench.test", None),
            ("", None),
            (".", None),
            ("x" * 300 + ".bench.test", None),
        ]
        for host, expected in cases:
            self.assertEqual(self.hosts.address_of(host), expected, msg=f"host {host!r}")

    def test_ip_literals_untouched(self) -> None:
        """An IP literal is never looked up, even when a wildcard's labels would match it."""
        hosts = Hosts.from_mapping({"*.0.0.1": "10.9.9.9"})
        self.assertIsNone(hosts.address_of("127.0.0.1"))
        self.assertIsNone(hosts.address_of("::1"))
        self.assertEqual(hosts.address_of("a.0.0.1"), "10.9.9.9")

    def test_mapping(self) -> None:
        """As a mapping: the entries as normalised, and C{[]}, C{get}, C{in} look names up."""
        self.assertEqual(
            dict(self.hosts),
            {
                "origin.bench.test": "127.0.0.1",
                "upstream.example": "127.0.0.1",
                "v6.bench.test": "::1",
                "*.bench.test": "10.0.0.7",
                "*.deep.bench.test": "10.0.0.8",
            },
        )
        self.assertEqual(len(self.hosts), 5)
        self.assertEqual(self.hosts["WWW.bench.test"], "10.0.0.7")
        self.assertIn("www.bench.test", self.hosts)
        self.assertNotIn("bench.test", self.hosts)
        self.assertIsNone(self.hosts.get("other.test"))
        self.assertRaises(KeyError, lambda: self.hosts["other.test"])

    def test_empty(self) -> None:
        """C{Hosts()} and a file of comments and blanks are empty and falsy."""
        self.assertFalse(Hosts())
        self.assertFalse(parse_hosts("# nothing\n\n", PATH))
        self.assertIsNone(Hosts().address_of("anything.test"))

    def test_address_normalised(self) -> None:
        """Addresses come back in their compressed form."""
        hosts = parse_hosts("2001:0db8:0000::0001 a.test\n", PATH)
        self.assertEqual(hosts.address_of("a.test"), "2001:db8::1")

    def test_from_mapping(self) -> None:
        """Entries in memory are checked like a file's."""
        self.assertEqual(Hosts.from_mapping({"A.test.": "192.0.2.1"}).address_of("a.test"), "192.0.2.1")
        self.assertRaises(ValueError, Hosts.from_mapping, {"a.test": "not-an-ip"})
        self.assertRaises(ValueError, Hosts.from_mapping, {"a..test": "192.0.2.1"})
        self.assertRaises(ValueError, Hosts.from_mapping, {"a.test": "192.0.2.1", "A.TEST": "192.0.2.2"})


class MistakeTests(SynchronousTestCase):
    """
    Every mistake is reported, each as C{path:line} with what was expected.
    """

    def mistakes(self, text: str) -> list[ConfigError]:
        with self.assertRaises(ConfigErrors) as raised:
            parse_hosts(text, PATH)
        return list(raised.exception.errors)

    def test_table(self) -> None:
        """Each bad line gives one error on its line, with a message naming the problem."""
        cases = [
            ("300.1.1.1 a.test", "bad address '300.1.1.1'"),
            ("a.test 127.0.0.1", "bad address 'a.test'"),
            ("127.0.0.1", "expected one or more names after the address"),
            ("127.0.0.1 bad_name-.test", "is not a DNS label"),
            ("127.0.0.1 a..test", "is not a DNS label"),
            ("127.0.0.1 a.*.test", "'*' is only allowed as the whole first label"),
            ("127.0.0.1 *.", "expected a domain after '*.'"),
            ("127.0.0.1 10.0.0.1", "an IP address cannot be overridden"),
            ("127.0.0.1 " + "a." * 130 + "test", "at most 253 characters"),
            ("127.0.0.1 a.test A.TEST.", "'A.TEST.' is already mapped to 127.0.0.1 on this line"),
        ]
        for text, expected in cases:
            [error] = self.mistakes("# header\n" + text + "\n")
            self.assertEqual((error.path, error.line), (PATH, 2), msg=f"input {text!r}")
            self.assertIn(expected, error.message, msg=f"input {text!r}")

    def test_duplicate_across_lines(self) -> None:
        """A name listed again is refused at its second line, naming the first."""
        [error] = self.mistakes("127.0.0.1 a.test *.b.test\n::1 *.B.test\n")
        self.assertEqual(
            str(error),
            f"{PATH}:2: '*.B.test' is already mapped to 127.0.0.1 on line 1; list each name once"
            " (txgate refuses duplicates where /etc/hosts would use the first)",
        )

    def test_all_reported(self) -> None:
        """Every mistake in the file is reported, in order, not just the first."""
        errors = self.mistakes("nope a.test\n127.0.0.1 ok.test\n127.0.0.1 -bad.test ok.test\n")
        self.assertEqual([e.line for e in errors], [1, 3, 3])

    def test_unreadable(self) -> None:
        """A file that cannot be read is reported under the configuration's C{txgate.hosts_file} key."""
        missing = os.path.join(self.mktemp(), "hosts")
        with self.assertRaises(ConfigErrors) as raised:
            load_hosts(missing, "forward.toml")
        [error] = raised.exception.errors
        self.assertEqual((error.path, error.key, error.line), ("forward.toml", "txgate.hosts_file", None))
        self.assertIn(missing, error.message)

    def test_not_utf8(self) -> None:
        """A byte that is not UTF-8 is reported at its line in the hosts file."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"127.0.0.1 a.test\n127.0.0.1 \xff.test\n")
        with self.assertRaises(ConfigErrors) as raised:
            load_hosts(path, "forward.toml")
        [error] = raised.exception.errors
        self.assertEqual((error.path, error.line), (path, 2))


class ConfiguredTests(SynchronousTestCase):
    """C{[txgate] hosts_file} names the file; C{""} (the default) means none."""

    def config(self, hosts_file: str | None) -> Config:
        setting = "" if hosts_file is None else f'hosts_file = "{hosts_file}"\n'
        return parse_config(
            f'[txgate]\n{setting}\n[[service]]\nname = "e"\nkind = "explicit-http"\nlisten = "tcp:0"\n',
            "forward.toml",
        )

    def test_default_none(self) -> None:
        """Without the key, no overrides."""
        config = self.config(None)
        self.assertEqual(config.txgate.hosts_file, "")
        self.assertFalse(load_configured(config))

    def test_loaded(self) -> None:
        """The named file is read."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("127.0.0.1 *.bench.test\n")
        hosts = load_configured(self.config(path))
        self.assertEqual(hosts.address_of("www.bench.test"), "127.0.0.1")

    def test_not_a_string(self) -> None:
        """A value that is not a string is a config error naming the key."""
        with self.assertRaises(ConfigErrors) as raised:
            parse_config('[txgate]\nhosts_file = 1\n[[service]]\nname = "e"\nkind = "explicit-http"\nlisten = "tcp:0"\n', "f.toml")
        [error] = raised.exception.errors
        self.assertEqual(error.key, "txgate.hosts_file")


class PurityTests(SynchronousTestCase):
    """The hosts core is pure."""

    def test_no_reactor(self) -> None:
        """Importing L{txgate.hosts} and parsing a file leaves C{twisted.internet.reactor} unimported."""
        code = (
            "import sys\n"
            "from txgate.hosts import parse_hosts\n"
            "parse_hosts('127.0.0.1 a.test', 'x')\n"
            "assert 'twisted.internet.reactor' not in sys.modules\n"
        )
        subprocess.run([sys.executable, "-c", code], check=True)
