# -*- test-case-name: tests.policy.test_cpl_evaluate -*-
"""
CPL files parsed into layers of compiled rules, and evaluated.

Semantics, as ProxySG's: layers run in file order; in a layer whose guard
holds, the first rule whose conditions all hold applies its actions; a later
layer's value for a property overrides an earlier one's; a property no rule
sets keeps its default (the verdict comes from C{default_policy}).
"""

from __future__ import annotations

import difflib
import heapq
from typing import Any, Callable, Iterable, Iterator, Mapping

import attrs
from zope.interface import implementer

from txgate.errors import ConfigError, ConfigErrors
from txgate.interfaces import Checkpoint, Decision, IPolicy
from txgate.policy.cpl._errors import PolicyError
from txgate.policy.cpl._lexer import Line, Word, logical_lines
from txgate.policy.cpl._words import (
    ACTIONS,
    CONDITIONS,
    DETECTABLE,
    LAYERS,
    Action,
    BadValue,
    Condition,
    Environment,
    compile_action,
    compile_condition,
)

__all__ = ["Policy", "Outcome", "Match", "DetectProtocol", "parse_policy", "load_policy"]

Facts = Mapping[str, Any]

_CHECKPOINT_LAYERS = {
    Checkpoint.CONNECTION: frozenset({"proxy"}),
    Checkpoint.REQUEST: frozenset({"proxy"}),
    Checkpoint.SSL_INTERCEPT: frozenset({"ssl-intercept", "ssl"}),
}
"""Which layers each checkpoint evaluates."""


@attrs.frozen
class Rule:
    """One rule: all conditions must hold; then the actions apply."""

    conditions: tuple[Condition, ...]
    actions: tuple[Action, ...]
    line: int

    def matches(self, facts: Facts) -> bool:
        for condition in self.conditions:
            if not condition.test(facts):
                return False
        return True


class _HostIndex:
    """
    Finds the rules of a layer that can match a host without trying them
    all: rules requiring an exact host or a domain are filed under it, the
    others are candidates for every host. Candidates come out in rule order,
    so first-match semantics hold.
    """

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.exact: dict[str, list[int]] = {}
        self.domains: dict[str, list[int]] = {}
        self.always: list[int] = []
        for index, rule in enumerate(rules):
            key = next((c for c in rule.conditions if c.hosts is not None or c.domains is not None), None)
            if key is None:
                self.always.append(index)
            elif key.hosts is not None:
                for host in key.hosts:
                    self.exact.setdefault(host, []).append(index)
            else:
                for domain in key.domains or ():
                    self.domains.setdefault(domain, []).append(index)

    def candidates(self, host: str | None) -> Iterable[int]:
        if not host or (not self.exact and not self.domains):
            return self.always
        found: list[list[int]] = []
        hit = self.exact.get(host)
        if hit:
            found.append(hit)
        if self.domains:
            labels = host.split(".")
            for i in range(len(labels)):
                hit = self.domains.get(".".join(labels[i:]))
                if hit:
                    found.append(hit)
        if not found:
            return self.always
        return heapq.merge(self.always, *found)


@attrs.frozen
class Layer:
    """A layer: its kind, guard, rules and their index."""

    kind: str
    guard: tuple[Condition, ...]
    rules: tuple[Rule, ...]
    line: int
    index: _HostIndex = attrs.field(eq=False, repr=False)

    def first_match(self, facts: Facts) -> Rule | None:
        rules = self.rules
        for index in self.index.candidates(facts.get("url.host")):
            rule = rules[index]
            if rule.matches(facts):
                return rule
        return None


@attrs.frozen
class Match:
    """A rule that applied, for traces: its layer and place."""

    layer: str
    file: str
    line: int
    layer_line: int
    actions: tuple[str, ...]


