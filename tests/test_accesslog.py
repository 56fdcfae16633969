"""
Tests for L{txgate.accesslog}.
"""

from __future__ import annotations

import io
import json

from twisted.trial.unittest import SynchronousTestCase

from txgate.accesslog import FIELDS, AccessLog, FileAccessObserver, format_json, format_text

RECORD = dict(
    time=1795276800.25,
    session="a1b2c3-7",
    seq=2,
    client="127.0.0.1:40000",
    user="alice",
    service="explicit",
    client_protocol="http",
    tunneled=False,
    method="GET",
    target="http://origin.test/a b",
    status=200,
    verdict="allow",
    bytes_in=120,
    bytes_out=5000,
    duration_ms=12,
    upstream="reused",
    reason="",
)


class FormatTests(SynchronousTestCase):
    """
    The text and JSON formats of one record.
    """

    def test_text(self) -> None:
        """Text lines are the documented columns, C{-} for empty, the reason quoted last."""
        self.assertEqual(
            format_text(RECORD),
            '2026-11-21T16:00:00.250Z a1b2c3-7.2 127.0.0.1:40000 alice explicit http no GET'
            ' http://origin.test/a%20b 200 allow 120 5000 12 reused "-"',
        )

    def test_text_reason(self) -> None:
        """Reasons keep their words, with quotes escaped, on one line."""
        line = format_text(dict(RECORD, reason='DNS lookup "failed"\nfor x', status=None, method=None))
        self.assertTrue(line.endswith(' - allow 120 5000 12 reused "DNS lookup \\"failed\\" for x"'), line)
        self.assertIn(" - http://", line)

    def test_json(self) -> None:
        """JSON lines carry every field, typed."""
        data = json.loads(format_json(RECORD))
        self.assertEqual(list(data), list(FIELDS))
        self.assertEqual(data["time"], "2026-11-21T16:00:00.250Z")
        self.assertIs(data["tunneled"], False)
        self.assertEqual(data["bytes_out"], 5000)


class AccessLogTests(SynchronousTestCase):
    """
    Records are events on the access log's own publisher.
    """

    def test_file_observer(self) -> None:
        """A file observer writes one line per record."""
        out = io.StringIO()
        access = AccessLog()
        access.publisher.addObserver(FileAccessObserver(out, format_text))
        access.record(**RECORD)
        access.record(**dict(RECORD, seq=3))
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        self.assertIn(" a1b2c3-7.3 ", lines[1])
