# -*- test-case-name: tests.pki.test_ocsp -*-
"""
txgate's RFC 6960 OCSP responder core: DER request in, DER response out.

The issuer itself signs the answers (no delegated responder certificate):
C{good} for a serial txgate issued and did not revoke, C{revoked} (with its
time) for a revoked one, C{unknown} otherwise. A request that does not parse
gets C{malformedRequest}; one about another issuer gets C{unauthorized}.
Both are unsigned, as RFC 6960 section 2.3 says.

The glue reads C{now}, decodes GETs with L{ocsp_request_from_get_path},
caps POST bodies at L{MAX_OCSP_REQUEST_SIZE} and serves the bytes as
L{OCSP_RESPONSE_CONTENT_TYPE}.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import urllib.parse
from typing import Callable, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp

__all__ = [
    "DEFAULT_OCSP_VALIDITY",
    "MAX_OCSP_REQUEST_SIZE",
    "OCSP_REQUEST_CONTENT_TYPE",
    "OCSP_RESPONSE_CONTENT_TYPE",
    "answer_ocsp",
    "malformed_response",
    "ocsp_request_from_get_path",
]

OCSP_REQUEST_CONTENT_TYPE = "application/ocsp-request"
OCSP_RESPONSE_CONTENT_TYPE = "application/ocsp-response"
# A single-certificate request with a nonce is about 100 bytes; anything
# beyond this is not an OCSP request txgate can answer.
MAX_OCSP_REQUEST_SIZE = 16 * 1024
# The GET form is the base64 of the request, percent-encoded: at most 3
# characters per base64 character.
MAX_OCSP_GET_PATH = 3 * (4 * MAX_OCSP_REQUEST_SIZE // 3 + 4) + 256
# How long a client may cache an answer (nextUpdate - thisUpdate).
DEFAULT_OCSP_VALIDITY = datetime.timedelta(days=1)


def malformed_response() -> bytes:
    """An unsigned C{malformedRequest} OCSP response."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST).public_bytes(
        serialization.Encoding.DER
    )


def _unauthorized_response() -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(
        serialization.Encoding.DER
    )


def _public_key_bits(key) -> bytes:
    """
    The contents of the certificate's subjectPublicKey BIT STRING, which
    RFC 6960 CertID.issuerKeyHash hashes.
    """
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raise TypeError(f"unsupported issuer key {type(key).__name__}")


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def answer_ocsp(
    request_der: bytes,
    *,
    issuer_cert: x509.Certificate,
    issuer_key,
    issued: Callable[[int], bool],
    revoked: Mapping[int, datetime.datetime],
    now: datetime.datetime,
    validity: datetime.timedelta = DEFAULT_OCSP_VALIDITY,
) -> bytes:
    """
    The DER OCSP response to C{request_der}.

    @param issued: whether txgate issued the certificate with this serial.
    @param revoked: serial -> revocation time of the revoked ones.
    @param now: thisUpdate; nextUpdate is C{now + validity}. (producedAt is
        set by C{cryptography} from the system clock; it cannot be given.)
    @return: a successful response signed by the issuer (SHA-256), responder
        ID by key hash, carrying the issuer certificate, the request's CertID
        (same hash algorithm), the request's nonce echoed when it had one; or an
        unsigned C{malformedRequest} / C{unauthorized} response.
    """
    if len(request_der) > MAX_OCSP_REQUEST_SIZE:
        return malformed_response()
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        algorithm = request.hash_algorithm
        serial = request.serial_number
        name_hash = request.issuer_name_hash
        key_hash = request.issuer_key_hash
        extensions = request.extensions
    except (ValueError, NotImplementedError, UnsupportedAlgorithm, x509.DuplicateExtension):
        # Garbage, several certificates in one request (cryptography answers
        # only one), an unknown hash or a repeated extension.
        return malformed_response()
    if (
        name_hash != _digest(algorithm, issuer_cert.subject.public_bytes())
        or key_hash != _digest(algorithm, _public_key_bits(issuer_cert.public_key()))
    ):
        return _unauthorized_response()

    this_update = now.astimezone(datetime.timezone.utc).replace(microsecond=0)
    revocation_time = revoked.get(serial)
    if revocation_time is not None:
        status = ocsp.OCSPCertStatus.REVOKED
        revocation_time = revocation_time.astimezone(datetime.timezone.utc).replace(microsecond=0)
    elif issued(serial):
        status = ocsp.OCSPCertStatus.GOOD
    else:
        status = ocsp.OCSPCertStatus.UNKNOWN
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response_by_hash(
            issuer_name_hash=name_hash,
            issuer_key_hash=key_hash,
            serial_number=serial,
            algorithm=algorithm,
            cert_status=status,
            this_update=this_update,
            next_update=this_update + validity,
            revocation_time=revocation_time,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer_cert)
        # The signer's certificate, so clients that only look for the signer
        # among the response's certificates (OpenSSL without -issuer) find it.
        .certificates([issuer_cert])
    )
    try:
        nonce = extensions.get_extension_for_class(x509.OCSPNonce).value
    except x509.ExtensionNotFound:
        pass
    else:
        builder = builder.add_extension(nonce, critical=False)
    return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def ocsp_request_from_get_path(path: str, prefix: str = "/ocsp/") -> bytes:
    """
    The DER request of an RFC 6960 appendix A.1 GET: C{<prefix><url-encoded
    base64 of the DER request>}.

    Tolerates what real clients send: a query string (ignored), unencoded
    C{/} and C{+} in the base64, percent-encoding of any character, missing
    C{=} padding, and the URL-safe alphabet. A path that does not start with
    C{prefix} is taken whole, without its leading C{/}.

    @raise ValueError: when the path is too long or is not base64; the glue
        answers with L{malformed_response}.
    """
    if len(path) > MAX_OCSP_GET_PATH:
        raise ValueError(f"OCSP GET path longer than {MAX_OCSP_GET_PATH} characters")
    path = path.split("?", 1)[0]
    if path.startswith(prefix):
        encoded = path[len(prefix) :]
    else:
        encoded = path.lstrip("/")
    # unquote, not unquote_plus: "+" is a base64 character, not a space.
    text = urllib.parse.unquote(encoded, errors="strict").strip()
    text = text.replace("-", "+").replace("_", "/").rstrip("=")
    if not text:
        raise ValueError("empty OCSP GET request")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"OCSP GET request is not base64: {e}") from None
