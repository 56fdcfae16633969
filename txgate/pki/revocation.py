# -*- test-case-name: tests.pki.test_revocation -*-
"""
Revocation checking of upstream certificates over OCSP (C{[ssl]
upstream_revocation}): the request to send and what the answer means.

Pure: certificates and DER in, a L{Status} out; the glue fetches.
"""

from __future__ import annotations

import datetime
from typing import Iterable

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

__all__ = ["Status", "GOOD", "REVOKED", "UNKNOWN", "find_issuer", "judge", "ocsp_request", "ocsp_url_of"]

GOOD = "good"
REVOKED = "revoked"
UNKNOWN = "unknown"

CLOCK_SKEW = datetime.timedelta(minutes=5)
DEFAULT_FRESHNESS = datetime.timedelta(hours=1)
"""How long an answer without nextUpdate is reused."""


@attrs.frozen
class Status:
    """
    What is known about a certificate's revocation.

    @ivar status: L{GOOD}, L{REVOKED} or L{UNKNOWN} (no usable answer).
    @ivar reason: why, for the log.
    @ivar until: when to ask again.
    """

    status: str
    reason: str
    until: datetime.datetime


def ocsp_url_of(cert: x509.Certificate) -> str | None:
    """The first HTTP OCSP responder URL in C{cert}'s authorityInfoAccess."""
    try:
        access = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        location = description.access_location
        if description.access_method == AuthorityInformationAccessOID.OCSP and isinstance(
            location, x509.UniformResourceIdentifier
        ):
            if location.value.lower().startswith("http://"):
                return location.value
    return None


def find_issuer(leaf: x509.Certificate, candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The candidate that signed C{leaf} (chain certificates first, then trust anchors)."""
    for candidate in candidates:
        if candidate.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return candidate
    return None


def ocsp_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSP request for C{leaf} (SHA-1 CertID, which every responder reads)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def _signed_by(key: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bool:
    try:
        if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _responder_key(response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime) -> object | None:
    """
    The key that may sign for C{issuer}: its own, or that of a delegated
    responder certificate it issued with the OCSPSigning purpose.
    """
    for cert in response.certificates:
        if cert.subject == issuer.subject and cert.public_key() == issuer.public_key():
            return issuer.public_key()
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            continue
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            continue
        if find_issuer(cert, [issuer]) is not None:
            return cert.public_key()
    return issuer.public_key()


def judge(
    der: bytes, leaf: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
) -> Status:
    """
    What an OCSP response says about C{leaf}: only a response signed for
    C{issuer}, about C{leaf}'s serial and current at C{now}, counts.
    """
    retry = now + DEFAULT_FRESHNESS
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        return Status(UNKNOWN, f"unreadable OCSP response: {e}", now + CLOCK_SKEW)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return Status(UNKNOWN, f"OCSP responder answered {response.response_status.name.lower()}", now + CLOCK_SKEW)
    key = _responder_key(response, issuer, now)
    if not _signed_by(key, response.signature, response.tbs_response_bytes, response.signature_hash_algorithm):
        return Status(UNKNOWN, "OCSP response signature does not verify", now + CLOCK_SKEW)
    for single in response.responses:
        if single.serial_number != leaf.serial_number:
            continue
        this_update = single.this_update_utc
        next_update = single.next_update_utc
        if this_update > now + CLOCK_SKEW:
            return Status(UNKNOWN, "OCSP response is not yet valid", now + CLOCK_SKEW)
        if next_update is not None and next_update < now - CLOCK_SKEW:
            return Status(UNKNOWN, "OCSP response is out of date", now + CLOCK_SKEW)
        until = min(next_update, retry) if next_update is not None else retry
        if single.certificate_status == ocsp.OCSPCertStatus.GOOD:
            return Status(GOOD, "OCSP: good", until)
        if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            return Status(REVOKED, "certificate revoked (OCSP)", until)
        return Status(UNKNOWN, "OCSP responder does not know the certificate", until)
    return Status(UNKNOWN, "OCSP response is about another certificate", now + CLOCK_SKEW)
