# -*- test-case-name: tests.policy.test_live -*-
"""
The policy in force, swapped whole on reload.
"""

from __future__ import annotations

import collections
import datetime
import time
from typing import Any, Callable, Mapping

from twisted.logger import Logger
from zope.interface import implementer

from txgate import metrics
from txgate.interfaces import Checkpoint, Decision, IPolicy

__all__ = ["LivePolicy"]


@implementer(IPolicy)
class LivePolicy:
    """
    Stands for whatever policy is current. A reload replaces C{current} in
    one assignment, so a transaction sees either the old policy or the new
    one, never a mix, and connections in flight are not touched.

    @ivar current: the policy in force.
    @ivar trace: log each decision with the rules that made it
        (C{policy_trace = true}).
    @ivar hits: how many decisions each rule (C{file:line}) of the policy in
        force took part in, for the admin console; emptied when a reload
        succeeds, since the lines may now hold other rules.
    @ivar last_reload: the last reload's outcome for the admin console:
        C{time} (ISO 8601 UTC, C{None} before any reload), C{ok} (C{None}
        before any) and C{message}.
    """

    _log = Logger()

    def __init__(self, current: IPolicy, trace: bool = False, clock: Callable[[], float] = time.time) -> None:
        """
        @param clock: the wall clock, read only to stamp L{last_reload}.
        """
        self.current = current
        self.trace = trace
        self._clock = clock
        self.hits: collections.Counter[str] = collections.Counter()
        self.last_reload: dict[str, Any] = {"time": None, "ok": None, "message": ""}

    def decide(self, checkpoint: Checkpoint, session: Any, facts: Mapping[str, object]) -> Decision:
        decision = self.current.decide(checkpoint, session, facts)
        metrics.count_decision(checkpoint, decision.verdict)
        if decision.matched:
            # CPL says "file:line <layer>"; a line holds one rule, so file:line names it.
            self.hits.update(m.partition(" <")[0] for m in decision.matched)
        if self.trace:
            self._log.info(
                "policy trace: session={session} checkpoint={checkpoint} verdict={verdict}"
                " matched={matched} properties={properties}",
                session=session.id,
                checkpoint=str(checkpoint),
                verdict=decision.verdict,
                matched=", ".join(decision.matched) or "-",
                properties=_describe(decision.properties),
            )
        return decision

    def reload(self, load: Callable[[], IPolicy]) -> bool:
        """
        Replace the policy with C{load()}; when that raises, keep the old one
        and log why.

        @return: whether the new policy is in force.
        """
        try:
            policy = load()
        except Exception as e:
            self._log.error("policy reload failed, keeping the policy in force:\n{error}", error=str(e))
            self._reloaded(False, str(e))
            return False
        self.current = policy
        self.hits.clear()
        self._log.info("policy reloaded")
        self._reloaded(True, "policy reloaded")
        return True

    def _reloaded(self, ok: bool, message: str) -> None:
        when = datetime.datetime.fromtimestamp(self._clock(), datetime.timezone.utc)
        self.last_reload = {"time": when.isoformat(timespec="seconds"), "ok": ok, "message": message}


def _describe(properties: Mapping[str, object]) -> str:
    parts = []
    for name, value in sorted(properties.items()):
        describe = getattr(value, "describe", None)
        parts.append(f"{name}={describe() if describe else value}")
    return " ".join(parts)
