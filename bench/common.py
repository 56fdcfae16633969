"""
What the benchmark scripts share: starting and stopping the processes a run
needs, waiting for them to listen, reading their CPU time and memory from
/proc, the HTTP head reader the clients use, and the certificates a run makes.

Scripts in bench/ run as C{python bench/NAME.py}, which puts bench/ first on
C{sys.path}, so each imports this as C{common}. Nothing here imports a
reactor; every wait has a deadline.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

from txgate.testing import make_ca, make_server_cert, write_pem

__all__ = [
    "BenchError", "Children", "CpuCaps", "HERE", "LOOPBACK", "RESULTS", "SBIN_PATH", "accepts", "child_env", "cpu_ms",
    "free_port", "make_ca", "make_server_cert", "process_tree", "recv_head", "rss_kb", "raise_nofile",
    "start_server", "tail", "tool_version", "validity", "wait_listening", "which", "write_pem",
]

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 20.0  # seconds a server gets to listen
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"])
MAX_HEAD = 65536  # bytes of a response head a client reads before giving up
IO_TIMEOUT = 10.0  # seconds any one client socket operation may take

NGINX_TEMP_PATHS = """\
    client_body_temp_path "{dir}/client_body";
    proxy_temp_path "{dir}/proxy";
    fastcgi_temp_path "{dir}/fastcgi";
    uwsgi_temp_path "{dir}/uwsgi";
    scgi_temp_path "{dir}/scgi";
"""
"""Every nginx the benches start keeps its temporary files in its own directory C{dir}."""


class BenchError(Exception):
    """A candidate (or the setup) cannot run; the message says why and what was seen."""


# ---------------------------------------------------------------- certificates


def validity(days: int = 30) -> tuple[datetime.datetime, datetime.datetime]:
    """C{(not_before, not_after)}: from a day ago to C{days} ahead."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)


# ---------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """Our environment without proxy variables (curl and Python honour them), output unbuffered."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
    env = {k: v for k, v in os.environ.items() if k.lower() not in proxies}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it) as far as allowed: the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))  # root may raise the hard limit
            return wanted
        except (ValueError, OSError):
            wanted = hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return max(soft, wanted)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text[-lines:])


def which(command: str, hint: str) -> str:
    found = shutil.which(command, path=SBIN_PATH)
    if found is None:
        raise BenchError(f"{command} not found; {hint}")
    return found


