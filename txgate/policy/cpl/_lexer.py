# -*- test-case-name: tests.policy.test_cpl_parse -*-
"""
CPL lexing: physical lines joined by C{\\} continuations, C{;} comments
removed, each logical line split into words that remember where they start.
"""

from __future__ import annotations

from typing import Iterator

import attrs

from txgate.policy.cpl._errors import PolicyError

__all__ = ["Word", "Line", "logical_lines"]


@attrs.frozen
class Word:
    """
    One word of a CPL line: a condition, an action, a layer header or a
    keyword, with its 1-based line and column.
    """

    text: str
    line: int
    column: int


@attrs.frozen
class Line:
    """A logical line: its words and the number of its first physical line."""

    words: tuple[Word, ...]
    number: int


def _words(text: str, columns: list[tuple[int, int]], path: str, physical: list[str]) -> Iterator[Word]:
    """
    Split C{text} into words. A word runs to the next blank outside quotes
    and parentheses, so C{DENY("not here")} and C{url.host.regex="a b"} are
    one word each. C{columns[i]} is the (line, column) of C{text[i]}.
    """
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t":
            i += 1
            continue
        start = i
        depth = 0
        quote = False
        while i < n:
            c = text[i]
            if quote:
                if c == "\\" and i + 1 < n:
                    i += 2
                    continue
                if c == '"':
                    quote = False
            elif c == '"':
                quote = True
            elif c in "([":
                depth += 1
            elif c in ")]":
                depth -= 1
            elif c in " \t" and depth <= 0:
                break
            i += 1
        line, column = columns[start]
        if quote:
            raise PolicyError(path, line, column, "unterminated string", physical[line - 1])
        if depth > 0:
            raise PolicyError(path, line, column, "unclosed parenthesis or bracket", physical[line - 1])
        yield Word(text[start:i], line, column)


def _strip_comment(text: str) -> str:
    quote = False
    for i, c in enumerate(text):
        if c == '"':
            quote = not quote
        elif c == ";" and not quote:
            return text[:i]
    return text


def logical_lines(text: str, path: str) -> Iterator[Line]:
    """
    The logical lines of a CPL file, with comments and blank lines dropped.

    @raise PolicyError: for an unterminated string or parenthesis.
    """
    physical = text.splitlines()
    index = 0
    while index < len(physical):
        first = index + 1
        pieces: list[str] = []
        columns: list[tuple[int, int]] = []
        while True:
            raw = physical[index]
            body = _strip_comment(raw).rstrip()
            continued = body.endswith("\\")
            if continued:
                body = body[:-1]
            pieces.append(body + " ")
            columns.extend((index + 1, c + 1) for c in range(len(body) + 1))
            index += 1
            if not continued or index >= len(physical):
                break
        joined = "".join(pieces)
        words = tuple(_words(joined, columns, path, physical))
        if words:
            yield Line(words, first)
