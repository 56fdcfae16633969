"""
Tests for L{txgate.net.healthcheck}: real checks over loopback sockets
(plain HTTP, HTTPS with a test CA, a closed port, a server that never
answers), with transitions after exactly C{fall} and C{rise} checks.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from txgate.net.healthcheck import USER_AGENT, HealthChecker
from txgate.reverse.balancing import RealServer
from txgate.reverse.health import HealthTracker
from txgate.testing import make_ca, make_server_cert

INTERVAL = 0.05
WAIT = 5.0  # bound on any single wait in these tests


class _Scripted(Resource):
    """Answers with the next status of a script (the last one repeats), recording requests."""

    isLeaf = True

    def __init__(self, statuses: list[int]) -> None:
        super().__init__()
        self.statuses = list(statuses)
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.requests.append(
            (request.uri, request.getHeader("host"), request.getHeader("user-agent"), request.getHeader("connection"))
        )
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        request.setResponseCode(status)
        return b"ok\n" if status == 200 else b"broken\n"


class _Silent(Protocol):
    """Accepts and never answers."""

    def connectionMade(self) -> None:
        self.factory.opened.append(reactor.seconds())


class _CountingTracker(HealthTracker):
    """A tracker that also records each result it is given."""

    def record(self, ok: bool) -> bool | None:
        self.results.append(ok)  # type: ignore[attr-defined]
        return super().record(ok)


def _tracker(rise: int, fall: int) -> _CountingTracker:
    tracker = _CountingTracker(rise=rise, fall=fall)
    tracker.results = []  # type: ignore[attr-defined]
    return tracker


class _Changes:
    """Collects C{on_change} calls; a test waits for the Nth."""

    def __init__(self, tracker: _CountingTracker) -> None:
        self.tracker = tracker
        self.changes: list[tuple[bool, str, int]] = []
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def __call__(self, server: RealServer, up: bool, text: str) -> None:
        self.changes.append((up, text, len(self.tracker.results)))  # type: ignore[attr-defined]
        for count, d in list(self._waiting):
            if len(self.changes) >= count:
                self._waiting.remove((count, d))
                d.callback(None)

    def wait(self, count: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if len(self.changes) >= count:
            d.callback(None)
        else:
            self._waiting.append((count, d))
        return d.addTimeout(WAIT, reactor)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class HealthCheckerTests(TestCase):
    """
    L{HealthChecker} checks a real server over the network and changes its
    state after C{fall} failures or C{rise} successes.
    """

    timeout = 30

    def listen(self, factory: Any, tls: Any = None) -> int:
        wrapper = WrappingFactory(factory)
        if tls is None:
            port = reactor.listenTCP(0, wrapper, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, wrapper, tls, interface="127.0.0.1")
        self.addCleanup(self._drain, wrapper)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @inlineCallbacks
    def _drain(self, wrapper: WrappingFactory):
        """Wait (bounded) until the server side of every connection is closed."""
        deadline = reactor.seconds() + WAIT
        while wrapper.protocols and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        for protocol in list(wrapper.protocols):
            protocol.transport.abortConnection()
        yield deferLater(reactor, 0, lambda: None)

    def checker(self, port: int, tracker: _CountingTracker, *, tls: Any = None, timeout: float = 2.0,
                expect: int = 200) -> tuple[HealthChecker, RealServer, _Changes]:
        server = RealServer(f"127.0.0.1:{port}")
        changes = _Changes(tracker)
        checker = HealthChecker(
            reactor, server, "127.0.0.1", port, tls, "/healthcheck.html", "lyncweb.example.com",
            INTERVAL, timeout, tracker, expect, changes,
        )
        self.addCleanup(checker.stop)
        return checker, server, changes

    @inlineCallbacks
    def test_fall_and_rise(self):
        """
        Up to Down after exactly C{fall} failed checks, back Up after exactly
        C{rise} good ones; the request is a plain GET with our headers.
        """
        resource = _Scripted([200, 500, 500, 500, 200, 200])
        port = self.listen(Site(resource))
        tracker = _tracker(rise=2, fall=3)
        checker, server, changes = self.checker(port, tracker)
        checker.start()
        yield changes.wait(2)
        yield checker.stop()
        self.assertEqual(
            changes.changes,
            [(False, "HTTP 500, expected 200", 4), (True, "HTTP 200", 6)],
        )
        self.assertTrue(server.up)
        self.assertEqual(server.last_health, "HTTP 200")
        self.assertEqual(tracker.results[:6], [True, False, False, False, True, True])  # type: ignore[attr-defined]
        self.assertEqual(
            resource.requests[0], (b"/healthcheck.html", "lyncweb.example.com", USER_AGENT, "close")
        )

    @inlineCallbacks
    def test_interval(self):
        """
        Checks come about every C{interval}, one at a time, and stop when
        stopped.
        """
        resource = _Scripted([200])
        port = self.listen(Site(resource))
        tracker = _tracker(rise=1, fall=1)
        checker, server, changes = self.checker(port, tracker)
        checker.start()
        checker.start()  # a second start does nothing
        yield deferLater(reactor, INTERVAL * 6, lambda: None)
        yield checker.stop()
        count = len(resource.requests)
        self.assertTrue(3 <= count <= 8, count)
        self.assertEqual(changes.changes, [])
        self.assertEqual(server.last_health, "HTTP 200")
        yield deferLater(reactor, INTERVAL * 3, lambda: None)
        self.assertEqual(len(resource.requests), count)
        checker.stop()  # idempotent

    @inlineCallbacks
    def test_connection_refused(self):
        """
        A closed port fails each check; the server goes Down after C{fall}.
        """
        tracker = _tracker(rise=1, fall=2)
        checker, server, changes = self.checker(_closed_port(), tracker)
        checker.start()
        yield changes.wait(1)
        yield checker.stop()
        self.assertEqual(changes.changes, [(False, "connection refused", 2)])
        self.assertFalse(server.up)
        self.assertEqual(server.last_health, "connection refused")

    @inlineCallbacks
    def test_never_answers(self):
        """
        A server that accepts and never answers fails by the check timeout;
        checks do not overlap (each connection opens after the previous
        one's timeout).
        """
        factory = Factory.forProtocol(_Silent)
        factory.opened = []  # type: ignore[attr-defined]
        port = self.listen(factory)
        tracker = _tracker(rise=1, fall=2)
        checker, server, changes = self.checker(port, tracker, timeout=0.2)
        checker.start()
        yield changes.wait(1)
        yield checker.stop()
        self.assertEqual(changes.changes, [(False, "timed out after 0.2 s", 2)])
        opened = factory.opened  # type: ignore[attr-defined]
        self.assertGreaterEqual(len(opened), 2)
        for earlier, later in zip(opened, opened[1:]):
            self.assertGreater(later - earlier, 0.15)

    @inlineCallbacks
    def test_stop_in_flight(self):
        """
        Stopping during a check cancels it: its result is not counted and
        the connection is closed.
        """
        factory = Factory.forProtocol(_Silent)
        factory.opened = []  # type: ignore[attr-defined]
        port = self.listen(factory)
        tracker = _tracker(rise=1, fall=1)
        checker, server, changes = self.checker(port, tracker, timeout=1.0)
        checker.start()
        deadline = reactor.seconds() + WAIT
        while not factory.opened and reactor.seconds() < deadline:  # type: ignore[attr-defined]
            yield deferLater(reactor, 0.01, lambda: None)
        yield checker.stop()
        yield deferLater(reactor, 1.2, lambda: None)
        self.assertEqual(tracker.results, [])  # type: ignore[attr-defined]
        self.assertTrue(server.up)

    def _tls_server(self, ca: Any, ca_key: Any) -> CertificateOptions:
        now = datetime.datetime.now(datetime.timezone.utc)
        cert, key = make_server_cert(
            ca, ca_key, ["fe1.corp.example.com"], ["127.0.0.1"],
            not_before=now - datetime.timedelta(hours=1), not_after=now + datetime.timedelta(days=1),
        )
        return CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(key),
            certificate=crypto.X509.from_cryptography(cert),
            acceptableProtocols=[b"http/1.1"],
        )

    def _ca(self) -> tuple[Any, Any]:
        now = datetime.datetime.now(datetime.timezone.utc)
        return make_ca("health test CA", now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1))

    @inlineCallbacks
    def test_tls(self):
        """
        Over TLS verified against the internal CA, a healthy server stays Up
        and a broken one goes Down after C{fall} checks.
        """
        ca, ca_key = self._ca()
        resource = _Scripted([200, 200, 503])
        port = self.listen(Site(resource), tls=self._tls_server(ca, ca_key))
        trust = Certificate.loadPEM(ca.public_bytes(serialization.Encoding.PEM))
        tls = optionsForClientTLS("fe1.corp.example.com", trustRoot=trust)
        tracker = _tracker(rise=1, fall=2)
        checker, server, changes = self.checker(port, tracker, tls=tls)
        checker.start()
        yield changes.wait(1)
        yield checker.stop()
        self.assertEqual(changes.changes, [(False, "HTTP 503, expected 200", 4)])
        self.assertEqual(tracker.results[:4], [True, True, False, False])  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_tls_untrusted(self):
        """
        A server whose certificate the configured CA did not sign fails the
        check with a TLS error.
        """
        ca, ca_key = self._ca()
        other_ca, _ = self._ca()
        resource = _Scripted([200])
        port = self.listen(Site(resource), tls=self._tls_server(ca, ca_key))
        trust = Certificate.loadPEM(other_ca.public_bytes(serialization.Encoding.PEM))
        tls = optionsForClientTLS("fe1.corp.example.com", trustRoot=trust)
        tracker = _tracker(rise=1, fall=1)
        checker, server, changes = self.checker(port, tracker, tls=tls)
        checker.start()
        yield changes.wait(1)
        yield checker.stop()
        [(up, text, count)] = changes.changes
        self.assertFalse(up)
        self.assertEqual(count, 1)
        self.assertTrue(text.startswith("TLS handshake failed: "), text)
        self.assertIn("certificate verify failed", text)
        self.assertEqual(resource.requests, [])

    def test_bad_request(self):
        """
        A path h11 cannot send is refused at construction, not in the reactor.
        """
        self.assertRaises(
            ValueError, HealthChecker, reactor, RealServer("a:1"), "127.0.0.1", 1, None, "/a b", "h",
            1.0, 1.0, HealthTracker(rise=1, fall=1), 200, lambda *a: None,
        )
