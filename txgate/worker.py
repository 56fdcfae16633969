# -*- test-case-name: tests.net.test_workers -*-
"""
C{python -m txgate.worker forward|reverse ...}: one worker of C{--workers N},
started by the main process (L{txgate.net.workers.Supervisor}), never by
hand. It builds the same service C{twistd txgate forward|reverse} would, on
the listening sockets the main process hands down, and serves its admin
API on a control socket. Its log goes to standard output, which the main
process relays.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m txgate.worker")
    parser.add_argument("mode", choices=("forward", "reverse"))
    parser.add_argument("--config", default=None)
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--listener", action="append", default=[], help="NAME=FD:FAMILY:HAPROXY")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from txgate.net.reactor import install

    reactor = install()
    from twisted.logger import eventAsText, FileLogObserver, globalLogBeginner

    from txgate.errors import ConfigErrors
    from txgate.net.listeners import Adopted
    from txgate.net.operations import Running, raise_open_files_limit
    from txgate.tap import build_service

    def text(event: dict) -> str:  # the main process adds time and worker number
        return eventAsText(event, includeTimestamp=False, includeSystem=False) + "\n"

    raise_open_files_limit()
    globalLogBeginner.beginLoggingTo([FileLogObserver(sys.stdout, text)], redirectStandardIO=False)
    running = Running(
        worker=args.worker,
        adopted=dict(Adopted.parse(item) for item in args.listener),
        control=args.control,
        admin=False,
    )
    try:
        service = build_service(args.mode, args.config, reactor, running)
    except ConfigErrors as e:
        sys.stdout.write(f"refusing to start:\n{e}\n")
        return 1
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
