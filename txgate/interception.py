# -*- test-case-name: tests.test_interception -*-
"""
The decisions of SSL interception that need no sockets: which leaf key a
client gets, which ALPN protocols go upstream, what the decrypted stream is
called, and why an upstream certificate is not trusted.

The Twisted side (L{txgate.net.intercept}) moves the bytes and calls these.
"""

from __future__ import annotations

import datetime
import enum
import ipaddress
from typing import Sequence

import attrs
from OpenSSL import SSL
from twisted.python.failure import Failure

from txgate.detect.tls import ClientHello, uint16s
from txgate.pki.mint import KEY_TYPE_ECDSA, KEY_TYPE_RSA, LeafTemplate
from txgate.session import ClientProtocol

__all__ = [
    "Mode",
    "InnerName",
    "choose_key_type",
    "describe_tls_failure",
    "describe_verify_error",
    "inner_name",
    "upstream_alpn",
    "vouched_template",
]

VOUCHED_VALIDITY = datetime.timedelta(days=31)

EXT_SIGNATURE_ALGORITHMS = 0x000D
ECDSA_SECP256R1_SHA256 = 0x0403
TLS13 = 0x0304
# TLS 1.2 cipher suites that authenticate with an ECDSA certificate.
ECDSA_SUITES = frozenset({0xC02B, 0xC02C, 0xCCA9, 0xC009, 0xC00A, 0xC023, 0xC024, 0xC0AC, 0xC0AD, 0xC0AE, 0xC0AF})



class Mode(enum.StrEnum):
    """C{ssl.forward_proxy}'s values."""

    NO = "no"
    """Tunnel the TLS stream without decrypting it."""
    HTTPS = "https"
    """Intercept; the decrypted stream must be HTTP."""
    YES = "yes"
    """Intercept with proxy handoff: the decrypted stream goes back through the detectors."""


def _signature_algorithms(hello: ClientHello) -> tuple[int, ...]:
    for kind, data in hello.extensions:
        if kind == EXT_SIGNATURE_ALGORITHMS and len(data) >= 2:
            length = int.from_bytes(data[:2], "big")
            body = data[2 : 2 + length]
            return uint16s(body)
    return ()


def choose_key_type(hello: ClientHello | None, available: Sequence[str]) -> str:
    """
    The leaf key a client gets: ECDSA P-256 (one cheap signature per
    handshake) when the client can verify it, RSA-2048 otherwise.

    A client can use an ECDSA leaf when it offers C{ecdsa_secp256r1_sha256}
    and, below TLS 1.3, an ECDSA cipher suite.
    """
    if not available:
        raise ValueError("no leaf key types configured")
    if KEY_TYPE_ECDSA in available and hello is not None and ECDSA_SECP256R1_SHA256 in _signature_algorithms(hello):
        if TLS13 in hello.supported_versions or ECDSA_SUITES.intersection(hello.cipher_suites):
            return KEY_TYPE_ECDSA
    if KEY_TYPE_RSA in available:
        return KEY_TYPE_RSA
    return available[0]


_UNHANDLED_ALPN_PREFIXES = ("h2", "h3", "spdy/", "hq")
_HTTP1 = ("http/1.1", "http/1.0")


def upstream_alpn(offered: Sequence[str], mode: Mode) -> tuple[str, ...]:
    """
    The ALPN protocols to offer upstream on the client's behalf: the
    client's, in its order, minus those txgate cannot carry decrypted (HTTP/2
    and later; a client offering C{h2} and C{http/1.1} then speaks HTTP/1.1).
    Under C{ssl.forward_proxy(https)} only HTTP/1.x is offered.
    """
    if mode is Mode.HTTPS:
        return tuple(p for p in offered if p in _HTTP1)
    return tuple(p for p in offered if not p.startswith(_UNHANDLED_ALPN_PREFIXES))


@attrs.frozen
class InnerName:
    """
    The names of a decrypted stream.

    @ivar policy: C{client.protocol} as policy sees it while deciding.
    @ivar carried: C{client.protocol} once allowed, as logs and the console
        show it.
    """

    policy: str
    carried: str


def inner_name(detected: str) -> InnerName:
    """
    What a protocol detected inside intercepted TLS is called: HTTP is
    C{https}, SIP is C{sips}. An undetected stream is offered to policy as
    C{tcp} (so C{DENY client.protocol=!ssl tunneled=yes} stops it) and,
    when allowed, carried as C{ssl} (STunnel: the decrypted bytes tunneled
    and re-encrypted upstream).
    """
    if detected == ClientProtocol.HTTP:
        return InnerName(ClientProtocol.HTTPS, ClientProtocol.HTTPS)
    if detected == ClientProtocol.SIP:
        return InnerName(ClientProtocol.SIPS, ClientProtocol.SIPS)
    if detected in (ClientProtocol.TCP, ClientProtocol.SSL):
        return InnerName(detected, ClientProtocol.SSL)
    return InnerName(detected, detected)


# OpenSSL's X509_V_ERR_* codes that upstream verification meets in practice.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    28: "certificate rejected",
}


def describe_verify_error(code: int) -> str:
    """OpenSSL's words for a certificate verification error code."""
    return _VERIFY_ERRORS.get(code, f"certificate verification error {code}")


def describe_tls_failure(reason: Failure | None) -> str:
    """OpenSSL's reason strings of a TLS failure, or the failure's message."""
    if reason is None:
        return "connection closed"
    value = reason.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [entry[-1] for entry in value.args[0] if isinstance(entry, tuple) and entry[-1]]
        if parts:
            return ", ".join(parts)
    return reason.getErrorMessage()


def vouched_template(template: LeafTemplate, name: str, now: datetime.datetime) -> LeafTemplate:
    """
    The leaf for an upstream that failed verification but that policy
    vouches for (C{server.certificate.validate(no)}): the name the client
    asked for is added and the validity covers C{now}, so the client is not
    shown the error txgate was told to accept. The window moves once a day,
    so the leaf stays cached for the day.
    """
    dns_names, ip_addresses = template.dns_names, template.ip_addresses
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if name and name.lower() not in (n.lower() for n in dns_names):
            dns_names = (*dns_names, name)
    else:
        if address not in ip_addresses:
            ip_addresses = (*ip_addresses, address)
    day = now.astimezone(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = day - datetime.timedelta(days=1)
    return attrs.evolve(
        template,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        not_before=start,
        not_after=start + VOUCHED_VALIDITY,
    )
