# -*- test-case-name: tests.net.test_workers -*-
"""
What forward and reverse services share for running in production: where
they listen (their own sockets or adopted ones), the admin console or a
worker's control socket, and draining connections on SIGTERM.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate.errors import ConfigError, ConfigErrors
from txgate.net.listeners import Adopted

__all__ = ["Running", "load_admin_token", "drain", "start_admin", "control_socket", "raise_open_files_limit"]

_log = Logger(namespace="txgate.net.operations")


@attrs.frozen
class Running:
    """
    How this process runs: alone (C{worker = 0}, its own sockets, the admin
    console), or as worker C{n} of C{--workers} (adopted sockets, a control
    socket instead of the console).
    """

    worker: int = 0
    adopted: Mapping[str, Adopted] = attrs.field(factory=dict)
    control: str | None = None
    admin: bool = True


def load_admin_token(path: str, key: str = "admin.token_file") -> str | None:
    """
    The bearer token in C{path} (C{""}: none). The file is a secret: one
    readable by group or others is refused, as an empty one is.

    @raise ConfigErrors: naming the file.
    """
    if not path:
        return None
    from txgate.pki.keyring import read_file

    errors: list[ConfigError] = []
    data = read_file(path, errors, secret=True)
    if data is not None:
        token = data.decode("utf-8", "replace").strip()
        if len(token) < 16:
            errors.append(ConfigError(path, key, "the admin token must be at least 16 characters"))
        else:
            return token
    raise ConfigErrors(tuple(ConfigError(e.path, key, e.message) for e in errors))


def control_socket(state_dir: str, worker: int) -> str:
    """Where worker C{worker} serves its admin API to the main process."""
    return os.path.join(state_dir, "run", f"worker-{worker}.sock")


def start_admin(
    reactor: Any,
    running: Running,
    listen: str,
    source: Any,
    token: str | None,
    refresh: float,
    listening: Callable[[Any], None],
    failed: Callable[[Failure], None],
) -> None:
    """
    Serve the admin console on C{listen} (when this process runs it), or a
    worker's control socket (no token: the socket is in a private
    directory only the main process reads).
    """
    from twisted.internet.endpoints import serverFromString

    from txgate.admin.web import admin_site

    if running.control is not None:
        path = running.control
        if os.path.exists(path):
            os.unlink(path)
        endpoint = serverFromString(reactor, f"unix:{path}:mode=600")
        site = admin_site(source, None, refresh, reactor, trust_local=True)
        site.log = lambda request: None  # the main process's console logs what people ask
        endpoint.listen(site).addErrback(failed)
        return
    if not running.admin or not listen:
        return
    d = serverFromString(reactor, listen).listen(admin_site(source, token, refresh, reactor))
    d.addCallbacks(listening, failed)


def drain(reactor: Any, live: Callable[[], int], timeout: float, end_all: Callable[[], None]) -> Deferred[None]:
    """
    Wait until no connection is left (C{live()} is 0), at most C{timeout}
    seconds, then end the rest: what SIGTERM does after the listeners
    closed.
    """
    if live() == 0:
        return succeed(None)
    _log.info("draining {count} connections (at most {timeout:g} s)", count=live(), timeout=timeout)
    done: Deferred[None] = Deferred()
    deadline = reactor.seconds() + timeout

    def check() -> None:
        left = live()
        if left == 0:
            done.callback(None)
        elif reactor.seconds() >= deadline:
            _log.warn("drain_timeout reached: ending {count} connections", count=left)
            end_all()
            done.callback(None)
        else:
            reactor.callLater(0.1, check)

    check()
    return done


def raise_open_files_limit() -> int:
    """
    Raise this process's open-files limit to its hard limit, as proxies do:
    every proxied connection takes two descriptors, and the usual soft
    limit of 1024 would refuse connections long before memory runs out.

    @return: the limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft
