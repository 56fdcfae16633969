# -*- test-case-name: tests.test_cli -*-
"""
The C{txgate} command: offline tools for operators.

  - C{txgate check-config PATH}: validate a configuration file.
  - C{txgate plugins [--config PATH]}: list the registered plugins.
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


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="txgate", description="txgate operator tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate configuration files; exit 1 on errors")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(run=_check_config)
    plugins = commands.add_parser("plugins", help="list registered plugins by kind, name and origin")
    plugins.add_argument("--config", metavar="PATH", help="use this configuration's plugin_path")
    plugins.set_defaults(run=_plugins)
    args = parser.parse_args(argv)
    return int(args.run(args, out, err))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