def tool_version(argv: list[str]) -> str:
    """The first line C{argv} prints (stdout or stderr), or why there is none."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({e})"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def process_tree(pid: int) -> list[int]:
    """C{pid} and its descendants, from /proc (a forking server or a worker pool counts whole)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def machine_busy_ms() -> float:
    """CPU time the whole machine spent busy (every state but idle and iowait in /proc/stat), in milliseconds."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) * 1000 / CLK_TCK


class CpuCaps:
    """
    Holds processes to C{share} of a core each, every one in a cgroup of its
    own (cgroup v1's C{cpu} controller, else v2's C{cpu.max}): on a machine
    of two cores, this leaves the load generator the rest, as a machine with
    more cores would. Needs root; L{unavailable} says why not otherwise.

    The quota is the kernel's least, 1 ms, in a period of 1 ms / C{share}: a
    capped process waits at most a few milliseconds for its next share. (A
    10 ms period held one worker for 6.5 ms at a time, long enough to cost it
    a quarter more CPU per request once four clients waited on it.)
    """

    QUOTA_US = 1000

    V1 = "/sys/fs/cgroup/cpu"
    V2 = "/sys/fs/cgroup"

    def __init__(self, share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"a share of a core is in (0, 1], not {share}")
        self.share = share
        self.period_us = round(self.QUOTA_US / share)
        self.groups: list[str] = []

    @classmethod
    def _hierarchy(cls) -> tuple[str, bool] | None:
        """Where to make the cgroups, and whether that is cgroup v1."""
        if os.path.exists(os.path.join(cls.V1, "cpu.cfs_quota_us")):
            return cls.V1, True
        try:
            with open(os.path.join(cls.V2, "cgroup.controllers")) as f:
                if "cpu" in f.read().split():
                    return cls.V2, False
        except OSError:
            pass
        return None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why processes cannot be capped here, or C{None}."""
        if os.geteuid() != 0:
            return "capping CPU takes root (cgroups)"
        if cls._hierarchy() is None:
            return f"no cgroup cpu controller ({cls.V1} or cpu.max under {cls.V2})"
        return None

    def cap(self, pid: int) -> None:
        """Move C{pid} into a new cgroup capped at L{share} of a core."""
        hierarchy = self._hierarchy()
        if hierarchy is None:
            raise BenchError(self.unavailable() or "no cgroup cpu controller")
        root, v1 = hierarchy
        if not v1:
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write("+cpu")
        group = os.path.join(root, f"txgate-bench-{os.getpid()}-{len(self.groups)}")
        os.mkdir(group)
        self.groups.append(group)
        if v1:
            for name, value in (("cpu.cfs_period_us", self.period_us), ("cpu.cfs_quota_us", self.QUOTA_US)):
                with open(os.path.join(group, name), "w") as f:
                    f.write(str(value))
        else:
            with open(os.path.join(group, "cpu.max"), "w") as f:
                f.write(f"{self.QUOTA_US} {self.period_us}")
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def release(self) -> None:
        """Remove the cgroups, once their processes have exited."""
        for group in self.groups:
            deadline = time.monotonic() + STOP_GRACE
            while True:
                try:
                    os.rmdir(group)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        print(f"bench: could not remove {group}", file=sys.stderr)
                        break
                    time.sleep(0.1)
        self.groups = []


def cpu_ms(pid: int) -> float:
    """
    utime + stime of C{pid} and its live descendants, plus what their reaped
    children used (cutime + cstime), in milliseconds (/proc/<pid>/stat
    fields 14-17): a helper that forks C{openssl} per certificate is counted.
    """
    total = 0
    for each in process_tree(pid):
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total * 1000 / CLK_TCK


def rss_kb(pid: int) -> int:
    """Resident memory of C{pid} and its descendants in KiB (/proc/<pid>/statm, resident pages)."""
    total = 0
    for each in process_tree(pid):
        try:
            with open(f"/proc/{each}/statm") as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
    return total


class Children:
    """The processes this run started; L{stop} and L{stop_all} end each by its pid."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, what: str, argv: list[str], cwd: str, log: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=cwd, env=env or child_env(), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((what, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], signalled: bool = False) -> None:
        # One SIGTERM only: twistd answers a second one with a ReactorNotRunning traceback.
        if not signalled and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            self.stop(proc, signalled=True)
        self.procs = []


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: str, what: str,
                   marker: str | None = None, timeout: float = STARTUP_TIMEOUT,
                   ready: Callable[[], bool] | None = None) -> None:
    """
    Until C{port} accepts (and, with C{marker}, C{log} has a line containing
    it; with C{ready}, it returns true); L{BenchError} if C{proc} exits or
    C{timeout} passes.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening:\n{tail(log)}")
        seen = marker is None
        if not seen:
            with open(log, errors="replace") as f:
                seen = any(marker in line for line in f)
        if seen and accepts(port) and (ready is None or ready()):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on {LOOPBACK}:{port} within {timeout}s:\n{tail(log)}")


