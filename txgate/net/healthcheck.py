# -*- test-case-name: tests.net.test_healthcheck -*-
"""
HTTP health checks of real servers: one C{GET} every C{interval} seconds,
the verdict fed to a L{txgate.reverse.health.HealthTracker}, and the
server's state changed when the tracker says so.
"""

from __future__ import annotations

from typing import Any, Callable

import h11
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate.reverse.balancing import RealServer
from txgate.reverse.health import HealthTracker, judge

__all__ = ["HealthChecker", "USER_AGENT", "describe_check_failure"]

USER_AGENT = "txgate-health-check"

MAX_RESPONSE_HEAD = 16 * 1024
"""Bytes of response head read at most; a check only needs the status line."""


def _tls_reason(value: SSL.Error) -> str:
    reasons = []
    for item in value.args[0] if value.args and isinstance(value.args[0], list) else ():
        if isinstance(item, tuple) and item:
            reasons.append(str(item[-1]))
    return ", ".join(reasons) or str(value) or "handshake failed"


def describe_check_failure(failure: Failure) -> str:
    """A short text for why a check got no response: connect errors, TLS, closed early."""
    value = failure.value
    if failure.check(error.ConnectionRefusedError):
        return "connection refused"
    if failure.check(error.DNSLookupError):
        return "DNS lookup failed"
    if failure.check(error.NoRouteError):
        return "no route to host"
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return "connect timed out"
    if failure.check(SSL.Error):
        return f"TLS handshake failed: {_tls_reason(value)}"
    if failure.check(error.ConnectionDone, error.ConnectionLost):
        return "connection closed before a response"
    detail = str(value).strip() or type(value).__name__
    return f"check failed: {detail}"


class _CheckProtocol(Protocol):
    """Sends the check request and reads the response's status line with h11."""

    def __init__(self, check: _Check) -> None:
        self._check = check
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)

    def connectionMade(self) -> None:
        self._check.protocol = self
        if self._check.finished:  # stopped or timed out while connecting
            self.transport.abortConnection()
            return
        self.transport.write(self._h11.send(self._check.request) + self._h11.send(h11.EndOfMessage()))

    def dataReceived(self, data: bytes) -> None:
        if self._check.finished:
            return
        self._h11.receive_data(data)
        self._read_events()

    def _read_events(self) -> None:
        try:
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Response):
                    self._check.finish(event.status_code, None)
                    return
                if isinstance(event, h11.ConnectionClosed):
                    self._check.finish(None, "connection closed before a response")
                    return
                # h11.InformationalResponse (1xx): the real answer follows.
        except h11.RemoteProtocolError as e:
            self._check.finish(None, f"invalid HTTP response: {e}")

    lost = False

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = True
        try:
            if not self._check.finished:
                self._lost(reason)
        finally:
            self._check._closed()

    def _lost(self, reason: Failure | None) -> None:
        if reason is not None and reason.check(SSL.Error):
            self._check.finish(None, describe_check_failure(reason))
            return
        try:
            self._h11.receive_data(b"")
        except h11.RemoteProtocolError:
            pass
        else:
            self._read_events()
        if not self._check.finished:
            self._check.finish(None, describe_check_failure(reason) if reason is not None
                               else "connection closed before a response")


class _CheckFactory(Factory):
    noisy = False  # a line per check would drown the log

    def __init__(self, check: _Check) -> None:
        self._check = check

    def buildProtocol(self, addr: Any) -> _CheckProtocol:
        return _CheckProtocol(self._check)


