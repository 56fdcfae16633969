"""
Tests for L{txgate.errors}: what an operator reads when something is wrong.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import ConfigError, ConfigErrors, PeerProtocolError


class ConfigErrorTests(SynchronousTestCase):
    """
    A config error renders as C{path[:line[:column]]: [key: ]message}.
    """

    def test_key(self) -> None:
        """With a key and no position: C{path: key: message}."""
        error = ConfigError("etc/forward.toml", "service[0].listen", "required key is missing")
        self.assertEqual(str(error), "etc/forward.toml: service[0].listen: required key is missing")

    def test_line_and_column(self) -> None:
        """With a line and column and no key: C{path:line:column: message}."""
        error = ConfigError("etc/forward.toml", "", "TOML syntax: bad value", line=12, column=7)
        self.assertEqual(str(error), "etc/forward.toml:12:7: TOML syntax: bad value")

    def test_line_only(self) -> None:
        """A line without a column renders as C{path:line}."""
        error = ConfigError("etc/forward.toml", "txgate", "not UTF-8", line=3)
        self.assertEqual(str(error), "etc/forward.toml:3: txgate: not UTF-8")

    def test_column_without_line_ignored(self) -> None:
        """A column is only shown after a line."""
        error = ConfigError("f.toml", "", "oops", column=4)
        self.assertEqual(str(error), "f.toml: oops")


class ConfigErrorsTests(SynchronousTestCase):
    """
    Every mistake in a file is reported, one per line.
    """

    def test_one_line_each(self) -> None:
        """C{str()} joins the errors with newlines, in order."""
        errors = ConfigErrors(
            (
                ConfigError("f.toml", "txgate.policy", "'x' is not a file"),
                ConfigError("f.toml", "service", "at least one [[service]] is needed"),
            )
        )
        self.assertEqual(
            str(errors),
            "f.toml: txgate.policy: 'x' is not a file\n"
            "f.toml: service: at least one [[service]] is needed",
        )


class PeerProtocolErrorTests(SynchronousTestCase):
    """
    A peer's protocol error names the protocol and what was wrong, and keeps
    the status to answer with.
    """

    def test_str_and_status(self) -> None:
        """C{str()} is C{protocol: reason}; C{status_hint} is kept, 400 by default."""
        error = PeerProtocolError("sips", "expected a SIP request line", 414)
        self.assertEqual(str(error), "sips: expected a SIP request line")
        self.assertEqual(error.status_hint, 414)
        self.assertEqual(PeerProtocolError("http", "bad").status_hint, 400)
