"""
Tests for L{txgate.net.sni}: the certificate a client of a reverse virtual
service gets follows the name it asks for (SNI), over real TLS on loopback
with a test CA; bad certificate files are refused with errors naming them.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.protocols.policies import WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txgate.errors import ConfigErrors
from txgate.net.sni import load_server_tls
from txgate.testing import make_ca, make_server_cert, write_pem

WAIT = 5.0
"""Bound, in seconds, on any single wait in these tests."""

KEY = "virtual_service[0].certificates"
_NOW = datetime.datetime.now(datetime.timezone.utc)
_START, _END = _NOW - datetime.timedelta(days=1), _NOW + datetime.timedelta(days=30)


def _write(path: str, key: Any, *certs: Any, mode: int = 0o600) -> str:
    """A PEM file as operators deploy it: the key, then the chain, leaf first."""
    pem = serialization.Encoding.PEM
    data = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    data += b"".join(c.public_bytes(pem) for c in certs)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    return path


class _Pki:
    def __init__(self, directory: str) -> None:
        self.ca, self.ca_key = make_ca("txgate SNI test CA", _START, _END)
        self.ca_path = os.path.join(directory, "ca.pem")
        write_pem(self.ca_path, self.ca)

    def leaf(self, *names: str) -> tuple[Any, Any]:
        return make_server_cert(self.ca, self.ca_key, list(names), not_before=_START, not_after=_END)


def _names_of(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )


class _Idle(Protocol):
    """The application behind the TLS listener: the tests only need the handshake."""


class SNIServerTests(TestCase):
    """A listener made from L{load_server_tls} picks the certificate by SNI and negotiates HTTP/1.1."""

    timeout = 20

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.pki = _Pki(self.dir)
        alpha, alpha_key = self.pki.leaf("alpha.example.com")
        beta, beta_key = self.pki.leaf("beta.example.com", "*.wild.example.com")
        self.files = [
            _write(os.path.join(self.dir, "alpha.pem"), alpha_key, alpha, self.pki.ca),
            _write(os.path.join(self.dir, "beta.pem"), beta_key, beta, self.pki.ca),
        ]
        tls = load_server_tls(self.files, KEY)
        self.wrapper = WrappingFactory(TLSMemoryBIOFactory(tls, False, Factory.forProtocol(_Idle)))
        self.listening = reactor.listenTCP(0, self.wrapper, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        self.addCleanup(self._drain)

    @inlineCallbacks
    def _drain(self) -> Any:
        yield self.listening.stopListening()
        deadline = reactor.seconds() + WAIT
        while self.wrapper.protocols and reactor.seconds() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
        for protocol in list(self.wrapper.protocols):
            protocol.transport.abortConnection()
        while self.wrapper.protocols and reactor.seconds() < deadline + 1:
            yield deferLater(reactor, 0.01, lambda: None)

    def handshake(self, name: str | None, alpn: list[str] | None = None) -> Deferred[tuple[list[str], str | None]]:
        """
        Connect (in a thread, with the C{ssl} module) asking for C{name} (no
        SNI when C{None}), verify the chain against the test CA, and return
        the names in the certificate received and the ALPN protocol chosen.
        """

        def connect() -> tuple[list[str], str | None]:
            context = ssl.create_default_context(cafile=self.pki.ca_path)
            context.check_hostname = name is not None
            if alpn is not None:
                context.set_alpn_protocols(alpn)
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
            with context.wrap_socket(raw, server_hostname=name) as sock:
                der = sock.getpeercert(binary_form=True)
                assert der is not None
                return _names_of(der), sock.selected_alpn_protocol()

        return deferToThread(connect)

    @inlineCallbacks
    def test_each_name_gets_its_certificate(self):
        """A client asking for each configured name gets the certificate for it, verified."""
        names, _ = yield self.handshake("alpha.example.com")
        self.assertEqual(names, ["alpha.example.com"])
        names, _ = yield self.handshake("beta.example.com")
        self.assertEqual(names, ["beta.example.com", "*.wild.example.com"])

    @inlineCallbacks
    def test_wildcard(self):
        """A name under a C{*.} certificate gets that certificate."""
        names, _ = yield self.handshake("x.wild.example.com")
        self.assertEqual(names, ["beta.example.com", "*.wild.example.com"])

    @inlineCallbacks
    def test_no_sni_gets_first(self):
        """A client that sends no SNI gets the first file's certificate."""
        names, _ = yield self.handshake(None)
        self.assertEqual(names, ["alpha.example.com"])

    @inlineCallbacks
    def test_unknown_name_gets_first(self):
        """A name no certificate covers gets the first file's certificate (the handshake completes)."""
        result: list[list[str]] = []

        def connect() -> None:
            context = ssl.create_default_context(cafile=self.pki.ca_path)
            context.check_hostname = False
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)
            with context.wrap_socket(raw, server_hostname="gamma.example.org") as sock:
                result.append(_names_of(sock.getpeercert(binary_form=True)))

        yield deferToThread(connect)
        self.assertEqual(result, [["alpha.example.com"]])

    @inlineCallbacks
    def test_alpn_selects_http11(self):
        """A client offering h2 and http/1.1 gets http/1.1."""
        _, protocol = yield self.handshake("alpha.example.com", ["h2", "http/1.1"])
        self.assertEqual(protocol, "http/1.1")

    @inlineCallbacks
    def test_alpn_h2_only(self):
        """A client offering only h2 still completes the handshake, with no protocol selected."""
        names, protocol = yield self.handshake("beta.example.com", ["h2"])
        self.assertEqual(names, ["beta.example.com", "*.wild.example.com"])
        self.assertIsNone(protocol)


