# -*- test-case-name: tests.test_detection -*-
"""
Running the detectors over the bytes buffered so far: a pure decision the
pipeline glue calls on every read until it has an answer.
"""

from __future__ import annotations

from typing import Sequence

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, IDetector, Verdict
from txgate.session import ClientProtocol

__all__ = ["PEEK_CAP", "detect", "UNKNOWN"]

PEEK_CAP = 16 * 1024
"""
How many client bytes detection may buffer. A TLS ClientHello with many
extensions and a large session ticket fits; past this the stream is C{tcp}.
"""

UNKNOWN = Detected(ClientProtocol.TCP)


def detect(
    detectors: Sequence[IDetector],
    buffered: bytes,
    *,
    cap: int = PEEK_CAP,
    final: bool = False,
) -> Verdict:
    """
    Ask each detector, lowest priority first.

    The first L{Detected} answer wins unless a detector before it still wants
    more bytes; once C{buffered} reaches C{cap} or C{final} is set (the peek
    timed out, the server spoke first or the client closed) waiting ends and
    that answer stands. When nobody claims the bytes the stream is L{UNKNOWN}
    (C{tcp}).

    @return: L{Detected} or L{NEED_MORE}.
    """
    waiting = False
    candidate = UNKNOWN
    for detector in detectors:
        verdict = detector.detect(buffered)
        if isinstance(verdict, Detected):
            if not waiting:
                return verdict
            candidate = verdict
            break
        if verdict is NEED_MORE:
            waiting = True
        elif verdict is not NOT_MINE:
            raise TypeError(
                f"detector {detector.name!r} returned {verdict!r}:"
                " expected Detected, NEED_MORE or NOT_MINE"
            )
    if waiting and not final and len(buffered) < cap:
        return NEED_MORE
    return candidate
