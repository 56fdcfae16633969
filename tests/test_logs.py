"""
Tests for L{txgate.logs}: observers for twistd's C{--logger}.
"""

from __future__ import annotations

import io
import json
import os
import sys

from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from txgate.logs import json_stdout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class JsonStdoutTests(SynchronousTestCase):
    """
    C{json_stdout} writes txgate's log as JSON lines on standard output.
    """

    def setUp(self) -> None:
        self.out = io.StringIO()
        # Before json_stdout() is called: it binds sys.stdout when called.
        self.patch(sys, "stdout", self.out)

    def test_is_observer(self) -> None:
        """It returns an L{ILogObserver}."""
        self.assertTrue(ILogObserver.providedBy(json_stdout()))

    def test_one_object_per_line(self) -> None:
        """Each event is one line holding one JSON object with its structured fields as keys."""
        log = Logger(namespace="txgate.test", observer=json_stdout())
        log.info("listening: service={service} address={address}", service="explicit", address="127.0.0.1:8080")
        log.warn("tunnel {session} closed: {reason}", session="a1b2c3-7", reason="idle timeout (60s)")

        lines = self.out.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first, second = (json.loads(line) for line in lines)
        self.assertEqual((first["service"], first["address"]), ("explicit", "127.0.0.1:8080"))
        self.assertEqual((second["session"], second["reason"]), ("a1b2c3-7", "idle timeout (60s)"))
        self.assertEqual(first["log_namespace"], "txgate.test")

    def test_operations_doc(self) -> None:
        """docs/operations.md tells operators the C{--logger} option that selects it."""
        with open(os.path.join(REPO, "docs", "operations.md"), encoding="utf-8") as f:
            self.assertIn("twistd -n --logger txgate.logs.json_stdout", f.read())
