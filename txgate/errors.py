# -*- test-case-name: tests.test_errors -*-
"""
Errors that say whose fault they are.

L{ConfigError} is for operators (a file, a key, what was expected);
L{PeerProtocolError} is for bytes a peer sent that the protocol does not allow.
Any other exception escaping txgate code is a bug.
"""

from __future__ import annotations

import attrs

__all__ = ["ConfigError", "ConfigErrors", "PeerProtocolError"]


@attrs.frozen(auto_exc=True)
class ConfigError(Exception):
    """
    One mistake in a configuration file.

    @ivar path: the file the mistake is in.
    @ivar key: the dotted key path (C{service[0].listen}) or C{""} for the whole
        file.
    @ivar message: what was wrong and what was expected.
    @ivar line: 1-based line when known (TOML syntax errors), else C{None}.
    @ivar column: 1-based column when known, else C{None}.
    """

    path: str
    key: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.path
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


@attrs.frozen(auto_exc=True)
class ConfigErrors(Exception):
    """
    Every mistake found in one configuration file, so an operator fixes them in
    one round instead of one per restart.
    """

    errors: tuple[ConfigError, ...]

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


@attrs.frozen(auto_exc=True)
class PeerProtocolError(Exception):
    """
    A peer sent bytes its protocol does not allow.

    @ivar protocol: the C{client.protocol} name (C{http}, C{sips}, C{ms-turn}...),
        so logs say which protocol failed rather than a generic error.
    @ivar reason: what was expected and what arrived.
    @ivar status_hint: the HTTP status to answer with when the peer speaks HTTP.
    """

    protocol: str
    reason: str
    status_hint: int = 400

    def __str__(self) -> str:
        return f"{self.protocol}: {self.reason}"