def start_server(children: Children, tmp: str, what: str, argv_for: Callable[[str], list[str]],
                 write_conf: Callable[[int], str], marker: str | None = None, timeout: float = STARTUP_TIMEOUT,
                 env: dict[str, str] | None = None,
                 ready: Callable[[], bool] | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """
    Write a config for a fresh port and start C{what}, retrying on another
    port when the one found free was taken before the server bound it.
    """
    log = os.path.join(tmp, f"{what}.out")
    errors = ""
    for _ in range(3):
        port = free_port()
        conf = write_conf(port)
        proc = children.start(what, argv_for(conf), tmp, log, env)
        try:
            wait_listening(proc, port, log, what, marker, timeout, ready)
            return proc, port
        except BenchError as e:
            errors = str(e)
            children.stop(proc)
            if "in use" not in errors:
                break
    raise BenchError(errors)


# ---------------------------------------------------------------- clients


def clean_up(children: Any, tmp: str, keep: bool) -> None:
    """Stop every child, then remove the run's directory (or say where it was kept)."""
    children.stop_all()
    if keep:
        print(f"kept {tmp}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, Any], name: str, as_json: bool, print_table: Any) -> str:
    """
    Write C{results} to C{bench/results/NAME.json}, then print them (the
    table, or the JSON with C{as_json}); return the file's path.
    """
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    if as_json:
        print(json.dumps(results))
    else:
        print_table(results)
        print(f"\nwrote {os.path.relpath(path)}")
    return path


def recv_head(sock: Any) -> tuple[bytes, bytes]:
    """Read up to the end of an HTTP head: C{(head, bytes after it)}."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(16384)
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} bytes of a response head: {data[:200]!r}")
        data += chunk
        if len(data) > MAX_HEAD:
            raise ConnectionError("response head over 64 KiB")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def connect(port: int, via_proxy: int | None = None, host: str = LOOPBACK) -> socket.socket:
    """
    A new loopback connection to C{port} (TCP_NODELAY), or, with
    C{via_proxy}, a tunnel through that proxy's C{CONNECT host:port},
    checked to answer 200 and nothing more.
    """
    raw = socket.create_connection((LOOPBACK, via_proxy or port), timeout=IO_TIMEOUT)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if via_proxy:
            authority = f"{host}:{port}"
            raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head, rest = recv_head(raw)
            status = head.split(b"\r\n", 1)[0]
            if status.split(b" ")[1:2] != [b"200"]:
                raise ConnectionError(f"CONNECT answered {status!r}")
            if rest:
                raise ConnectionError(f"bytes after the CONNECT answer: {rest[:80]!r}")
    except BaseException:
        raw.close()
        raise
    return raw


class Tally:
    """
    One client process's request loop: each call timed, each failure
    counted, the first five different messages kept.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.errors: list[str] = []
        self.error_count = 0
        self.cpu_began = time.process_time()

    def start(self) -> None:
        """The loop begins: this process's CPU time counts from here."""
        self.cpu_began = time.process_time()

    def time(self, call: Callable[[], Any]) -> None:
        began = time.perf_counter()
        try:
            call()
        except Exception as e:
            self.error_count += 1
            message = f"{type(e).__name__}: {e}"
            if message not in self.errors and len(self.errors) < 5:
                self.errors.append(message)
            return
        self.times.append(time.perf_counter() - began)

    def result(self, **more: Any) -> dict[str, Any]:
        """What the parent process gathers from each client."""
        return {"count": len(self.times), "ended": time.monotonic(), "times": self.times, "errors": self.errors,
                "error_count": self.error_count, "cpu_seconds": time.process_time() - self.cpu_began, **more}


def read_response(sock: Any) -> tuple[int, bytes]:
    """
    The status and body of the HTTP/1.1 response on C{sock}: the body up to
    its Content-Length, or until the server closes.

    @raise ConnectionError: the status line is not one.
    """
    head, body = recv_head(sock)
    status_line = head.split(b"\r\n", 1)[0]
    try:
        status = int(status_line.split(b" ")[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"bad status line {status_line!r}") from None
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while length is None or len(body) < length:
        chunk = sock.recv(16384)
        if not chunk:
            break
        body += chunk
    return status, body


def venv_twistd() -> str:
    """The twistd beside the running interpreter (the project's .venv)."""
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if not os.access(twistd, os.X_OK):
        raise BenchError(f"{twistd} not found: run this with the venv's python (make bench)")
    return twistd
