"""
Integration tests for L{txgate.net.reverse}: a virtual service behind real
TLS on loopback, in front of real servers behind TLS under a test CA, driven
by a raw TLS client (the C{ssl} module, in a thread) that writes exact bytes,
so the framing a user's client sends is the framing txgate sees.

Every wait is bounded by L{WAIT}; every listener and connection is closed in
cleanup, and the test waits until the reactor has let go of each one.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import socket
import ssl
import struct
import time
from typing import Any, Callable

import attrs
import h11
from OpenSSL import crypto
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.haproxy._v2parser import V2Parser
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from cryptography.hazmat.primitives import serialization

from txgate.config import HealthCheckConfig, PersistenceConfig, RealServerConfig, VirtualServiceConfig
from txgate.net.upstream import IdlePool
from txgate.net.reverse import EspLogs, ReverseProxyFactory, VirtualService
from txgate.net.sni import load_server_tls
from txgate.net.upstream import Upstream
from txgate.reverse.persistence import CookieSigner
from txgate.testing import make_ca, make_server_cert, write_pem

WAIT = 5.0
"""Bound, in seconds, on any single wait in these tests."""

PUBLIC = "lync.example.com"
INTERNAL = "fe.internal.test"
_NOW = datetime.datetime.now(datetime.timezone.utc)


# -- PKI --------------------------------------------------------------------------


@attrs.frozen
class _Pki:
    ca: Any
    ca_key: Any
    front: Any
    front_key: Any
    back: Any
    back_key: Any


_PKI: list[_Pki] = []


def _pki() -> _Pki:
    """One test CA and two leaves for the whole module: keys are cheap, but not free."""
    if not _PKI:
        start, end = _NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=30)
        ca, ca_key = make_ca("txgate reverse test CA", start, end)
        front, front_key = make_server_cert(ca, ca_key, [PUBLIC, "*.example.com"], not_before=start, not_after=end)
        back, back_key = make_server_cert(ca, ca_key, [INTERNAL], ["127.0.0.1"], not_before=start, not_after=end)
        _PKI.append(_Pki(ca, ca_key, front, front_key, back, back_key))
    return _PKI[0]


def _write_key_and_chain(path: str, key: Any, *certs: Any) -> None:
    pem = serialization.Encoding.PEM
    data = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    data += b"".join(c.public_bytes(pem) for c in certs)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# -- real servers -----------------------------------------------------------------


@attrs.define(eq=False)
class _Seen:
    """One request as a real server received it."""

    conn: "_BackendConn"
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytearray = attrs.field(factory=bytearray)
    trailers: list[tuple[bytes, bytes]] = attrs.field(factory=list)

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [bytes(v) for n, v in self.headers if n == name]


@attrs.frozen
class _Raw:
    """An answer written as these exact bytes (then the connection closes, with C{close})."""

    data: bytes
    close: bool = False


Handler = Callable[[_Seen], "tuple[int, list[tuple[bytes, bytes]], bytes] | _Raw | None"]


class _BackendConn(Protocol):
    """
    A real server connection: h11 reads requests; the factory's handler
    answers each (C{None}: drop the connection unanswered); a 101 answer
    turns the connection into an echo.
    """

    factory: "_BackendFactory"

    def connectionMade(self) -> None:
        self.h11 = h11.Connection(h11.SERVER)
        self.current: _Seen | None = None
        self.echo = False
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.echo:
            self.transport.write(data)
            return
        self.h11.receive_data(data)
        self._events()

    def _events(self) -> None:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self.factory.errors.append(str(e))
                self.transport.loseConnection()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return
            if isinstance(event, h11.Request):
                seen = _Seen(self, event.method, event.target, [(bytes(n), bytes(v)) for n, v in event.headers])
                self.current = seen
                self.factory.seen.append(seen)
                if seen.header(b"expect") == b"100-continue" and self.factory.send_continue:
                    self.transport.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                assert self.current is not None
                self.current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self.current is not None
                self.current.trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
                if not self._respond(self.current):
                    return

    def _respond(self, seen: _Seen) -> bool:
        answer = self.factory.handler(seen)
        if answer is None:
            self.transport.loseConnection()
            return False
        if isinstance(answer, _Raw):
            self.transport.write(answer.data)
            if answer.close:
                self.transport.loseConnection()
                return False
            self.h11 = h11.Connection(h11.SERVER)  # h11 did not see the answer: start afresh
            return False
        status, headers, body = answer
        if status == 101:
            self.transport.write(self.h11.send(h11.InformationalResponse(status_code=101, headers=headers)))
            self.echo = True
            rest = self.h11.trailing_data[0]
            if rest:
                self.transport.write(bytes(rest))
            return False
        if not any(n.lower() == b"transfer-encoding" for n, _ in headers):
            headers = headers + [(b"content-length", b"%d" % len(body))]
        self.transport.write(self.h11.send(h11.Response(status_code=status, headers=headers)))
        if body and seen.method != b"HEAD":
            self.transport.write(self.h11.send(h11.Data(data=body)))
        self.transport.write(self.h11.send(h11.EndOfMessage()))
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            self.transport.loseConnection()
            return False
        self.h11.start_next_cycle()
        return True


def _hello(seen: _Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return 200, [(b"content-type", b"text/plain")], b"hello from the real server\n"


class _BackendFactory(Factory):
    protocol = _BackendConn
    noisy = False

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.connections: list[_BackendConn] = []
        self.seen: list[_Seen] = []
        self.errors: list[str] = []
        self.send_continue = True


class _Recording(ProtocolWrapper):
    """Keeps the first bytes each connection received (what came before TLS)."""

    def connectionMade(self) -> None:
        self.raw = bytearray()
        self.factory.raw.append(self.raw)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if len(self.raw) < 4096:
            self.raw += data[: 4096 - len(self.raw)]
        super().dataReceived(data)


class _Tracking(WrappingFactory):
    """A listener's factory that knows its open connections, so cleanup can wait for them."""

    protocol = _Recording
    noisy = False

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.raw: list[bytearray] = []


