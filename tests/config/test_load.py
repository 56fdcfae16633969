"""
Tests for L{txgate.config}: the embedded defaults, C{etc/forward.toml}, and
the errors an operator sees for each kind of mistake.
"""

from __future__ import annotations

import re

import ipaddress
import json
import os
import subprocess
import sys
import tomllib
from importlib import resources
from typing import Any

import attrs
from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.config import load_config, load_default_config, parse_config
from txgate.errors import ConfigError, ConfigErrors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETC_FORWARD = os.path.join(REPO, "etc", "forward.toml")
PATH = "/etc/txgate/forward.toml"


def _toml(value: Any) -> str:
    """Render a Python value as a TOML value (strings via JSON's escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _service(
    name: Any = "explicit",
    kind: Any = "explicit-http",
    listen: Any = "tcp:0:interface=127.0.0.1",
    **extra: Any,
) -> str:
    """One C{[[service]]} table; a key given as C{None} is left out."""
    keys = {"name": name, "kind": kind, "listen": listen, **extra}
    lines = ["[[service]]"] + [f"{k} = {_toml(v)}" for k, v in keys.items() if v is not None]
    return "\n".join(lines) + "\n"


def _txgate(**keys: Any) -> str:
    """A C{[txgate]} table."""
    return "[txgate]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())


class DefaultsTests(SynchronousTestCase):
    """
    The embedded defaults are safe, and C{etc/forward.toml} documents them.
    """

    def test_defaults_load(self) -> None:
        """The embedded defaults give one explicit HTTP proxy on 127.0.0.1:8080."""
        config = load_default_config()
        self.assertEqual(config.path, "<defaults>")
        [service] = config.services
        self.assertEqual(
            (service.name, service.kind, service.listen),
            ("explicit", "explicit-http", "tcp:8080:interface=127.0.0.1"),
        )

    def test_defaults_not_open_proxy(self) -> None:
        """By default only loopback, RFC 1918 and ULA clients are served."""
        [service] = load_default_config().services
        self.assertEqual(
            set(service.clients),
            {
                ipaddress.ip_network(n)
                for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
            },
        )
        for public in ("8.8.8.8", "2001:4860:4860::8888", "172.32.0.1", "100.64.0.1"):
            address = ipaddress.ip_address(public)
            self.assertFalse(
                any(address.version == n.version and address in n for n in service.clients),
                msg=f"{public} is served by default",
            )

    def test_etc_agrees_with_defaults(self) -> None:
        """Every key the embedded defaults set has the same value in etc/forward.toml."""
        embedded = tomllib.loads(
            resources.files("txgate").joinpath("defaults/forward.toml").read_text("utf-8")
        )
        with open(ETC_FORWARD, "rb") as f:
            documented = tomllib.load(f)
        for key, value in embedded["txgate"].items():
            self.assertEqual(documented["txgate"].get(key), value, msg=f"txgate.{key}")
        self.assertEqual(len(documented["service"]), len(embedded["service"]))
        for index, service in enumerate(embedded["service"]):
            for key, value in service.items():
                self.assertEqual(documented["service"][index].get(key), value, msg=f"service[{index}].{key}")

    def test_etc_loads_as_defaults(self) -> None:
        """etc/forward.toml loads, and as it shows the defaults it equals the embedded config."""
        documented = load_config(ETC_FORWARD)
        self.assertEqual(documented.path, ETC_FORWARD)
        self.assertEqual(attrs.evolve(documented, path="<defaults>"), load_default_config())

    def test_minimal_service(self) -> None:
        """A service needs only name, kind and listen; the rest take the model's defaults."""
        config = parse_config(_service(), PATH)
        [service] = config.services
        self.assertEqual(service.idle_timeout, 1800.0)
        self.assertEqual(service.clients, load_default_config().services[0].clients)

    def test_escaped_ipv6_interface(self) -> None:
        """An IPv6 interface with escaped colons is accepted."""
        [service] = parse_config(_service(listen=r"tcp6:8080:interface=\:\:1"), PATH).services
        self.assertEqual(service.listen, r"tcp6:8080:interface=\:\:1")


