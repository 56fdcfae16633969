# -*- test-case-name: tests.test_accesslog -*-
"""
The access log: one record per transaction (an HTTP request, a tunnel).

Records are L{twisted.logger} events published on the L{AccessLog}'s own
publisher, so tests and other observers read the named fields; L{format_text}
and L{format_json} turn one into a line. docs/operations.md documents the
fields.
"""

from __future__ import annotations

import functools
import json
import time
from typing import IO, Any, Callable

from twisted.logger import ILogObserver, LogPublisher, Logger
from zope.interface import implementer

from txgate import metrics

__all__ = ["AccessLog", "FIELDS", "format_text", "format_json", "FileAccessObserver"]

FIELDS = (
    "time",
    "session",
    "seq",
    "client",
    "user",
    "service",
    "client_protocol",
    "tunneled",
    "method",
    "target",
    "status",
    "verdict",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream",
    "reason",
)
"""The fields of a record, in the order the text format prints them."""


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    """A second formatted once: a busy proxy logs many records within it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _timestamp(seconds: float) -> str:
    whole = int(seconds)
    millis = int((seconds - whole) * 1000)
    return f"{_second(whole)}.{millis:03d}Z"


def _dash(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value).replace(" ", "%20")


def format_text(record: dict[str, Any]) -> str:
    """
    One line: C{time session.seq client user service client_protocol
    tunneled method target status verdict bytes_in bytes_out duration_ms
    upstream "reason"}, C{-} for an empty field.
    """
    reason = record.get("reason") or "-"
    reason = reason.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
    return " ".join(
        [
            _timestamp(record["time"]),
            f"{record['session']}.{record['seq']}",
            _dash(record["client"]),
            _dash(record.get("user")),
            _dash(record["service"]),
            _dash(record["client_protocol"]),
            "yes" if record["tunneled"] else "no",
            _dash(record.get("method")),
            _dash(record.get("target")),
            _dash(record.get("status")),
            record["verdict"],
            str(record["bytes_in"]),
            str(record["bytes_out"]),
            str(record["duration_ms"]),
            _dash(record.get("upstream")),
            f'"{reason}"',
        ]
    )


def format_json(record: dict[str, Any]) -> str:
    """
    One JSON object with every field of L{FIELDS}; C{time} in ISO 8601 UTC.
    """
    out = {key: record.get(key) for key in FIELDS}
    out["time"] = _timestamp(record["time"])
    return json.dumps(out, separators=(",", ":"))


@implementer(ILogObserver)
class FileAccessObserver:
    """
    Writes each access record as a line to an open text file, flushing per
    line so C{tail -f} and log shippers see transactions as they end.
    """

    def __init__(self, file: IO[str], formatter: Callable[[dict[str, Any]], str]) -> None:
        self._file = file
        self._format = formatter

    def __call__(self, event: dict[str, Any]) -> None:
        self._file.write(self._format(event) + "\n")
        self._file.flush()


class AccessLog:
    """
    Where transactions are recorded. Observers are added with
    C{access_log.publisher.addObserver}.
    """

    def __init__(self) -> None:
        self.publisher = LogPublisher()
        self._log = Logger(namespace="txgate.access", observer=self.publisher)

    def record(self, **fields: Any) -> None:
        """
        Publish one transaction; C{fields} are those of L{FIELDS}.
        """
        metrics.count_transaction(fields)
        self._log.info(
            "{method} {target} {status} {verdict} {reason}", **fields
        )
