"""
Tests for L{txgate.policy.categories}: category lists and their lookup.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.config import parse_config
from txgate.errors import ConfigErrors
from txgate.policy.categories import (
    MAX_HOST_LENGTH,
    Categories,
    HostEntry,
    category_name,
    load_categories,
    load_configured,
    parse_entry,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNAPSHOT = os.path.join(REPO, "etc", "categories", "office365.skype.txt")
SERVICE = '[[service]]\nname = "explicit"\nkind = "explicit-http"\nlisten = "tcp:0:interface=127.0.0.1"\n'


def _categories(**lists: list[str]) -> Categories:
    return Categories.from_lists({name.replace("_", "."): entries for name, entries in lists.items()})


class HostLookupTests(SynchronousTestCase):
    """
    Host entries: exact names and C{*.domain} wildcards.
    """

    def setUp(self) -> None:
        self.categories = _categories(
            office365_skype=["*.lync.com", "teams.microsoft.com"],
            exact=["lync.com", "www.example.com"],
        )

    def test_exact(self) -> None:
        """A plain entry matches that host only, not its subdomains or parents."""
        self.assertEqual(self.categories.lookup("www.example.com", None), {"exact"})
        self.assertEqual(self.categories.lookup("a.www.example.com", None), frozenset())
        self.assertEqual(self.categories.lookup("example.com", None), frozenset())
        self.assertEqual(self.categories.lookup("teams.microsoft.com", None), {"office365.skype"})
        self.assertEqual(self.categories.lookup("x.teams.microsoft.com", None), frozenset())

    def test_wildcard_matches_domain_and_subdomains(self) -> None:
        """C{*.lync.com} matches lync.com itself and every name under it."""
        for host in ("lync.com", "webdir.online.lync.com", "a.b.c.d.lync.com"):
            self.assertIn("office365.skype", self.categories.lookup(host, None), msg=host)

    def test_wildcard_is_label_aligned(self) -> None:
        """C{*.lync.com} does not match names that only end in the same letters."""
        for host in ("notlync.com", "lync.com.evil.test", "com", "ync.com"):
            self.assertEqual(self.categories.lookup(host, None), frozenset(), msg=host)

    def test_several_categories(self) -> None:
        """A host in two lists is in both categories."""
        self.assertEqual(self.categories.lookup("lync.com", None), {"office365.skype", "exact"})

    def test_case_and_trailing_dot(self) -> None:
        """Case and one trailing dot are ignored, in entries and in lookups."""
        categories = _categories(upper=["*.LYNC.Com.", "Teams.Microsoft.COM"])
        for host in ("lync.com", "LYNC.COM.", "Sip.Online.Lync.Com", "teams.microsoft.com."):
            self.assertEqual(categories.lookup(host, None), {"upper"}, msg=host)

    def test_no_host(self) -> None:
        """No host and no address: no category."""
        self.assertEqual(self.categories.lookup(None, None), frozenset())
        self.assertEqual(self.categories.lookup("", ""), frozenset())

    def test_too_long(self) -> None:
        """A host longer than any DNS name matches nothing, even under a wildcard."""
        host = "a." * 200 + "lync.com"
        self.assertGreater(len(host), MAX_HOST_LENGTH)
        self.assertEqual(self.categories.lookup(host, None), frozenset())

    def test_names(self) -> None:
        """names() lists every category, including empty ones."""
        categories = Categories.from_lists({"a": ["x.test"], "empty": []})
        self.assertEqual(categories.names(), {"a", "empty"})
        self.assertEqual(Categories().names(), frozenset())
        self.assertEqual(Categories().lookup("x.test", "192.0.2.1"), frozenset())


class AddressLookupTests(SynchronousTestCase):
    """
    Network entries: IPv4, IPv6, IPv4-mapped IPv6.
    """

    def setUp(self) -> None:
        self.categories = _categories(
            skype=["52.112.0.0/14", "2603:1063::/38", "192.0.2.7"],
            wide=["52.0.0.0/8", "2603::/16"],
        )

    def test_ipv4(self) -> None:
        """An IPv4 address matches every network holding it, and only those."""
        cases = {
            "52.112.0.0": {"skype", "wide"},
            "52.115.255.255": {"skype", "wide"},
            "52.116.0.0": {"wide"},
            "52.111.255.255": {"wide"},
            "53.0.0.0": set(),
            "192.0.2.7": {"skype"},
            "192.0.2.8": set(),
        }
        for address, expected in cases.items():
            self.assertEqual(self.categories.lookup(None, address), expected, msg=address)

    def test_ipv6(self) -> None:
        """IPv6 addresses match IPv6 networks; an IPv6 /38 ends where it should."""
        cases = {
            "2603:1063::1": {"skype", "wide"},
            "2603:1063:3ff:ffff:ffff:ffff:ffff:ffff": {"skype", "wide"},
            "2603:1063:400::": {"wide"},
            "2604::1": set(),
            "::1": set(),
        }
        for address, expected in cases.items():
            self.assertEqual(self.categories.lookup(None, address), expected, msg=address)

    def test_mapped(self) -> None:
        """An IPv4-mapped IPv6 address is looked up as the IPv4 address."""
        self.assertEqual(self.categories.lookup(None, "::ffff:52.113.1.1"), {"skype", "wide"})
        self.assertEqual(self.categories.lookup(None, "::ffff:192.0.2.7"), {"skype"})

    def test_mapped_entry(self) -> None:
        """An IPv4-mapped IPv6 network in a list is stored as IPv4."""
        self.assertEqual(parse_entry("::ffff:10.0.0.0/104"), ipaddress.IPv4Network("10.0.0.0/8"))
        categories = _categories(mapped=["::ffff:10.0.0.0/104"])
        self.assertEqual(categories.lookup(None, "10.1.2.3"), {"mapped"})

    def test_ip_literal_host(self) -> None:
        """A host that is an IP literal is matched against the networks too."""
        self.assertEqual(self.categories.lookup("52.113.0.1", None), {"skype", "wide"})
        self.assertEqual(self.categories.lookup("2603:1063::5", None), {"skype", "wide"})

    def test_host_and_address(self) -> None:
        """Host and address matches are combined."""
        categories = _categories(names=["*.lync.com"], nets=["52.112.0.0/14"])
        self.assertEqual(categories.lookup("sip.lync.com", "52.112.1.1"), {"names", "nets"})
        self.assertEqual(categories.lookup("example.com", "52.112.1.1"), {"nets"})

    def test_bad_address(self) -> None:
        """Text that is not an IP literal matches nothing and raises nothing."""
        for text in ("not-an-ip", "52.112.0.0/14", "1.2.3", "[::1]", "x" * 10000):
            self.assertEqual(self.categories.lookup(None, text), frozenset(), msg=text)

    def test_zero_length_prefix(self) -> None:
        """A /0 network matches every address of its family."""
        categories = _categories(all4=["0.0.0.0/0"])
        self.assertEqual(categories.lookup(None, "203.0.113.9"), {"all4"})
        self.assertEqual(categories.lookup(None, "2001:db8::1"), frozenset())


class EntryTests(SynchronousTestCase):
    """
    parse_entry accepts the documented forms and says what is wrong with others.
    """

    def test_forms(self) -> None:
        """Hosts, wildcards, CIDR networks and bare addresses."""
        self.assertEqual(parse_entry("Sip.Lync.com."), HostEntry("sip.lync.com", False))
        self.assertEqual(parse_entry("*.lync.com"), HostEntry("lync.com", True))
        self.assertEqual(str(parse_entry("*.lync.com")), "*.lync.com")
        self.assertEqual(parse_entry("_sip._tls.example.com"), HostEntry("_sip._tls.example.com", False))
        self.assertEqual(parse_entry("52.112.0.0/14"), ipaddress.ip_network("52.112.0.0/14"))
        self.assertEqual(parse_entry("192.0.2.1"), ipaddress.ip_network("192.0.2.1/32"))
        self.assertEqual(parse_entry("2603:1063::/38"), ipaddress.ip_network("2603:1063::/38"))

    def test_errors(self) -> None:
        """Each bad entry gets a message that says what was expected."""
        cases = {
            "*cdn.onenote.net": "'*' is only allowed as the whole first label",
            "a.*.example.com": "'*' is only allowed as the whole first label",
            "*.": "expected a host name after '*.'",
            "52.112.0.1/14": "host bits are set; did you mean 52.112.0.0/14?",
            "52.112.0.0/33": "expected an IPv4 or IPv6 network",
            "1.2.3": "expected an IPv4 or IPv6 network",
            "2603:1063::/129": "expected an IPv4 or IPv6 network",
            "exa mple.com": "is not a DNS label",
            "-bad.example.com": "is not a DNS label",
            "a..b": "is not a DNS label",
            "b\u00fccher.example": "xn--",
            "x" * 64 + ".example": "is not a DNS label",
            ("a." * 130) + "com": f"at most {MAX_HOST_LENGTH} characters",
        }
        for text, expected in cases.items():
            error = self.assertRaises(ValueError, parse_entry, text)
            self.assertIn(expected, str(error), msg=text)

    def test_bad_name(self) -> None:
        """from_lists refuses a category name CPL could not spell."""
        self.assertRaises(ValueError, Categories.from_lists, {"bad name": []})

    def test_category_name(self) -> None:
        """The name is the base name without its last suffix."""
        self.assertEqual(category_name("etc/categories/office365.skype.txt"), "office365.skype")
        self.assertEqual(category_name("/x/local"), "local")
        self.assertEqual(category_name("/x/.hidden"), ".hidden")


class LoadTests(SynchronousTestCase):
    """
    load_categories reads files and reports every mistake as file:line.
    """

    def write(self, text: str, name: str = "local.txt") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def test_comments_and_blanks(self) -> None:
        """Comments (whole-line or after an entry) and blank lines are ignored."""
        path = self.write(
            """\
            # a comment

              *.lync.com   # trailing comment
            52.112.0.0/14
            """
        )
        categories = load_categories([path], "forward.toml")
        self.assertEqual(categories.names(), {"local"})
        self.assertEqual(categories.lookup("lync.com", "52.112.0.1"), {"local"})

    def test_errors_name_file_and_line(self) -> None:
        """Every bad line is reported, as file:line: message, and nothing loads."""
        path = self.write(
            """\
            # header
            *.lync.com
            *cdn.onenote.net
            52.112.0.1/14
            two entries
            """
        )
        errors = self.assertRaises(ConfigErrors, load_categories, [path], "forward.toml")
        lines = str(errors).splitlines()
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[0].startswith(f"{path}:3: bad entry '*cdn.onenote.net'"), lines[0])
        self.assertTrue(lines[1].startswith(f"{path}:4: bad entry '52.112.0.1/14'"), lines[1])
        self.assertEqual(lines[2], f"{path}:5: expected one entry per line, got 2: 'two entries'")
        self.assertEqual([e.line for e in errors.errors], [3, 4, 5])

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is an error with the line and column of the bad byte."""
        path = self.write("")
        with open(path, "wb") as f:
            f.write(b"*.lync.com\n\xff.example\n")
        errors = self.assertRaises(ConfigErrors, load_categories, [path], "forward.toml")
        self.assertEqual(str(errors), f"{path}:2:1: not UTF-8: byte 0xff cannot be decoded")

    def test_missing_file(self) -> None:
        """A file that cannot be read is reported against the config key."""
        path = os.path.abspath(self.mktemp())
        errors = self.assertRaises(ConfigErrors, load_categories, [path], "forward.toml")
        self.assertEqual(
            str(errors), f"forward.toml: txgate.categories: {path}: cannot read: No such file or directory"
        )

    def test_duplicate_names(self) -> None:
        """Two files that would define the same category are refused."""
        first = self.write("a.test\n", "same.txt")
        second = self.write("b.test\n", "same.list")
        errors = self.assertRaises(ConfigErrors, load_categories, [first, second], "forward.toml")
        self.assertIn(f"{second} defines category 'same', already defined by {first}", str(errors))

    def test_bad_file_name(self) -> None:
        """A file name that makes no usable category name is refused."""
        path = self.write("a.test\n", "has space.txt")
        errors = self.assertRaises(ConfigErrors, load_categories, [path], "forward.toml")
        self.assertIn("bad category name 'has space'", str(errors))

    def test_configured(self) -> None:
        """load_configured reads the files [txgate] categories names."""
        path = self.write("*.lync.com\n", "office365.skype.txt")
        config = parse_config(f"[txgate]\ncategories = [{path!r}]\n" + SERVICE, "forward.toml")
        self.assertEqual(config.txgate.categories, (path,))
        self.assertEqual(load_configured(config).lookup("lync.com", None), {"office365.skype"})

    def test_configured_default(self) -> None:
        """Without the key there are no categories."""
        config = parse_config(SERVICE, "forward.toml")
        self.assertEqual(config.txgate.categories, ())
        self.assertEqual(load_configured(config).names(), frozenset())

    def test_config_key_type(self) -> None:
        """The key must be a list of strings."""
        errors = self.assertRaises(
            ConfigErrors, parse_config, '[txgate]\ncategories = "x.txt"\n' + SERVICE, "forward.toml"
        )
        self.assertEqual(str(errors), "forward.toml: txgate.categories: expected a list of strings, got a string")