@attrs.define
class _Backend:
    factory: _BackendFactory
    tracking: _Tracking
    port: int

    @property
    def seen(self) -> list[_Seen]:
        return self.factory.seen

    @property
    def connections(self) -> list[_BackendConn]:
        return self.factory.connections


# -- the client -------------------------------------------------------------------


class _Closed(Exception):
    """The proxy closed the connection."""


@attrs.define
class _Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]


class _Client:
    """
    A blocking TLS client (run in a thread) that writes exact bytes and
    parses responses itself, so the tests see the framing txgate wrote.
    """

    def __init__(self, port: int, ca_path: str, name: str = PUBLIC) -> None:
        context = ssl.create_default_context(cafile=ca_path)
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = context.wrap_socket(raw, server_hostname=name)
        self.buf = bytearray()
        self.eof = False

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        if self.eof:
            raise _Closed(bytes(self.buf))
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            chunk = b""
        except socket.timeout:
            raise AssertionError(f"nothing from the proxy within {WAIT} s; have {bytes(self.buf)!r}") from None
        if not chunk:
            self.eof = True
            raise _Closed(bytes(self.buf))
        self.buf += chunk

    def _until(self, separator: bytes) -> bytes:
        while True:
            at = self.buf.find(separator)
            if at >= 0:
                out = bytes(self.buf[: at + len(separator)])
                del self.buf[: at + len(separator)]
                return out
            self._fill()

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def recv_exactly(self, n: int) -> bytes:
        return self._take(n)

    def response(self) -> _Response:
        """The next response (an informational one included)."""
        head = self._until(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        response = _Response(status, headers)
        if 100 <= status < 200 or status in (204, 304):
            return response
        encoding = response.header(b"transfer-encoding")
        length = response.header(b"content-length")
        if encoding is not None and b"chunked" in encoding.lower():
            body = bytearray()
            while True:
                size = int(self._until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    while self._until(b"\r\n") != b"\r\n":  # trailer fields, then the empty line
                        pass
                    break
                body += self._take(size)
                self._take(2)
            response.body = bytes(body)
        elif length is not None:
            response.body = self._take(int(length))
        else:
            try:
                while True:
                    self._fill()
            except _Closed:
                pass
            response.body = bytes(self.buf)
            self.buf.clear()
        return response

    def final(self) -> _Response:
        """The next final (non-1xx) response."""
        while True:
            response = self.response()
            if response.status >= 200:
                return response

    def closed(self) -> bool:
        """Whether the proxy closes the connection (within L{WAIT}), nothing more arriving."""
        try:
            while True:
                self._fill()
        except _Closed:
            return True
        except AssertionError:
            return False


def _get(path: str = "/", host: str = PUBLIC, extra: bytes = b"") -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (path.encode(), host.encode(), extra)


def _ntlm_type1() -> bytes:
    return base64.b64encode(b"NTLMSSP\x00" + struct.pack("<I", 1) + struct.pack("<I", 0x00088207))


def _ntlm_type3(domain: str, user: str) -> bytes:
    d, u = domain.encode("utf-16-le"), user.encode("utf-16-le")
    fields = b""
    offset = 64
    for data in (b"", b"", d, u, b"", b""):  # Lm, Nt, Domain, User, Workstation, SessionKey
        fields += struct.pack("<HHI", len(data), len(data), offset)
        offset += len(data)
    message = b"NTLMSSP\x00" + struct.pack("<I", 3) + fields + struct.pack("<I", 1) + d + u
    return base64.b64encode(message)


# -- the harness ------------------------------------------------------------------


class _ReverseCase(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.pki = _pki()
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.ca_path = os.path.join(self.dir, "ca.pem")
        write_pem(self.ca_path, self.pki.ca)
        self.front_pem = os.path.join(self.dir, "front.pem")
        _write_key_and_chain(self.front_pem, self.pki.front_key, self.pki.front, self.pki.ca)
        self._ports: list[Any] = []
        self._trackers: list[_Tracking] = []
        self._clients: list[_Client] = []
        self._services: list[VirtualService] = []
        self._logs: list[EspLogs] = []
        self._connecting: list[Deferred[Any]] = []
        self.addCleanup(self._teardown)

    def backend(self, handler: Handler = _hello, name: str = "rs1", proxy_header: bool = False) -> _Backend:
        """A real server behind TLS (and a PROXY header first, with C{proxy_header})."""
        factory = _BackendFactory(name, handler)
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.pki.back_key),
            certificate=crypto.X509.from_cryptography(self.pki.back),
            acceptableProtocols=[b"http/1.1"],  # txgate offers ALPN; Twisted refuses a handshake it cannot answer
        )
        inner: Any = TLSMemoryBIOFactory(options, False, factory)
        if proxy_header:
            inner = HAProxyWrappingFactory(inner)
        tracking = _Tracking(inner)
        port = reactor.listenTCP(0, tracking, interface="127.0.0.1")
        self._ports.append(port)
        self._trackers.append(tracking)
        return _Backend(factory, tracking, port.getHost().port)

    def real_server(self, port: int, **kw: Any) -> RealServerConfig:
        return RealServerConfig(host="127.0.0.1", port=port, tls=True, ca_bundle=self.ca_path, server_name=INTERNAL, **kw)

    def front(self, real_servers: list[RealServerConfig], **kw: Any) -> int:
        """
        A virtual service for C{real_servers} listening with TLS on
        loopback; its ESP logs go to files in the test's directory.
        """
        config = VirtualServiceConfig(
            name="lync-web",
            listen="tcp:0:interface=127.0.0.1",
            allowed_hosts=kw.pop("allowed_hosts", (PUBLIC, "*.example.com")),
            real_servers=tuple(real_servers),
            certificates=(self.front_pem,),
            health_check=HealthCheckConfig(enabled=False),
            **kw,
        )
        self.log_paths = {name: os.path.join(self.dir, f"esp-{name}.log") for name in ("connection", "security", "user")}
        logs = EspLogs(self.log_paths["connection"], self.log_paths["security"], self.log_paths["user"])
        self._logs.append(logs)
        self.service = VirtualService(config, reactor, CookieSigner(os.urandom(32)), logs)
        self._services.append(self.service)
        for backend in self.service.backends:
            self._watch_connects(backend.connector)
        factory = TLSMemoryBIOFactory(load_server_tls([self.front_pem], "virtual_service[0].certificates"), False,
                                      ReverseProxyFactory(self.service))
        tracking = _Tracking(factory)
        port = reactor.listenTCP(0, tracking, interface="127.0.0.1")
        self._ports.append(port)
        self._trackers.append(tracking)
        return port.getHost().port

    def _watch_connects(self, connector: Any) -> None:
        """Note each connection attempt to a real server, so cleanup can wait for those in flight."""
        connect = connector.connect

        def watched(*args: Any, **kw: Any) -> Any:
            d = connect(*args, **kw)
            self._connecting.append(d)
            d.addBoth(lambda result: (self._connecting.remove(d), result)[1])
            return d

        connector.connect = watched

    def simple(self, handler: Handler = _hello, **kw: Any) -> tuple[_Backend, int]:
        backend = self.backend(handler)
        return backend, self.front([self.real_server(backend.port)], **kw)

    def client(self, port: int) -> _Client:
        """A new client connection (call from the test's thread)."""
        client = _Client(port, self.ca_path)
        self._clients.append(client)
        return client

    def log_lines(self, name: str) -> list[str]:
        try:
            with open(self.log_paths[name], encoding="utf-8") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def in_thread(self, body: Callable[[], None]) -> Deferred[None]:
        return deferToThread(body)

    @inlineCallbacks
    def _teardown(self) -> Any:
        for client in self._clients:
            client.close()
        for service in self._services:
            for backend in service.backends:
                backend.pool.close_all()
        deadline = reactor.seconds() + WAIT
        while self._connecting and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        for port in self._ports:
            yield port.stopListening()
        deadline = reactor.seconds() + 1.0
        while any(t.protocols for t in self._trackers) and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        for tracker in self._trackers:
            for protocol in list(tracker.protocols):
                protocol.transport.abortConnection()
        deadline = reactor.seconds() + WAIT
        while reactor.seconds() < deadline and (
            any(t.protocols for t in self._trackers)
            or any(b.state.connections for s in self._services for b in s.backends)
        ):
            yield deferLater(reactor, 0.01, lambda: None)
        for logs in self._logs:
            logs.close()


# -- the tests --------------------------------------------------------------------


class ForwardingTests(_ReverseCase):
    """A request goes through to the real server with the headers the contract promises."""

    def test_get_through(self):
        """
        The client gets the real server's status and body; the real server
        sees the original Host and target, X-Forwarded-For with the client
        appended, X-Forwarded-Proto https and a Forwarded element, and none
        of the hop-by-hop headers; the user log names the request.
        """
        backend, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(
                b"GET /meet/hello?x=1 HTTP/1.1\r\n"
                b"Host: lync.example.com\r\n"
                b"X-Forwarded-For: 203.0.113.7\r\n"
                b"Connection: keep-alive, X-Foo\r\n"
                b"X-Foo: secret\r\n"
                b"Keep-Alive: timeout=5\r\n"
                b"TE: trailers\r\n"
                b"User-Agent: test-agent/1.0\r\n"
                b"\r\n"
            )
            r = c.final()
            self.assertEqual((r.status, r.body), (200, b"hello from the real server\n"))
            self.assertEqual(len(backend.seen), 1)
            seen = backend.seen[0]
            self.assertEqual((seen.method, seen.target), (b"GET", b"/meet/hello?x=1"))
            self.assertEqual(seen.all(b"host"), [b"lync.example.com"])
            self.assertEqual(seen.all(b"x-forwarded-for"), [b"203.0.113.7, 127.0.0.1"])
            self.assertEqual(seen.all(b"x-forwarded-proto"), [b"https"])
            self.assertEqual(seen.all(b"forwarded"), [b"for=127.0.0.1;proto=https;host=lync.example.com"])
            for name in (b"x-foo", b"keep-alive", b"te"):
                self.assertEqual(seen.all(name), [], f"{name!r} reached the real server")
            for value in seen.all(b"connection"):
                self.assertNotIn(b"x-foo", value.lower())
            self.assertEqual(seen.all(b"user-agent"), [b"test-agent/1.0"])
            users = self.log_lines("user")
            self.assertEqual(len(users), 1, users)
            self.assertTrue(
                users[0].endswith(
                    f'("127.0.0.1:{backend.port}") User - requested "GET" "/meet/hello?x=1" "test-agent/1.0"'
                ),
                users[0],
            )

        return self.in_thread(body)

    def test_keep_alive_reuses_backend_connection(self):
        """
        Two requests on one client connection are both answered, and the
        second rides the pooled connection: the real server sees one.
        """
        backend, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(_get("/one"))
            self.assertEqual(c.final().status, 200)
            c.send(_get("/two"))
            self.assertEqual(c.final().status, 200)
            self.assertEqual([s.target for s in backend.seen], [b"/one", b"/two"])
            self.assertEqual(len(backend.connections), 1)
            self.assertIs(backend.seen[0].conn, backend.seen[1].conn)

        return self.in_thread(body)

    def test_pooled_connection_closed_while_idle(self):
        """
        A pooled connection the real server closed while idle is not used:
        the next GET goes on a new connection and succeeds.
        """
        backend, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(_get("/one"))
            self.assertEqual(c.final().status, 200)
            reactor.callFromThread(backend.connections[0].transport.loseConnection)
            time.sleep(0.2)
            c.send(_get("/two"))
            r = c.final()
            self.assertEqual((r.status, r.body), (200, b"hello from the real server\n"))
            self.assertEqual(len(backend.connections), 2)
            self.assertIs(backend.seen[1].conn, backend.connections[1])

        return self.in_thread(body)

    def test_stale_pooled_connection_retried(self):
        """
        A GET sent on a pooled connection that the real server closes
        without answering (it timed the connection out as the request went
        out) is sent again on a new connection, and the client sees only
        the answer.
        """
        answered: set[int] = set()

        def handler(seen: _Seen) -> Any:
            if id(seen.conn) in answered:
                return None  # second request on a kept-alive connection: drop it
            answered.add(id(seen.conn))
            return _hello(seen)

        backend, port = self.simple(handler)

        def body() -> None:
            c = self.client(port)
            c.send(_get("/one"))
            self.assertEqual(c.final().status, 200)
            c.send(_get("/two"))
            try:
                r = c.final()
            except _Closed:
                self.fail(
                    "the client connection was closed with no answer instead of the GET being retried "
                    f"(real server saw {[s.target for s in backend.seen]} on {len(backend.connections)} connection(s))"
                )
            self.assertEqual((r.status, r.body), (200, b"hello from the real server\n"))
            self.assertEqual([s.target for s in backend.seen], [b"/one", b"/two", b"/two"])
            self.assertEqual(len(backend.connections), 2)
            self.assertIs(backend.seen[2].conn, backend.connections[1])

        return self.in_thread(body)

    def test_location_rewritten(self):
        """
        A Location naming the real server (by its server name and port)
        becomes the public Host; a Location to another host is untouched.
        """
        ports: list[int] = []

        def handler(seen: _Seen) -> Any:
            if seen.target == b"/internal":
                return 302, [(b"location", b"https://%s:%d/x?y=1" % (INTERNAL.encode(), ports[0]))], b""
            return 302, [(b"location", b"https://other.example.net:%d/x" % ports[0])], b""

        backend, port = self.simple(handler)
        ports.append(backend.port)

        def body() -> None:
            c = self.client(port)
            c.send(_get("/internal"))
            r = c.final()
            self.assertEqual((r.status, r.all(b"location")), (302, [b"https://lync.example.com/x?y=1"]))
            c.send(_get("/external"))
            r = c.final()
            self.assertEqual(r.all(b"location"), [b"https://other.example.net:%d/x" % backend.port])

        return self.in_thread(body)


def _named(name: str) -> Handler:
    def handler(seen: _Seen) -> Any:
        return 200, [(b"x-real-server", name.encode())], name.encode()

    return handler


class PersistenceTests(_ReverseCase):
    """A client stays on its real server, by cookie or by address."""

    def two(self, **kw: Any) -> tuple[_Backend, _Backend, int]:
        a, b = self.backend(_named("a"), "a"), self.backend(_named("b"), "b")
        port = self.front([self.real_server(a.port), self.real_server(b.port)], scheduling="round-robin", **kw)
        return a, b, port

    def test_active_cookie(self):
        """
        The first response sets C{MS-WSMAN=...; Path=/} (a session cookie,
        no HttpOnly); requests with it go to the same real server and get no
        new cookie; a forged cookie gets a fresh one.
        """
        a, b, port = self.two(persistence=PersistenceConfig(mode="active-cookie", cookie="MS-WSMAN"))

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            first = c.final()
            cookies = first.all(b"set-cookie")
            self.assertEqual(len(cookies), 1, first.headers)
            pair, _, attributes = cookies[0].partition(b";")
            name, _, token = pair.partition(b"=")
            self.assertEqual(name, b"MS-WSMAN")
            self.assertTrue(token)
            self.assertEqual(attributes.strip(), b"Path=/")
            for n in range(4):
                d = self.client(port)
                d.send(_get("/again", extra=b"Cookie: other=1; MS-WSMAN=" + token + b"\r\n"))
                r = d.final()
                self.assertEqual(r.body, first.body, f"request {n} with the cookie")
                self.assertEqual(r.all(b"set-cookie"), [])
            d = self.client(port)
            d.send(_get("/forged", extra=b"Cookie: MS-WSMAN=" + token[:-2] + b"AA\r\n"))
            r = d.final()
            self.assertEqual(r.status, 200)
            new = r.all(b"set-cookie")
            self.assertEqual(len(new), 1, r.headers)
            self.assertTrue(new[0].startswith(b"MS-WSMAN="))

        return self.in_thread(body)

    def test_source_ip(self):
        """With source-ip persistence, one client address always reaches the same real server."""
        a, b, port = self.two(persistence=PersistenceConfig(mode="source-ip", timeout=60))

        def body() -> None:
            bodies = set()
            for n in range(4):
                c = self.client(port)
                c.send(_get("/"))
                r = c.final()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.all(b"set-cookie"), [])
                bodies.add(r.body)
            self.assertEqual(len(bodies), 1, bodies)
            self.assertEqual(sorted([len(a.seen), len(b.seen)]), [0, 4])

        return self.in_thread(body)