@attrs.frozen
class DetectProtocol:
    """
    What policy says about protocol detection.

    @ivar base: C{True} for C{detect_protocol(all)}, C{False} for C{(none)},
        C{None} when only some protocols were named.
    @ivar overrides: C{(protocol, on)} pairs from C{detect_protocol[...]}.
    """

    base: bool | None
    overrides: tuple[tuple[str, bool], ...] = ()

    def enabled(self, protocol: str, service_default: bool) -> bool:
        """Whether to detect C{protocol} when the service says C{service_default}."""
        for name, on in self.overrides:
            if name == protocol:
                return on
        return service_default if self.base is None else self.base

    def any_enabled(self, service_default: bool) -> bool:
        """Whether detection is on for any protocol at all."""
        base = service_default if self.base is None else self.base
        return base or any(on for _, on in self.overrides)

    def describe(self, service_default: bool = True) -> list[str]:
        """The built-in protocols detection stays on for."""
        names = sorted(set(DETECTABLE) | {p for p, _ in self.overrides})
        return [p for p in names if self.enabled(p, service_default)]


@attrs.frozen
class Outcome:
    """
    The result of evaluating a policy: the verdict, every property set, and
    the rules that applied.
    """

    allow: bool
    reason: str
    properties: Mapping[str, Any]
    matched: tuple[Match, ...]
    visited: tuple[tuple[str, int, str], ...] = ()
    """Each layer evaluated: kind, line, and C{"guard"}, C{"none"} or the rule's line."""

    def decision(self) -> Decision:
        return Decision(
            self.allow,
            self.reason,
            self.properties,
            tuple(f"{m.file}:{m.line} <{m.layer}>" for m in self.matched),
        )

    def as_text(self) -> str:
        """The C{txgate policy trace} report: layer by layer, then the decision."""
        lines = []
        matches = iter(self.matched)
        for kind, line, result in self.visited:
            if result == "guard":
                lines.append(f"<{kind}> at line {line}: skipped, its guard does not hold")
            elif result == "none":
                lines.append(f"<{kind}> at line {line}: no rule matched")
            else:
                match = next(matches)
                lines.append(f"<{kind}> at line {line}: rule {match.file}:{match.line} matched: {' '.join(match.actions) or '(no action)'}")
        data = self.as_json()
        lines.append(f"verdict: {data['verdict']}" + (f" ({self.reason})" if self.reason else ""))
        for name, value in data["properties"].items():
            if isinstance(value, list):
                value = " ".join(value) or "(none)"
            elif value is None:
                value = "(as the service says)" if name == "tunnel_on_error" else "no"
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            lines.append(f"{name}: {value}")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        """The C{txgate policy trace --json} object."""
        detect = self.properties.get("detect_protocol")
        return {
            "verdict": "allow" if self.allow else "deny",
            "reason": self.reason,
            "properties": {
                "ssl.forward_proxy": self.properties["ssl.forward_proxy"],
                "detect_protocol": detect.describe() if detect is not None else list(DETECTABLE),
                "tunnel_on_error": self.properties.get("tunnel_on_error"),
                "authenticate": self.properties.get("authenticate"),
                "access_log": self.properties["access_log"],
                "server.certificate.validate": self.properties["server.certificate.validate"],
            },
            "matched": [{"layer": m.layer, "file": m.file, "line": m.line} for m in self.matched],
        }


_DEFAULTS: Mapping[str, Any] = {
    "ssl.forward_proxy": "no",
    "access_log": True,
    "server.certificate.validate": True,
}


@implementer(IPolicy)
@attrs.frozen
class Policy:
    """
    A compiled CPL policy.

    @ivar path: the file it came from, as errors and traces name it.
    @ivar default_allow: the verdict when no rule decides.
    """

    path: str
    layers: tuple[Layer, ...]
    default_allow: bool

    def evaluate(self, facts: Facts, kinds: frozenset[str] | None = None) -> Outcome:
        """
        Evaluate the layers of C{kinds} (all layers when C{None}) in file
        order against C{facts}.
        """
        allow, reason = self.default_allow, "" if self.default_allow else "denied by default_policy"
        values: dict[str, Any] = dict(_DEFAULTS)
        detect_base: bool | None = None
        detect: dict[str, bool] = {}
        detect_set = False
        matched = []
        visited = []
        for layer in self.layers:
            if kinds is not None and layer.kind not in kinds:
                continue
            if not all(c.test(facts) for c in layer.guard):
                visited.append((layer.kind, layer.line, "guard"))
                continue
            rule = layer.first_match(facts)
            if rule is None:
                visited.append((layer.kind, layer.line, "none"))
                continue
            visited.append((layer.kind, layer.line, str(rule.line)))
            matched.append(
                Match(layer.kind, self.path, rule.line, layer.line, tuple(a.text for a in rule.actions))
            )
            for action in rule.actions:
                for name, value in action.sets:
                    if name == "verdict":
                        allow, reason = value
                    elif name == "detect_protocol":
                        detect_set = True
                        detect_base = value == "all"
                        detect.clear()
                    elif name.startswith("detect_protocol."):
                        detect_set = True
                        detect[name[len("detect_protocol."):]] = value
                    else:
                        values[name] = value
        if detect_set:
            values["detect_protocol"] = DetectProtocol(detect_base, tuple(sorted(detect.items())))
        return Outcome(allow, reason, values, tuple(matched), tuple(visited))

    def decide(self, checkpoint: Checkpoint, session: Any, facts: Facts) -> Decision:
        """
        L{IPolicy.decide}: the layers of C{checkpoint} over the session's
        facts plus C{facts}.
        """
        return self.evaluate(session_facts(session, facts), _CHECKPOINT_LAYERS[checkpoint]).decision()