class SnapshotTests(SynchronousTestCase):
    """
    The shipped Microsoft snapshot loads and holds the published endpoints.
    """

    def setUp(self) -> None:
        self.categories = load_categories([SNAPSHOT], "forward.toml")

    def test_name(self) -> None:
        """It is the office365.skype category."""
        self.assertEqual(self.categories.names(), {"office365.skype"})

    def test_hosts(self) -> None:
        """Lync and Teams names are in it; Default-category names are not."""
        for host in ("lync.com", "webdir.online.lync.com", "sipfed.online.lync.com", "teams.microsoft.com",
                     "x.teams.microsoft.com", "teams.cloud.microsoft"):
            self.assertEqual(self.categories.lookup(host, None), {"office365.skype"}, msg=host)
        for host in ("www.skype.com", "aka.ms", "microsoft.com", "outlook.office365.com"):
            self.assertEqual(self.categories.lookup(host, None), frozenset(), msg=host)

    def test_networks(self) -> None:
        """The Optimize media ranges, IPv4 and IPv6, are in it."""
        for address in ("52.112.0.1", "52.115.255.254", "52.122.0.1", "52.123.255.254", "::ffff:52.113.4.5",
                        "2603:1063::1", "2603:1027::1", "2620:1ec:6::1", "2620:1ec:40::1"):
            self.assertEqual(self.categories.lookup(None, address), {"office365.skype"}, msg=address)
        for address in ("52.116.0.1", "13.107.6.152", "8.8.8.8", "2603:1064::1"):
            self.assertEqual(self.categories.lookup(None, address), frozenset(), msg=address)

    def test_dated_header(self) -> None:
        """The header names the source, the data version and how to refresh."""
        with open(SNAPSHOT, encoding="utf-8") as f:
            header = f.read().split("\n\n", 1)[0]
        for words in ("endpoints.office.com", "version 2025063000", "txgate o365 import"):
            self.assertIn(words, header)


