# -*- test-case-name: tests.policy.test_default -*-
"""
The policy in force when no policy file is configured: C{default_policy}.
"""

from __future__ import annotations

from typing import Mapping

import attrs
from zope.interface import implementer

from txgate.interfaces import Checkpoint, Decision, IPolicy
from txgate.session import Session

__all__ = ["DefaultPolicy"]


@implementer(IPolicy)
@attrs.frozen
class DefaultPolicy:
    """
    Every transaction gets the C{default_policy} verdict.
    """

    allow: bool

    def decide(self, checkpoint: Checkpoint, session: Session, facts: Mapping[str, object]) -> Decision:
        if self.allow:
            return Decision(True)
        return Decision(False, "denied by default_policy")
