"""
Tests for the reverse-mode configuration: C{etc/reverse.toml} and the errors
an operator sees for each kind of mistake.
"""

from __future__ import annotations

import os
import tomllib

from twisted.trial.unittest import SynchronousTestCase

from txgate.config import parse_reverse_config
from txgate.errors import ConfigErrors

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ETC_REVERSE = os.path.join(REPO, "etc", "reverse.toml")

MINIMAL = """
[[virtual_service]]
name = "web"
listen = "tcp:0:interface=127.0.0.1"
allowed_hosts = ["lyncweb.example.com"]
{extra}
[[virtual_service.real_server]]
address = "127.0.0.1:4443"
{server}
"""


def _errors(text: str) -> list[tuple[str, str]]:
    try:
        parse_reverse_config(text, "reverse.toml")
    except ConfigErrors as e:
        return [(error.key, error.message) for error in e.errors]
    raise AssertionError("the configuration was accepted")


class ShippedConfigTests(SynchronousTestCase):
    def test_etc_reverse_documents_the_defaults(self) -> None:
        """
        C{etc/reverse.toml} (certificate paths aside, which do not exist
        here) is valid, and the values it shows for the first virtual
        service are the defaults.
        """
        with open(ETC_REVERSE, encoding="utf-8") as f:
            text = f.read()
        document = tomllib.loads(text)
        for service in document["virtual_service"]:
            service.pop("certificates", None)
            for rs in service["real_server"]:
                rs.pop("ca_bundle", None)
        rebuilt = _dump(document)
        config = parse_reverse_config(rebuilt, ETC_REVERSE)
        web, discover = config.virtual_services
        default = parse_reverse_config(MINIMAL.format(extra="", server=""), "x").virtual_services[0]
        for key in (
            "allowed_paths",
            "scheduling",
            "persistence",
            "idle_timeout",
            "header_timeout",
            "body_timeout",
            "max_header_size",
            "connect_timeout",
            "pool_size",
            "send_proxy",
            "health_check",
        ):
            self.assertEqual(getattr(web, key), getattr(default, key), key)
        self.assertEqual(web.real_servers[0].server_name, "fe1.corp.example.com")
        self.assertEqual(discover.kind, "reverse-http")
        self.assertEqual(discover.persistence.mode, "source-ip")
        self.assertFalse(discover.real_servers[0].tls)
        self.assertEqual(config.logs.user_log, "var/log/esp-user.log")


def _dump(document: dict) -> str:
    """Just enough TOML writing for the shipped file's shapes."""
    import json

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)

    lines = []
    for section in ("txgate", "logs"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in document[section].items()]
    for service in document["virtual_service"]:
        lines.append("[[virtual_service]]")
        servers = service.pop("real_server")
        check = service.pop("health_check", None)
        lines += [f"{k} = {value(v)}" for k, v in service.items()]
        if check is not None:
            lines.append("[virtual_service.health_check]")
            lines += [f"{k} = {value(v)}" for k, v in check.items()]
        for rs in servers:
            lines.append("[[virtual_service.real_server]]")
            lines += [f"{k} = {value(v)}" for k, v in rs.items()]
    return "\n".join(lines) + "\n"


class ErrorTests(SynchronousTestCase):
    """Each mistake is named by its key."""

    def test_minimal(self) -> None:
        config = parse_reverse_config(MINIMAL.format(extra="", server=""), "x")
        (service,) = config.virtual_services
        self.assertEqual(service.kind, "reverse-http")
        self.assertEqual(service.real_servers[0].key, "127.0.0.1:4443")
        self.assertEqual(service.real_servers[0].verified_name, "127.0.0.1")
        self.assertEqual(service.persistence.cookie, "MS-WSMAN")

    def test_required(self) -> None:
        errors = _errors('[[virtual_service]]\nname = "web"\n')
        keys = {key for key, _ in errors}
        self.assertEqual(
            keys,
            {"virtual_service[0].listen", "virtual_service[0].allowed_hosts", "virtual_service[0].real_server"},
        )

    def test_no_virtual_service(self) -> None:
        self.assertEqual(_errors("[txgate]\n"), [("virtual_service", "at least one [[virtual_service]] is needed")])

    def test_unknown_keys(self) -> None:
        errors = _errors(MINIMAL.format(extra="colour = 1", server="colour = 2") + "[frontend]\n")
        keys = [key for key, _ in errors]
        self.assertIn("virtual_service[0].colour", keys)
        self.assertIn("virtual_service[0].real_server[0].colour", keys)
        self.assertIn("frontend", keys)

    def test_bad_values(self) -> None:
        extra = "\n".join(
            [
                'scheduling = "fastest"',
                'persistence = { mode = "active-cookie", cookie = "bad name", timeout = 5 }',
                'allowed_paths = ["meet/*"]',
                'certificates = ["/nonexistent.pem"]',
                "idle_timeout = 0",
                "health_check = { interval = 1, timeout = 2, rise = 0 }",
            ]
        )
        errors = dict(_errors(MINIMAL.format(extra=extra, server="weight = -1")))
        for key in (
            "virtual_service[0].scheduling",
            "virtual_service[0].persistence.cookie",
            "virtual_service[0].persistence.timeout",
            "virtual_service[0].allowed_paths",
            "virtual_service[0].certificates",
            "virtual_service[0].idle_timeout",
            "virtual_service[0].health_check.rise",
            "virtual_service[0].health_check.timeout",
            "virtual_service[0].real_server[0].weight",
        ):
            self.assertIn(key, errors)
        self.assertIn("fastest", errors["virtual_service[0].scheduling"])

    def test_bad_hosts(self) -> None:
        errors = dict(_errors(MINIMAL.format(extra="", server="").replace('["lyncweb.example.com"]', '["a b"]')))
        self.assertIn("virtual_service[0].allowed_hosts", errors)

    def test_bad_address(self) -> None:
        errors = dict(_errors(MINIMAL.format(extra="", server="").replace("127.0.0.1:4443", "nohost")))
        self.assertIn("virtual_service[0].real_server[0].address", errors)

    def test_duplicate_real_server(self) -> None:
        text = MINIMAL.format(extra="", server="") + '[[virtual_service.real_server]]\naddress = "127.0.0.1:4443"\n'
        errors = dict(_errors(text))
        self.assertIn("listed twice", errors["virtual_service[0].real_server"])

    def test_duplicate_names_and_overlapping_listeners(self) -> None:
        text = MINIMAL.format(extra="", server="").replace("tcp:0:", "tcp:8443:")
        errors = dict(_errors(text + text))
        self.assertIn("virtual_service[1].name", errors)
        self.assertTrue(any("listen" in key for key in errors))

    def test_toml_syntax(self) -> None:
        try:
            parse_reverse_config("[[virtual_service]\n", "reverse.toml")
        except ConfigErrors as e:
            (error,) = e.errors
            self.assertEqual((error.line, error.column), (1, 18))
            self.assertIn("reverse.toml", str(e))
        else:
            self.fail("accepted")
