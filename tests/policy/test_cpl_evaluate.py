"""
Tests for L{txgate.policy.cpl}: what published policies do, layer semantics
and the host index.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.interfaces import Checkpoint, IPolicy, PolicyEnvironment
from txgate.policy.cpl import parse_policy
from txgate.session import Address, Session
from txgate.testing import assert_provides

ARTICLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "examples", "proxysg-skype.cpl")
with open(ARTICLE_PATH, encoding="utf-8") as _f:
    ARTICLE = _f.read()
"""The policy the ProxySG Skype for Business articles publish (docs/examples)."""


def _evaluate(text: str, facts: dict[str, Any], **kwargs: Any) -> Any:
    return parse_policy(text, "test.cpl", **kwargs).evaluate(facts)


class ArticleTests(SynchronousTestCase):
    """
    The published snippets do what the articles say.
    """

    def test_lync_bypassed_and_allowed(self) -> None:
        """Lync SSL is not intercepted, tunneled as ssl, and allowed."""
        outcome = _evaluate(
            ARTICLE, {"url.host": "webdir.online.lync.com", "client.protocol": "ssl", "tunneled": True}
        )
        self.assertEqual((outcome.allow, outcome.properties["ssl.forward_proxy"]), (True, "no"))

    def test_other_ssl_intercepted(self) -> None:
        """Other SSL gets HTTPS interception."""
        outcome = _evaluate(ARTICLE, {"url.host": "www.example.net", "client.protocol": "ssl", "tunneled": True})
        self.assertEqual(outcome.properties["ssl.forward_proxy"], "https")
        self.assertTrue(outcome.allow)

    def test_handed_off_protocols_allowed(self) -> None:
        """HTTPS and SIPS handed off to their handlers are not tunneled, so allowed."""
        for protocol in ("https", "sips", "ms-turn"):
            outcome = _evaluate(ARTICLE, {"url.host": "x.net", "client.protocol": protocol, "tunneled": False})
            self.assertTrue(outcome.allow, msg=protocol)

    def test_undetected_denied(self) -> None:
        """
        An undetected protocol inside intercepted SSL (tcp, tunneled) is
        denied, naming the rule.
        """
        outcome = _evaluate(ARTICLE, {"url.host": "x.net", "client.protocol": "tcp", "tunneled": True})
        self.assertFalse(outcome.allow)
        self.assertEqual(outcome.reason, "denied by policy (test.cpl:9)")

    def test_connect_detection_off_denied(self) -> None:
        """
        A CONNECT tunnel with detection off is tcp, tunneled: denied, as the
        article warns, unless an earlier rule of the layer names its host.
        """
        denied = _evaluate(ARTICLE, {"url.host": "intranet.corp", "url.port": 443, "client.protocol": "tcp", "tunneled": True})
        self.assertFalse(denied.allow)
        spared = _evaluate(ARTICLE, {"url.host": "www.example.com", "client.protocol": "tcp", "tunneled": True})
        self.assertTrue(spared.allow)
        self.assertEqual(spared.properties["detect_protocol"].describe(), [])

    def test_detect_protocol_list(self) -> None:
        """C{detect_protocol[ssl,https,sips,sip](no)} turns those off and leaves ms-turn on."""
        outcome = _evaluate("<proxy>\n  detect_protocol[ssl,https,sips,sip](no)\n", {})
        detect = outcome.properties["detect_protocol"]
        self.assertEqual(
            [p for p in ("ssl", "https", "sips", "sip", "ms-turn", "http") if detect.enabled(p, True)],
            ["ms-turn", "http"],
        )
        self.assertFalse(detect.enabled("ms-turn", False))
        self.assertTrue(detect.any_enabled(False) is False)


class SemanticsTests(SynchronousTestCase):
    """
    Layers in file order, first match in a layer, later layers override,
    defaults for what nobody sets.
    """

    def test_first_match_in_layer(self) -> None:
        """Only the first rule whose conditions all hold applies in a layer."""
        policy = "<proxy>\n  url.host=a.example DENY(\"first\")\n  url.domain=example DENY(\"second\")\n"
        self.assertEqual(_evaluate(policy, {"url.host": "a.example"}).reason, "first")
        self.assertEqual(_evaluate(policy, {"url.host": "b.example"}).reason, "second")
        self.assertTrue(_evaluate(policy, {"url.host": "other"}).allow)

    def test_later_layer_overrides(self) -> None:
        """A later layer's verdict replaces an earlier one's; unset properties keep theirs."""
        policy = "<proxy>\n  DENY tunnel_on_error(yes)\n<proxy>\n  user=alice ALLOW\n"
        alice = _evaluate(policy, {"user": "alice"})
        bob = _evaluate(policy, {"user": "bob"})
        self.assertEqual((alice.allow, alice.properties["tunnel_on_error"]), (True, True))
        self.assertEqual((bob.allow, bob.properties["tunnel_on_error"]), (False, True))

    def test_defaults(self) -> None:
        """No rule: the default verdict and property defaults."""
        allowed = _evaluate("<proxy>\n  url.host=never DENY\n", {"url.host": "x"})
        self.assertEqual(
            (allowed.allow, allowed.properties["ssl.forward_proxy"], allowed.properties["access_log"]),
            (True, "no", True),
        )
        denied = _evaluate("<proxy>\n", {}, default_allow=False)
        self.assertEqual((denied.allow, denied.reason), (False, "denied by default_policy"))

    def test_guard(self) -> None:
        """A layer whose guard does not hold is skipped whole."""
        policy = "<proxy> client.address=10.0.0.0/8\n  DENY\n"
        self.assertFalse(_evaluate(policy, {"client.address": "10.1.2.3"}).allow)
        self.assertTrue(_evaluate(policy, {"client.address": "192.168.1.1"}).allow)

    def test_unknown_fact_never_matches(self) -> None:
        """A condition on a fact unknown at this checkpoint is false, negated or not."""
        policy = "<proxy>\n  url.path.prefix=/admin DENY\n  url.path.prefix=!/admin DENY(\"other\")\n"
        self.assertTrue(_evaluate(policy, {"url.host": "x"}).allow)

    def test_define_condition(self) -> None:
        """A defined condition holds when any of its lines holds; it can be negated."""
        policy = (
            "define condition lync\n"
            "  url.domain=lync.com\n"
            "  url.domain=skypeforbusiness.com url.port=443\n"
            "end condition\n"
            "<proxy>\n"
            "  condition=lync ALLOW\n"
            "  condition=!lync DENY\n"
        )
        self.assertTrue(_evaluate(policy, {"url.host": "a.lync.com"}).allow)
        self.assertTrue(_evaluate(policy, {"url.host": "x.skypeforbusiness.com", "url.port": 443}).allow)
        self.assertFalse(_evaluate(policy, {"url.host": "x.skypeforbusiness.com", "url.port": 80}).allow)

    def test_conditions(self) -> None:
        """Each condition kind against facts that match and facts that do not."""
        cases = [
            ("client.address=(10.0.0.0/8,192.0.2.7)", {"client.address": "192.0.2.7"}, {"client.address": "192.0.2.8"}),
            ("client.address=10.0.0.0/8", {"client.address": "::ffff:10.0.0.1"}, {"client.address": "11.0.0.1"}),
            ("client.protocol=(sip,sips)", {"client.protocol": "sips"}, {"client.protocol": "ssl"}),
            ("url.host=Lync.COM", {"url.host": "lync.com"}, {"url.host": "a.lync.com"}),
            ("url.domain=lync.com", {"url.host": "a.b.lync.com"}, {"url.host": "notlync.com"}),
            ("url.host.suffix=ync.com", {"url.host": "lync.com"}, {"url.host": "lync.co"}),
            ('url.host.regex="^sip[0-9]+\\."', {"url.host": "sip12.x"}, {"url.host": "xsip"}),
            ("url.port=(443,5060..5061)", {"url.port": 5061}, {"url.port": 5062}),
            ("url.scheme=https", {"url.scheme": "https"}, {"url.scheme": "http"}),
            ("url.path=/a", {"url.path": "/a"}, {"url.path": "/a/b"}),
            ("url.path.substring=meet", {"url.path": "/x/meet/y"}, {"url.path": "/x"}),
            ("url.path.regex=\\.crl$", {"url.path": "/ca.crl"}, {"url.path": "/ca.crt"}),
            ("service.name=explicit", {"service.name": "explicit"}, {"service.name": "other"}),
            ("user=alice", {"user": "alice"}, {"user": None}),
            ("authenticated=yes", {"authenticated": True}, {"authenticated": False}),
            ("tunneled=no", {"tunneled": False}, {"tunneled": True}),
            ("ssl.sni=meet.example.com", {"ssl.sni": "meet.example.com"}, {"ssl.sni": "x"}),
            ("category=office365.skype", {"category": frozenset({"office365.skype"})}, {"category": frozenset()}),
        ]
        env = PolicyEnvironment(categories=frozenset({"office365.skype"}))
        for condition, yes, no in cases:
            policy = f"<proxy>\n  {condition} DENY\n"
            self.assertFalse(_evaluate(policy, yes, env=env).allow, msg=f"{condition} should match {yes}")
            self.assertTrue(_evaluate(policy, no, env=env).allow, msg=f"{condition} should not match {no}")

    def test_actions(self) -> None:
        """Actions set their properties."""
        env = PolicyEnvironment(realms=frozenset({"corp"}))
        outcome = _evaluate(
            "<proxy>\n  authenticate(corp) access_log(no) tunnel_on_error(yes)\n"
            "<ssl-intercept>\n  ssl.forward_proxy(yes) server.certificate.validate(no)\n",
            {},
            env=env,
        )
        p = outcome.properties
        self.assertEqual(
            (p["authenticate"], p["access_log"], p["tunnel_on_error"], p["ssl.forward_proxy"], p["server.certificate.validate"]),
            ("corp", False, True, "yes", False),
        )
        self.assertEqual([m.line for m in outcome.matched], [2, 4])


class DecideTests(SynchronousTestCase):
    """
    As an L{IPolicy}, a policy evaluates the layers of each checkpoint over
    the session's facts.
    """

    def test_provides(self) -> None:
        """A compiled policy provides IPolicy."""
        assert_provides(self, IPolicy, parse_policy(ARTICLE, "a.cpl"))

    def test_checkpoints(self) -> None:
        """
        The request and connection checkpoints read <proxy> layers; the
        ssl-intercept checkpoint reads <ssl-intercept> and <ssl>; session facts
        (protocol, tunneled, client) come from the session.
        """
        policy = parse_policy(ARTICLE, "a.cpl")
        session = Session("s-1", "explicit", Address("10.0.0.5", 4000), 0.0, client_protocol="tcp", tunneled=True)
        connection = policy.decide(Checkpoint.CONNECTION, session, {"url.host": "x.net"})
        self.assertEqual((connection.allow, connection.matched), (False, ("a.cpl:9 <proxy>",)))
        intercept = policy.decide(Checkpoint.SSL_INTERCEPT, session, {"url.host": "x.lync.com"})
        self.assertEqual((intercept.allow, intercept.properties["ssl.forward_proxy"]), (True, "no"))


class IndexTests(SynchronousTestCase):
    """
    The host index never changes which rule matches.
    """

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["url.host", "url.domain", "url.host.substring", "client.protocol", "url.port"]),
                st.sampled_from(["a.com", "b.a.com", "com", "x.b.a.com", "c.org"]),
            ),
            min_size=1,
            max_size=12,
        ),
        st.sampled_from(["a.com", "b.a.com", "x.b.a.com", "c.org", "org", "zz"]),
    )
    def test_same_as_linear(self, rules: list[tuple[str, str]], host: str) -> None:
        """For any rules and host, the indexed first match is the linear first match."""
        lines = []
        for index, (name, value) in enumerate(rules):
            if name == "client.protocol":
                value = "tcp"
            elif name == "url.port":
                value = "443"
            lines.append(f'  {name}={value} DENY("{index}")')
        policy = parse_policy("<proxy>\n" + "\n".join(lines) + "\n", "p.cpl")
        facts = {"url.host": host, "client.protocol": "tcp", "url.port": 443}
        layer = policy.layers[0]
        linear = next((r for r in layer.rules if r.matches(facts)), None)
        self.assertIs(layer.first_match(facts), linear)

    def test_many_rules(self) -> None:
        """With 10,000 domain rules, a host is decided by its own rule, and the catch-all still applies."""
        lines = [f"  url.domain=host{i}.example DENY(\"{i}\")" for i in range(10000)]
        policy = parse_policy("<proxy>\n" + "\n".join(lines) + "\n  ALLOW\n", "big.cpl", default_allow=False)
        self.assertEqual(policy.evaluate({"url.host": "www.host9876.example"}).reason, "9876")
        self.assertTrue(policy.evaluate({"url.host": "elsewhere.org"}).allow)
