# -*- test-case-name: tests.test_cli -*-
"""
The C{txgate} command: offline tools for operators.

  - C{txgate check-config PATH}: validate a configuration file.
  - C{txgate plugins [--config PATH]}: list the registered plugins.
  - C{txgate o365 import FILE.json [--service-area Skype] [--output PATH]}:
    convert Microsoft's endpoints JSON into a category list.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence, TextIO

from txgate.config import load_config, load_default_config
from txgate.errors import ConfigError, ConfigErrors

__all__ = ["main"]


def _check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.tap import prepare

    status = 0
    for path in args.paths:
        try:
            prepare(load_config(path))
        except ConfigErrors as e:
            err.write(f"{e}\n")
            status = 1
        else:
            out.write(f"{path}: ok\n")
    return status


def _plugins(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.plugins import discover

    try:
        config = load_config(args.config) if args.config else load_default_config()
        registry = discover(config.txgate.plugin_path, config.path)
    except (ConfigErrors, ConfigError) as e:
        err.write(f"{e}\n")
        return 1
    rows = [(p.kind, p.name, p.origin) for p in registry.plugins]
    width_kind = max([len("KIND")] + [len(r[0]) for r in rows])
    width_name = max([len("NAME")] + [len(r[1]) for r in rows])
    out.write(f"{'KIND':<{width_kind}}  {'NAME':<{width_name}}  ORIGIN\n")
    for kind, name, origin in sorted(rows):
        out.write(f"{kind:<{width_kind}}  {name:<{width_name}}  {origin}\n")
    for failure in registry.failures:
        err.write(f"plugin {failure.module} ({failure.origin}) failed to load: {failure.error}\n")
    return 0


def _o365_import(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import datetime
    import json
    import os

    from txgate.policy.o365 import EndpointsFormatError, convert, render

    categories = args.category or ["Optimize", "Allow"]
    try:
        with open(args.file, "rb") as f:
            raw = f.read()
    except OSError as e:
        err.write(f"{args.file}: cannot read: {e.strerror}\n")
        return 1
    expected = "expected Microsoft's endpoints JSON (https://endpoints.office.com/endpoints/worldwide)"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        err.write(f"{args.file}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}; {expected}\n")
        return 1
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        err.write(f"{args.file}: not valid JSON: {reason}; {expected}\n")
        return 1
    try:
        conversion = convert(data, args.service_area, categories)
    except EndpointsFormatError as e:
        err.write(f"{args.file}: {e}\n")
        return 1
    text = render(
        conversion,
        source=os.path.basename(args.file),
        today=datetime.date.today(),
        service_area=args.service_area,
        categories=categories,
    )
    for skip in conversion.skipped:
        err.write(f"{args.file}: left out {skip.url!r} (id {skip.endpoint_id}): {skip.reason}\n")
    if args.output is None:
        out.write(text)
        return 0
    temporary = f"{args.output}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, args.output)  # a running proxy never reads half a file
    except OSError as e:
        err.write(f"{args.output}: cannot write: {e.strerror}\n")
        if os.path.exists(temporary):
            os.unlink(temporary)
        return 1
    out.write(
        f"{args.output}: {len(conversion.hosts)} host, {len(conversion.ipv4)} IPv4 and"
        f" {len(conversion.ipv6)} IPv6 entries\n"
    )
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="txgate", description="txgate operator tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate configuration files; exit 1 on errors")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(run=_check_config)
    plugins = commands.add_parser("plugins", help="list registered plugins by kind, name and origin")
    plugins.add_argument("--config", metavar="PATH", help="use this configuration's plugin_path")
    plugins.set_defaults(run=_plugins)
    o365 = commands.add_parser("o365", help="Microsoft 365 endpoint lists")
    o365_commands = o365.add_subparsers(dest="o365_command", required=True)
    o365_import = o365_commands.add_parser(
        "import",
        help="convert Microsoft's endpoints JSON into a category list (docs/categories.md)",
    )
    o365_import.add_argument("file", metavar="FILE.json", help="from https://endpoints.office.com/endpoints/worldwide")
    o365_import.add_argument(
        "--service-area", default="Skype", help="serviceArea to take (default: Skype, i.e. Skype for Business Online / Teams)"
    )
    o365_import.add_argument(
        "--category",
        action="append",
        metavar="NAME",
        help="endpoint category to take; repeat for several (default: Optimize and Allow)",
    )
    o365_import.add_argument("--output", metavar="PATH", help="write the list here (default: standard output)")
    o365_import.set_defaults(run=_o365_import)
    from txgate.policy.tool import add_commands as add_policy_commands

    add_policy_commands(commands)
    args = parser.parse_args(argv)
    return int(args.run(args, out, err))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
