# -*- test-case-name: tests.config.test_load -*-
"""
Reading the text files configuration names (the config itself, policy,
category lists, password files) with errors that say where.
"""

from __future__ import annotations

from txgate.errors import ConfigError, ConfigErrors

__all__ = ["read_text"]


def read_text(path: str) -> str:
    """
    The UTF-8 text of the file at C{path} (a leading byte-order mark is
    dropped).

    @raise ConfigErrors: the file cannot be read (the error has no line), or
        a byte is not UTF-8 (the error names its line and column).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigErrors((ConfigError(path, "", f"cannot read: {e.strerror}"),)) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigErrors(
            (ConfigError(path, "", f"not UTF-8: byte 0x{raw[e.start]:02x} cannot be decoded", line, column),)
        ) from None
