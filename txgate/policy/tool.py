# -*- test-case-name: tests.policy.test_tool -*-
"""
C{txgate policy check} and C{txgate policy trace}: offline tools to validate
a policy file and to see which rules decide a transaction.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import Any, TextIO

from txgate.errors import ConfigError, ConfigErrors
from txgate.interfaces import PolicyEnvironment
from txgate.session import ClientProtocol

__all__ = ["add_commands", "trace_facts"]


def _environment(config_path: str | None) -> tuple[PolicyEnvironment, Any, bool]:
    """The names a policy may use, the categories and the default verdict, from a config."""
    from txgate.config import load_config, load_default_config
    from txgate.tap import environment_of

    config = load_config(config_path) if config_path else load_default_config()
    environment, categories = environment_of(config)
    return environment, categories, config.txgate.default_policy == "allow"


def _check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.policy.cpl import load_policy

    try:
        environment, _, allow = _environment(args.config)
    except (ConfigErrors, ConfigError) as e:
        err.write(f"{e}\n")
        return 1
    status = 0
    for path in args.files:
        try:
            load_policy(path, allow, environment)
        except ConfigErrors as e:
            err.write(f"{e}\n")
            status = 1
        else:
            out.write(f"{path}: ok\n")
    return status


def trace_facts(
    url: str | None,
    client: str | None,
    protocol: str | None,
    tunneled: str | None,
    service: str | None,
    user: str | None,
) -> dict[str, Any]:
    """
    The facts of a made-up transaction, as C{txgate policy trace} options
    describe it.

    @param url: C{http(s)://host[:port]/path} for a request, C{host:port} for
        a CONNECT or a tunnel.
    @raise ValueError: an option is not understood.
    """
    from txgate.errors import PeerProtocolError
    from txgate.http.proxying import parse_target

    facts: dict[str, Any] = {}
    if url:
        method = b"GET" if "://" in url else b"CONNECT"
        try:
            facts.update(parse_target(method, url.encode("ascii")).facts())
        except (PeerProtocolError, UnicodeEncodeError) as e:
            raise ValueError(f"--url: {getattr(e, 'reason', e)}") from None
    if client:
        try:
            facts["client.address"] = str(ipaddress.ip_address(client))
        except ValueError:
            raise ValueError(f"--client: expected an IP address, got {client!r}") from None
    facts["client.protocol"] = protocol or (
        facts.get("url.scheme", ClientProtocol.TCP) if url else ClientProtocol.HTTP
    )
    if tunneled is not None:
        facts["tunneled"] = tunneled == "yes"
    else:
        facts["tunneled"] = facts["client.protocol"] in (ClientProtocol.TCP, ClientProtocol.SSL)
    if service:
        facts["service.name"] = service
    facts["user"] = user
    facts["authenticated"] = user is not None
    return facts


def _trace(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.policy.cpl import load_policy

    try:
        environment, categories, allow = _environment(args.config)
        policy = load_policy(args.policy, allow, environment)
        facts = trace_facts(args.url, args.client, args.protocol, args.tunneled, args.service, args.user)
    except (ConfigErrors, ConfigError) as e:
        err.write(f"{e}\n")
        return 1
    except ValueError as e:
        err.write(f"txgate policy trace: {e}\n")
        return 1
    host = facts.get("url.host")
    if categories is not None and host:
        facts["category"] = categories.lookup(host, host if _is_address(host) else None)
    outcome = policy.evaluate(facts)
    if args.json:
        out.write(json.dumps(outcome.as_json(), indent=2) + "\n")
    else:
        shown = " ".join(f"{k}={_show(v)}" for k, v in sorted(facts.items()))
        out.write(f"policy: {args.policy}\nfacts: {shown}\n{outcome.as_text()}\n")
    return 0


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, frozenset):
        return "(" + ",".join(sorted(value)) + ")"
    return "-" if value is None else str(value)


def add_commands(commands: Any) -> None:
    """Add C{policy check} and C{policy trace} to the C{txgate} command."""
    policy = commands.add_parser("policy", help="check policy files and trace decisions")
    sub = policy.add_subparsers(dest="policy_command", required=True)
    check = sub.add_parser("check", help="validate CPL files; exit 1 with every error")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.add_argument("--config", metavar="PATH", help="the configuration whose categories and realms the policy may use")
    check.set_defaults(run=_check)
    trace = sub.add_parser("trace", help="show which rules decide a transaction")
    trace.add_argument("--policy", required=True, metavar="FILE")
    trace.add_argument("--config", metavar="PATH", help="the configuration whose categories and realms the policy may use")
    trace.add_argument("--url", help="http(s)://host[:port]/path for a request, host:port for a tunnel")
    trace.add_argument("--client", metavar="IP", help="the client address")
    trace.add_argument("--protocol", help="client.protocol (http, https, ssl, sip, sips, ms-turn, stun, tcp)")
    trace.add_argument("--tunneled", choices=("yes", "no"))
    trace.add_argument("--service", metavar="NAME", help="service.name")
    trace.add_argument("--user", metavar="U", help="an authenticated user name")
    trace.add_argument("--json", action="store_true", help="one JSON object instead of text")
    trace.set_defaults(run=_trace)