class ConnectionAuthTests(_ReverseCase):
    """NTLM authenticates a connection, so a client keeps its backend connection."""

    def test_ntlm_pins_backend_connection(self):
        """
        After C{401 WWW-Authenticate: NTLM <challenge>} to an NTLM negotiate
        message, the client's next request arrives on the same backend
        connection; another client meanwhile gets a different one; the user
        log names the NTLM user.
        """

        def handler(seen: _Seen) -> Any:
            auth = seen.header(b"authorization") or b""
            if auth == b"NTLM " + _ntlm_type1():
                challenge = base64.b64encode(b"NTLMSSP\x00\x02\x00\x00\x00" + b"\x00" * 40)
                return 401, [(b"www-authenticate", b"NTLM " + challenge)], b""
            return 200, [], b"connection %d" % backend.connections.index(seen.conn)

        backend, port = self.simple(handler)

        def body() -> None:
            a = self.client(port)
            a.send(_get("/auth", extra=b"Authorization: NTLM " + _ntlm_type1() + b"\r\n"))
            r = a.final()
            self.assertEqual(r.status, 401)
            self.assertTrue(r.header(b"www-authenticate").startswith(b"NTLM "))
            other = self.client(port)
            other.send(_get("/other"))
            self.assertEqual(other.final().status, 200)
            a.send(_get("/auth", extra=b"Authorization: NTLM " + _ntlm_type3("CORP", "alice") + b"\r\n"))
            self.assertEqual(a.final().status, 200)
            pinned, between, after = backend.seen
            self.assertIs(after.conn, pinned.conn, "the NTLM handshake moved to another backend connection")
            self.assertIsNot(between.conn, pinned.conn, "another client got the pinned backend connection")
            users = self.log_lines("user")
            self.assertIn('User "CORP\\\\alice" requested "GET" "/auth"', users[-1])

        return self.in_thread(body)


