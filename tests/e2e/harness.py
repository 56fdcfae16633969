# -*- test-case-name: tests.e2e -*-
"""
Helpers for the end-to-end tier: real processes and real clients on loopback.

Everything that waits returns a L{Deferred} (trial tests may be C{async def}
and C{await} them), so the reactor keeps running while a child process starts,
curl runs or a polling loop waits. Children are started with
C{reactor.spawnProcess}; every helper that starts something registers a
cleanup on the test case that stops it and waits for it to end, so no process,
port or connection outlives its test.

    proxy = await start_txgate(self, CONFIG)         # twistd txgate forward
    nginx = await start_nginx(self, tls=True, root_files={"a.txt": b"..."})
    echo = await start_echo_origin(self)             # in-process twisted.web
    result = await fetch(self, nginx.url("/a.txt"), proxy=proxy.addresses["explicit"],
                         extra=["--cacert", nginx.ca_pem_path])
    record = await wait_for_record(proxy, lambda r: r["method"] == "CONNECT")

Tools come from Debian packages that C{make test} installs; L{require_tool}
skips a test when one is missing, except under C{CI=true}, where a missing tool
is a failure. All traffic stays on 127.0.0.1: txgate runs in a private mount
namespace whose C{/etc/resolv.conf} names 127.0.0.1, so even its DNS lookups
(C{nosuch.invalid}) never leave the machine.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import sys
import time
import tomllib
import unittest
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs
from twisted.internet import defer, protocol, reactor, task, threads
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import FailTest
from twisted.web import http, resource, server

__all__ = [
    "BackgroundFetcher",
    "CurlResult",
    "curl_result",
    "EchoOrigin",
    "EchoedRequest",
    "NginxOrigin",
    "RawReply",
    "TxgateProcess",
    "access_records",
    "exchange_raw",
    "fetch",
    "in_ci",
    "make_pki",
    "parse_access_line",
    "read_access_log",
    "read_access_log_json",
    "read_http_head",
    "require",
    "require_tool",
    "rss_kb",
    "rss_peak_kb",
    "run_curl",
    "start_echo_origin",
    "start_nginx",
    "start_txgate",
    "wait_for",
    "wait_for_record",
    "write_pattern_file",
]

LOOPBACK = "127.0.0.1"

STARTUP_TIMEOUT = 20.0
"""Seconds a child (txgate, nginx) gets to start listening before the test fails."""

STOP_GRACE = 10.0
"""Seconds between SIGTERM and SIGKILL when a test's cleanup stops a child."""

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_PROXY_ENV = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
_LISTENING = re.compile(r"listening: service=(?P<name>\S+) kind=(?P<kind>\S+) address=(?P<address>\S+)")


# ---------------------------------------------------------------- requirements


def in_ci() -> bool:
    """
    Whether this run is CI's (C{CI=true}), where nothing may be skipped.
    """
    return os.environ.get("CI") == "true"


def require(condition: object, message: str) -> None:
    """
    Skip the running test when C{condition} is false, or fail it under CI.

    @raise unittest.SkipTest: outside CI.
    @raise FailTest: under C{CI=true} (an C{AssertionError}, so trial
        counts a failure).
    """
    if condition:
        return
    if in_ci():
        raise FailTest(f"{message} (CI=true: a missing requirement fails the test)")
    raise unittest.SkipTest(message)


def require_tool(name: str) -> str:
    """
    The path of the executable C{name}, searched on C{PATH} and the sbin
    directories (nginx lives in /usr/sbin, which a CI shell may not list).

    @raise unittest.SkipTest: when missing, outside CI.
    @raise FailTest: when missing under C{CI=true}.
    """
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    path = shutil.which(name, path=search)
    require(path, f"{name} not found; `make system-deps` installs it")
    assert path is not None
    return path


