"""
Tests for C{txgate policy check} and C{txgate policy trace}.
"""

from __future__ import annotations

import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from txgate.cli import main

ARTICLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "examples", "proxysg-skype.cpl")


class PolicyToolTests(SynchronousTestCase):
    """
    The policy commands print what an administrator needs and exit 0/1.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        with open(ARTICLE_PATH, encoding="utf-8") as f:
            self.policy = self.write("article.cpl", f.read())

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def test_check_ok(self) -> None:
        """A good file: exit 0 and FILE: ok."""
        self.assertEqual(self.run_cli("policy", "check", self.policy), (0, f"{self.policy}: ok\n", ""))

    def test_check_errors(self) -> None:
        """A bad file: exit 1 and each error with its position and caret, no traceback."""
        bad = self.write("bad.cpl", "<proxy>\n  url.hots=x DENY\n  url.port=x DENY\n")
        status, out, err = self.run_cli("policy", "check", bad)
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"{bad}:2:3: unknown condition 'url.hots'", err)
        self.assertIn(f"{bad}:3:3: ", err)
        self.assertIn("^", err)
        self.assertNotIn("Traceback", err)

    def test_trace_text(self) -> None:
        """The text trace names each layer's matching rule by file:line, then the decision."""
        status, out, err = self.run_cli("policy", "trace", "--policy", self.policy, "--url", "other.net:443")
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"<ssl-intercept> at line 4: rule {self.policy}:6 matched: ssl.forward_proxy(https)", out)
        self.assertIn(f"<proxy> at line 7: rule {self.policy}:9 matched: DENY", out)
        self.assertIn("verdict: deny", out)
        self.assertIn("ssl.forward_proxy: https", out)

    def test_trace_json(self) -> None:
        """--json prints the documented object."""
        status, out, err = self.run_cli(
            "policy", "trace", "--policy", self.policy, "--url", "webdir.online.lync.com:443", "--protocol", "ssl", "--json"
        )
        data = json.loads(out)
        self.assertEqual(data["verdict"], "allow")
        self.assertEqual(data["properties"]["ssl.forward_proxy"], "no")
        self.assertEqual(data["properties"]["detect_protocol"], ["http", "https", "ssl", "sip", "sips", "ms-turn", "stun"])
        self.assertEqual(data["matched"], [{"layer": "ssl-intercept", "file": self.policy, "line": 5}])
        self.assertEqual(set(data["properties"]), {"ssl.forward_proxy", "detect_protocol", "tunnel_on_error", "authenticate", "access_log", "server.certificate.validate"})

    def test_trace_request_facts(self) -> None:
        """A URL, client, user and service reach the conditions."""
        policy = self.write(
            "facts.cpl",
            "<proxy>\n  client.address=10.0.0.0/8 user=alice service.name=explicit url.path.prefix=/meet url.scheme=https DENY(\"all facts\")\n",
        )
        status, out, err = self.run_cli(
            "policy", "trace", "--policy", policy, "--url", "https://meet.example.com/meet/x",
            "--client", "10.1.2.3", "--user", "alice", "--service", "explicit", "--json",
        )
        self.assertEqual(json.loads(out)["reason"], "all facts")

    def test_trace_bad_option(self) -> None:
        """A bad option value is a one-line error, exit 1."""
        status, out, err = self.run_cli("policy", "trace", "--policy", self.policy, "--client", "not-an-ip")
        self.assertEqual(status, 1)
        self.assertIn("--client: expected an IP address", err)
