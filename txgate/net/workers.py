# -*- test-case-name: tests.net.test_workers -*-
"""
C{--workers N}: the main process binds every listener once, spawns N
worker processes that adopt the sockets (one accept queue, every core),
serves the admin console for all of them, relays their log lines, passes
SIGHUP on, drains them on SIGTERM and restarts one that dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate import metrics
from txgate.admin.source import WorkersSource
from txgate.net.listeners import Adopted, bind
from txgate.net.operations import Running, control_socket, start_admin
from txgate.net.service import describe_address
from txgate.pki.keyring import private_directory

__all__ = ["Listener", "Supervisor", "worker_argv"]

RESTART_DELAY = 1.0
"""Seconds before a worker that died is started again (doubling while it keeps dying young)."""

MAX_RESTART_DELAY = 30.0
STOP_GRACE = 5.0
"""Seconds past C{drain_timeout} a worker gets before it is killed."""


class Listener:
    """A listener the main process binds for its workers."""

    def __init__(self, name: str, kind: str, listen: str) -> None:
        self.name = name
        self.kind = kind
        self.listen = listen
        self.port: Any = None
        self.adopted: Adopted | None = None


class _Worker(ProcessProtocol):
    """One worker process: its output goes to the main log, line by line."""

    _log = Logger(namespace="txgate.worker")

    def __init__(self, supervisor: "Supervisor", number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.started = supervisor.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._partial = {1: b"", 2: b""}
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.transport.closeStdin()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        lines = (self._partial.get(fd, b"") + data).split(b"\n")
        self._partial[fd] = lines.pop()
        for line in lines:
            if line.strip():
                self._log.info("worker {worker}: {line}", worker=self.number, line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._partial.items():
            if rest.strip():
                self.childDataReceived(fd, b"\n")
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class Supervisor(Service):
    """
    The main process of C{--workers N}.

    @param argv: how to start a worker: the command line up to the per-worker
        options (C{--worker}, C{--control}, C{--listener}).
    @param listeners: what to bind.
    @param reload_check: what SIGHUP and the console's reload check in the
        main process before the workers reload (a bad policy is reported
        here; the workers keep theirs).
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        count: int,
        argv: Sequence[str],
        listeners: Sequence[Listener],
        state_dir: str,
        drain_timeout: float,
        admin: Any,
        admin_token: str | None,
        reload_check: Callable[[], dict[str, Any]],
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.argv = list(argv)
        self.listeners = list(listeners)
        self.state_dir = state_dir
        self.run_dir = os.path.join(state_dir, "run")
        self.metrics_dir = os.path.join(self.run_dir, "metrics")
        self.drain_timeout = drain_timeout
        self.admin = admin
        self.admin_token = admin_token
        self.reload_check = reload_check
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self._delays: dict[int, float] = {}
        self._admin_port: Any = None

    # -- starting -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        private_directory(self.state_dir)
        private_directory(self.run_dir)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        private_directory(self.metrics_dir)
        if hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(signal.SIGHUP, lambda n, f: self.reactor.callFromThread(self.reload))
        binds = [bind(self.reactor, listener.listen).addCallback(self._bound, listener) for listener in self.listeners]
        d = gatherResults(binds, consumeErrors=True)
        d.addCallbacks(self._all_bound, self._bind_failed)

    def _bound(self, result: tuple[Any, Adopted], listener: Listener) -> None:
        listener.port, listener.adopted = result
        self._log.info(
            "listening: service={service} kind={kind} address={address}",
            service=listener.name,
            kind=listener.kind,
            address=describe_address(listener.port.getHost()),
        )

    def _bind_failed(self, failure: Failure) -> None:
        error = failure.value.subFailure if hasattr(failure.value, "subFailure") else failure
        self._log.critical("cannot listen: {error}; stopping", error=error.getErrorMessage())
        self.reactor.callWhenRunning(self.reactor.stop)

    def _all_bound(self, _: Any) -> None:
        for number in range(1, self.count + 1):
            self._spawn(number)
        source = WorkersSource(self.reactor, self.sockets, self.reload, self.metrics_dir)
        admin = self.admin
        start_admin(
            self.reactor,
            Running(),
            admin.listen,
            source,
            self.admin_token,
            admin.refresh,
            self._admin_listening,
            self._bind_failed,
        )

    def _admin_listening(self, port: Any) -> None:
        self._admin_port = port
        self._log.info("listening: service=admin kind=admin address={address}", address=describe_address(port.getHost()))

    def sockets(self) -> dict[int, str]:
        """The control socket of each running worker."""
        return {n: control_socket(self.state_dir, n) for n in self.workers}

    def _spawn(self, number: int) -> None:
        argv = [*self.argv, "--worker", str(number), "--control", control_socket(self.state_dir, number)]
        child_fds: dict[int, Any] = {0: "w", 1: "r", 2: "r"}
        for listener in self.listeners:
            assert listener.adopted is not None
            argv += ["--listener", listener.adopted.argument(listener.name)]
            child_fds[listener.adopted.fd] = listener.adopted.fd
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=self.metrics_dir, PYTHONUNBUFFERED="1")
        worker = _Worker(self, number)
        self.workers[number] = worker
        self.reactor.spawnProcess(worker, argv[0], argv, env=env, childFDs=child_fds)
        self._log.info("worker {worker} started (pid {pid})", worker=number, pid=worker.pid)

    # -- running ------------------------------------------------------------------

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if worker.pid is not None:
            metrics.process_dead(worker.pid, self.metrics_dir)
        if self.stopping:
            return
        how = _describe_end(reason)
        lived = self.reactor.seconds() - worker.started
        previous = self._delays.get(worker.number)
        delay = RESTART_DELAY if previous is None or lived > 60 else min(previous * 2, MAX_RESTART_DELAY)
        self._delays[worker.number] = delay
        self._log.error(
            "worker {worker} (pid {pid}) {how}; restarting it in {delay:g} s",
            worker=worker.number,
            pid=worker.pid,
            how=how,
            delay=delay,
        )
        self.reactor.callLater(delay, self._respawn, worker.number)

    def _respawn(self, number: int) -> None:
        if not self.stopping and number not in self.workers:
            self._spawn(number)

    def reload(self) -> dict[str, Any]:
        """Check the new policy here, then have every worker load it."""
        result = self.reload_check()
        if result.get("ok"):
            for worker in self.workers.values():
                self._signal(worker, signal.SIGHUP)
            self._log.info("reload: sent SIGHUP to {count} workers", count=len(self.workers))
        return result

    def _signal(self, worker: _Worker, signum: int) -> None:
        try:
            worker.transport.signalProcess(signum)
        except Exception:
            pass  # already gone

    # -- stopping -----------------------------------------------------------------

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        previous = getattr(self, "_previous_sighup", None)
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
        waits = []
        if self._admin_port is not None:
            waits.append(self._admin_port.stopListening())
        ended = [w.ended for w in self.workers.values()]
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGTERM)
        if ended:
            self._log.info("stopping {count} workers (drain_timeout {timeout:g} s)", count=len(ended), timeout=self.drain_timeout)
            killer = self.reactor.callLater(self.drain_timeout + STOP_GRACE, self._kill_all)
            all_ended = DeferredList(ended)
            all_ended.addCallback(lambda _: killer.cancel() if killer.active() else None)
            waits.append(all_ended)
        for listener in self.listeners:
            if listener.port is not None:
                waits.append(listener.port.stopListening())
        return gatherResults([w for w in waits if w is not None])

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            self._log.warn("worker {worker} did not stop in time: killing it", worker=worker.number)
            self._signal(worker, signal.SIGKILL)


def _describe_end(reason: Failure) -> str:
    value = reason.value
    if getattr(value, "signal", None):
        return f"was killed by signal {value.signal}"
    code = getattr(value, "exitCode", None)
    return "exited" if not code else f"exited with status {code}"


def worker_argv(mode: str, config: str | None) -> list[str]:
    """The command line that starts a worker of C{mode}."""
    argv = [sys.executable, "-m", "txgate.worker", mode]
    if config:
        argv += ["--config", config]
    return argv
