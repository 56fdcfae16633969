"""
Tests for proxy authentication in L{txgate.net.explicit}: the 407 challenge,
Basic credentials checked against a realm, the exemption of revocation
fetches, and the cache of verified credentials, in memory.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Mapping

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.auth.test_exempt import OCSP_DER
from tests.auth.test_htpasswd import bcrypt_hash
from tests.auth.test_realm import basic, counting_verify
from txgate.accesslog import AccessLog
from txgate.auth import Realm, parse_htpasswd
from txgate.config import ServiceConfig
from txgate.interfaces import Checkpoint, Decision, IPolicy
from txgate.net.explicit import ExplicitProxy, ExplicitProxyFactory
from txgate.net.pipeline import PipelineSettings
from txgate.net.upstream import UpstreamPool
from txgate.plugins import discover
from txgate.session import Session
from txgate.testing import FakeConnector, HalfCloseableStringTransport, RecordingObserver, assert_provides

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def get(url: bytes, *headers: bytes) -> bytes:
    """A GET of C{url} through the proxy with C{headers} (C{b"Name: value"})."""
    host = url.split(b"/")[2]
    lines = [b"GET " + url + b" HTTP/1.1", b"Host: " + host, *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def authorization(user: str, password: str) -> bytes:
    return b"Proxy-Authorization: " + basic(user, password)


@implementer(IPolicy)
@attrs.define
class AuthenticatingPolicy:
    """
    Stands in for C{<proxy> authenticate(corp)}: asks for the C{corp} realm
    until the facts say the user is authenticated; denies C{mallory}'s
    requests once known. Records the facts of every decision.
    """

    realm: str | None = "corp"
    facts: list[dict[str, object]] = attrs.Factory(list)

    def decide(self, checkpoint: Checkpoint, session: Session, facts: Mapping[str, object]) -> Decision:
        self.facts.append(dict(facts))
        if facts.get("authenticated"):
            if facts.get("user") == "mallory":
                return Decision(False, "mallory is not welcome")
            return Decision(True)
        return Decision(True, properties={"authenticate": self.realm})


class _Harness:
    """An explicit proxy service whose policy asks for the C{corp} realm."""

    def __init__(self, policy: AuthenticatingPolicy | None = None, ttl: float = 300.0) -> None:
        self.clock = MemoryReactorClock()
        self.connector = FakeConnector(self.clock)
        self.pool = UpstreamPool(self.connector, self.clock)  # type: ignore[arg-type]
        self.service = ServiceConfig(
            name="explicit",
            kind="explicit-http",
            listen="tcp:0",
            clients=(ipaddress.ip_network("127.0.0.0/8"),),
        )
        self.policy = policy or AuthenticatingPolicy()
        users = parse_htpasswd(
            f"alice:{bcrypt_hash(b'secret')}\nmallory:{bcrypt_hash(b'letmein')}\n", "users.htpasswd"
        )
        self.realm = Realm("corp", users, credentials_ttl=ttl)
        settings = PipelineSettings(
            registry=discover(),
            policy=self.policy,
            reactor=self.clock,
            detect_protocol=True,
            tunnel_on_protocol_error=False,
            idle_timeout=self.service.idle_timeout,
            realms={"corp": self.realm},
        )
        self.access = AccessLog()
        self.records = RecordingObserver()
        self.access.publisher.addObserver(self.records)
        self.factory = ExplicitProxyFactory(self.service, settings, self.connector, self.pool, self.access)  # type: ignore[arg-type]

    def client(self) -> tuple[ExplicitProxy, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = HalfCloseableStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        protocol.makeConnection(transport)
        return protocol, transport


def _head(response: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    head = response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    pairs = [line.split(b": ", 1) for line in head[1:]]
    headers = {name.lower(): value for name, value in pairs}
    return head[0], headers


class ChallengeTests(SynchronousTestCase):
    """
    When policy asks for a realm, requests without valid credentials get a
    407 naming it, and the access log says why without the password.
    """

    def test_policy_provided(self) -> None:
        """The test policy provides L{IPolicy}."""
        assert_provides(self, IPolicy, AuthenticatingPolicy())

    def test_no_credentials(self) -> None:
        """
        No C{Proxy-Authorization}: 407 with C{Proxy-Authenticate: Basic
        realm="corp"}, nothing forwarded, the connection closed, and a
        C{deny} record with reason "authentication required".
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://origin.test/a"))
        status, headers = _head(client.value())
        self.assertEqual(status, b"HTTP/1.1 407 Proxy Authentication Required")
        self.assertEqual(headers[b"proxy-authenticate"], b'Basic realm="corp"')
        self.assertEqual(h.connector.pending, [])
        self.assertTrue(client.disconnecting)
        self.assertIsNone(proxy.session.user)
        [record] = h.records.events
        self.assertEqual(
            {k: record[k] for k in ("status", "verdict", "reason", "target")},
            {"status": 407, "verdict": "deny", "reason": "authentication required", "target": "http://origin.test/a"},
        )

    def test_wrong_password(self) -> None:
        """
        A wrong password or unknown user: 407 again, logged as "invalid
        credentials for realm corp"; neither the password nor the header
        value appears in the response or the record.
        """
        for user, password in [("alice", "wrong-pw"), ("nosuchuser", "secret")]:
            h = _Harness()
            proxy, client = h.client()
            proxy.dataReceived(get(b"http://origin.test/a", authorization(user, password)))
            response = client.value()
            status, headers = _head(response)
            self.assertEqual(status, b"HTTP/1.1 407 Proxy Authentication Required", user)
            self.assertEqual(headers[b"proxy-authenticate"], b'Basic realm="corp"')
            self.assertEqual(h.connector.pending, [])
            [record] = h.records.events
            self.assertEqual(
                (record["status"], record["verdict"], record["reason"]),
                (407, "deny", "invalid credentials for realm corp"),
            )
            secrets = (password.encode(), basic(user, password).split()[1])
            for secret in secrets:
                self.assertNotIn(secret, response)
                self.assertNotIn(secret.decode(), repr(record))

    def test_unconfigured_realm(self) -> None:
        """A policy naming a realm that is not configured fails closed with 403."""
        h = _Harness(AuthenticatingPolicy(realm="elsewhere"))
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://origin.test/a", authorization("alice", "secret")))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403 "))
        self.assertEqual(h.connector.pending, [])
        [record] = h.records.events
        self.assertEqual(
            (record["verdict"], record["reason"]), ("deny", "authentication realm elsewhere is not configured")
        )

    def test_no_authenticate_property(self) -> None:
        """A decision whose C{authenticate} is C{None} asks for nothing."""
        h = _Harness(AuthenticatingPolicy(realm=None))
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://origin.test/a"))
        [pending] = h.connector.pending
        pending.succeed().dataReceived(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))


