# -*- test-case-name: tests.test_testing -*-
"""
Fakes and helpers for txgate's tests and for plugin authors' tests.

Everything here runs without a network: upstream connections are real
L{txgate.net.upstream.Upstream} protocols on L{StringTransport}s, and time is a
L{MemoryReactorClock} that only moves when the test says so.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Sequence

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyObject

from txgate.net.upstream import Upstream

__all__ = [
    "assert_provides",
    "HalfCloseableStringTransport",
    "make_upstream",
    "FakeConnector",
    "PendingConnection",
    "RecordingObserver",
    "make_ca",
    "make_server_cert",
    "write_pem",
]


def assert_provides(testcase: SynchronousTestCase, interface: InterfaceClass, obj: object) -> None:
    """
    Fail C{testcase} unless C{obj} fully provides C{interface}: declared and
    with every attribute and method of the right signature.
    """
    try:
        verifyObject(interface, obj)
    except Exception as e:
        testcase.fail(f"{obj!r} does not provide {interface.__name__}: {e}")


class HalfCloseableStringTransport(StringTransport):
    """
    A L{StringTransport} that also records half-closes
    (C{loseWriteConnection}), as TCP transports allow, and refuses anything
    but C{bytes} as real transports do.

    @ivar write_closed: whether C{loseWriteConnection} was called.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True

    def write(self, data: bytes) -> None:
        # As strict as a real transport, which refuses anything but bytes.
        _check_bytes(data)
        super().write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        for piece in data:
            _check_bytes(piece)
        super().writeSequence(data)


def _check_bytes(data: object) -> None:
    if type(data) is not bytes:
        raise TypeError(f"Data must be bytes, got {type(data).__name__}")


def make_upstream(host: str = "192.0.2.10", port: int = 80) -> Upstream:
    """
    An upstream connection whose transport is a L{StringTransport}: what the
    proxy writes is in C{upstream.transport.value()}, and the test plays the
    server by calling C{upstream.dataReceived(...)}.
    """
    upstream = Upstream()
    upstream.makeConnection(HalfCloseableStringTransport(peerAddress=IPv4Address("TCP", host, port)))
    return upstream


@attrs.define
class PendingConnection:
    """A connection attempt the test completes or fails by hand."""

    host: str
    port: int
    tls: bool
    deferred: Deferred[Upstream]

    def succeed(self) -> Upstream:
        upstream = make_upstream(self.host, self.port)
        self.deferred.callback(upstream)
        return upstream


@attrs.define
class FakeConnector:
    """
    Stands in for L{txgate.net.upstream.Connector}: every C{connect} is
    recorded in C{pending} for the test to complete.
    """

    reactor: Any = attrs.Factory(MemoryReactorClock)
    connect_timeout: float = 10.0
    pending: list[PendingConnection] = attrs.Factory(list)

    def connect(self, host: str, port: int, tls: bool = False) -> Deferred[Upstream]:
        d: Deferred[Upstream] = Deferred()
        self.pending.append(PendingConnection(host, port, tls, d))
        return d


@attrs.define
class RecordingObserver:
    """A log observer keeping every event, for assertions on fields."""

    events: list[dict[str, Any]] = attrs.Factory(list)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


# -- test certificates (a CA and the servers it signs, as origins present them) --


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str, not_before: datetime.datetime, not_after: datetime.datetime) -> tuple[Any, Any]:
    """
    A self-signed test CA (P-256): C{(certificate, key)}, with basicConstraints
    CA:true, keyUsage keyCertSign + cRLSign and an SKI.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server_cert(
    ca: Any,
    ca_key: Any,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    *,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    key: Any = None,
    serial: int | None = None,
    crl_url: str | None = None,
    ocsp_url: str | None = None,
) -> tuple[Any, Any]:
    """
    A server certificate C{ca} signs: C{(certificate, key)}, CN the first
    name, SANs C{dns_names} then C{ip_addresses}, EKU serverAuth, SKI and
    AKI, and optionally a CRL Distribution Point and an AIA OCSP URL. A
    fresh P-256 key unless C{key} is given.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

    key = key or ec.generate_private_key(ec.SECP256R1())
    sans: list[Any] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else str(ip_addresses[0])))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if crl_url is not None:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url is not None:
        access = x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def write_pem(path: str, *certs: Any, key: Any = None) -> None:
    """
    Write C{certs} (PEM, in order) to C{path}; with C{key}, write the key
    alone instead, created with mode 0600.
    """
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    if key is not None:
        data = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(data)
        return
    with open(path, "wb") as f:
        f.write(b"".join(c.public_bytes(pem) for c in certs))
