# -*- test-case-name: tests.policy.test_live -*-
"""
The policy in force, swapped whole on reload.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from twisted.logger import Logger
from zope.interface import implementer

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
    """

    _log = Logger()

    def __init__(self, current: IPolicy, trace: bool = False) -> None:
        self.current = current
        self.trace = trace

    def decide(self, checkpoint: Checkpoint, session: Any, facts: Mapping[str, object]) -> Decision:
        decision = self.current.decide(checkpoint, session, facts)
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
            return False
        self.current = policy
        self._log.info("policy reloaded")
        return True


def _describe(properties: Mapping[str, object]) -> str:
    parts = []
    for name, value in sorted(properties.items()):
        describe = getattr(value, "describe", None)
        parts.append(f"{name}={describe() if describe else value}")
    return " ".join(parts)