class MistakeTests(SynchronousTestCase):
    """
    Each kind of mistake is reported naming the file, the key path and what
    was expected.
    """

    def mistakes(self, text: str) -> list[ConfigError]:
        """Every error C{parse_config} reports for C{text}."""
        errors = self.assertRaises(ConfigErrors, parse_config, text, PATH)
        return list(errors.errors)

    def assert_mistake(self, text: str, key: str, *reasons: str) -> ConfigError:
        """
        C{text} has exactly one mistake, at C{key}, whose rendering names the
        file and the key and contains each of C{reasons}.
        """
        errors = self.mistakes(text)
        self.assertEqual(len(errors), 1, msg="\n".join(map(str, errors)))
        [error] = errors
        rendered = str(error)
        self.assertEqual((error.path, error.key), (PATH, key), msg=rendered)
        self.assertTrue(rendered.startswith(f"{PATH}: {key}: "), msg=rendered)
        for reason in reasons:
            self.assertIn(reason, rendered)
        return error

    def test_unknown_txgate_key(self) -> None:
        """An unknown key in [txgate] is named, with the known keys listed."""
        self.assert_mistake(
            _txgate(acces_log="x") + _service(), "txgate.acces_log", "unknown key", "access_log"
        )

    def test_unknown_service_key(self) -> None:
        """An unknown key in [[service]] is named with its index."""
        self.assert_mistake(_service(idle_timout=5), "service[0].idle_timout", "unknown key", "idle_timeout")

    def test_unknown_section(self) -> None:
        """An unknown top-level section is named, with the known ones listed."""
        self.assert_mistake("[proxy]\nport = 1\n" + _service(), "proxy", "unknown section", "txgate, service")

    def test_string_for_number(self) -> None:
        """A string where seconds are expected is refused."""
        self.assert_mistake(_service(idle_timeout="30"), "service[0].idle_timeout", "number of seconds", 'got "30"')

    def test_number_for_string(self) -> None:
        """A number where a name is expected is refused, saying what arrived."""
        self.assert_mistake(_service(name=5), "service[0].name", "expected a string, got a number")

    def test_bool_for_number(self) -> None:
        """A boolean is not a number of seconds (even though bool subclasses int)."""
        self.assert_mistake(_service(idle_timeout=True), "service[0].idle_timeout", "number of seconds")

    def test_non_positive_seconds(self) -> None:
        """Zero or negative timeouts are refused."""
        for value in (0, -1, -0.5):
            self.assert_mistake(_service(connect_timeout=value), "service[0].connect_timeout", "positive")

    def test_nan_seconds(self) -> None:
        """NaN is not a number of seconds."""
        self.assert_mistake(
            _service() + "idle_timeout = nan\n", "service[0].idle_timeout", "number of seconds"
        )

    def test_header_size_range(self) -> None:
        """max_header_size must be a whole number of bytes in range."""
        for value in (10, 1 << 30, 65536.0):
            self.assert_mistake(_service(max_header_size=value), "service[0].max_header_size", "1024")

    def test_bad_endpoint(self) -> None:
        """An endpoint string Twisted cannot parse is refused with Twisted's reason."""
        self.assert_mistake(_service(listen="tpc:8080"), "service[0].listen", "bad endpoint string", "'tpc'")
        self.assert_mistake(_service(listen="tcp:http-alt"), "service[0].listen", "bad endpoint string")

    def test_ipv6_interface_unescaped(self) -> None:
        """An IPv6 interface with bare colons is refused with a hint to escape them."""
        self.assert_mistake(
            _service(listen="tcp6:8080:interface=::1"), "service[0].listen", "escape colons", r"\:\:1"
        )

    def test_bad_cidr(self) -> None:
        """A client entry that is not an address or network is named."""
        self.assert_mistake(
            _service(clients=["10.0.0.0/8", "10.0.0.0/33"]), "service[0].clients", "CIDR", "'10.0.0.0/33'"
        )

    def test_clients_not_list(self) -> None:
        """clients must be a list of strings."""
        self.assert_mistake(_service(clients="10.0.0.0/8"), "service[0].clients", "list of strings")

    def test_bad_choices(self) -> None:
        """kind, default_policy and access_log_format list their allowed values."""
        self.assert_mistake(
            _service(kind="socks4"), "service[0].kind", '"explicit-http", "transparent", "tcp-tunnel", "socks5"', 'got "socks4"'
        )
        self.assert_mistake(
            _txgate(default_policy="permit") + _service(), "txgate.default_policy", '"allow", "deny"', 'got "permit"'
        )
        self.assert_mistake(
            _txgate(access_log_format="xml") + _service(), "txgate.access_log_format", '"text", "json"', 'got "xml"'
        )

    def test_tcp_tunnel_destination(self) -> None:
        """A tcp-tunnel needs a destination, as host:port or [v6]:port."""
        config = parse_config(_service(kind="tcp-tunnel", destination="Mail.Example.com:25"), PATH)
        self.assertEqual(config.services[0].destination, ("mail.example.com", 25))
        config = parse_config(_service(kind="tcp-tunnel", destination="[fd00::1]:443"), PATH)
        self.assertEqual(config.services[0].destination, ("fd00::1", 443))
        self.assert_mistake(_service(kind="tcp-tunnel"), "service[0].destination", "required", '"tcp-tunnel"')
        for bad in ("example.com", "example.com:0", "example.com:65536", "::1:22", "[10.0.0.1]:22", "a b:1", ":22"):
            self.assert_mistake(
                _service(kind="tcp-tunnel", destination=bad), "service[0].destination", "host:port", repr(bad)
            )

    def test_kind_only_keys(self) -> None:
        """destination belongs to tcp-tunnel, realm to socks5: other kinds refuse them."""
        self.assert_mistake(
            _service(destination="a.test:1"), "service[0].destination", 'only a "tcp-tunnel"', '"explicit-http"'
        )
        self.assert_mistake(
            _service(kind="transparent", realm="corp"), "service[0].realm", 'only a "socks5"', '"transparent"'
        )

    def test_socks5_realm(self) -> None:
        """A socks5 realm must name a [realm.NAME] table."""
        realm = '[realm.corp]\nhtpasswd = "users.htpasswd"\n'
        config = parse_config(_service(kind="socks5", realm="corp") + realm, PATH)
        self.assertEqual(config.services[0].realm, "corp")
        self.assert_mistake(_service(kind="socks5", realm="other") + realm, "service[0].realm", "[realm.other]", "corp")

    def test_missing_required(self) -> None:
        """Each of name, kind and listen is required."""
        for key in ("name", "kind", "listen"):
            self.assert_mistake(_service(**{key: None}), f"service[0].{key}", "required key is missing")

    def test_invalid_is_not_also_missing(self) -> None:
        """A required key with a bad value is reported once, as bad, not also as missing."""
        self.assert_mistake(_service(name=""), "service[0].name", "expected a name")

    def test_duplicate_names(self) -> None:
        """Two services with one name: the second is named, pointing at the first."""
        self.assert_mistake(
            _service(listen="tcp:0") + _service(listen="tcp:0"), "service[1].name", "'explicit'", "service[0]"
        )

    def test_overlap_same_port_same_interface(self) -> None:
        """Two listeners on one port of one interface overlap."""
        self.assert_mistake(
            _service("a", listen="tcp:8080:interface=127.0.0.1") + _service("b", listen="tcp:8080:interface=127.0.0.1"),
            "service[1].listen",
            "overlaps",
            "service[0]",
        )

    def test_overlap_wildcard(self) -> None:
        """A wildcard listener overlaps a specific interface on the same port, in either order."""
        for first, second in [
            ("tcp:8080", "tcp:8080:interface=10.0.0.1"),
            ("tcp:8080:interface=10.0.0.1", "tcp:8080:interface=0.0.0.0"),
            ("tcp6:8080", "tcp:8080:interface=127.0.0.1"),
        ]:
            self.assert_mistake(
                _service("a", listen=first) + _service("b", listen=second), "service[1].listen", "overlaps"
            )

    def test_no_overlap(self) -> None:
        """Different ports, or different interfaces on one port, do not overlap."""
        config = parse_config(
            _service("a", listen="tcp:8080:interface=127.0.0.1")
            + _service("b", listen="tcp:8080:interface=127.0.0.2")
            + _service("c", listen="tcp:8082:interface=127.0.0.1"),
            PATH,
        )
        self.assertEqual([s.name for s in config.services], ["a", "b", "c"])

    def test_port_zero_never_overlaps(self) -> None:
        """Port 0 picks a free port, so two port-0 listeners never overlap."""
        config = parse_config(
            _service("a", listen="tcp:0:interface=127.0.0.1") + _service("b", listen="tcp:0:interface=127.0.0.1"),
            PATH,
        )
        self.assertEqual(len(config.services), 2)

    def test_overlap_through_haproxy(self) -> None:
        """A haproxy: listener is unwrapped and checked like the plain one."""
        self.assert_mistake(
            _service("a", listen="haproxy:tcp:8080:interface=127.0.0.1")
            + _service("b", listen="tcp:8080:interface=127.0.0.1"),
            "service[1].listen",
            "overlaps",
        )

    def test_no_service(self) -> None:
        """A file without any [[service]] is refused."""
        self.assert_mistake(_txgate(state_dir="var"), "service", "at least one [[service]]")

    def test_service_not_array(self) -> None:
        """A single [service] table instead of [[service]] says how to write it."""
        errors = self.mistakes("[service]\nname = 'a'\n")
        self.assertIn("[[service]]", str(errors[0]))
        self.assertEqual(errors[0].key, "service")

    def test_syntax_error_position(self) -> None:
        """A TOML syntax error is reported as PATH:line:column."""
        [error] = self.mistakes(_service() + 'kind = = "x"\n')
        self.assertEqual((error.line, error.column), (5, 8))
        self.assertTrue(str(error).startswith(f"{PATH}:5:8: TOML syntax"), msg=str(error))

    def test_deep_nesting(self) -> None:
        """Deeply nested arrays are a config error, not a RecursionError."""
        errors = self.mistakes("x = " + "[" * 5000 + "]" * 5000 + "\n" + _service())
        self.assertTrue(all(e.path == PATH for e in errors))

    def test_several_reported_together(self) -> None:
        """Every mistake in a file is reported at once, so one round fixes them all."""
        text = (
            _txgate(bogus=1, default_policy="maybe")
            + _service("a", kind="socks")
            + _service("b", clients=["300.0.0.1"], idle_timeout="long")
            + _service("c", listen=None)
        )
        errors = self.mistakes(text)
        self.assertEqual(
            {e.key for e in errors},
            {
                "txgate.bogus",
                "txgate.default_policy",
                "service[0].kind",
                "service[1].clients",
                "service[1].idle_timeout",
                "service[2].listen",
            },
        )
        self.assertTrue(all(e.path == PATH for e in errors))