def session_facts(session: Any, facts: Facts) -> dict[str, Any]:
    """
    The facts policy conditions read: those of the session (client address,
    service, protocol, tunneled, user, SNI) overlaid with the transaction's.
    """
    out: dict[str, Any] = {
        "client.address": session.client.host,
        "service.name": session.service,
        "client.protocol": session.client_protocol,
        "tunneled": session.tunneled,
        "user": session.user,
        "authenticated": session.user is not None,
    }
    if session.sni:
        out["ssl.sni"] = session.sni
    out.update(facts)
    return out


class _Parser:
    """Builds a L{Policy} from logical lines, collecting every error."""

    def __init__(self, text: str, path: str, env: Environment) -> None:
        self.path = path
        self.env = env
        self.physical = text.splitlines()
        self.errors: list[ConfigError] = []
        self.defined: dict[str, Callable[[Facts], bool]] = {}
        self.defined_uses: dict[str, set[str]] = {}
        self.layers: list[Layer] = []

    def error(self, word: Word, message: str) -> None:
        self.errors.append(PolicyError(self.path, word.line, word.column, message, self.physical[word.line - 1]))

    def _unknown(self, word: Word, what: str, name: str, known: Iterable[str]) -> None:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        self.error(word, f"unknown {what} {name!r}{hint}")

    def _condition(self, word: Word, kind: str | None) -> tuple[str, Condition] | None:
        try:
            name, condition = compile_condition(word.text, self.env, self.defined)
        except KeyError as e:
            self._unknown(word, "condition", str(e.args[0]), CONDITIONS)
            return None
        except BadValue as e:
            self.error(word, str(e))
            return None
        if kind is not None:
            names = {name} | (self._uses_of(word.text) if name == "condition" else set())
            for used in sorted(names):
                if kind not in CONDITIONS[used]:
                    self.error(word, f"{used} cannot be used in <{kind}> layers (allowed in {_layers(CONDITIONS[used])})")
                    return None
        return name, condition

    def _uses_of(self, word: str) -> set[str]:
        value = word.partition("=")[2].lstrip("!").strip("()")
        out: set[str] = set()
        for name in value.split(","):
            out |= self.defined_uses.get(name.strip(), set())
        return out

    def _action(self, word: Word, kind: str, line: int) -> Action | None:
        try:
            name, action = compile_action(word.text, self.env, f"{self.path}:{line}")
        except KeyError as e:
            self._unknown(word, "action", str(e.args[0]), list(ACTIONS) + ["ALLOW", "DENY"])
            return None
        except BadValue as e:
            self.error(word, str(e))
            return None
        if kind not in ACTIONS[name]:
            self.error(word, f"{word.text.split('(')[0]} cannot be used in <{kind}> layers (allowed in {_layers(ACTIONS[name])})")
            return None
        return action

    def parse(self, lines: Iterator[Line]) -> None:
        kind: str | None = None
        header: Word | None = None
        guard: tuple[Condition, ...] = ()
        rules: list[Rule] = []
        define: tuple[Word, str, list[tuple[Condition, ...]], set[str]] | None = None

        def close_layer() -> None:
            if kind is not None and header is not None:
                frozen = tuple(rules)
                self.layers.append(Layer(kind, guard, frozen, header.line, _HostIndex(frozen)))

        for line in lines:
            first = line.words[0]
            keyword = first.text.lower()
            if define is not None:
                start, name, alternatives, uses = define
                if keyword == "end":
                    if len(line.words) > 2 or (len(line.words) == 2 and line.words[1].text.lower() != "condition"):
                        self.error(line.words[1], "expected 'end' or 'end condition'")
                    tests = [tuple(c.test for c in alt) for alt in alternatives]
                    self.defined[name] = lambda facts, tests=tests: any(all(t(facts) for t in alt) for alt in tests)
                    self.defined_uses[name] = uses
                    define = None
                    continue
                conjunction = []
                for word in line.words:
                    if not _is_condition(word.text):
                        self.error(word, f"only conditions may appear inside 'define condition {name}'")
                        continue
                    compiled = self._condition(word, None)
                    if compiled is not None:
                        uses.add(compiled[0])
                        if compiled[0] == "condition":
                            uses |= self._uses_of(word.text)
                        conjunction.append(compiled[1])
                alternatives.append(tuple(conjunction))
                continue
            if keyword == "define":
                words = line.words
                if len(words) != 3 or words[1].text.lower() != "condition":
                    self.error(first, "expected 'define condition NAME'")
                    continue
                name = words[2].text
                if name in self.defined:
                    self.error(words[2], f"condition {name!r} is already defined")
                define = (first, name, [], set())
                continue
            if keyword == "end":
                self.error(first, "'end' without 'define condition'")
                continue
            if first.text.startswith("<"):
                close_layer()
                rules = []
                name = first.text[1:-1].strip().lower() if first.text.endswith(">") else ""
                if name not in LAYERS:
                    self._unknown(first, "layer", first.text, [f"<{k}>" for k in LAYERS])
                    kind, header, guard = None, None, ()
                    continue
                kind, header = name, first
                compiled = [self._condition(w, kind) if _is_condition(w.text) else self._not_guard(w) for w in line.words[1:]]
                guard = tuple(c[1] for c in compiled if c is not None)
                continue
            if kind is None:
                if header is None and not self.layers:
                    self.error(first, "rule outside a layer: start a layer with <proxy>, <ssl-intercept> or <ssl>")
                continue
            conditions, actions = [], []
            for word in line.words:
                if _is_condition(word.text):
                    compiled = self._condition(word, kind)
                    if compiled is not None:
                        conditions.append(compiled[1])
                else:
                    action = self._action(word, kind, line.number)
                    if action is not None:
                        actions.append(action)
            rules.append(Rule(tuple(conditions), tuple(actions), line.number))
        if define is not None:
            self.error(define[0], f"'define condition {define[1]}' is not closed by 'end'")
        close_layer()

    def _not_guard(self, word: Word) -> None:
        self.error(word, "a layer header takes only conditions (a guard), not actions")
        return None


def _is_condition(text: str) -> bool:
    equals = text.find("=")
    if equals <= 0:
        return False
    opening = min((i for i in (text.find("("), text.find("[")) if i >= 0), default=len(text))
    return equals < opening


def _layers(kinds: frozenset[str]) -> str:
    return ", ".join(f"<{k}>" for k in LAYERS if k in kinds)


def parse_policy(text: str, path: str, default_allow: bool = True, env: Environment = Environment()) -> Policy:
    """
    Compile CPL C{text} read from C{path}.

    @raise ConfigErrors: every mistake, each a L{PolicyError} with
        line:column and a caret line; the file is refused whole.
    """
    parser = _Parser(text, path, env)
    try:
        parser.parse(logical_lines(text, path))
    except PolicyError as e:
        parser.errors.append(e)
    if parser.errors:
        raise ConfigErrors(tuple(parser.errors))
    return Policy(path, tuple(parser.layers), default_allow)


def load_policy(path: str, default_allow: bool = True, env: Environment = Environment()) -> Policy:
    """
    Read and compile the CPL file at C{path}.

    @raise ConfigErrors: the file cannot be read or has mistakes.
    """
    from txgate.config import read_text

    text = read_text(path)
    return parse_policy(text, path, default_allow, env)