class StreamingTests(_ReverseCase):
    """Upgrades, 100-continue and large bodies pass through intact."""

    def test_websocket_upgrade(self):
        """
        A request asking for a WebSocket upgrade gets the real server's 101,
        and bytes the client writes afterwards come back echoed.
        """

        def handler(seen: _Seen) -> Any:
            return 101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")], b""

        backend, port = self.simple(handler)

        def body() -> None:
            c = self.client(port)
            c.send(
                b"GET /ws HTTP/1.1\r\nHost: lync.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            r = c.response()
            self.assertEqual(r.status, 101)
            self.assertEqual(r.all(b"upgrade"), [b"websocket"])
            self.assertEqual(backend.seen[0].all(b"upgrade"), [b"websocket"])
            for message in (b"\x81\x05hello", b"raw bytes \x00\xff after the upgrade" * 100):
                c.send(message)
                self.assertEqual(c.recv_exactly(len(message)), message)

        return self.in_thread(body)

    def test_expect_100_continue(self):
        """
        With C{Expect: 100-continue}, the real server's 100 reaches the
        client, which then sends the body; the body arrives intact.
        """

        def handler(seen: _Seen) -> Any:
            return 200, [], hashlib.sha256(seen.body).hexdigest().encode()

        backend, port = self.simple(handler)
        payload = os.urandom(20000)

        def body() -> None:
            c = self.client(port)
            c.send(
                b"POST /upload HTTP/1.1\r\nHost: lync.example.com\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(payload)
            )
            interim = c.response()
            self.assertEqual(interim.status, 100)
            c.send(payload)
            r = c.final()
            self.assertEqual((r.status, r.body), (200, hashlib.sha256(payload).hexdigest().encode()))
            self.assertEqual(bytes(backend.seen[0].body), payload)

        return self.in_thread(body)

    def test_chunked_upload(self):
        """A chunked upload of about 5 MB arrives byte-exact at the real server."""

        def handler(seen: _Seen) -> Any:
            return 200, [], hashlib.sha256(seen.body).hexdigest().encode()

        backend, port = self.simple(handler)
        payload = os.urandom(5 * 1024 * 1024 + 123)

        def body() -> None:
            c = self.client(port)
            c.send(b"POST /upload HTTP/1.1\r\nHost: lync.example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
            step = 65536 + 7
            for at in range(0, len(payload), step):
                piece = payload[at : at + step]
                c.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            c.send(b"0\r\n\r\n")
            r = c.final()
            self.assertEqual((r.status, r.body), (200, hashlib.sha256(payload).hexdigest().encode()))
            self.assertEqual(backend.seen[0].all(b"content-length"), [])

        return self.in_thread(body)


    def test_chunked_trailers_reach_the_real_server(self):
        """A chunked request's trailer fields go on to the real server with its body."""
        backend, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(
                b"POST /upload HTTP/1.1\r\nHost: lync.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\nX-Checksum:  abc \r\n\r\n"
            )
            self.assertEqual(c.final().status, 200)
            self.assertEqual(bytes(backend.seen[0].body), b"hello")
            self.assertEqual(backend.seen[0].trailers, [(b"x-checksum", b"abc")])

        return self.in_thread(body)


class ResponseFramingTests(_ReverseCase):
    """
    A response whose length the real server did not announce reaches each
    client in a framing it reads, and the connection is kept only when
    the next response can follow.
    """

    @staticmethod
    def chunked(seen: _Seen) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        return 200, [(b"transfer-encoding", b"chunked")], b"streamed " * 1000

    def test_chunked_for_http11(self):
        """An HTTP/1.1 client gets the body chunked, and its connection stays open for the next request."""
        _, port = self.simple(self.chunked)

        def body() -> None:
            c = self.client(port)
            c.send(_get("/one"))
            r = c.final()
            self.assertEqual((r.status, r.body), (200, b"streamed " * 1000))
            self.assertEqual(r.header(b"transfer-encoding"), b"chunked")
            self.assertIsNone(r.header(b"content-length"))
            c.send(_get("/two"))
            self.assertEqual(c.final().body, b"streamed " * 1000)

        return self.in_thread(body)

    def test_close_delimited_for_http10(self):
        """An HTTP/1.0 client, which cannot read chunks, gets the body ended by the connection's close."""
        _, port = self.simple(self.chunked)

        def body() -> None:
            c = self.client(port)
            c.send(b"GET / HTTP/1.0\r\nHost: lync.example.com\r\n\r\n")
            r = c.final()
            self.assertEqual((r.status, r.body), (200, b"streamed " * 1000))
            self.assertIsNone(r.header(b"transfer-encoding"))
            self.assertEqual(r.header(b"connection"), b"close")
            self.assertTrue(c.closed())

        return self.in_thread(body)

    def test_head(self):
        """A HEAD response has the headers a GET would get and no body; the next request follows on."""
        backend, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(b"HEAD / HTTP/1.1\r\nHost: lync.example.com\r\n\r\n")
            head = c._until(b"\r\n\r\n")  # read as a HEAD response: no body follows
            self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
            self.assertIn(b"\r\ncontent-length: 27\r\n", head)
            c.send(_get("/next"))
            r = c.final()
            self.assertEqual((r.status, r.body), (200, b"hello from the real server\n"))

        return self.in_thread(body)

    def test_head_refused(self):
        """A refused HEAD request gets the refusal's head and no body."""
        _, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(b"HEAD / HTTP/1.1\r\nHost: evil.example.test\r\n\r\n")
            head = c._until(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.1 403 Forbidden\r\n"), head)
            self.assertTrue(c.closed())
            self.assertEqual(bytes(c.buf), b"")

        return self.in_thread(body)

    def test_connection_close(self):
        """A request with C{Connection: close} gets its response, said to close, and the connection closes."""
        _, port = self.simple()

        def body() -> None:
            c = self.client(port)
            c.send(_get("/", extra=b"Connection: close\r\n"))
            r = c.final()
            self.assertEqual((r.status, r.header(b"connection")), (200, b"close"))
            self.assertTrue(c.closed())

        return self.in_thread(body)


class RealServerResponseTests(_ReverseCase):
    """What txgate does with responses it cannot read for certain, or whose end a close makes."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def test_malformed(self):
        """A malformed head gets the client a 502, and the reason goes to the log."""
        _, port = self.simple(lambda seen: _Raw(b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n"))

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            r = c.final()
            self.assertEqual((r.status, r.body), (502, _MINIMAL[502]))

        def check(_: Any) -> None:
            self.assertIn("malformed response from real server 127.0.0.1:", self.logged())
            self.assertIn("obs-fold (line folding) in response header", self.logged())

        return self.in_thread(body).addCallback(check)

    def test_bytes_after_the_end(self):
        """A response followed by stray bytes is forwarded, and its connection is not used again."""
        backend, port = self.simple(lambda seen: _Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n"))

        def body() -> None:
            c = self.client(port)
            for path in ("/one", "/two"):
                c.send(_get(path))
                self.assertEqual(c.final().body, b"hi")
            self.assertEqual(len(backend.connections), 2)

        return self.in_thread(body)

    def test_ended_by_close(self):
        """A body the real server ends by closing reaches an HTTP/1.1 client chunked, and the client's connection stays."""
        backend, port = self.simple(lambda seen: _Raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", close=True))

        def body() -> None:
            c = self.client(port)
            c.send(_get("/one"))
            r = c.final()
            self.assertEqual((r.body, r.header(b"transfer-encoding")), (b"until the end", b"chunked"))
            c.send(_get("/two"))
            self.assertEqual(c.final().body, b"until the end")
            self.assertEqual(len(backend.connections), 2)

        return self.in_thread(body)

    def test_cut_short(self):
        """A body cut short by the real server cuts the client's connection: it cannot be told otherwise."""
        _, port = self.simple(lambda seen: _Raw(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", close=True))

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            with self.assertRaises(_Closed):  # whatever part arrived, never a whole response
                c.final()

        def check(_: Any) -> None:
            self.assertIn("closed the connection mid-response", self.logged())

        return self.in_thread(body).addCallback(check)


_MINIMAL = {400: b"400 Bad Request\n", 403: b"403 Forbidden\n", 502: b"502 Bad Gateway\n", 503: b"503 Service Unavailable\n"}


class RefusalTests(_ReverseCase):
    """Refused requests never reach a real server, and each leaves one security-log line."""

    def refused(self, request: bytes, statuses: tuple[int, ...], **kw: Any) -> Deferred[None]:
        backend, port = self.simple(**kw)
        result: dict[str, Any] = {}

        def body() -> None:
            c = self.client(port)
            c.send(request)
            r = c.final()
            self.assertIn(r.status, statuses, r)
            self.assertEqual(r.body, _MINIMAL[r.status])
            self.assertTrue(c.closed())
            time.sleep(0.1)  # anything sent on would have reached the real server by now
            self.assertEqual(backend.seen, [], "a refused request reached the real server")
            lines = self.log_lines("security")
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(' client "127.0.0.1:%d" ' % c.local_port, lines[0])
            result["line"] = lines[0]
            result["response"] = r

        return self.in_thread(body).addCallback(lambda _: result)

    @inlineCallbacks
    def test_content_length_and_transfer_encoding(self):
        """Content-Length with Transfer-Encoding: 400, smuggling logged."""
        result = yield self.refused(
            b"POST / HTTP/1.1\r\nHost: lync.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
            (400,),
        )
        self.assertIn("refused request: request smuggling: both Content-Length and Transfer-Encoding", result["line"])

    @inlineCallbacks
    def test_bad_chunk_size(self):
        """
        A chunk size that is not hex (C{zz}): 400, and the real server saw
        no request at all, since the head waits for the first chunk.
        """
        result = yield self.refused(
            b"POST /upload HTTP/1.1\r\nHost: lync.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            (400,),
        )
        self.assertIn("refused request: ", result["line"])

    @inlineCallbacks
    def test_disallowed_host(self):
        """A Host not in allowed_hosts: 403 with a minimal body; the log names the host."""
        result = yield self.refused(_get("/", host="evil.example"), (403,))
        self.assertTrue(result["line"].endswith('denied host "evil.example": not in allowed_hosts'), result["line"])
        response = result["response"]
        self.assertNotIn(b"txgate", b"".join(v for _, v in response.headers).lower())

    @inlineCallbacks
    def test_disallowed_path(self):
        """A path not in allowed_paths: 403; the log names the path."""
        result = yield self.refused(_get("/admin/"), (403,), allowed_paths=("/meet/*", "/"))
        self.assertTrue(result["line"].endswith('denied path "/admin/": not in allowed_paths'), result["line"])

    @inlineCallbacks
    def test_dot_dot_escape(self):
        """An encoded C{..} out of the allowed tree: 400 or 403, never the real server."""
        result = yield self.refused(_get("/meet/%2e%2e/admin"), (400, 403), allowed_paths=("/meet/*",))
        self.assertRegex(result["line"], r"(refused request|denied path)")


class UnavailableTests(_ReverseCase):
    """txgate answers itself when no real server can."""

    def test_all_down(self):
        """Every real server Down: 503 with a minimal body."""
        backend, port = self.simple()
        for server in self.service.servers:
            server.up = False

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            r = c.final()
            self.assertEqual((r.status, r.body), (503, _MINIMAL[503]))
            self.assertEqual(backend.connections, [])

        return self.in_thread(body)

    def test_refused_connection(self):
        """A real server that refuses connections: 502 with a minimal body."""
        port = self.front([self.real_server(_closed_port())])

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            r = c.final()
            self.assertEqual((r.status, r.body), (502, _MINIMAL[502]))
            self.assertEqual(r.header(b"content-type"), b"text/plain; charset=utf-8")

        return self.in_thread(body)


    def test_closed_before_responding(self):
        """A real server that closes a new connection without answering: 502 with a minimal body."""
        backend, port = self.simple(lambda seen: None)

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            r = c.final()
            self.assertEqual((r.status, r.body), (502, _MINIMAL[502]))
            self.assertEqual(len(backend.seen), 1, "a request on a new connection was retried")

        return self.in_thread(body)


class TimeoutTests(_ReverseCase):
    """Slow clients are cut; idle kept-alive ones are not."""

    def test_head_timeout(self):
        """Half a head, then nothing: 408 after header_timeout, then the connection closes."""
        backend, port = self.simple(header_timeout=0.3)

        def body() -> None:
            c = self.client(port)
            started = time.monotonic()
            c.send(b"GET / HTTP/1.1\r\nHost: lync.exa")
            r = c.final()
            elapsed = time.monotonic() - started
            self.assertEqual(r.status, 408)
            self.assertGreaterEqual(elapsed, 0.25)
            self.assertTrue(c.closed())
            self.assertEqual(backend.seen, [])

        return self.in_thread(body)

    def test_body_timeout(self):
        """A body that stalls: 408 after body_timeout (no response had started), then closed."""
        backend, port = self.simple(body_timeout=0.3)

        def body() -> None:
            c = self.client(port)
            c.send(b"POST /upload HTTP/1.1\r\nHost: lync.example.com\r\nContent-Length: 100\r\n\r\n0123456789")
            started = time.monotonic()
            r = c.final()
            self.assertEqual(r.status, 408)
            self.assertGreaterEqual(time.monotonic() - started, 0.25)
            self.assertTrue(c.closed())

        return self.in_thread(body)

    def test_idle_between_requests(self):
        """A kept-alive client idle longer than header_timeout between requests is not cut."""
        backend, port = self.simple(header_timeout=0.3)

        def body() -> None:
            c = self.client(port)
            c.send(_get("/one"))
            self.assertEqual(c.final().status, 200)
            time.sleep(0.8)
            c.send(_get("/two"))
            self.assertEqual(c.final().status, 200)

        return self.in_thread(body)


class ProxyHeaderTests(_ReverseCase):
    """C{send_proxy = true}: the real server learns the client's address."""

    def test_proxy_v2_header_before_tls(self):
        """
        Each real server connection starts with a PROXY v2 header naming
        the client's address and port, then the TLS ClientHello; the request
        still goes through.
        """
        backend = self.backend(proxy_header=True)
        port = self.front([self.real_server(backend.port)], send_proxy=True)

        def body() -> None:
            c = self.client(port)
            c.send(_get("/"))
            r = c.final()
            self.assertEqual(r.status, 200)
            raw = bytes(backend.tracking.raw[0])
            info, rest = V2Parser().feed(raw)
            self.assertIsNotNone(info, raw[:64])
            self.assertEqual((info.source.host, info.source.port), ("127.0.0.1", c.local_port))
            self.assertEqual(info.destination.port, port)
            self.assertEqual(rest[:1], b"\x16", "no TLS handshake record right after the PROXY header")
            peer = backend.seen[0].conn.transport.getPeer()
            self.assertEqual((peer.host, peer.port), ("127.0.0.1", c.local_port))

        return self.in_thread(body)


class IdlePoolTests(SynchronousTestCase):
    """The keep-alive pool of one real server (L{txgate.net.upstream.IdlePool})."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = IdlePool(self.clock, 2)

    def connect(self) -> Upstream:
        upstream = Upstream()
        upstream.makeConnection(StringTransport())
        return upstream

    def test_newest_first(self) -> None:
        """The connection put last is taken first; an empty pool gives C{None}."""
        first, second = self.connect(), self.connect()
        self.pool.put(first)
        self.pool.put(second)
        self.assertIs(self.pool.take(), second)
        self.assertIs(self.pool.take(), first)
        self.assertIsNone(self.pool.take())

    def test_full(self) -> None:
        """Past C{max_idle}, a connection put is closed instead of kept."""
        upstreams = [self.connect() for _ in range(3)]
        for upstream in upstreams:
            self.pool.put(upstream)
        self.assertTrue(upstreams[2].transport.disconnecting)
        self.assertFalse(upstreams[0].transport.disconnecting)

    def test_idle_timeout(self) -> None:
        """Each connection is closed C{idle_timeout} after it was put, not before, by one timer."""
        old, new = self.connect(), self.connect()
        self.pool.put(old)
        self.clock.advance(10)
        self.pool.put(new)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(self.pool.idle_timeout - 10)
        self.assertTrue(old.transport.disconnecting)
        self.assertFalse(new.transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(new.transport.disconnecting)
        self.assertIsNone(self.pool.take())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_speaks_while_idle(self) -> None:
        """Bytes from an idle connection close it and take it out of the pool."""
        upstream = self.connect()
        self.pool.put(upstream)
        upstream.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(upstream.transport.disconnecting)
        self.assertIsNone(self.pool.take())

    def test_closed_while_idle(self) -> None:
        """A connection lost while idle is not handed out."""
        upstream = self.connect()
        self.pool.put(upstream)
        upstream.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.pool.take())

    def test_close_all(self) -> None:
        """Shutting down closes every idle connection and the timer."""
        upstreams = [self.connect(), self.connect()]
        for upstream in upstreams:
            self.pool.put(upstream)
        self.pool.close_all()
        self.assertTrue(all(u.transport.disconnecting for u in upstreams))
        self.assertEqual(self.clock.getDelayedCalls(), [])
