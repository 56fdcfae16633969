# -*- test-case-name: tests.net.test_intercept -*-
"""
Tests for L{txgate.net.intercept}: SSL interception on loopback sockets with
real OpenSSL on every side — a Twisted TLS origin under its own CA, the
explicit service, and a TLS client that trusts only txgate's issuer.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL._util import lib as _lib
from OpenSSL.crypto import PKey, X509
from twisted.internet import defer, protocol, reactor, ssl, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IHandshakeListener
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from zope.interface import implementer

from txgate.accesslog import AccessLog
from txgate.config import SSLConfig, ServiceConfig
from txgate.net.explicit import ExplicitProxyFactory
from txgate.net.intercept import (
    _predict_key_share,
    _renew_bios,
    close_idle_upstreams,
    has_idle_upstreams,
    interception_state,
    key_shares_for,
)
from txgate.net.pipeline import PipelineSettings
from txgate.net.upstream import Connector, UpstreamPool
from txgate.pki.authority import Authority
from txgate.pki.keyring import load_or_create
from txgate.pki.ocsp import answer_ocsp
from txgate.plugins import discover
from txgate.policy.cpl import parse_policy
from txgate.testing import RecordingObserver, make_ca, make_server_cert, write_pem

UTC = datetime.timezone.utc
INTERCEPT = "<ssl-intercept>\n    ssl.forward_proxy(yes)\n"


async def settle() -> None:
    """Let the proxy and the origin finish closing their side of a connection."""
    await task.deferLater(reactor, 0.2, lambda: None)


@attrs.frozen
class OriginPKI:
    ca: x509.Certificate
    ca_key: Any
    ca_path: str

    def leaf(self, names: tuple[str, ...], *, expired: bool = False, ocsp_url: str | None = None, serial: int = 1000):
        """A server certificate for C{names} (DNS names or addresses)."""
        now = datetime.datetime.now(UTC)
        start = now - datetime.timedelta(days=400 if expired else 1)
        dns = [n for n in names if not _is_address(n)]
        ips = [n for n in names if _is_address(n)]
        return make_server_cert(
            self.ca, self.ca_key, dns, ips,
            not_before=start, not_after=start + datetime.timedelta(days=30), serial=serial, ocsp_url=ocsp_url,
        )


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def make_origin_pki(directory: str) -> OriginPKI:
    now = datetime.datetime.now(UTC)
    ca, key = make_ca("origin test CA", now - datetime.timedelta(days=1), now + datetime.timedelta(days=365))
    path = os.path.join(directory, "origin-ca.pem")
    write_pem(path, ca)
    return OriginPKI(ca, key, path)


class _Hello(resource.Resource):
    isLeaf = True
    reused: list[bool] = []
    """Whether each request's TLS connection resumed a session, as the origin saw it."""
    groups: list[str | None] = []
    """The key exchange group of each request's TLS connection."""
    peers: list[int] = []
    """The client port of each request's TCP connection: which upstream connection carried it."""

    def render_GET(self, request: Any) -> bytes:
        from OpenSSL._util import lib  # pyOpenSSL does not expose SSL_session_reused

        handle = request.channel.transport.getHandle()
        _Hello.reused.append(bool(lib.SSL_session_reused(handle._ssl)))
        _Hello.groups.append(handle.get_group_name())
        _Hello.peers.append(request.getClientAddress().port)
        return b"hello " + request.uri


class _CountingSite(server.Site):
    """A site that counts the connections it accepts."""

    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


class _OCSP(resource.Resource):
    """An upstream CA's OCSP responder."""

    isLeaf = True

    def __init__(self, pki: OriginPKI, revoked: set[int]) -> None:
        super().__init__()
        self.pki, self.revoked, self.asked = pki, revoked, 0

    def render_POST(self, request: Any) -> bytes:
        self.asked += 1
        request.setHeader(b"content-type", b"application/ocsp-response")
        now = datetime.datetime.now(UTC)
        return answer_ocsp(
            request.content.read(),
            issuer_cert=self.pki.ca,
            issuer_key=self.pki.ca_key,
            issued=lambda serial: True,
            revoked={s: now for s in self.revoked},
            now=now,
        )


