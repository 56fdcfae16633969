"""
Shared fixtures for the L{txgate.pki} tests: one keyring per process (RSA
key generation is the slow part) and upstream certificates made to order.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from txgate.pki.keyring import Keyring, generate_keyring

NOW = datetime.datetime(2026, 3, 14, 15, 9, 26, tzinfo=datetime.timezone.utc)

_keyring: Keyring | None = None


def keyring() -> Keyring:
    """A keyring generated at L{NOW}, shared by all tests."""
    global _keyring
    if _keyring is None:
        _keyring = generate_keyring(NOW)
    return _keyring


_upstream_key = ec.generate_private_key(ec.SECP256R1())


def upstream_cert(
    common_name: str | None = "meet.example.com",
    dns_names: Sequence[str] | None = ("meet.example.com", "lyncdiscover.example.com"),
    ip_addresses: Sequence[str] = (),
    not_before: datetime.datetime = NOW - datetime.timedelta(days=30),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=60),
) -> x509.Certificate:
    """
    A certificate as an upstream server would present it (self-signed by an
    unrelated key; only its names and validity matter). C{dns_names=None}
    leaves out the subjectAltName extension.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Public CA")]))
        .public_key(_upstream_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if dns_names is not None:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(_upstream_key, hashes.SHA256())
