# -*- test-case-name: tests.policy.test_cpl_parse -*-
"""
Errors in CPL files: position and a caret line under the offending word.
"""

from __future__ import annotations

from txgate.errors import ConfigError

__all__ = ["PolicyError"]


class PolicyError(ConfigError):
    """
    A mistake in a policy file, rendered as
    C{path:line:column: message}, then the source line and a caret under the
    word at fault.

    @ivar _source: the physical line the error is on.
    """

    def __init__(self, path: str, line: int, column: int, message: str, source: str = "") -> None:
        super().__init__(path, "", message, line, column)
        object.__setattr__(self, "_source", source)

    def __str__(self) -> str:
        text = super().__str__()
        source = getattr(self, "_source", "")
        if not source:
            return text
        caret = " " * ((self.column or 1) - 1) + "^"
        return f"{text}\n    {source.expandtabs(1)}\n    {caret}"
