"""
Tests for L{txgate.reverse.esplog}: the ESP log lines.
"""

from __future__ import annotations

import datetime

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse.esplog import (
    closed_line,
    denied_line,
    endpoint,
    opened_line,
    refused_line,
    timestamp,
    user_line,
)

WHEN = datetime.datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=datetime.timezone.utc)
T = "2026-11-21T10:00:00.123Z"


class LineTests(SynchronousTestCase):
    """
    Each function renders one line of the formats in the reverse-mode spec.
    """

    def test_timestamp(self) -> None:
        """ISO-8601 UTC with milliseconds (truncated); other zones are converted, naive is UTC."""
        self.assertEqual(timestamp(WHEN), T)
        self.assertEqual(timestamp(WHEN.replace(tzinfo=None)), T)
        paris = datetime.timezone(datetime.timedelta(hours=1))
        self.assertEqual(timestamp(WHEN.replace(hour=11, tzinfo=paris)), T)
        self.assertEqual(timestamp(datetime.datetime(2026, 1, 2, 3, 4, 5)), "2026-01-02T03:04:05.000Z")

    def test_endpoint(self) -> None:
        """IPv6 addresses are bracketed."""
        self.assertEqual(endpoint("1.2.3.4", 443), "1.2.3.4:443")
        self.assertEqual(endpoint("2001:db8::1", 443), "[2001:db8::1]:443")

    def test_user_line(self) -> None:
        """The user log line, with C{-} for no user or User-Agent."""
        self.assertEqual(
            user_line(WHEN, "127.0.0.1:4443", "127.0.0.1:14443", "alice", "GET", "/meet/x", "curl/7.88.1"),
            f'{T} "127.0.0.1:4443" ("127.0.0.1:14443") User "alice" requested "GET" "/meet/x" "curl/7.88.1"',
        )
        self.assertEqual(
            user_line(WHEN, "v", "r", None, "GET", "/", None),
            f'{T} "v" ("r") User - requested "GET" "/" -',
        )
        self.assertEqual(
            user_line(WHEN, "v", "r", "CORP\\bob", "GET", "/", ""),
            f'{T} "v" ("r") User "CORP\\\\bob" requested "GET" "/" ""',
        )

    def test_security_lines(self) -> None:
        """Denied (403) and refused (400) lines."""
        self.assertEqual(
            denied_line(WHEN, "127.0.0.1:4443", "127.0.0.5:51234", "host", "evil.example", "not in allowed_hosts"),
            f'{T} "127.0.0.1:4443" client "127.0.0.5:51234" denied host "evil.example": not in allowed_hosts',
        )
        self.assertEqual(
            denied_line(WHEN, "v", "c", "path", "/admin/", "not in allowed_paths"),
            f'{T} "v" client "c" denied path "/admin/": not in allowed_paths',
        )
        self.assertEqual(
            refused_line(WHEN, "v", "c", "request smuggling: both Content-Length and Transfer-Encoding"),
            f'{T} "v" client "c" refused request: request smuggling: both Content-Length and Transfer-Encoding',
        )

    def test_connection_lines(self) -> None:
        """Opened and closed lines, the duration to the millisecond."""
        self.assertEqual(
            opened_line(WHEN, "127.0.0.1:4443", "127.0.0.5:51234"),
            f'{T} "127.0.0.1:4443" client "127.0.0.5:51234" opened',
        )
        self.assertEqual(
            closed_line(WHEN, "127.0.0.1:4443", "127.0.0.5:51234", 1.2344, 345, 6789),
            f'{T} "127.0.0.1:4443" client "127.0.0.5:51234" closed after 1.234 s, 345 bytes in, 6789 bytes out',
        )

    def test_escaping(self) -> None:
        """Quotes and backslashes are escaped; controls and non-ASCII become C{\\xHH}."""
        line = user_line(WHEN, "v", "r", None, "GET", "/caf\u00e9", 'x" "forged\r\n2026 \\ \x00\udcff')
        self.assertEqual(
            line,
            f'{T} "v" ("r") User - requested "GET" "/caf\\xc3\\xa9" "x\\" \\"forged\\x0d\\x0a2026 \\\\ \\x00\\xff"',
        )
        self.assertEqual(
            refused_line(WHEN, "v", "c", "bad\nline"),
            f'{T} "v" client "c" refused request: bad\\x0aline',
        )

    @given(st.text(), st.text())
    def test_one_line(self, agent: str, uri: str) -> None:
        """Whatever a client sends, a line is printable ASCII and its quoted fields stay apart."""
        line = user_line(WHEN, "v", "r", agent, "GET", uri, agent)
        self.assertTrue(line.isascii() and line.isprintable(), msg=repr(line))
        # Unescaped quotes are exactly the field delimiters: vs, rs, user, method, uri, agent.
        unescaped = line.replace("\\\\", "").replace('\\"', "").count('"')
        self.assertEqual(unescaped, 12)