@implementer(IHandshakeListener)
class _Client(protocol.Protocol):
    """CONNECT through the proxy, then TLS towards the origin, then one GET."""

    def __init__(self, target: str, server_name: str, trust: x509.Certificate, alpn: list[bytes], headers: str = "") -> None:
        self.target, self.server_name, self.trust, self.alpn = target, server_name, trust, alpn
        self.headers = headers
        self.buffer = b""
        self.tls = False
        self.done: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.result: dict[str, Any] = {}

    def connectionMade(self) -> None:
        self.transport.write(f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.tls and b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.result["connect"] = head.split(b"\r\n")[0]
            self.tls = True
            trust = ssl.Certificate.loadPEM(self.trust.public_bytes(serialization.Encoding.PEM))
            options = ssl.optionsForClientTLS(self.server_name, trustRoot=trust, acceptableProtocols=self.alpn)
            self.transport.startTLS(options)
            self.transport.write(
                f"GET /x HTTP/1.1\r\nHost: {self.server_name}\r\nConnection: close\r\n{self.headers}\r\n".encode()
            )

    def handshakeCompleted(self) -> None:
        cert = self.transport.getPeerCertificate()
        self.result["cert"] = cert.to_cryptography()
        tls = getattr(self.transport, "protocol", self.transport)
        self.result["alpn"] = tls.negotiatedProtocol

    def connectionLost(self, reason: Any) -> None:
        self.result["body"] = self.buffer
        self.result["reason"] = reason
        self.done.callback(self.result)


class _ProxyCase(TestCase):
    """A TLS origin under its own CA and the explicit service intercepting."""

    timeout = 30

    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.origin = make_origin_pki(self.tmp)

    def listen_origin(self, names: tuple[str, ...], **leaf: Any) -> int:
        cert, key = self.origin.leaf(names, **leaf)
        options = ssl.CertificateOptions(
            privateKey=PKey.from_cryptography_key(key),
            certificate=X509.from_cryptography(cert),
            acceptableProtocols=[b"http/1.1"],
            enableSessionTickets=True,  # as web servers do; Twisted's default is off
        )
        self.origin_site = _CountingSite(_Hello())
        port = reactor.listenSSL(0, self.origin_site, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def start_proxy(self, policy: str, **ssl_options: Any) -> int:
        ssl_config = SSLConfig(upstream_ca_bundle=self.origin.ca_path, crl_host="127.0.0.1:1", **ssl_options)
        self.keyring = load_or_create(os.path.join(self.tmp, "ca"), datetime.datetime.now(UTC))
        self.authority = Authority(self.keyring, ssl_config, os.path.join(self.tmp, "ca"), lambda: datetime.datetime.now(UTC))
        service = ServiceConfig(
            name="explicit", kind="explicit-http", listen="tcp:0", clients=(ipaddress.ip_network("127.0.0.0/8"),)
        )
        self.settings = PipelineSettings(
            registry=discover(),
            policy=parse_policy(policy, "test.cpl"),
            reactor=reactor,
            detect_protocol=True,
            tunnel_on_protocol_error=False,
            idle_timeout=60.0,
            ssl=ssl_config,
            authority=self.authority,
        )
        connector = Connector(reactor)
        pool = UpstreamPool(connector, reactor)
        self.addCleanup(pool.close_all)
        access = AccessLog()
        self.records = RecordingObserver()
        access.publisher.addObserver(self.records)
        factory = ExplicitProxyFactory(service, self.settings, connector, pool, access)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(self.close_idle)
        return port.getHost().port

    async def idle_kept(self, origin: int) -> None:
        """Wait until txgate keeps an idle connection to C{origin} (a client's handshake is done on both sides)."""
        for _ in range(100):
            if has_idle_upstreams(self.authority, "127.0.0.1", origin):
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail("no idle upstream connection was kept")

    async def close_idle(self) -> None:
        """Close the upstream connections kept between exchanges, and let them go."""
        close_idle_upstreams(self.authority)
        await settle()

    async def fetch(
        self,
        proxy: int,
        origin: int,
        server_name: str = "origin.test",
        alpn: tuple[bytes, ...] = (b"http/1.1",),
        headers: str = "",
    ) -> dict[str, Any]:
        client = _Client(f"127.0.0.1:{origin}", server_name, self.keyring.issuer_cert, list(alpn), headers)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", proxy)
        await connectProtocol(endpoint, client)
        result = await client.done
        await settle()
        return result



class InterceptionTests(_ProxyCase):
    """C{ssl.forward_proxy(yes)}: interception with proxy handoff."""

    async def test_https_intercepted(self) -> None:
        """
        The client gets a leaf from txgate's issuer with the origin's names,
        a CRL distribution point and an OCSP URL; the request reaches the
        origin and is logged as https with its full URL.
        """
        origin = self.listen_origin(("origin.test", "127.0.0.1"))
        proxy = self.start_proxy(INTERCEPT)
        result = await self.fetch(proxy, origin)
        self.assertEqual(result["connect"], b"HTTP/1.1 200 Connection established")
        self.assertIn(b"hello /x", result["body"])
        cert = result["cert"]
        self.assertEqual(cert.issuer, self.keyring.issuer_cert.subject)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["origin.test"])
        self.assertIsNotNone(cert.extensions.get_extension_for_class(x509.CRLDistributionPoints))
        self.assertIsNotNone(cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess))
        [get] = [r for r in self.records.events if r["method"] == "GET"]
        self.assertEqual((get["client_protocol"], get["target"], get["tunneled"]), ("https", f"https://origin.test:{origin}/x", False))

    async def test_h2_offer_gets_http1(self) -> None:
        """A client offering h2 and http/1.1 is answered with http/1.1, not a failed handshake."""
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        result = await self.fetch(proxy, origin, alpn=(b"h2", b"http/1.1"))
        self.assertEqual(result["alpn"], b"http/1.1")
        self.assertIn(b"hello /x", result["body"])

    async def test_leaf_cached(self) -> None:
        """A second connection to the same origin reuses the minted certificate."""
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        first = await self.fetch(proxy, origin)
        second = await self.fetch(proxy, origin)
        self.assertEqual(first["cert"].serial_number, second["cert"].serial_number)
        contexts = interception_state(self.settings).leaves
        self.assertEqual((contexts.misses, contexts.hits), (1, 1))

    async def test_upstream_session_resumed(self) -> None:
        """
        A second connection to the same origin resumes the TLS session of
        the first (the origin sees a reused session), once the origin's
        certificate verified; the resumed connection, whose certificate is
        not verified again, still gets the trusted issuer's leaf.
        """
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        await self.fetch(proxy, origin)
        await self.close_idle()  # else the second client gets the first's connection
        second = await self.fetch(proxy, origin)
        self.assertEqual(len(interception_state(self.settings).sessions), 1)
        self.assertEqual(_Hello.reused[-2:], [False, True])
        self.assertEqual(second["cert"].issuer, self.keyring.issuer_cert.subject)
        self.assertIn(b"hello /x", second["body"])

    async def test_upstream_connection_reused(self) -> None:
        """
        After a clean exchange the verified upstream connection is kept: the
        next client of the same server is shown the same trusted leaf and
        its request goes over that connection, with no handshake upstream
        (and its CONNECT opens no connection at all).
        """
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        first = await self.fetch(proxy, origin)
        second = await self.fetch(proxy, origin)
        self.assertIn(b"hello /x", second["body"])
        self.assertEqual(second["cert"].serial_number, first["cert"].serial_number)
        self.assertEqual(_Hello.peers[-1], _Hello.peers[-2])
        self.assertEqual(self.origin_site.connections, 1)
        gets = [r for r in self.records.events if r["method"] == "GET"]
        self.assertEqual([r["upstream"] for r in gets], ["new", "reused"])
        connects = [r for r in self.records.events if r["method"] == "CONNECT"]
        self.assertEqual([r["upstream"] for r in connects], ["new", "reused"])

    async def test_answered_connect_not_intercepted(self) -> None:
        """
        A CONNECT answered before connecting (idle connections to its server
        are kept) whose stream policy does not intercept gets its own
        connection then: the client sees the server's own certificate.
        """
        origin = self.listen_origin(("origin.test", "plain.test"))
        proxy = self.start_proxy("<ssl-intercept>\n    url.host=plain.test ssl.forward_proxy(no)\n    ssl.forward_proxy(yes)\n")
        await self.fetch(proxy, origin)
        self.assertTrue(has_idle_upstreams(self.authority, "127.0.0.1", origin))
        client = _Client(f"127.0.0.1:{origin}", "plain.test", self.origin.ca, [b"http/1.1"])
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy), client)
        result = await client.done
        await settle()
        self.assertEqual(result["cert"].issuer, self.origin.ca.subject)
        self.assertIn(b"hello /x", result["body"])
        self.assertEqual(self.origin_site.connections, 2)
        connects = [r for r in self.records.events if r["method"] == "CONNECT"]
        self.assertEqual([r["upstream"] for r in connects], ["new", "new"])

    async def test_connection_auth_keeps_upstream(self) -> None:
        """
        A request carrying NTLM credentials authenticates its upstream
        connection: that connection is never given to another client.
        """
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        ntlm = "Authorization: NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==\r\n"
        first = await self.fetch(proxy, origin, headers=ntlm)
        self.assertIn(b"hello /x", first["body"])
        second = await self.fetch(proxy, origin)
        self.assertIn(b"hello /x", second["body"])
        self.assertNotEqual(_Hello.peers[-1], _Hello.peers[-2])

    async def test_next_request_new_upstream(self) -> None:
        """
        A client whose upstream connection went back to the pool and was
        closed there gets a new, verified one for its next request on the
        same intercepted connection.
        """
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        trust = self.keyring.issuer_cert.public_bytes(serialization.Encoding.PEM).decode()
        close_idle = lambda: threads.blockingCallFromThread(reactor, self.close_idle)  # noqa: E731
        bodies = await threads.deferToThread(_keep_alive_client, proxy, origin, trust, ["/a", close_idle, "/b"])
        self.assertEqual(bodies, [(200, b"hello /a"), (200, b"hello /b")])
        self.assertNotEqual(_Hello.peers[-1], _Hello.peers[-2])
        gets = [r for r in self.records.events if r["method"] == "GET"]
        self.assertEqual([(r["status"], r["upstream"]) for r in gets], [(200, "new"), (200, "new")])

    async def test_idle_client_holds_no_upstream(self) -> None:
        """
        A client that has shaken hands (HTTP/1.1 by ALPN) but not asked yet
        holds no upstream connection: the one opened for it serves another
        client meanwhile, and is fetched back when it asks.
        """
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT)
        trust = self.keyring.issuer_cert.public_bytes(serialization.Encoding.PEM).decode()

        async def other_client() -> None:
            await self.idle_kept(origin)
            await self.fetch(proxy, origin)

        other = lambda: threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(other_client()))  # noqa: E731
        bodies = await threads.deferToThread(_keep_alive_client, proxy, origin, trust, [other, "/late"])
        self.assertEqual(bodies, [(200, b"hello /late")])
        self.assertEqual(_Hello.peers[-1], _Hello.peers[-2], "the idle client's upstream was not lent out")

    async def test_no_upstream_for_idle_client(self) -> None:
        """
        When the server cannot be reached any more by the time an idle
        client asks, the client gets a 502 naming why, and the access log
        says so.
        """
        origin_port = self.listen_origin(("origin.test",))
        [origin] = [p for p in reactor.getReaders() if getattr(p, "getHost", None) and p.getHost().port == origin_port]
        proxy = self.start_proxy(INTERCEPT)
        trust = self.keyring.issuer_cert.public_bytes(serialization.Encoding.PEM).decode()

        async def gone() -> None:
            await self.idle_kept(origin_port)
            await origin.stopListening()
            await self.close_idle()

        vanish = lambda: threads.blockingCallFromThread(reactor, lambda: defer.ensureDeferred(gone()))  # noqa: E731
        [(status, body)] = await threads.deferToThread(_keep_alive_client, proxy, origin_port, trust, [vanish, "/late"])
        self.assertEqual(status, 502)
        self.assertIn(b"connection refused", body)
        [record] = [r for r in self.records.events if r["method"] == "CONNECT"]
        self.assertIn("connection refused", record["reason"])

    async def test_upstream_key_share_predicted(self) -> None:
        """
        The key exchange group an origin chose is remembered, and the next
        connection to it gets the same group (its one key share predicted);
        so does a name not seen yet at the same address.
        """
        origin = self.listen_origin(("origin.test", "other.test"))
        proxy = self.start_proxy(INTERCEPT)
        await self.fetch(proxy, origin)
        sessions = interception_state(self.settings).sessions
        group = sessions.group(("origin.test", "127.0.0.1", origin))
        self.assertIsNotNone(group)
        self.assertEqual(group, _Hello.groups[-1])
        self.assertIsNone(sessions.group(("other.test", "127.0.0.1", origin)))
        self.assertEqual(sessions.group(("other.test", "127.0.0.1", origin), ("127.0.0.1", origin)), group)
        await self.close_idle()
        second = await self.fetch(proxy, origin)
        self.assertIn(b"hello /x", second["body"])
        self.assertEqual(_Hello.groups[-1], group)
        other = await self.fetch(proxy, origin, server_name="other.test")
        self.assertIn(b"hello /x", other["body"])
        self.assertEqual(_Hello.groups[-1], group)

    async def test_untrusted_session_not_kept(self) -> None:
        """An origin whose certificate failed verification is never resumed: it is verified again each time."""
        origin = self.listen_origin(("elsewhere.test",))
        proxy = self.start_proxy(INTERCEPT)
        for _ in range(2):
            result = await self.fetch(proxy, origin)
            self.assertNotIn("cert", result)  # the client refused the untrusted issuer's leaf
        self.assertEqual(len(interception_state(self.settings).sessions), 0)

    async def test_wrong_name_untrusted(self) -> None:
        """An upstream whose certificate does not name the host is emulated under the untrusted issuer."""
        origin = self.listen_origin(("elsewhere.test",))
        proxy = self.start_proxy(INTERCEPT)
        result = await self.fetch(proxy, origin)
        self.assertNotIn("cert", result)  # the client refused the handshake
        self.assertNotIn(b"hello", result["body"])

    async def test_validate_no_vouches(self) -> None:
        """With C{server.certificate.validate(no)} an expired upstream is accepted and the client is satisfied."""
        origin = self.listen_origin(("origin.test",), expired=True)
        proxy = self.start_proxy(INTERCEPT + "<ssl>\n    server.certificate.validate(no)\n")
        result = await self.fetch(proxy, origin)
        self.assertEqual(result["cert"].issuer, self.keyring.issuer_cert.subject)
        self.assertIn(b"hello /x", result["body"])

    async def test_revoked_upstream_untrusted(self) -> None:
        """
        Under C{upstream_revocation = "hard-fail"} an upstream its CA's OCSP
        responder calls revoked is emulated under the untrusted issuer; a good
        one passes, and its answer is reused.
        """
        responder = _OCSP(self.origin, revoked={2000})
        port = reactor.listenTCP(0, server.Site(responder), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        good = self.listen_origin(("origin.test",), ocsp_url=url, serial=1000)
        revoked = self.listen_origin(("origin.test",), ocsp_url=url, serial=2000)
        proxy = self.start_proxy(INTERCEPT, upstream_revocation="hard-fail")
        ok = await self.fetch(proxy, good)
        self.assertIn(b"hello /x", ok["body"])
        await self.close_idle()
        await self.fetch(proxy, good)
        self.assertEqual(responder.asked, 1)
        refused = await self.fetch(proxy, revoked)
        self.assertNotIn("cert", refused)

    async def test_unknown_inner_protocol_denied(self) -> None:
        """
        C{DENY client.protocol=!ssl tunneled=yes} stops an undetected
        protocol inside intercepted TLS: the origin never answers it.
        """
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy(INTERCEPT + "<proxy>\n    DENY client.protocol=!ssl tunneled=yes\n")
        client = _Client(f"127.0.0.1:{origin}", "origin.test", self.keyring.issuer_cert, [b"http/1.1"])
        client.dataReceived = _unknown_after_handshake(client)  # type: ignore[method-assign]
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy), client)
        result = await client.done
        await settle()
        self.assertEqual(result["body"], b"")
        [record] = [r for r in self.records.events if r["method"] == "CONNECT"]
        self.assertEqual(record["verdict"], "deny")


