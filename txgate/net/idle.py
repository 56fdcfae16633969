# -*- test-case-name: tests.net.test_idle -*-
"""
Idle timeouts that cost nothing per chunk.
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["IdleWatch"]


class IdleWatch:
    """
    Calls C{on_idle} once no L{touch} happened for C{timeout} seconds.

    Instead of resetting a timer on every read (a heap operation per chunk),
    a touch stores the time and one timer re-checks when it fires, so the
    hot path of a tunnel or body transfer is one float assignment.
    """

    def __init__(self, clock: Any, timeout: float, on_idle: Callable[[float], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._on_idle = on_idle
        self.last = clock.seconds()
        self._call: Any = clock.callLater(timeout, self._check)

    def touch(self) -> None:
        self.last = self._clock.seconds()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        idle = self._clock.seconds() - self.last
        if idle >= self._timeout:
            self._call = None
            self._on_idle(idle)
        else:
            self._call = self._clock.callLater(self._timeout - idle, self._check)