class _Check:
    """
    One health check in flight: it ends exactly once, by a response, a
    failure, its timeout, or L{HealthChecker.stop}.
    """

    def __init__(self, checker: HealthChecker) -> None:
        self.checker = checker
        self.request = checker._request
        self.finished = False
        self.protocol: _CheckProtocol | None = None
        self.connecting: Deferred[Any] | None = None
        self.closed: Deferred[None] = Deferred()
        self.timer: Any = None

    def start(self) -> None:
        checker = self.checker
        self.timer = checker.reactor.callLater(checker.timeout, self._timed_out)
        endpoint: Any = HostnameEndpoint(checker.reactor, checker.host, checker.port, timeout=checker.timeout)
        if checker.tls is not None:
            endpoint = wrapClientTLS(checker.tls, endpoint)
        self.connecting = endpoint.connect(_CheckFactory(self))
        self.connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, protocol: Any) -> None:
        self.connecting = None

    def _connect_failed(self, failure: Failure) -> None:
        self.connecting = None
        if not self.finished:
            self.finish(None, describe_check_failure(failure))
        self._closed()  # no connection was made

    def _timed_out(self) -> None:
        self.timer = None
        self.finish(None, f"timed out after {self.checker.timeout:g} s")

    def finish(self, status: int | None, error_text: str | None, *, report: bool = True) -> None:
        """End the check (once); close what it opened; tell the checker unless stopping."""
        if self.finished:
            return
        self.finished = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.connecting is not None:
            self.connecting.cancel()  # fires _connect_failed, which closes
        elif self.protocol is not None and not self.protocol.lost:
            transport = self.protocol.transport
            if status is not None:
                transport.loseConnection()
            else:
                transport.abortConnection()
        if report:
            self.checker._check_done(status, error_text)

    def _closed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)


class HealthChecker:
    """
    Checks one real server over HTTP (or HTTPS) every C{interval} seconds.

    Checks never overlap: the next one is scheduled when the current one
    ends, C{interval} after it started (at once if it took longer). Each
    check, connection included, is bounded by C{timeout}.

    @ivar server: the real server whose C{up} and C{last_health} this sets.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        server: RealServer,
        host: str,
        port: int,
        tls: IOpenSSLClientConnectionCreator | None,
        path: str,
        host_header: str,
        interval: float,
        timeout: float,
        tracker: HealthTracker,
        expect: int,
        on_change: Callable[[RealServer, bool, str], None],
    ) -> None:
        self.reactor = reactor
        self.server = server
        self.host = host
        self.port = port
        self.tls = tls
        self.path = path
        self.host_header = host_header
        self.interval = interval
        self.timeout = timeout
        self.tracker = tracker
        self.expect = expect
        self.on_change = on_change
        # Built once, so a bad path or Host is a ValueError here, at
        # configuration time, not an exception in the reactor later.
        try:
            self._request = h11.Request(
                method="GET",
                target=path,
                headers=[("Host", host_header), ("User-Agent", USER_AGENT), ("Connection", "close")],
            )
        except (h11.LocalProtocolError, UnicodeError) as e:
            raise ValueError(f"health check request for {server.key} is invalid: {e}") from None
        self._running = False
        self._next: Any = None
        self._current: _Check | None = None
        self._started_at = 0.0

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> None:
        """Check at once, then every C{interval} seconds until L{stop}."""
        if self._running:
            return
        self._running = True
        self._run()

    def stop(self) -> Deferred[None]:
        """
        Cancel the timer and any check in flight (its result is not counted).
        Idempotent.

        @return: a L{Deferred} firing once the in-flight check's connection
            is closed (at once when there was none), for a clean shutdown.
        """
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        check, self._current = self._current, None
        if check is None:
            return succeed(None)
        check.finish(None, None, report=False)
        if check.protocol is None and check.connecting is None:
            check._closed()
        return check.closed

    def _run(self) -> None:
        self._next = None
        if not self._running or self._current is not None:
            return
        self._started_at = self.reactor.seconds()
        check = self._current = _Check(self)
        try:
            check.start()
        except Exception:
            self._log.failure("health check of {server} could not start", server=self.server.key)
            check.finish(None, "check could not start")

    def _check_done(self, status: int | None, error_text: str | None) -> None:
        self._current = None
        try:
            ok, text = judge(status, error_text, self.expect)
            server = self.server
            server.last_health = text
            change = self.tracker.record(ok)
            if change is not None:
                server.up = change
                self.on_change(server, change, text)
        except Exception:
            self._log.failure("health check result of {server} could not be handled", server=self.server.key)
        if self._running:
            elapsed = self.reactor.seconds() - self._started_at
            self._next = self.reactor.callLater(max(0.0, self.interval - elapsed), self._run)