class HTTPSModeTests(_ProxyCase):
    """C{ssl.forward_proxy(https)}: only HTTP may run inside."""

    async def test_non_http_closed(self) -> None:
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy("<ssl-intercept>\n    ssl.forward_proxy(https)\n")
        client = _Client(f"127.0.0.1:{origin}", "origin.test", self.keyring.issuer_cert, [b"http/1.1"])
        client.dataReceived = _unknown_after_handshake(client)  # type: ignore[method-assign]
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy), client)
        result = await client.done
        await settle()
        self.assertEqual(result["body"], b"")
        [record] = [r for r in self.records.events if r["method"] == "CONNECT"]
        self.assertIn("ssl.forward_proxy(https) carries only HTTP", record["reason"])

    async def test_http_carried(self) -> None:
        origin = self.listen_origin(("origin.test",))
        proxy = self.start_proxy("<ssl-intercept>\n    ssl.forward_proxy(https)\n")
        result = await self.fetch(proxy, origin)
        self.assertIn(b"hello /x", result["body"])


def _keep_alive_client(proxy: int, origin: int, trust_pem: str, steps: list[Any]) -> list[tuple[int, bytes]]:
    """
    Blocking: CONNECT, TLS trusting C{trust_pem}, then each step on that
    one connection: a path is a C{GET}, anything else is called; the
    status and body of each response.
    """
    import socket
    import ssl as stdlib_ssl

    context = stdlib_ssl.create_default_context(cadata=trust_pem)
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", proxy), timeout=10)
    with raw:
        raw.sendall(f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\nHost: 127.0.0.1:{origin}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(1)
        with context.wrap_socket(raw, server_hostname="origin.test") as tls:
            reader = tls.makefile("rb")
            bodies = []
            for path in steps:
                if not isinstance(path, str):
                    path()
                    continue
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: origin.test\r\n\r\n".encode())
                status = int(reader.readline().split()[1])
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                bodies.append((status, reader.read(length)))
            return bodies


def _unknown_after_handshake(client: _Client) -> Any:
    """A dataReceived that sends a non-HTTP greeting instead of a GET."""

    def data_received(data: bytes) -> None:
        client.buffer += data
        if not client.tls and b"\r\n\r\n" in client.buffer:
            client.buffer = b""
            client.tls = True
            trust = ssl.Certificate.loadPEM(client.trust.public_bytes(serialization.Encoding.PEM))
            client.transport.startTLS(ssl.optionsForClientTLS(client.server_name, trustRoot=trust))
            client.transport.write(b"\x00\x01 this is no protocol txgate knows, but long enough to tell\r\n")

    return data_received


def _memory_pair(server_groups: bytes | None = None) -> tuple[SSL.Connection, SSL.Connection]:
    """An accepting and a connecting pyOpenSSL connection over memory BIOs, not yet handshaking."""
    now = datetime.datetime.now(UTC)
    ca, ca_key = make_ca("memory CA", now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    cert, key = make_server_cert(ca, ca_key, ["memory.test"], not_before=now - datetime.timedelta(days=1), not_after=now + datetime.timedelta(days=30))
    server_context = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_context.use_certificate(X509.from_cryptography(cert))
    server_context.use_privatekey(PKey.from_cryptography_key(key))
    if server_groups is not None:
        assert _lib.SSL_CTX_set1_curves_list(server_context._context, server_groups) == 1
    server_side = SSL.Connection(server_context, None)
    server_side.set_accept_state()
    client_side = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client_side.set_connect_state()
    return server_side, client_side


def _exchange(a: SSL.Connection, b: SSL.Connection) -> None:
    """Move bytes both ways until neither side has any to send."""
    for _ in range(10):
        for one in (a, b):
            try:
                one.do_handshake()
            except SSL.WantReadError:
                pass
        moved = False
        for source, sink in ((a, b), (b, a)):
            try:
                sink.bio_write(source.bio_read(65536))
                moved = True
            except SSL.WantReadError:
                pass
        if not moved:
            return


class MemoryTLSTests(TestCase):
    """What an idle intercepted connection keeps: memory BIOs and key shares."""

    def test_key_shares_for(self) -> None:
        """One key share, for the group named (in any case); every group still offered."""
        shares = key_shares_for("x25519")
        assert shares is not None
        self.assertEqual(shares.count(b"*"), 1)
        self.assertIn(b"?*X25519:", shares)
        self.assertIn(b"?X25519MLKEM768:", shares)
        self.assertIsNone(key_shares_for("brainpoolP256r1"))

    def test_wrong_prediction_retried(self) -> None:
        """A server that wants another group than the one predicted gets it, after a HelloRetryRequest."""
        server_side, client_side = _memory_pair(b"P-256")
        _predict_key_share(client_side, "x25519")
        _exchange(client_side, server_side)
        self.assertEqual(client_side.get_group_name(), "secp256r1")
        client_side.send(b"ping")
        _exchange(client_side, server_side)
        self.assertEqual(server_side.recv(10), b"ping")

    def test_bios_renewed(self) -> None:
        """Once drained, the handshake's BIOs are swapped for empty ones, and the connection carries on."""
        server_side, client_side = _memory_pair()
        _exchange(client_side, server_side)
        client_side.send(b"pending")
        self.assertFalse(_renew_bios(client_side))  # bytes still to send
        _exchange(client_side, server_side)
        self.assertFalse(_renew_bios(client_side))  # the server's session tickets, not read yet
        self.assertRaises(SSL.WantReadError, client_side.recv, 10)
        old = client_side._into_ssl, client_side._from_ssl  # type: ignore[attr-defined]
        self.assertTrue(_renew_bios(client_side))
        self.assertNotEqual((client_side._into_ssl, client_side._from_ssl), old)  # type: ignore[attr-defined]
        self.assertEqual(server_side.recv(10), b"pending")
        server_side.send(b"pong")
        _exchange(client_side, server_side)
        self.assertEqual(client_side.recv(10), b"pong")
