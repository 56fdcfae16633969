# -*- test-case-name: tests.policy.test_cpl_parse -*-
"""
The CPL vocabulary: every condition and action txgate understands, how its
value is read, which layers may use it, and what it compiles to.

A condition compiles to a L{Condition}: a predicate over the facts of a
transaction, plus the host keys it can be indexed by. An action compiles to
property assignments C{(name, value)}.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

import attrs

from txgate.acl import parse_address
from txgate.interfaces import PolicyEnvironment

__all__ = [
    "Condition",
    "Action",
    "LAYERS",
    "CONDITIONS",
    "compile_condition",
    "compile_action",
    "DETECTABLE",
    "Environment",
]

Facts = Mapping[str, Any]

LAYERS = ("proxy", "ssl-intercept", "ssl")
"""The layer kinds, as written between angle brackets."""

DETECTABLE = ("http", "https", "ssl", "sip", "sips", "ms-turn", "stun")
"""Protocols C{detect_protocol(all)} turns on (C{tcp} is what is left)."""

_PROTOCOL_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")


Environment = PolicyEnvironment


class BadValue(Exception):
    """A condition or action value is wrong; the message says what was expected."""


@attrs.frozen
class Condition:
    """
    A compiled condition.

    @ivar test: C{test(facts) -> bool}; a fact missing at this checkpoint
        makes it false.
    @ivar hosts: exact host names it requires (for the index), or C{None}.
    @ivar domains: domains it requires (host equal or below), or C{None}.
    """

    text: str
    test: Callable[[Facts], bool]
    hosts: frozenset[str] | None = None
    domains: frozenset[str] | None = None


@attrs.frozen
class Action:
    """
    A compiled action: the properties it sets, in order.

    @ivar sets: C{(property, value)} pairs. C{verdict} is C{(allow, reason)};
        C{detect_protocol} is C{("all" | "none")} or per protocol under
        C{detect_protocol.<name>}.
    """

    text: str
    sets: tuple[tuple[str, Any], ...]


def _split_list(value: str) -> list[str]:
    if value.startswith("(") and value.endswith(")"):
        items = [v.strip() for v in value[1:-1].split(",")]
    else:
        items = [value]
    if not items or any(not v for v in items):
        raise BadValue(f"empty item in {value!r}")
    return [_unquote(v) for v in items]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def _host(value: str) -> str:
    host = value.lower().rstrip(".")
    if not host or any(c in host for c in " /\\@?#"):
        raise BadValue(f"expected a host name, got {value!r}")
    return host


def _yes_no(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true"):
        return True
    if lowered in ("no", "false"):
        return False
    raise BadValue(f"expected yes or no, got {value!r}")


def _networks(values: list[str]) -> tuple[Any, ...]:
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise BadValue(f"expected an IP address or CIDR network, got {value!r}") from None
    return tuple(out)


def _address_in(networks: tuple[Any, ...]) -> Callable[[Facts], bool]:
    def test(facts: Facts) -> bool:
        address = parse_address(facts.get("client.address") or "")
        return address is not None and any(address in n for n in networks)

    return test


def _regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise BadValue(f"bad regular expression {value!r}: {e}") from None


def _ports(values: list[str]) -> Callable[[int], bool]:
    ranges = []
    for value in values:
        low, sep, high = value.partition("..")
        try:
            a, b = int(low), int(high if sep else low)
        except ValueError:
            raise BadValue(f"expected a port or a range like 8000..8080, got {value!r}") from None
        if not (0 < a <= b < 65536):
            raise BadValue(f"expected ports from 1 to 65535, got {value!r}")
        ranges.append((a, b))
    return lambda port: any(a <= port <= b for a, b in ranges)


def _fact_in(name: str, values: frozenset[Any]) -> Callable[[Facts], bool]:
    def test(facts: Facts) -> bool:
        value = facts.get(name)
        return value is not None and value in values

    return test


def _fact_test(name: str, predicate: Callable[[Any], bool]) -> Callable[[Facts], bool]:
    def test(facts: Facts) -> bool:
        value = facts.get(name)
        return value is not None and predicate(value)

    return test


def _domain_test(domains: frozenset[str]) -> Callable[[Facts], bool]:
    def test(facts: Facts) -> bool:
        host = facts.get("url.host")
        if not host:
            return False
        if host in domains:
            return True
        parts = host.split(".")
        return any(".".join(parts[i:]) in domains for i in range(1, len(parts)))

    return test


def _compile_plain(name: str, values: list[str], env: Environment, defined: Mapping[str, Any]) -> Condition:
    """Compile a condition without negation."""
    text = f"{name}={values}"
    if name == "client.address":
        return Condition(text, _address_in(_networks(values)))
    if name == "client.protocol":
        for v in values:
            if not _PROTOCOL_NAME.match(v):
                raise BadValue(f"expected a protocol name such as http, https, ssl, sip, sips, ms-turn, stun, tcp; got {v!r}")
        return Condition(text, _fact_in("client.protocol", frozenset(values)))
    if name in ("tunneled", "authenticated"):
        if len(values) != 1:
            raise BadValue("expected yes or no")
        want = _yes_no(values[0])
        return Condition(text, lambda facts: name in facts and bool(facts[name]) is want)
    if name == "url.host":
        hosts = frozenset(_host(v) for v in values)
        return Condition(text, _fact_in("url.host", hosts), hosts=hosts)
    if name == "url.domain":
        domains = frozenset(_host(v).lstrip("*.") for v in values)
        return Condition(text, _domain_test(domains), domains=domains)
    if name == "url.host.substring":
        needles = [v.lower() for v in values]
        return Condition(text, _fact_test("url.host", lambda h: any(n in h for n in needles)))
    if name == "url.host.suffix":
        suffixes = tuple(v.lower() for v in values)
        return Condition(text, _fact_test("url.host", lambda h: h.endswith(suffixes)))
    if name == "url.host.regex":
        patterns = [_regex(v) for v in values]
        return Condition(text, _fact_test("url.host", lambda h: any(p.search(h) for p in patterns)))
    if name == "url.port":
        return Condition(text, _fact_test("url.port", _ports(values)))
    if name == "url.scheme":
        return Condition(text, _fact_in("url.scheme", frozenset(v.lower() for v in values)))
    if name == "url.path":
        return Condition(text, _fact_in("url.path", frozenset(values)))
    if name == "url.path.prefix":
        prefixes = tuple(values)
        return Condition(text, _fact_test("url.path", lambda p: p.startswith(prefixes)))
    if name == "url.path.substring":
        return Condition(text, _fact_test("url.path", lambda p: any(v in p for v in values)))
    if name == "url.path.regex":
        patterns = [_regex(v) for v in values]
        return Condition(text, _fact_test("url.path", lambda p: any(r.search(p) for r in patterns)))
    if name == "service.name":
        return Condition(text, _fact_in("service.name", frozenset(values)))
    if name == "user":
        return Condition(text, _fact_in("user", frozenset(values)))
    if name == "category":
        unknown = [v for v in values if v not in env.categories]
        if unknown:
            known = ", ".join(sorted(env.categories)) or "none loaded: see [txgate] categories"
            raise BadValue(f"unknown category {unknown[0]!r} (known: {known})")
        wanted = frozenset(values)
        return Condition(text, lambda facts: bool(wanted & facts.get("category", frozenset())))
    if name == "ssl.sni":
        hosts = frozenset(_host(v) for v in values)
        return Condition(text, _fact_in("ssl.sni", hosts))
    if name == "condition":
        tests = []
        for v in values:
            if v not in defined:
                raise BadValue(f"no condition named {v!r} is defined before this line")
            tests.append(defined[v])
        return Condition(text, lambda facts: any(t(facts) for t in tests))
    raise KeyError(name)


CONDITIONS: dict[str, frozenset[str]] = {}
"""Each condition name and the layers it may appear in."""

_ALL = frozenset(LAYERS)
_SSL = frozenset({"ssl-intercept", "ssl"})
for _name in (
    "client.address",
    "url.host",
    "url.domain",
    "url.host.substring",
    "url.host.suffix",
    "url.host.regex",
    "url.port",
    "service.name",
    "user",
    "authenticated",
    "category",
    "ssl.sni",
    "condition",
):
    CONDITIONS[_name] = _ALL
for _name in ("client.protocol", "tunneled"):
    CONDITIONS[_name] = frozenset({"proxy", "ssl"})
for _name in ("url.scheme", "url.path", "url.path.prefix", "url.path.substring", "url.path.regex"):
    CONDITIONS[_name] = frozenset({"proxy"})


def compile_condition(word: str, env: Environment, defined: Mapping[str, Any]) -> tuple[str, Condition]:
    """
    Compile C{name=value}, C{name=!value} or C{name=(a,b)}.

    @return: the condition's name (for the layer check) and the condition.
    @raise KeyError: the name is not a condition.
    @raise BadValue: the value is wrong.
    """
    name, _, value = word.partition("=")
    name = name.lower()
    if name not in CONDITIONS:
        raise KeyError(name)
    negated = value.startswith("!")
    if negated:
        value = value[1:]
    if not value:
        raise BadValue(f"{name}= needs a value")
    plain = _compile_plain(name, _split_list(value), env, defined)
    if not negated:
        return name, attrs.evolve(plain, text=word)
    test = plain.test
    fact = _FACT_OF.get(name)
    if fact is None:  # condition=!NAME
        return name, Condition(word, lambda facts: not test(facts))
    # "=!x" holds when the fact is known and is something else: a fact this
    # checkpoint does not know never matches, negated or not.
    return name, Condition(word, lambda facts: facts.get(fact) is not None and not test(facts))


_FACT_OF = {
    "client.address": "client.address",
    "client.protocol": "client.protocol",
    "tunneled": "tunneled",
    "authenticated": "authenticated",
    "url.host": "url.host",
    "url.domain": "url.host",
    "url.host.substring": "url.host",
    "url.host.suffix": "url.host",
    "url.host.regex": "url.host",
    "url.port": "url.port",
    "url.scheme": "url.scheme",
    "url.path": "url.path",
    "url.path.prefix": "url.path",
    "url.path.substring": "url.path",
    "url.path.regex": "url.path",
    "service.name": "service.name",
    "user": "user",
    "category": "category",
    "ssl.sni": "ssl.sni",
}


_ACTION_SYNTAX = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.]*)(?:\[(?P<list>[^\]]*)\])?(?:\((?P<args>.*)\))?\Z", re.S)

ACTIONS: dict[str, frozenset[str]] = {
    "allow": frozenset({"proxy", "ssl"}),
    "deny": frozenset({"proxy", "ssl"}),
    "ssl.forward_proxy": frozenset({"ssl-intercept"}),
    "detect_protocol": frozenset({"proxy", "ssl-intercept"}),
    "tunnel_on_error": frozenset({"proxy", "ssl-intercept"}),
    "authenticate": frozenset({"proxy"}),
    "access_log": _ALL,
    "server.certificate.validate": _SSL,
}
"""Each action name and the layers it may appear in."""


def compile_action(word: str, env: Environment, location: str) -> tuple[str, Action]:
    """
    Compile one action word.

    @param location: C{file:line}, for the default DENY reason.
    @raise KeyError: not an action name.
    @raise BadValue: bad arguments.
    """
    match = _ACTION_SYNTAX.match(word)
    if match is None:
        raise KeyError(word)
    name = match["name"].lower()
    args = match["args"]
    listed = match["list"]
    if name not in ACTIONS:
        raise KeyError(name)
    if listed is not None and name != "detect_protocol":
        raise BadValue(f"{name} takes no [list]")
    if name in ("allow", "deny"):
        reason = ""
        if args is not None:
            reason = _unquote(args.strip())
            if name == "allow":
                raise BadValue("ALLOW takes no arguments")
        if name == "deny" and not reason:
            reason = f"denied by policy ({location})"
        return name, Action(word, (("verdict", (name == "allow", reason)),))
    if args is None:
        raise BadValue(f"{name} needs an argument in parentheses, e.g. {name}(no)")
    arg = _unquote(args.strip())
    if name == "ssl.forward_proxy":
        if arg.lower() not in ("no", "yes", "https"):
            raise BadValue(f"ssl.forward_proxy takes no, yes or https, got {arg!r}")
        return name, Action(word, (("ssl.forward_proxy", arg.lower()),))
    if name == "detect_protocol":
        lowered = arg.lower()
        if listed is None:
            if lowered in ("all", "yes"):
                return name, Action(word, (("detect_protocol", "all"),))
            if lowered in ("none", "no"):
                return name, Action(word, (("detect_protocol", "none"),))
            raise BadValue(f"detect_protocol takes all, none, yes or no, got {arg!r}")
        on = _yes_no(arg)
        protocols = [p.strip().lower() for p in listed.split(",")]
        for p in protocols:
            if not _PROTOCOL_NAME.match(p):
                raise BadValue(f"expected protocol names in detect_protocol[...], got {p!r}")
        return name, Action(word, tuple((f"detect_protocol.{p}", on) for p in protocols))
    if name == "tunnel_on_error":
        return name, Action(word, (("tunnel_on_error", _yes_no(arg)),))
    if name == "authenticate":
        if arg.lower() == "no":
            return name, Action(word, (("authenticate", None),))
        if arg not in env.realms:
            known = ", ".join(sorted(env.realms)) or "none configured: add a [realm.NAME] table"
            raise BadValue(f"unknown realm {arg!r} (known: {known})")
        return name, Action(word, (("authenticate", arg),))
    if name == "access_log":
        return name, Action(word, (("access_log", _yes_no(arg)),))
    if name == "server.certificate.validate":
        return name, Action(word, (("server.certificate.validate", _yes_no(arg)),))
    raise KeyError(name)  # pragma: no cover - every ACTIONS name is handled above
