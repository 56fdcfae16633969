# -*- test-case-name: tests.test_logs -*-
"""
Log observers for twistd's C{--logger} option.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["json_stdout"]


def json_stdout() -> ILogObserver:
    """
    txgate's own log as one JSON object per line on standard output, for log
    shippers: C{twistd -n --logger txgate.logs.json_stdout txgate forward}.
    Every structured field of an event (C{service}, C{address}, C{session},
    C{reason} ...) is a key of its object.
    """
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
