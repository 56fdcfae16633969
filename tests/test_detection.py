"""
Tests for L{txgate.detection}: running detectors over buffered bytes.
"""

from __future__ import annotations

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detection import PEEK_CAP, UNKNOWN, detect
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict


@attrs.frozen
class _Prefix:
    """A detector claiming streams that start with C{prefix}."""

    name: str
    prefix: bytes
    priority: int = 10

    def detect(self, buffered: bytes) -> Verdict:
        if buffered.startswith(self.prefix):
            return Detected(self.name)
        if self.prefix.startswith(buffered):
            return NEED_MORE
        return NOT_MINE


class DetectTests(SynchronousTestCase):
    """
    The first detector to claim the bytes wins, unless one before it is still
    undecided; nobody claiming them means C{tcp}.
    """

    detectors = [_Prefix("alpha", b"ALPHA", 1), _Prefix("beta", b"BE", 2)]

    def test_claimed(self) -> None:
        """Bytes a detector claims get its protocol, whole or byte by byte."""
        data = b"ALPHA and more"
        verdicts = [detect(self.detectors, data[:i]) for i in range(1, len(data) + 1)]
        self.assertEqual(verdicts[:4], [NEED_MORE] * 4)
        self.assertEqual(verdicts[4:], [Detected("alpha")] * (len(data) - 4))

    def test_earlier_waiting_holds_back(self) -> None:
        """A later detector's claim waits while an earlier one wants more bytes."""
        detectors = [_Prefix("long", b"BETAMAX", 1), _Prefix("beta", b"BE", 2)]
        self.assertIs(detect(detectors, b"BETA"), NEED_MORE)
        self.assertEqual(detect(detectors, b"BETA", final=True), Detected("beta"))
        self.assertEqual(detect(detectors, b"BEX"), Detected("beta"))

    def test_nobody(self) -> None:
        """Bytes nobody claims are C{tcp}."""
        self.assertEqual(detect(self.detectors, b"\x00\x01"), UNKNOWN)
        self.assertEqual(UNKNOWN.protocol, "tcp")
        self.assertEqual(detect([], b""), UNKNOWN)

    def test_cap_and_final(self) -> None:
        """Waiting ends at the peek cap or when told the stream will say no more."""
        greedy = [_Prefix("huge", b"X" * (PEEK_CAP * 2))]
        self.assertIs(detect(greedy, b"X" * 100), NEED_MORE)
        self.assertEqual(detect(greedy, b"X" * PEEK_CAP), UNKNOWN)
        self.assertEqual(detect(greedy, b"X" * 100, final=True), UNKNOWN)

    def test_bad_answer(self) -> None:
        """A detector answering something else is a bug reported by name."""

        class Broken:
            name = "broken"
            priority = 1

            def detect(self, buffered: bytes) -> object:
                return "yes"

        with self.assertRaises(TypeError) as caught:
            detect([Broken()], b"x")  # type: ignore[list-item]
        self.assertIn("'broken'", str(caught.exception))

    @given(st.binary(max_size=64))
    def test_always_answers(self, data: bytes) -> None:
        """Any bytes get Detected or NEED_MORE, and with final=True always Detected."""
        self.assertIn(type(detect(self.detectors, data)), (Detected, type(NEED_MORE)))
        self.assertIsInstance(detect(self.detectors, data, final=True), Detected)