class AuthenticatedTests(SynchronousTestCase):
    """
    Valid credentials: the request is forwarded without them, the session
    knows the user, and policy decides again knowing it.
    """

    def test_forwarded(self) -> None:
        """
        With alice's password the request is forwarded, C{session.user} is
        alice, C{Proxy-Authorization} does not go upstream, and policy was
        asked twice: unauthenticated, then with C{user}/C{authenticated}.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://origin.test/a", authorization("alice", "secret")))
        self.assertEqual(proxy.session.user, "alice")
        [pending] = h.connector.pending
        upstream = pending.succeed()
        sent = upstream.transport.value()
        self.assertTrue(sent.startswith(b"GET /a HTTP/1.1\r\n"), sent)
        self.assertNotIn(b"proxy-authorization", sent.lower())
        self.assertNotIn(basic("alice", "secret").split()[1], sent)
        upstream.dataReceived(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"))
        self.assertFalse(client.disconnecting)
        first, second = h.policy.facts
        self.assertNotIn("authenticated", first)
        self.assertEqual((second["user"], second["authenticated"]), ("alice", True))
        self.assertEqual(second["url.host"], "origin.test")
        [record] = h.records.events
        self.assertEqual((record["status"], record["verdict"]), (200, "allow"))

    def test_second_decision_denies(self) -> None:
        """The decision made knowing the user applies: mallory is denied with 403."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://origin.test/a", authorization("mallory", "letmein")))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 403 "))
        self.assertEqual(h.connector.pending, [])
        [record] = h.records.events
        self.assertEqual((record["verdict"], record["reason"]), ("deny", "mallory is not welcome"))

    def test_connect(self) -> None:
        """A CONNECT with valid credentials is tunneled; without them it gets 407."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n" + authorization("alice", "secret") + b"\r\n\r\n")
        [pending] = h.connector.pending
        pending.succeed()
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 Connection established"))
        proxy, client = h.client()
        proxy.dataReceived(b"CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 407 "))
        self.assertEqual(len(h.connector.pending), 1)

    def test_each_request_authenticated(self) -> None:
        """
        On a kept-alive connection, each request brings its own credentials:
        a second request without them is challenged, and the session no
        longer names the first request's user.
        """
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://origin.test/a", authorization("alice", "secret")))
        h.connector.pending[0].succeed().dataReceived(OK)
        proxy.dataReceived(get(b"http://origin.test/b"))
        self.assertIn(b"HTTP/1.1 407 ", client.value())
        self.assertIsNone(proxy.session.user)
        first, second = h.records.events
        self.assertEqual((first["status"], second["status"], second["seq"]), (200, 407, 2))

    def test_cache(self) -> None:
        """
        A second request with the same C{Proxy-Authorization} within
        C{credentials_ttl} does not run the password hash again; one after
        the TTL does.
        """
        calls = counting_verify(self)
        h = _Harness(ttl=60)
        request = get(b"http://origin.test/a", authorization("alice", "secret"))
        proxy, client = h.client()
        proxy.dataReceived(request)
        h.connector.pending[0].succeed().dataReceived(OK)
        h.clock.advance(59)
        proxy, client = h.client()
        proxy.dataReceived(request)
        self.assertEqual(proxy.session.user, "alice")
        self.assertEqual(len(calls), 1)
        h.clock.advance(1)
        proxy, client = h.client()
        proxy.dataReceived(request)
        self.assertEqual(len(calls), 2)
        self.assertEqual(calls[0], ("alice", b"secret"))


class ExemptTests(SynchronousTestCase):
    """
    CRL, CA-issuer and OCSP fetches are forwarded without credentials even
    though policy asks for a realm.
    """

    def _forwarded(self, request: bytes) -> tuple[_Harness, bytes]:
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(request)
        self.assertEqual(len(h.connector.pending), 1, msg=client.value())
        upstream = h.connector.pending[0].succeed()
        sent = upstream.transport.value()
        upstream.dataReceived(OK)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK"), client.value())
        self.assertIsNone(proxy.session.user)
        [record] = h.records.events
        self.assertEqual((record["status"], record["verdict"]), (200, "allow"))
        return h, sent

    def test_crl(self) -> None:
        """A CRL GET is forwarded without credentials."""
        self._forwarded(get(b"http://crl.microsoft.com/pki/crl/products/MicRooCerAut_2010-06-23.crl"))

    def test_ca_issuer(self) -> None:
        """A CA-issuer certificate GET is forwarded without credentials."""
        self._forwarded(get(b"http://www.microsoft.com/pki/certs/MicRooCerAut_2010-06-23.crt"))

    def test_ocsp_post(self) -> None:
        """An OCSP POST is forwarded, body and all, without credentials."""
        head = (
            b"POST http://ocsp.test/ HTTP/1.1\r\nHost: ocsp.test\r\n"
            b"Content-Type: application/ocsp-request\r\nContent-Length: "
            + str(len(OCSP_DER)).encode()
            + b"\r\n\r\n"
        )
        h, sent = self._forwarded(head + OCSP_DER)
        self.assertTrue(sent.endswith(OCSP_DER))

    def test_ocsp_get(self) -> None:
        """An RFC 6960 OCSP GET is forwarded without credentials."""
        from urllib.parse import quote

        encoded = quote(base64.b64encode(OCSP_DER).decode("ascii"), safe="").encode("ascii")
        self._forwarded(get(b"http://ocsp.test/ocsp/" + encoded))

    def test_not_exempt(self) -> None:
        """A GET of anything else still needs credentials."""
        h = _Harness()
        proxy, client = h.client()
        proxy.dataReceived(get(b"http://crl.test/ca.crl.exe"))
        self.assertTrue(client.value().startswith(b"HTTP/1.1 407 "))