def _child_env(**extra: str) -> dict[str, str]:
    """
    The environment for children: ours without proxy variables (curl would
    obey them), with unbuffered Python output so log lines arrive as written.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _new_dir(testcase: unittest.TestCase) -> str:
    path = os.path.abspath(testcase.mktemp())  # type: ignore[attr-defined]
    os.makedirs(path)
    return path


def _tail(lines: Sequence[str], n: int = 60) -> str:
    shown = lines[-n:]
    cut = f"[... {len(lines) - n} earlier lines]\n" if len(lines) > n else ""
    return cut + "\n".join(shown)


# ---------------------------------------------------------------- waiting


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.05,
    description: str | None = None,
) -> defer.Deferred[Any]:
    """
    Poll C{predicate} every C{interval} seconds until it returns something
    true, and fire with that value. For things that give no signal to wait on
    (a file line, a closed connection); prefer a real signal where there is one.

    @raise FailTest: (as the Deferred's failure) after C{timeout}
        seconds, naming C{description} and the last value seen.
    """

    async def poll() -> Any:
        deadline = reactor.seconds() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if reactor.seconds() >= deadline:
                raise FailTest(
                    f"timed out after {timeout}s waiting for "
                    f"{description or getattr(predicate, '__name__', predicate)}; last value {value!r}"
                )
            await task.deferLater(reactor, interval, lambda: None)

    return defer.Deferred.fromCoroutine(poll())


# ---------------------------------------------------------------- child processes


class _Child(protocol.ProcessProtocol):
    """
    A child process whose stdout and stderr are collected as lines.

    @ivar lines: every complete line so far, both streams, in arrival order.
    @ivar ended: the L{Failure} from C{processEnded} (C{ProcessDone} or
        C{ProcessTerminated}), or C{None} while it runs.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ended: Failure | None = None
        self._partial: dict[int, bytes] = {}
        self._waiters: list[defer.Deferred[None]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *complete, self._partial[childFD] = (self._partial.get(childFD, b"") + data).split(b"\n")
        for raw in complete:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\r"))
        if complete:
            self._wake()

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self.lines.append(rest.decode("utf-8", "replace").rstrip("\r"))
        self._partial.clear()
        self.ended = reason
        self._wake()

    @property
    def running(self) -> bool:
        return self.ended is None

    def changed(self, timeout: float) -> defer.Deferred[None]:
        """
        Fire when a line arrives or the process ends, or after C{timeout}
        seconds, whichever is first (never fails).
        """
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        d.addTimeout(timeout, reactor)
        d.addErrback(lambda f: f.trap(defer.TimeoutError) and None)
        return d

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            if not d.called:
                d.callback(None)

    async def wait_ended(self, timeout: float) -> bool:
        """
        Wait up to C{timeout} seconds for the process to end; C{True} if it did.
        """
        deadline = reactor.seconds() + timeout
        while self.running and reactor.seconds() < deadline:
            await self.changed(deadline - reactor.seconds())
        return not self.running

    def describe_end(self) -> str:
        return "running" if self.ended is None else str(self.ended.value)


async def _stop_child(child: _Child, transport: Any, what: str) -> None:
    """
    SIGTERM, then SIGKILL after L{STOP_GRACE} seconds, and wait for the end.

    @raise FailTest: if SIGTERM was not enough: a server that ignores
        it is a bug the test should report.
    """
    if not child.running:
        return
    try:
        transport.signalProcess("TERM")
    except ProcessExitedAlready:
        pass
    if await child.wait_ended(STOP_GRACE):
        return
    try:
        transport.signalProcess("KILL")
    except ProcessExitedAlready:
        pass
    await child.wait_ended(STOP_GRACE)
    raise FailTest(
        f"{what} did not exit within {STOP_GRACE}s of SIGTERM and was killed; output:\n"
        + _tail(child.lines)
    )


# ---------------------------------------------------------------- txgate


@attrs.define
class TxgateProcess:
    """
    A running C{twistd -n txgate forward} (or C{txgate reverse}).

    @ivar pid: the twistd process id (for L{rss_peak_kb}).
    @ivar addresses: service name -> (host, port) as its "listening:" line gave.
    @ivar kinds: service name -> kind as its "listening:" line gave.
    @ivar log_lines: everything it printed so far (stdout and stderr), live.
    @ivar access_log_path: the file access records go to, or C{None} when
        the config sends them to the twistd log (C{access_log = "-"}).
    @ivar state_dir: its state directory.
    @ivar directory: its working directory, holding C{forward.toml} and,
        once the test is over, its whole output in C{twistd.out}.
    """

    pid: int
    addresses: dict[str, tuple[str, int]]
    kinds: dict[str, str]
    log_lines: list[str]
    access_log_path: str | None
    state_dir: str
    directory: str
    config_path: str
    _child: _Child = attrs.field(repr=False)
    esp_logs: dict[str, str] = attrs.Factory(dict)
    """Reverse mode: C{[logs]} key (C{"security_log"} ...) -> absolute path."""
    exit_expected: bool = False
    """Set by a test that ends txgate itself (SIGTERM drain): the cleanup then accepts its exit."""

    @property
    def running(self) -> bool:
        return self._child.running

    @property
    def exit_code(self) -> int | None:
        """Its exit status once it ended by itself (C{None} while running or when killed by a signal)."""
        ended = self._child.ended
        return None if ended is None else getattr(ended.value, "exitCode", None)

    def wait_ended(self, timeout: float) -> defer.Deferred[bool]:
        """Fire with C{True} once it has ended, or C{False} after C{timeout} seconds."""
        return defer.Deferred.fromCoroutine(self._child.wait_ended(timeout))

    def output(self, n: int = 60) -> str:
        """The last C{n} lines it printed, for failure messages."""
        return _tail(self.log_lines, n)

    def tracebacks(self) -> list[str]:
        """Lines of its output that start or announce a traceback: each one is a bug."""
        return [line for line in self.log_lines if "Traceback" in line or "Unhandled" in line]


_dns_isolation: bool | None = None


async def _can_isolate_dns(unshare: str, directory: str) -> bool:
    global _dns_isolation
    if _dns_isolation is None:
        probe = os.path.join(directory, "resolv.probe")
        with open(probe, "w") as f:
            f.write("nameserver 127.0.0.1\n")
        _, _, code = await getProcessOutputAndValue(
            unshare, _unshare_args(probe, ["true"])[1:], env=_child_env()
        )
        _dns_isolation = code == 0
    return _dns_isolation


def _unshare_args(resolv_conf: str, argv: Sequence[str]) -> list[str]:
    # A private mount namespace in which /etc/resolv.conf is our file; exec
    # keeps the pid, so the pid we spawn is twistd's own.
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        'mount --bind "$0" /etc/resolv.conf && exec "$@"',
        resolv_conf,
        *argv,
    ]


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def start_txgate(
    testcase: unittest.TestCase,
    config_toml: str,
    args: Sequence[str] = (),
    *,
    isolate_dns: bool = True,
    startup_timeout: float = STARTUP_TIMEOUT,
    prefix: Sequence[str] = (),
    mode: str = "forward",
    extra_services: Sequence[str] = (),
) -> defer.Deferred[TxgateProcess]:
    """
    Start C{twistd -n --pidfile= txgate forward --config FILE [args]} from the
    venv running the tests, in a fresh directory, and fire once every
    C{[[service]]} of the config has logged its "listening:" line.

    @param config_toml: the config text. Each C{{tmp}} in it is replaced by the
        process's directory (its cwd, so relative paths land there too); use
        C{listen = "tcp:0:interface=127.0.0.1"} and read the port from
        L{TxgateProcess.addresses}.
    @param args: more arguments for C{txgate forward}, after C{--config}.
    @param isolate_dns: run it in a private mount namespace whose
        C{/etc/resolv.conf} names 127.0.0.1 (root only; without it, a DNS
        lookup of a made-up name would go to the machine's resolver).
    @param prefix: a command twistd runs under, e.g. C{("ip", "netns",
        "exec", NAME)} to run it in a network namespace
        (L{tests.e2e.netns}); inside the DNS isolation when both are used.
    @param mode: C{"forward"}, or C{"reverse"} for C{txgate reverse}: then it
        waits for each C{[[virtual_service]]} and
        L{TxgateProcess.esp_logs} holds the C{[logs]} files.
    @param extra_services: names of listeners that are not C{[[service]]}
        tables but log a "listening:" line too (C{"admin"}), waited for
        and put in L{TxgateProcess.addresses} the same way.
    @return: fires with a L{TxgateProcess}; fails with the collected output
        if the process exits or does not listen within C{startup_timeout}.
        A cleanup SIGTERMs it (SIGKILL after L{STOP_GRACE}) and fails the
        test if it died on its own during the test.
    """
    return defer.Deferred.fromCoroutine(
        _start_txgate(testcase, config_toml, args, isolate_dns, startup_timeout, prefix, mode, extra_services)
    )


async def _start_txgate(
    testcase: unittest.TestCase,
    config_toml: str,
    args: Sequence[str],
    isolate_dns: bool,
    startup_timeout: float,
    prefix: Sequence[str] = (),
    mode: str = "forward",
    extra_services: Sequence[str] = (),
) -> TxgateProcess:
    if mode not in ("forward", "reverse"):
        raise ValueError(f"mode must be 'forward' or 'reverse', not {mode!r}")
    directory = _new_dir(testcase)
    text = config_toml.replace("{tmp}", directory)
    config = tomllib.loads(text)  # a typo in a test's config fails here, clearly
    if "admin" not in config:
        # The admin console's default port would clash between tests.
        text += '\n[admin]\nlisten = ""\n'
    if not any(str(a).startswith("--workers") for a in args):
        args = [*args, "--workers", "0"]  # one process, unless a test asks for workers
    table = "service" if mode == "forward" else "virtual_service"
    services = {s["name"]: s.get("kind") for s in config.get(table, [])}
    services.update((name, None) for name in extra_services)
    settings = config.get("txgate", {})
    access_log = settings.get("access_log", "var/log/access.log") if mode == "forward" else "-"
    esp_logs = {
        key: os.path.join(directory, path) for key, path in config.get("logs", {}).items() if path
    }
    config_path = os.path.join(directory, f"{mode}.toml")
    with open(config_path, "w") as f:
        f.write(text)

    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        raise FailTest(f"{twistd} not found: run the tests with the venv's python (make test)")
    argv = [*prefix, twistd, "-n", "--pidfile=", "txgate", mode, "--config", config_path, *args]
    if isolate_dns:
        unshare = require_tool("unshare")
        require(
            await _can_isolate_dns(unshare, directory),
            "cannot isolate txgate's DNS (unshare --mount and mount --bind need root)",
        )
        resolv = os.path.join(directory, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("nameserver 127.0.0.1\noptions attempts:1 timeout:1\n")
        argv = [unshare, *_unshare_args(resolv, argv)[1:]]

    child = _Child()
    transport = reactor.spawnProcess(child, argv[0], argv, env=_child_env(), path=directory)
    proc = TxgateProcess(
        pid=transport.pid,
        addresses={},
        kinds={},
        log_lines=child.lines,
        access_log_path=None if access_log == "-" else os.path.join(directory, access_log),
        state_dir=os.path.join(directory, settings.get("state_dir", "var")),
        directory=directory,
        config_path=config_path,
        child=child,
        esp_logs=esp_logs,
    )
    started = False

    async def stop() -> None:
        try:
            if started and not child.running and not proc.exit_expected:
                raise FailTest(
                    f"txgate exited during the test ({child.describe_end()}); output:\n" + proc.output()
                )
            await _stop_child(child, transport, "txgate")
        finally:  # kept in _trial_temp for a post-mortem
            with open(os.path.join(directory, "twistd.out"), "w") as f:
                f.write("\n".join(child.lines) + "\n")

    testcase.addCleanup(stop)

    deadline = reactor.seconds() + startup_timeout
    seen = 0
    while True:
        for line in child.lines[seen:]:
            match = _LISTENING.search(line)
            if match and match["name"] in services:
                proc.addresses[match["name"]] = _parse_address(match["address"])
                proc.kinds[match["name"]] = match["kind"]
        seen = len(child.lines)
        if services.keys() <= proc.addresses.keys():
            started = True
            return proc
        if not child.running:
            raise FailTest(
                f"txgate exited before listening ({child.describe_end()}); output:\n" + proc.output()
            )
        if reactor.seconds() >= deadline:
            missing = sorted(services.keys() - proc.addresses.keys())
            raise FailTest(
                f"txgate did not log 'listening:' for {missing} within {startup_timeout}s; "
                f"output:\n" + proc.output()
            )
        await child.changed(deadline - reactor.seconds())


# ---------------------------------------------------------------- access log

_TEXT_FIELDS = (
    "time session client user service client_protocol tunneled method target status "
    "verdict bytes_in bytes_out duration_ms upstream"
).split()


def read_access_log(proc: TxgateProcess) -> list[str]:
    """The access log's complete lines so far (none while the file is absent)."""
    if proc.access_log_path is None:
        raise ValueError("this txgate logs access records to its twistd log (access_log = '-')")
    try:
        with open(proc.access_log_path, encoding="utf-8") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return data.split("\n")[:-1]  # a last line without its newline is still being written


def read_access_log_json(proc: TxgateProcess) -> list[dict[str, Any]]:
    """The records of a C{access_log_format = "json"} log, one dict per line."""
    return [json.loads(line) for line in read_access_log(proc)]


def parse_access_line(line: str) -> dict[str, Any]:
    """
    One text-format record as a dict shaped like the JSON format's: C{session}
    is the id, C{seq} an int, C{tunneled} a bool, numbers ints, C{-} None.
    """
    parts = line.split(" ", len(_TEXT_FIELDS))
    if len(parts) != len(_TEXT_FIELDS) + 1:
        raise ValueError(f"not an access log line: {line!r}")
    record: dict[str, Any] = {
        name: (None if value == "-" else value) for name, value in zip(_TEXT_FIELDS, parts)
    }
    session, _, seq = parts[1].rpartition(".")
    record["session"], record["seq"] = session, int(seq)
    record["tunneled"] = {"yes": True, "no": False}[parts[_TEXT_FIELDS.index("tunneled")]]
    for name in ("status", "bytes_in", "bytes_out", "duration_ms"):
        if record[name] is not None:
            record[name] = int(record[name])
    reason = parts[-1]
    if not (len(reason) >= 2 and reason[0] == reason[-1] == '"'):
        raise ValueError(f"reason not quoted in access log line: {line!r}")
    reason = re.sub(r"\\(.)", r"\1", reason[1:-1])
    record["reason"] = None if reason == "-" else reason
    return record


def access_records(proc: TxgateProcess) -> list[dict[str, Any]]:
    """Every record so far, parsed (text or JSON, whichever the log holds)."""
    return [
        json.loads(line) if line.startswith("{") else parse_access_line(line)
        for line in read_access_log(proc)
    ]


def wait_for_record(
    proc: TxgateProcess,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 10.0,
    description: str = "an access log record",
) -> defer.Deferred[dict[str, Any]]:
    """
    Fire with the first access record matching C{predicate} once it has been
    written (a transaction is logged when it ends, which may be just after
    the client saw its response). Fails with the log's content on timeout.
    """

    def find() -> dict[str, Any] | None:
        return next((r for r in access_records(proc) if predicate(r)), None)

    def explain(f: Failure) -> Failure:
        f.trap(AssertionError)
        raise FailTest(
            f"{f.value}\naccess log:\n" + "\n".join(read_access_log(proc))
        )

    return wait_for(find, timeout, description=description).addErrback(explain)


# ---------------------------------------------------------------- process figures


def _proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_peak_kb(pid: int) -> int:
    """Peak resident set size (VmHWM) of a live process, in KiB."""
    return _proc_status(pid, "VmHWM")


def rss_kb(pid: int) -> int:
    """Current resident set size (VmRSS) of a live process, in KiB."""
    return _proc_status(pid, "VmRSS")


# ---------------------------------------------------------------- curl


def run_curl(args: Sequence[str], timeout: float = 30.0) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    Run C{curl -q --max-time TIMEOUT ARGS} (no ~/.curlrc, no proxy variables).

    @return: fires with C{(stdout, stderr, exit code)}; a curl killed by a
        signal gives the negative signal number as its code.
    """
    curl = require_tool("curl")
    d = getProcessOutputAndValue(
        curl, ["-q", "--max-time", str(timeout), *args], env=_child_env()
    )

    def signalled(f: Failure) -> tuple[bytes, bytes, int]:
        if isinstance(f.value, tuple) and len(f.value) == 3:
            out, err, sig = f.value
            return out, err, -sig
        return f  # type: ignore[return-value]

    return d.addErrback(signalled)


@attrs.frozen
class CurlResult:
    """
    What one curl transfer gave: its exit code (0 = complete), the HTTP status
    (0 when no response arrived), the body and curl's error text.
    """

    exit_code: int
    status: int
    body: bytes
    stderr: str


def _proxy_url(proxy: tuple[str, int]) -> str:
    host, port = proxy
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch(
    testcase: unittest.TestCase,
    url: str,
    *,
    proxy: tuple[str, int] | None = None,
    extra: Sequence[str] = (),
    timeout: float = 30.0,
) -> defer.Deferred[CurlResult]:
    """
    Fetch C{url} with curl, through the explicit proxy at C{proxy} if given:
    an C{http://} URL as an absolute-URI request, an C{https://} one through
    a CONNECT tunnel. C{extra} goes before the URL (C{--cacert}, C{-d}, ...).
    """
    body_path = os.path.abspath(testcase.mktemp())  # type: ignore[attr-defined]
    args = ["--silent", "--show-error", "--output", body_path, "--write-out", "%{http_code}"]
    if proxy is not None:
        args += ["--proxy", _proxy_url(proxy)]

    return run_curl([*args, *extra, url], timeout).addCallback(curl_result, body_path)


def curl_result(outcome: tuple[bytes, bytes, int], body_path: str) -> CurlResult:
    """
    A L{CurlResult} from curl's (stdout, stderr, exit code), run with
    C{--output body_path --write-out %{http_code}}.
    """
    out, err, code = outcome
    try:
        with open(body_path, "rb") as f:
            body = f.read()
    except FileNotFoundError:
        body = b""
    status = int(out) if out.strip().isdigit() else 0
    return CurlResult(code, status, body, err.decode("utf-8", "replace"))


class BackgroundFetcher:
    """
    A well-behaved client that keeps fetching one URL through the proxy, one
    request after another, while a test does other things; at most
    C{max_requests} requests, so the loop is bounded even if never stopped.

    @ivar results: a L{CurlResult} per completed request.
    """

    def __init__(
        self,
        testcase: unittest.TestCase,
        url: str,
        proxy: tuple[str, int],
        *,
        max_requests: int = 200,
        pause: float = 0.1,
    ) -> None:
        self.results: list[CurlResult] = []
        self.error: Failure | None = None
        self._stopping = False
        self._finished = False

        async def loop() -> None:
            try:
                for _ in range(max_requests):
                    if self._stopping:
                        break
                    self.results.append(await fetch(testcase, url, proxy=proxy, timeout=10))
                    await task.deferLater(reactor, pause, lambda: None)
            except BaseException:
                self.error = Failure()
            finally:
                self._finished = True

        defer.Deferred.fromCoroutine(loop())
        testcase.addCleanup(self.stop)

    def stop(self) -> defer.Deferred[list[CurlResult]]:
        """Stop after the request in flight; fire with all results."""
        self._stopping = True
        d = wait_for(lambda: self._finished, timeout=30, description="the background client to stop")
        return d.addCallback(lambda _: self.results)


# ---------------------------------------------------------------- raw sockets


@attrs.frozen
class RawReply:
    """
    What a raw client received.

    @ivar data: every byte read.
    @ivar closed: whether the peer closed (FIN or RST) before the read timeout.
    @ivar elapsed: seconds from the end of sending to the close (or timeout).
    """

    data: bytes
    closed: bool
    elapsed: float

    @property
    def status(self) -> int | None:
        """The status code of the first HTTP response in C{data}, if any."""
        match = re.match(rb"HTTP/1\.[01] (\d{3})", self.data)
        return int(match.group(1)) if match else None


def send_and_read(sock: socket.socket, data: bytes, read_timeout: float, max_bytes: int) -> RawReply:
    """
    Send C{data} on a connected (plain or TLS) socket, then read until the
    peer closes (or resets), C{read_timeout} passes or C{max_bytes} arrive.
    """
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass  # the server answered and closed before reading it all; read the answer
    start = time.monotonic()
    deadline = start + read_timeout
    received = bytearray()
    closed = False
    while len(received) < max_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (ConnectionResetError, ssl.SSLError, OSError):
            closed = True
            break
        if not chunk:
            closed = True
            break
        received += chunk
    return RawReply(bytes(received), closed, time.monotonic() - start)


def _exchange_raw(address: tuple[str, int], data: bytes, read_timeout: float, max_bytes: int) -> RawReply:
    with socket.create_connection(address, timeout=read_timeout) as sock:
        return send_and_read(sock, data, read_timeout, max_bytes)


def exchange_raw(
    address: tuple[str, int],
    data: bytes,
    *,
    read_timeout: float = 10.0,
    max_bytes: int = 1 << 20,
) -> defer.Deferred[RawReply]:
    """
    In a thread: connect to C{address}, send C{data} as is, then read until
    the peer closes, C{read_timeout} seconds pass or C{max_bytes} arrive.
    For bytes no real client sends (garbage, oversize heads, a stalled head).
    """
    return threads.deferToThread(_exchange_raw, address, data, read_timeout, max_bytes)


def read_http_head(sock: socket.socket, buffered: bytes = b"", limit: int = 65536) -> tuple[bytes, bytes]:
    """
    Blocking: read from C{sock} up to the end of an HTTP head.

    @return: C{(head without the blank line, bytes read after it)}.
    @raise ConnectionError: if the peer closes first or the head exceeds C{limit}.
    """
    data = bytearray(buffered)
    while b"\r\n\r\n" not in data:
        if len(data) > limit:
            raise ConnectionError(f"no end of HTTP head in {limit} bytes: {bytes(data[:200])!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the end of the HTTP head: {bytes(data)!r}")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return head, rest


# ---------------------------------------------------------------- test data


def write_pattern_file(path: str, size: int, seed: bytes = b"txgate-e2e") -> str:
    """
    Write C{size} bytes of deterministic, incompressible, non-repeating data
    (a 1 MiB SHAKE-256 block, each copy stamped with its index so a lost,
    repeated or reordered block changes the hash) and return its SHA-256
    hex digest, computed while writing. Blocking: use C{deferToThread} for
    big files.
    """
    block_size = 1 << 20
    block = hashlib.shake_256(seed).digest(block_size)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for index in range(-(-size // block_size)):
            chunk = (index.to_bytes(8, "big") + block[8:])[: size - index * block_size]
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


@attrs.frozen
class Pki:
    """A test CA and a server certificate it signed (PEM files)."""

    ca_pem_path: str
    cert_path: str
    key_path: str


def make_pki(
    directory: str,
    dns_names: Iterable[str] = ("localhost", "origin.test"),
    ip_addresses: Iterable[str] = (LOOPBACK,),
) -> Pki:
    """
    Generate a CA and a server certificate for C{dns_names} and
    C{ip_addresses} (P-256 keys, valid from yesterday for 30 days) into
    C{directory}. C{cert_path} holds the leaf then the CA.
    """
    from txgate.testing import make_ca, make_server_cert, write_pem

    now = datetime.datetime.now(datetime.timezone.utc)
    validity = {"not_before": now - datetime.timedelta(days=1), "not_after": now + datetime.timedelta(days=30)}
    ca, ca_key = make_ca("txgate e2e test CA", **validity)
    leaf, key = make_server_cert(ca, ca_key, list(dns_names), list(ip_addresses), **validity)
    pki = Pki(
        os.path.join(directory, "ca.pem"),
        os.path.join(directory, "server.pem"),
        os.path.join(directory, "server.key"),
    )
    write_pem(pki.ca_pem_path, ca)
    write_pem(pki.cert_path, leaf, ca)
    write_pem(pki.key_path, key=key)
    return pki


# ---------------------------------------------------------------- nginx


class _Origin:
    """Addresses of an origin listening on C{host}:C{port} with C{scheme}."""

    host: str
    port: int
    scheme: str

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://{self.authority}{path}"


@attrs.define
class NginxOrigin(_Origin):
    """
    A running nginx serving C{docroot} on 127.0.0.1:C{port}.

    @ivar ca_pem_path: with TLS, the CA that signed its certificate (for
        C{curl --cacert}); the certificate names localhost, origin.test and
        127.0.0.1. C{None} without TLS.
    """

    port: int
    docroot: str
    directory: str
    ca_pem_path: str | None
    pid: int
    host: str = LOOPBACK

    @property
    def scheme(self) -> str:
        return "http" if self.ca_pem_path is None else "https"


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid "{tmp}/nginx.pid";
error_log "{tmp}/error.log" info;
events {{ worker_connections 1024; }}
http {{
    access_log "{tmp}/access.log";
    client_body_temp_path "{tmp}/client_body";
    proxy_temp_path "{tmp}/proxy";
    fastcgi_temp_path "{tmp}/fastcgi";
    uwsgi_temp_path "{tmp}/uwsgi";
    scgi_temp_path "{tmp}/scgi";
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 60s;
    keepalive_requests 10000;
    server {{
        listen {host}:{port}{ssl};
        server_name localhost origin.test;
        root "{docroot}";
{tls}
        location / {{ }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _accepts(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def start_nginx(
    testcase: unittest.TestCase,
    *,
    tls: bool = False,
    root_files: Mapping[str, bytes] | None = None,
    docroot: str | None = None,
    pki: Pki | None = None,
) -> defer.Deferred[NginxOrigin]:
    """
    Start nginx (one process, no daemon, every path in a fresh directory) on
    127.0.0.1 and a free port, serving C{docroot} or a new docroot holding
    C{root_files} (relative path -> content). With C{tls}, it speaks HTTPS
    with a certificate from L{make_pki}, or with C{pki}'s certificate and key
    when given (which implies C{tls}; C{ca_pem_path} is then C{pki}'s).
    Fires once it accepts connections; a cleanup stops it.
    """
    return defer.Deferred.fromCoroutine(_start_nginx(testcase, tls or pki is not None, root_files, docroot, pki))


async def _start_nginx(
    testcase: unittest.TestCase,
    tls: bool,
    root_files: Mapping[str, bytes] | None,
    docroot: str | None,
    given_pki: Pki | None = None,
) -> NginxOrigin:
    nginx = require_tool("nginx")
    directory = _new_dir(testcase)
    if docroot is None:
        docroot = os.path.join(directory, "docroot")
        os.makedirs(docroot)
    for relative, content in (root_files or {}).items():
        path = os.path.join(docroot, relative.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    pki = given_pki if given_pki is not None else (make_pki(directory) if tls else None)
    tls_lines = ""
    if pki is not None:
        tls_lines = (
            f'        ssl_certificate "{pki.cert_path}";\n'
            f'        ssl_certificate_key "{pki.key_path}";\n'
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    conf_path = os.path.join(directory, "nginx.conf")
    error_log = os.path.join(directory, "error.log")

    for attempt in range(3):  # a port found free may be taken before nginx binds it
        port = _free_port()
        with open(conf_path, "w") as f:
            f.write(
                _NGINX_CONF.format(
                    tmp=directory, host=LOOPBACK, port=port, ssl=" ssl" if tls else "",
                    docroot=docroot, tls=tls_lines,
                )
            )
        child = _Child()
        argv = [nginx, "-p", directory + "/", "-c", conf_path, "-e", error_log]
        transport = reactor.spawnProcess(child, nginx, argv, env=_child_env(), path=directory)
        origin = NginxOrigin(port, docroot, directory, pki.ca_pem_path if pki else None, transport.pid)
        testcase.addCleanup(_stop_child, child, transport, "nginx")
        ready = await wait_for(
            lambda: (not child.running) or _accepts(origin.address),
            timeout=STARTUP_TIMEOUT,
            description=f"nginx to accept on {origin.authority}",
        )
        if ready and child.running:
            return origin
        with open(error_log, errors="replace") as f:
            errors = f.read()
        if "Address already in use" not in errors:
            break
    raise FailTest(
        f"nginx exited ({child.describe_end()}); output:\n{_tail(child.lines)}\nerror.log:\n{errors}"
    )


# ---------------------------------------------------------------- echo origin


@attrs.frozen
class EchoedRequest:
    """
    A request as the echo origin received it. C{target} is the request
    target as sent; C{path} is its path (an absolute-form target's path).
    C{headers} maps lower-case names to their values in order.
    """

    method: str
    target: str
    path: str
    headers: dict[str, list[str]]
    body: bytes


CHUNKED_PIECES = tuple(b"chunk %03d " % i + b"x" * (97 * i) + b"\n" for i in range(40))
"""What C{/chunked} sends, one piece per chunk, a few milliseconds apart."""

RESET_DECLARED = 100_000
"""The Content-Length C{/reset} announces."""

RESET_SENT = 10_000
"""The body bytes C{/reset} sends before aborting the connection."""


class _EchoResource(resource.Resource):
    isLeaf = True

    def __init__(self, origin: EchoOrigin) -> None:
        super().__init__()
        self._origin = origin

    def render(self, request: server.Request) -> bytes | int:
        target = request.uri.decode("latin-1")
        path = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*", "", target).split("?", 1)[0] or "/"
        headers: dict[str, list[str]] = {}
        for raw_name, values in request.requestHeaders.getAllRawHeaders():
            headers.setdefault(raw_name.decode("latin-1").lower(), []).extend(
                v.decode("latin-1") for v in values
            )
        body = request.content.read() if request.content is not None else b""
        method = request.method.decode("latin-1")
        self._origin.requests.append(EchoedRequest(method, target, path, headers, body))

        if path == "/chunked":
            return self._chunked(request)
        if path == "/reset":
            return self._reset(request)
        if method in ("POST", "PUT"):
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"x-echo-method", request.method)
            return body
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"method": method, "path": path, "headers": headers}).encode()

    def _chunked(self, request: server.Request) -> int:
        request.setHeader(b"content-type", b"text/plain")
        pieces = iter(CHUNKED_PIECES)

        def next_piece() -> None:
            piece = next(pieces, None)
            if piece is None:
                request.finish()
            else:
                request.write(piece)
                self._origin.call_later(0.003, next_piece)

        next_piece()
        return server.NOT_DONE_YET

    def _reset(self, request: server.Request) -> int:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"content-length", b"%d" % RESET_DECLARED)
        request.write(b"r" * RESET_SENT)
        # Give the bytes time to leave, then send an RST mid-body.
        self._origin.call_later(0.2, request.channel.transport.abortConnection)
        return server.NOT_DONE_YET


class _TrackedChannel(http.HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)

    def connectionLost(self, reason: Failure) -> None:
        self.factory.connections.discard(self)
        super().connectionLost(reason)


class _EchoSite(server.Site):
    protocol = _TrackedChannel  # HTTP/1.1 only, and we see every connection

    def __init__(self, resource: resource.Resource) -> None:
        super().__init__(resource)
        self.connections: set[_TrackedChannel] = set()

    def log(self, request: server.Request) -> None:
        pass  # EchoOrigin.requests is the record


@attrs.define
class EchoOrigin(_Origin):
    """
    An HTTP/1.1 origin in the test's own reactor, on 127.0.0.1:C{port}:

     - C{POST}/C{PUT} any path: the response body is the request body.
     - other methods: JSON C{{"method", "path", "headers"}}.
     - C{/chunked}: L{CHUNKED_PIECES} as a chunked, streamed response.
     - C{/reset}: C{Content-Length: }L{RESET_DECLARED}, L{RESET_SENT}
       bytes, then the connection is aborted (RST).

    @ivar requests: every L{EchoedRequest} received, in order.
    """

    port: int = 0
    host: str = LOOPBACK
    requests: list[EchoedRequest] = attrs.Factory(list)
    _calls: list[Any] = attrs.field(factory=list, repr=False)

    chunked_body = b"".join(CHUNKED_PIECES)
    scheme = "http"

    def call_later(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(reactor.callLater(delay, f, *args))


def start_echo_origin(testcase: unittest.TestCase) -> defer.Deferred[EchoOrigin]:
    """
    Start an L{EchoOrigin}. A cleanup stops listening, aborts its open
    connections (a proxy's keep-alive pool holds some) and cancels its
    timers, so trial finds a clean reactor.
    """
    origin = EchoOrigin()
    site = _EchoSite(_EchoResource(origin))
    port = reactor.listenTCP(0, site, interface=LOOPBACK)
    origin.port = port.getHost().port

    async def stop() -> None:
        for call in origin._calls:
            if call.active():
                call.cancel()
        await port.stopListening()
        for channel in list(site.connections):
            channel.transport.abortConnection()
        await wait_for(
            lambda: not site.connections, timeout=5, description="echo origin connections to close"
        )

    testcase.addCleanup(stop)
    return defer.succeed(origin)
