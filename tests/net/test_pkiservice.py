"""
Tests for serving txgate's CRL, OCSP responder and issuer certificate: the
explicit service answering requests for C{crl_host} itself, and
L{txgate.net.pkiservice} (the dedicated C{crl_listen} site), all in memory.
"""

from __future__ import annotations

import io
from typing import Any

from cryptography import x509
from cryptography.x509 import ocsp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txgate.auth import Realm, parse_htpasswd
from txgate.config import SSLConfig
from txgate.interfaces import PolicyEnvironment
from txgate.net.pipeline import PipelineSettings
from txgate.net.pkiservice import AuthorityResource, authority_site
from txgate.pki.authority import MAX_OCSP_BODY, Authority
from txgate.pki.mint import KEY_TYPE_ECDSA, template_from_upstream
from txgate.policy.cpl import parse_policy
from txgate.policy.default import DefaultPolicy
from txgate.testing import HalfCloseableStringTransport

from tests.auth.test_htpasswd import bcrypt_hash
from tests.net.test_explicit import _Harness as ExplicitHarness
from tests.pki.helpers import NOW, keyring, upstream_cert
from tests.pki.test_authority import FakeClock, ocsp_request


def _authority(testcase: SynchronousTestCase, crl_host: str = "crl.test:80") -> Authority:
    ca_dir = testcase.mktemp()
    return Authority(keyring(), SSLConfig(crl_host=crl_host), ca_dir, FakeClock())