class LoadServerTLSTests(SynchronousTestCase):
    """L{load_server_tls} refuses files an operator must fix, naming each."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.pki = _Pki(self.dir)

    def test_readable_key(self):
        """A key file readable by group or others is refused, the error naming the file."""
        cert, key = self.pki.leaf("alpha.example.com")
        good = _write(os.path.join(self.dir, "good.pem"), *self.pki.leaf("beta.example.com")[::-1])
        path = _write(os.path.join(self.dir, "open.pem"), key, cert, mode=0o644)
        e = self.assertRaises(ConfigErrors, load_server_tls, [good, path], KEY)
        self.assertEqual([error.path for error in e.errors], [path])
        self.assertIn("readable by others", str(e))
        self.assertIn(path, str(e))

    def test_key_not_matching(self):
        """A key that does not belong to the certificate is refused, naming the file."""
        cert, _ = self.pki.leaf("alpha.example.com")
        _, other_key = self.pki.leaf("beta.example.com")
        path = _write(os.path.join(self.dir, "mismatch.pem"), other_key, cert)
        e = self.assertRaises(ConfigErrors, load_server_tls, [path], KEY)
        self.assertEqual([error.path for error in e.errors], [path])
        self.assertIn("does not match", str(e))

    def test_every_bad_file_named(self):
        """Two bad files: one error for each, so an operator fixes both at once."""
        cert, key = self.pki.leaf("alpha.example.com")
        _, other_key = self.pki.leaf("beta.example.com")
        first = _write(os.path.join(self.dir, "open.pem"), key, cert, mode=0o640)
        second = _write(os.path.join(self.dir, "mismatch.pem"), other_key, cert)
        e = self.assertRaises(ConfigErrors, load_server_tls, [first, second], KEY)
        self.assertEqual(sorted(error.path for error in e.errors), sorted([first, second]))

    def test_no_key(self):
        """A file with a certificate and no key is refused, naming the file."""
        cert, _ = self.pki.leaf("alpha.example.com")
        path = os.path.join(self.dir, "cert-only.pem")
        write_pem(path, cert)
        os.chmod(path, 0o600)
        e = self.assertRaises(ConfigErrors, load_server_tls, [path], KEY)
        self.assertEqual([error.path for error in e.errors], [path])
