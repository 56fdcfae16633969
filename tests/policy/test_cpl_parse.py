"""
Tests for reading CPL files: syntax, and errors with their positions.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import ConfigErrors
from txgate.interfaces import PolicyEnvironment
from txgate.policy.cpl import PolicyError, load_policy, parse_policy


def _errors(text: str, env: PolicyEnvironment = PolicyEnvironment()) -> list[str]:
    try:
        parse_policy(text, "local.cpl", env=env)
    except ConfigErrors as e:
        return [str(error) for error in e.errors]
    raise AssertionError(f"no error for {text!r}")


class SyntaxTests(SynchronousTestCase):
    """
    Comments, continuations, case, quoting.
    """

    def test_comments_continuations_case(self) -> None:
        """C{;} comments, C{\\} continuations and keyword case are as in ProxySG."""
        policy = parse_policy(
            "; Lync policy\n<Proxy>   ; the proxy layer\n"
            "    url.domain=example.com \\\n      deny(\"no ; not here\")\n"
            "    Allow\n",
            "p.cpl",
        )
        [layer] = policy.layers
        self.assertEqual([r.line for r in layer.rules], [3, 5])
        self.assertEqual(policy.evaluate({"url.host": "example.com"}).reason, "no ; not here")

    def test_empty(self) -> None:
        """An empty file (or only comments) is a policy with no layers."""
        self.assertEqual(parse_policy("; nothing\n\n", "p.cpl").layers, ())

    def test_load_file(self) -> None:
        """load_policy reads a file; an unreadable one is an error naming it."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("<proxy>\n  DENY\n")
        self.assertFalse(load_policy(path).evaluate({}).allow)
        with self.assertRaises(ConfigErrors) as caught:
            load_policy(path + ".missing")
        self.assertIn("cannot read", str(caught.exception))


class ErrorTests(SynchronousTestCase):
    """
    Every mistake names file:line:column with a caret under the word, and
    the file is refused whole.
    """

    def test_unknown_condition(self) -> None:
        """A misspelt condition is named, with a suggestion and a caret."""
        [error] = _errors("<proxy>\n    url.hots=x DENY\n")
        self.assertEqual(
            error,
            "local.cpl:2:5: unknown condition 'url.hots'; did you mean 'url.host'?\n"
            "        url.hots=x DENY\n"
            "        ^",
        )

    def test_each_kind(self) -> None:
        """One case per kind of mistake, with the expected position and words."""
        cases = [
            ("<proxy>\n  ssl.forward_prox(no)\n", "2:3", "unknown action 'ssl.forward_prox'"),
            ("<proxy>\n  ssl.forward_proxy(no)\n", "2:3", "cannot be used in <proxy> layers"),
            ("<ssl-intercept>\n  DENY\n", "2:3", "cannot be used in <ssl-intercept> layers"),
            ("<ssl-intercept>\n  url.path=/x ssl.forward_proxy(no)\n", "2:3", "url.path cannot be used in <ssl-intercept>"),
            ("<proxy>\n  url.host.regex=\"(\" DENY\n", "2:3", "bad regular expression"),
            ("<proxy>\n  client.address=10.0.0.0/33 DENY\n", "2:3", "CIDR"),
            ("<proxy>\n  url.port=70000 DENY\n", "2:3", "ports from 1 to 65535"),
            ("<proxy>\n  tunneled=maybe DENY\n", "2:3", "yes or no"),
            ("<ssl-intercept>\n  ssl.forward_proxy(maybe)\n", "2:3", "takes no, yes or https"),
            ("<proxy>\n  detect_protocol(some)\n", "2:3", "all, none"),
            ("<proxy>\n  category=nosuch DENY\n", "2:3", "unknown category 'nosuch'"),
            ("<proxy>\n  authenticate(corp)\n", "2:3", "unknown realm 'corp'"),
            ("<proxy>\n  condition=undefined DENY\n", "2:3", "no condition named 'undefined'"),
            ("<prxy>\n", "1:1", "unknown layer '<prxy>'"),
            ("  DENY\n", "1:3", "rule outside a layer"),
            ("define condition x\n  url.host=a\n", "1:1", "is not closed by 'end'"),
            ("define condition x\n  DENY\nend\n", "2:3", "only conditions"),
            ("end\n", "1:1", "'end' without"),
            ("<proxy>\n  DENY(\"open\n", "2:3", "unterminated string"),
            ("<proxy>\n  authenticate(corp\n", "2:3", "unclosed parenthesis"),
            ("<proxy> DENY\n", "1:9", "takes only conditions"),
            ("define condition x\n  url.host=a\nend\ndefine condition x\n  url.host=b\nend\n", "4:18", "already defined"),
        ]
        for text, position, words in cases:
            errors = _errors(text)
            self.assertTrue(errors[0].startswith(f"local.cpl:{position}: "), msg=f"{text!r}: {errors}")
            self.assertIn(words, errors[0], msg=f"input {text!r}")

    def test_all_reported(self) -> None:
        """Several mistakes are reported together, in file order."""
        errors = _errors("<proxy>\n  url.hots=a DENY\n  url.port=x DENY\n<bad>\n")
        self.assertEqual([e.split(": ")[0] for e in errors], ["local.cpl:2:3", "local.cpl:3:3", "local.cpl:4:1"])

    def test_caret_on_continuation(self) -> None:
        """The caret points into the physical line where the bad word is."""
        [error] = _errors("<proxy>\n  url.host=a \\\n    url.prt=1 DENY\n")
        self.assertEqual(error.splitlines()[1:], ["        url.prt=1 DENY", "        ^"])

    def test_define_uses_checked_per_layer(self) -> None:
        """A defined condition using url.path cannot be used in an <ssl-intercept> layer."""
        [error] = _errors(
            "define condition admin\n  url.path.prefix=/admin\nend\n<ssl-intercept>\n  condition=admin ssl.forward_proxy(no)\n"
        )
        self.assertIn("url.path.prefix cannot be used in <ssl-intercept> layers", error)

    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300))
    def test_never_crashes(self, text: str) -> None:
        """Any text parses or fails with positioned PolicyErrors only."""
        try:
            parse_policy(text, "fuzz.cpl")
        except ConfigErrors as e:
            for error in e.errors:
                self.assertIsInstance(error, PolicyError)
                self.assertIsNotNone(error.line)
                self.assertRegex(str(error), re.compile(r"^fuzz\.cpl:\d+:\d+: "))

    @given(
        st.lists(
            st.sampled_from(
                ["<proxy>", "<ssl-intercept>", "<ssl>", "DENY", "ALLOW", "url.host=a", "url.domain=(a,b)",
                 "client.protocol=!ssl", "tunneled=yes", "ssl.forward_proxy(https)", "detect_protocol[ssl](no)",
                 "define condition c", "end", "condition=c", "\\", ";", "\"", "(", "url.port=1..2"]
            ),
            max_size=30,
        )
    )
    def test_cpl_shaped_never_crashes(self, words: list[str]) -> None:
        """CPL-shaped word salad parses or fails with positioned errors only."""
        text = ""
        for i, word in enumerate(words):
            text += word + ("\n" if i % 3 == 2 else " ")
        try:
            parse_policy(text, "fuzz.cpl")
        except ConfigErrors as e:
            self.assertTrue(all(isinstance(error, PolicyError) and error.line for error in e.errors))
