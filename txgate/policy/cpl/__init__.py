# -*- test-case-name: tests.policy.test_cpl_evaluate -*-
"""
CPL, the policy language of Blue Coat ProxySG, as txgate reads it: a pure
lexer, parser, compiler and evaluator. docs/policy.md describes the language.
"""

from txgate.policy.cpl._errors import PolicyError
from txgate.policy.cpl._policy import (
    DetectProtocol,
    Match,
    Outcome,
    Policy,
    load_policy,
    parse_policy,
    session_facts,
)
from txgate.policy.cpl._words import ACTIONS, CONDITIONS, DETECTABLE, LAYERS, Environment

__all__ = [
    "ACTIONS",
    "CONDITIONS",
    "DETECTABLE",
    "LAYERS",
    "DetectProtocol",
    "Environment",
    "Match",
    "Outcome",
    "Policy",
    "PolicyError",
    "load_policy",
    "parse_policy",
    "session_facts",
]