def _split(response: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Status line, headers (lower-case names) and body of one response."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


class _Harness(ExplicitHarness):
    """An explicit proxy service whose settings carry an L{Authority}."""

    def __init__(self, testcase: SynchronousTestCase, policy: Any = None, crl_host: str = "crl.test:80") -> None:
        self.authority = _authority(testcase, crl_host)
        users = parse_htpasswd(f"alice:{bcrypt_hash(b'secret')}\n", "users.htpasswd")
        settings: dict[str, Any] = {
            "realms": {"corp": Realm("corp", users)},
            "ssl": self.authority.ssl,
            "authority": self.authority,
        }
        if policy is not None:
            settings["policy"] = policy
        super().__init__(settings=settings)


GET_CRL = b"GET http://crl.test/txgate.crl HTTP/1.1\r\nHost: crl.test\r\n\r\n"
AUTH_POLICY = "<proxy>\n    authenticate(corp)\n"


class ExplicitServiceTests(SynchronousTestCase):
    """
    The explicit service answers absolute-URI requests for C{crl_host}
    itself: never forwarded, never behind authentication, policy or the
    C{clients} list.
    """

    def assertCRL(self, h: _Harness, client: StringTransport) -> None:
        status, headers, body = _split(client.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], b"application/pkix-crl")
        self.assertEqual(headers[b"content-length"], str(len(body)).encode("ascii"))
        self.assertEqual(body, h.authority.crl_der())
        x509.load_der_x509_crl(body)
        self.assertEqual(h.connector.pending, [])
        [record] = h.records.events
        self.assertEqual(
            {k: record[k] for k in ("method", "target", "status", "verdict", "upstream")},
            {
                "method": "GET",
                "target": "http://crl.test/txgate.crl",
                "status": 200,
                "verdict": "allow",
                "upstream": "-",
            },
        )

    def test_crl(self) -> None:
        """
        C{GET http://crl.test/txgate.crl} is answered with 200, the CRL as
        C{application/pkix-crl}, nothing connected upstream, one access
        record; the connection stays open for the next request.
        """
        h = _Harness(self)
        proxy, client = h.client()
        proxy.dataReceived(GET_CRL)
        self.assertCRL(h, client)
        self.assertFalse(client.disconnecting)
        client.clear()
        proxy.dataReceived(GET_CRL)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(len(h.records.events), 2)

    def test_explicit_port(self) -> None:
        """C{crl_host} with a port other than 80 matches only that port."""
        h = _Harness(self, crl_host="crl.test:8080")
        proxy, client = h.client()
        proxy.dataReceived(b"GET http://CRL.test:8080/txgate.crl HTTP/1.1\r\nHost: crl.test:8080\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 "))
        self.assertEqual(h.connector.pending, [])
        proxy2, client2 = h.client()
        proxy2.dataReceived(GET_CRL)  # port 80: someone else's host
        self.assertEqual(len(h.connector.pending), 1)
        self.assertEqual(client2.value(), b"")

    def test_cpl_authenticate(self) -> None:
        """A CPL policy asking for credentials does not challenge the CRL fetch."""
        h = _Harness(self, parse_policy(AUTH_POLICY, "auth.cpl", env=PolicyEnvironment(realms=frozenset({"corp"}))))
        proxy, client = h.client()
        proxy.dataReceived(GET_CRL)
        self.assertCRL(h, client)
        # The same policy challenges any other request.
        other, other_client = h.client()
        other.dataReceived(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.assertTrue(other_client.value().startswith(b"HTTP/1.1 407 "), other_client.value())

    def test_policy_denies(self) -> None:
        """A policy that denies everything does not deny the CRL."""
        h = _Harness(self, DefaultPolicy(False))
        proxy, client = h.client()
        proxy.dataReceived(GET_CRL)
        self.assertCRL(h, client)

    def test_client_not_allowed(self) -> None:
        """
        A client outside the service's C{clients} still gets the CRL (a
        client that cannot fetch it aborts its handshake); anything else is
        refused with 403.
        """
        h = _Harness(self)
        proxy, client = h.client("192.0.2.7")
        proxy.dataReceived(GET_CRL)
        self.assertCRL(h, client)
        other, other_client = h.client("192.0.2.7")
        other.dataReceived(b"GET http://origin.test/ HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        self.assertTrue(other_client.value().startswith(b"HTTP/1.1 403 "), other_client.value())

    def test_ocsp_post(self) -> None:
        """C{POST http://crl.test/ocsp} with a DER body: the OCSP response (C{good} for a minted leaf)."""
        h = _Harness(self, DefaultPolicy(False))
        leaf = h.authority.mint(template_from_upstream(upstream_cert(), now=NOW), KEY_TYPE_ECDSA)
        request = ocsp_request(leaf, nonce=b"nonce-0123456789")
        proxy, client = h.client()
        proxy.dataReceived(
            b"POST http://crl.test/ocsp HTTP/1.1\r\nHost: crl.test\r\n"
            b"Content-Type: application/ocsp-request\r\nContent-Length: "
            + str(len(request)).encode("ascii")
            + b"\r\n\r\n"
        )
        self.assertEqual(client.value(), b"")  # the body is still to come
        proxy.dataReceived(request)
        status, headers, body = _split(client.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], b"application/ocsp-response")
        response = ocsp.load_der_ocsp_response(body)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(response.serial_number, leaf.serial_number)
        self.assertEqual(response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, b"nonce-0123456789")
        [record] = h.records.events
        self.assertEqual((record["method"], record["status"], record["verdict"]), ("POST", 200, "allow"))

    def test_head(self) -> None:
        """HEAD of the CRL: the headers (with the CRL's length), no body."""
        h = _Harness(self)
        proxy, client = h.client()
        proxy.dataReceived(b"HEAD http://crl.test/txgate.crl HTTP/1.1\r\nHost: crl.test\r\n\r\n")
        status, headers, body = _split(client.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-length"], str(len(h.authority.crl_der())).encode("ascii"))
        self.assertEqual(body, b"")

    def test_not_found(self) -> None:
        """Another path on the CRL host: 404 from txgate, not forwarded."""
        h = _Harness(self)
        proxy, client = h.client()
        proxy.dataReceived(b"GET http://crl.test/ HTTP/1.1\r\nHost: crl.test\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 404 "))
        self.assertEqual(h.connector.pending, [])
        [record] = h.records.events
        self.assertEqual(record["status"], 404)

    def test_body_too_big(self) -> None:
        """A body over the OCSP cap: 413 and the connection closed."""
        h = _Harness(self)
        proxy, client = h.client()
        size = MAX_OCSP_BODY + 1
        proxy.dataReceived(
            b"POST http://crl.test/ocsp HTTP/1.1\r\nHost: crl.test\r\nContent-Length: "
            + str(size).encode("ascii")
            + b"\r\n\r\n"
            + b"x" * size
        )
        self.assertTrue(client.value().startswith(b"HTTP/1.1 413 "), client.value()[:40])
        self.assertTrue(client.disconnecting)

    def test_without_authority(self) -> None:
        """Without an authority (no interception), the CRL host is an ordinary origin."""
        h = _Harness(self)
        h.factory.settings = PipelineSettings(
            registry=h.factory.settings.registry,
            policy=DefaultPolicy(True),
            reactor=h.clock,
            detect_protocol=True,
            tunnel_on_protocol_error=False,
            idle_timeout=h.service.idle_timeout,
        )
        proxy, client = h.client()
        proxy.dataReceived(GET_CRL)
        [pending] = h.connector.pending
        self.assertEqual((pending.host, pending.port), ("crl.test", 80))


class AuthorityResourceTests(SynchronousTestCase):
    """L{AuthorityResource} and L{authority_site}: the C{crl_listen} listener."""

    def render(self, resource: AuthorityResource, method: bytes, path: bytes, body: bytes = b"") -> DummyRequest:
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.method = method
        request.path = path  # type: ignore[attr-defined]
        request.uri = path
        request.content = io.BytesIO(body)  # type: ignore[attr-defined]
        result = resource.render(request)
        request.write(result)
        request.finish()
        return request

    def test_crl(self) -> None:
        """GET /txgate.crl: 200, C{application/pkix-crl}, cacheable for an hour."""
        authority = _authority(self)
        request = self.render(AuthorityResource(authority), b"GET", b"/txgate.crl")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/pkix-crl"])
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"max-age=3600"])
        self.assertEqual(b"".join(request.written), authority.crl_der())

    def test_ocsp(self) -> None:
        """POST /ocsp: the OCSP response."""
        authority = _authority(self)
        leaf = authority.mint(template_from_upstream(upstream_cert(), now=NOW), KEY_TYPE_ECDSA)
        request = self.render(AuthorityResource(authority), b"POST", b"/ocsp", ocsp_request(leaf))
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/ocsp-response"])
        response = ocsp.load_der_ocsp_response(b"".join(request.written))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)

    def test_not_found(self) -> None:
        """Elsewhere: 404, plain text, not cached."""
        request = self.render(AuthorityResource(_authority(self)), b"GET", b"/elsewhere")
        self.assertEqual(request.responseCode, 404)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"cache-control"), [b"no-cache"])

    def test_site(self) -> None:
        """
        The real L{authority_site} over a transport: any Host, GET /txgate.crl
        and POST /ocsp on one keep-alive connection.
        """
        authority = _authority(self)
        site = authority_site(authority)
        protocol = site.buildProtocol(IPv4Address("TCP", "198.51.100.1", 5000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /txgate.crl HTTP/1.1\r\nHost: anything.example\r\n\r\n")
        status, headers, body = _split(transport.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], b"application/pkix-crl")
        self.assertEqual(body, authority.crl_der())
        transport.clear()
        leaf = authority.mint(template_from_upstream(upstream_cert(), now=NOW), KEY_TYPE_ECDSA)
        request = ocsp_request(leaf)
        protocol.dataReceived(
            b"POST /ocsp HTTP/1.1\r\nHost: anything.example\r\nContent-Type: application/ocsp-request\r\n"
            b"Content-Length: " + str(len(request)).encode("ascii") + b"\r\n\r\n" + request
        )
        status, headers, body = _split(transport.value())
        self.assertEqual(status, b"HTTP/1.1 200 OK")
        self.assertEqual(headers[b"content-type"], b"application/ocsp-response")
        self.assertEqual(ocsp.load_der_ocsp_response(body).certificate_status, ocsp.OCSPCertStatus.GOOD)
        protocol.connectionLost(None)


class TransparentServiceTests(SynchronousTestCase):
    """
    A redirected port-80 connection whose C{Host} is C{crl_host} is answered
    by txgate too: the HTTP handler shares the explicit service's request
    handling.
    """

    def test_crl_on_port_80(self) -> None:
        from txgate.interfaces import HandoffContext
        from txgate.net.httphandler import HTTPHandoff
        from txgate.session import Address, Session
        from txgate.testing import make_upstream

        h = _Harness(self)
        session = Session(id="t-1", service="transparent", client=Address("127.0.0.1", 40000), started=0.0)
        session.destination = Address("192.0.2.80", 80)
        finished: list[str] = []
        context = HandoffContext(
            session=session,
            reactor=h.clock,
            upstream=make_upstream("192.0.2.80", 80),
            idle_timeout=60.0,
            protocol_error=lambda error, received: None,
            finished=finished.append,
            service=h.factory,
        )
        handler = HTTPHandoff().build(context)
        client = HalfCloseableStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        handler.makeConnection(client)
        handler.dataReceived(b"GET /txgate.crl HTTP/1.1\r\nHost: crl.test\r\n\r\n")
        status, headers, body = _split(client.value())
        self.assertEqual((status, headers[b"content-type"]), (b"HTTP/1.1 200 OK", b"application/pkix-crl"))
        self.assertEqual(body, h.authority.crl_der())