class LoadTests(SynchronousTestCase):
    """
    L{load_config} reports files it cannot read by their path.
    """

    def test_missing_file(self) -> None:
        """A missing file is one error naming the path and the OS reason."""
        path = os.path.abspath(self.mktemp())
        errors = self.assertRaises(ConfigErrors, load_config, path)
        [error] = errors.errors
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is one error naming the path and the line:column of the bad byte."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(_service().encode("ascii") + b'# caf\xe9 (latin-1)\n')
        errors = self.assertRaises(ConfigErrors, load_config, path)
        [error] = errors.errors
        self.assertRegex(str(error), rf"^{re.escape(path)}:\d+:\d+: not UTF-8: byte 0x")

    def test_errors_name_the_file(self) -> None:
        """Errors from a file on disk carry its path as given."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(_service(kind="socks"))
        errors = self.assertRaises(ConfigErrors, load_config, path)
        self.assertEqual(str(errors).splitlines()[0].split(": ")[:2], [path, "service[0].kind"])

    def test_loads_file(self) -> None:
        """A good file loads with its path recorded."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(_txgate(access_log="-", access_log_format="json") + _service())
        config = load_config(path)
        self.assertEqual((config.path, config.txgate.access_log_format), (path, "json"))


_KEYS = st.sampled_from(
    [
        "state_dir", "plugin_path", "access_log", "access_log_format", "policy", "default_policy",
        "required_plugins", "name", "kind", "listen", "clients", "idle_timeout", "connect_timeout",
        "max_header_size", "detect_protocol", "tunnel_on_protocol_error", "bogus", "service",
        "txgate", '"quoted key"', "a.b",
    ]
)
_VALUES = st.one_of(
    st.sampled_from(
        [
            "true", "false", "nan", "inf", "-inf", "0", "-1", "1e400", "1979-05-27", "07:32:00",
            "[]", "{}", "[1, 'a']", '"explicit-http"', '"allow"', '"json"', '"tcp:0"',
            '"tcp:8080"', '"tcp:8080:interface=127.0.0.1"', '"tcp6:8080:interface=::1"',
            '"haproxy:tcp:8080"', '"unix:/tmp/txgate-test.sock"', '"10.0.0.0/8"',
            '["::1/128", "bogus"]', '{ name = "x" }',
        ]
    ),
    st.integers().map(str),
    st.floats().map(repr),
    st.text(max_size=30).map(json.dumps),
)
_LINES = st.one_of(
    st.sampled_from(["[txgate]", "[[service]]", "[service]", "[other]", "[[txgate]]", "", "#"]),
    st.builds("{} = {}".format, _KEYS, _VALUES),
    st.text(max_size=10),
)
_TOMLISH = st.lists(_LINES, max_size=25).map("\n".join)


