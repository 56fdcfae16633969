# -*- test-case-name: tests.reverse.test_health -*-
"""
Health check verdicts and the rise/fall state of a real server, without
sockets: C{txgate.net.healthcheck} runs the checks and feeds the results here.
"""

from __future__ import annotations

import attrs

__all__ = ["HealthTracker", "judge"]


def _at_least_one(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


@attrs.define
class HealthTracker:
    """
    Turns single check results into Up/Down transitions, so one lost packet
    does not take a server out and one lucky answer does not bring a broken
    one back.

    Servers start Up, as HAProxy and KEMP start them: a freshly started proxy
    serves at once, and a dead server goes Down after C{fall} checks.

    @ivar rise: consecutive successes that bring a Down server Up.
    @ivar fall: consecutive failures that take an Up server Down.
    @ivar up: the current state.
    @ivar successes: consecutive successes since the last failure or transition.
    @ivar failures: consecutive failures since the last success or transition.
    """

    rise: int = attrs.field(validator=_at_least_one)
    fall: int = attrs.field(validator=_at_least_one)
    up: bool = True
    successes: int = 0
    failures: int = 0

    def record(self, ok: bool) -> bool | None:
        """
        Count one check result.

        @return: the new state (C{True} Up, C{False} Down) when this result
            changes it, else C{None}.
        """
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.up and self.successes >= self.rise:
                self.up = True
                self.successes = 0
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.up and self.failures >= self.fall:
                self.up = False
                self.failures = 0
                return False
        return None


def judge(status: int | None, error: str | None, expect: int) -> tuple[bool, str]:
    """
    Whether one check passed, and a short text for logs and the admin console.

    @param status: the response's status code, or C{None} when none came.
    @param error: why no usable response came (C{"connection refused"},
        C{"timed out after 2 s"}), or C{None}.
    @param expect: the status a healthy server answers with.
    @return: e.g. C{(True, "HTTP 200")}, C{(False, "HTTP 500, expected 200")},
        C{(False, "connection refused")}.
    """
    if error is not None:
        return False, error
    if status is None:
        return False, "no response"
    if status == expect:
        return True, f"HTTP {status}"
    return False, f"HTTP {status}, expected {expect}"