_HOSTS = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["lync", "com", "", "LYNC", "*", "52", "112", "::", "ffff", "-", "\u00fc"]), max_size=12).map(
        ".".join
    ),
    st.ip_addresses().map(str),
)


class ArbitraryInputTests(SynchronousTestCase):
    """
    Lookups never raise, whatever text arrives.
    """

    categories = Categories.from_lists(
        {"a": ["*.lync.com", "x.test", "52.112.0.0/14", "2603:1063::/38"], "b": ["*.com", "0.0.0.0/0"]}
    )

    @given(_HOSTS, st.one_of(st.none(), _HOSTS))
    def test_lookup_never_raises(self, host: str, address: str | None) -> None:
        """lookup returns a subset of names() for any host and address text."""
        found = self.categories.lookup(host, address)
        self.assertLessEqual(found, self.categories.names())

    @given(st.text(max_size=80))
    def test_parse_entry_raises_only_value_error(self, text: str) -> None:
        """parse_entry returns an entry or raises ValueError, for any text."""
        try:
            parse_entry(text)
        except ValueError:
            pass


class PurityTests(SynchronousTestCase):
    """
    The module is a pure core.
    """

    def test_no_reactor(self) -> None:
        """Importing it does not install a reactor."""
        code = (
            "import sys, txgate.policy.categories, txgate.policy.o365;"
            "sys.exit('twisted.internet.reactor' in sys.modules)"
        )
        subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