class ArbitraryTextTests(SynchronousTestCase):
    """
    Whatever the file holds, parsing ends in a config or in ConfigErrors.
    """

    def assert_config_or_errors(self, text: str) -> None:
        try:
            parse_config(text, PATH)
        except ConfigErrors as e:
            self.assertTrue(e.errors)
            for error in e.errors:
                self.assertEqual(error.path, PATH)
                self.assertTrue(str(error).startswith(PATH + ":"), msg=str(error))

    @given(st.text())
    def test_any_text(self, text: str) -> None:
        """Any text parses or raises only ConfigErrors, each naming the path."""
        self.assert_config_or_errors(text)

    @given(_TOMLISH)
    def test_tomlish_text(self, text: str) -> None:
        """TOML-shaped text with known and unknown keys and odd values gives only ConfigErrors."""
        self.assert_config_or_errors(text)


class NoReactorTests(SynchronousTestCase):
    """
    Configuration is a pure core: importing and using it installs no reactor.
    """

    def test_no_reactor(self) -> None:
        """Importing txgate.config and loading the defaults leaves twisted.internet.reactor unimported."""
        code = (
            "import sys, txgate.config\n"
            "txgate.config.load_default_config()\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "False"), msg=result.stderr)


class AdminSectionTests(SynchronousTestCase):
    """C{[admin]}: the admin console's listener and its token."""

    def test_default(self) -> None:
        config = parse_config(_service(), PATH)
        self.assertEqual(config.admin.listen, "tcp:8081:interface=127.0.0.1")
        self.assertEqual(config.admin.token_file, "")

    def test_off(self) -> None:
        config = parse_config('[admin]\nlisten = ""\n' + _service(listen="tcp:8081:interface=127.0.0.1"), PATH)
        self.assertEqual(config.admin.listen, "")

    def test_beyond_loopback_needs_a_token(self) -> None:
        for listen in ("tcp:8081", "tcp:8081:interface=0.0.0.0", "tcp:8081:interface=192.0.2.1"):
            with self.assertRaises(ConfigErrors) as caught:
                parse_config(f'[admin]\nlisten = "{listen}"\n' + _service(), PATH)
            (error,) = caught.exception.errors
            self.assertEqual(error.key, "admin.token_file")
        config = parse_config('[admin]\nlisten = "tcp:8081"\ntoken_file = "admin.token"\n' + _service(), PATH)
        self.assertEqual(config.admin.token_file, "admin.token")

    def test_overlap_with_a_service(self) -> None:
        with self.assertRaises(ConfigErrors) as caught:
            parse_config(_service(listen="tcp:8081:interface=127.0.0.1"), PATH)
        self.assertIn("overlaps", str(caught.exception))
