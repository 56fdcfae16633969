"""
Tests for L{txgate.pki.ocsp}.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import subprocess
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509 import ocsp
from twisted.trial.unittest import SynchronousTestCase

from txgate.pki.mint import mint_leaf, template_from_upstream
from txgate.pki.ocsp import MAX_OCSP_REQUEST_SIZE, answer_ocsp, malformed_response, ocsp_request_from_get_path

from tests.pki.helpers import NOW, keyring, upstream_cert

DAY = datetime.timedelta(days=1)
GOOD, REVOKED, UNKNOWN = 0x600D, 0xBAD, 0x0DD
REVOKED_AT = NOW - 3 * DAY
NONCE = b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10"
DER = serialization.Encoding.DER


def leaf(serial: int, *, untrusted: bool = False) -> x509.Certificate:
    ring = keyring()
    return mint_leaf(
        template_from_upstream(upstream_cert(), now=NOW),
        issuer_cert=ring.untrusted_cert if untrusted else ring.issuer_cert,
        issuer_key=ring.untrusted_key if untrusted else ring.issuer_key,
        leaf_key=ring.leaf_ecdsa_key,
        serial=serial,
        crl_url=None,
        ocsp_url="http://crl.txgate.test/ocsp",
        ca_issuers_url=None,
    )


def request(serial: int, *, nonce: bytes | None = None, algorithm=None, untrusted: bool = False) -> bytes:
    ring = keyring()
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        leaf(serial, untrusted=untrusted),
        ring.untrusted_cert if untrusted else ring.issuer_cert,
        algorithm or hashes.SHA1(),
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(DER)


def answer(request_der: bytes, *, now=NOW) -> ocsp.OCSPResponse:
    ring = keyring()
    der = answer_ocsp(
        request_der,
        issuer_cert=ring.issuer_cert,
        issuer_key=ring.issuer_key,
        issued=lambda serial: serial in (GOOD, REVOKED),
        revoked={REVOKED: REVOKED_AT},
        now=now,
    )
    return ocsp.load_der_ocsp_response(der)


class AnswerTests(SynchronousTestCase):
    """
    L{answer_ocsp}: good, revoked, unknown, malformed, unauthorized.
    """

    def _check_signed(self, response: ocsp.OCSPResponse, serial: int) -> None:
        ring = keyring()
        self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.SUCCESSFUL)
        self.assertEqual(response.serial_number, serial)
        self.assertEqual(response.responder_name, None)
        self.assertEqual(
            response.responder_key_hash,
            x509.SubjectKeyIdentifier.from_public_key(ring.issuer_cert.public_key()).digest,
        )
        self.assertEqual(response.certificates, [ring.issuer_cert])
        self.assertIsInstance(response.signature_hash_algorithm, hashes.SHA256)
        # Raises InvalidSignature when it does not verify.
        ring.issuer_cert.public_key().verify(
            response.signature, response.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256()
        )
        self.assertEqual(response.this_update_utc, NOW)
        self.assertEqual(response.next_update_utc, NOW + DAY)

    def test_good(self) -> None:
        response = answer(request(GOOD))
        self._check_signed(response, GOOD)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertIsNone(response.revocation_time_utc)

    def test_revoked(self) -> None:
        response = answer(request(REVOKED))
        self._check_signed(response, REVOKED)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.REVOKED)
        self.assertEqual(response.revocation_time_utc, REVOKED_AT)

    def test_revoked_wins_over_issued(self) -> None:
        """A revoked serial is revoked even if issued() would not know it."""
        ring = keyring()
        der = answer_ocsp(
            request(REVOKED),
            issuer_cert=ring.issuer_cert,
            issuer_key=ring.issuer_key,
            issued=lambda serial: False,
            revoked={REVOKED: REVOKED_AT},
            now=NOW,
        )
        self.assertEqual(ocsp.load_der_ocsp_response(der).certificate_status, ocsp.OCSPCertStatus.REVOKED)

    def test_unknown(self) -> None:
        response = answer(request(UNKNOWN))
        self._check_signed(response, UNKNOWN)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.UNKNOWN)

    def test_cert_id_echoed(self) -> None:
        """The answer's CertID is the request's, including its hash algorithm."""
        for algorithm in (hashes.SHA1(), hashes.SHA256()):
            req = ocsp.load_der_ocsp_request(request(GOOD, algorithm=algorithm))
            response = answer(request(GOOD, algorithm=algorithm))
            self.assertIsInstance(response.hash_algorithm, type(algorithm))
            self.assertEqual(response.issuer_name_hash, req.issuer_name_hash)
            self.assertEqual(response.issuer_key_hash, req.issuer_key_hash)
            self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)

    def test_nonce_echoed(self) -> None:
        response = answer(request(GOOD, nonce=NONCE))
        self.assertEqual(response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, NONCE)
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)

    def test_no_nonce(self) -> None:
        response = answer(request(GOOD))
        self.assertEqual(len(response.extensions), 0)

    def test_malformed(self) -> None:
        """Garbage, truncation, emptiness and oversize: unsigned malformedRequest."""
        good = request(GOOD)
        for der in (b"", b"\x30\x03\x02\x01\x01", good[:-3], b"hello", b"\x30" * (MAX_OCSP_REQUEST_SIZE + 1)):
            response = answer(der)
            self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.MALFORMED_REQUEST, der[:16])
        self.assertEqual(malformed_response(), b"\x30\x03\x0a\x01\x01")

    def test_wrong_issuer(self) -> None:
        """A request about the untrusted issuer's certificates: unauthorized."""
        response = answer(request(GOOD, untrusted=True))
        self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.UNAUTHORIZED)

    def test_wrong_issuer_key_same_name(self) -> None:
        """Same issuer name, other key: unauthorized."""
        ring = keyring()
        name_hash = hashes.Hash(hashes.SHA1())
        name_hash.update(ring.issuer_cert.subject.public_bytes())
        other = ec.generate_private_key(ec.SECP256R1()).public_key()
        key_hash = x509.SubjectKeyIdentifier.from_public_key(other).digest
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(name_hash.finalize(), key_hash, GOOD, hashes.SHA1())
            .build()
            .public_bytes(DER)
        )
        self.assertEqual(answer(der).response_status, ocsp.OCSPResponseStatus.UNAUTHORIZED)


class GetPathTests(SynchronousTestCase):
    """
    L{ocsp_request_from_get_path} decodes RFC 6960 appendix A.1 GETs.
    """

    def setUp(self) -> None:
        self.der = request(GOOD, nonce=NONCE)
        self.b64 = base64.b64encode(self.der).decode("ascii")

    def test_url_encoded(self) -> None:
        path = "/ocsp/" + urllib.parse.quote(self.b64, safe="")
        self.assertEqual(ocsp_request_from_get_path(path), self.der)

    def test_unencoded(self) -> None:
        """Raw "/" and "+" in the base64 (as some clients send it) are kept."""
        self.assertEqual(ocsp_request_from_get_path("/ocsp/" + self.b64), self.der)

    def test_missing_padding(self) -> None:
        for der in (self.der, self.der + b"\x00", self.der + b"\x00\x00"):
            b64 = base64.b64encode(der).decode("ascii").rstrip("=")
            self.assertEqual(ocsp_request_from_get_path("/ocsp/" + b64), der)

    def test_url_safe_alphabet_and_query(self) -> None:
        b64 = base64.urlsafe_b64encode(self.der).decode("ascii")
        self.assertEqual(ocsp_request_from_get_path("/ocsp/" + b64 + "?x=1"), self.der)

    def test_other_prefix(self) -> None:
        self.assertEqual(ocsp_request_from_get_path("/" + self.b64), self.der)
        self.assertEqual(ocsp_request_from_get_path("/responder/" + self.b64, prefix="/responder/"), self.der)

    def test_answers(self) -> None:
        """A decoded GET gets the same answer as the POST body."""
        response = answer(ocsp_request_from_get_path("/ocsp/" + urllib.parse.quote(self.b64, safe="")))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, NONCE)

    def test_invalid(self) -> None:
        for path in ("/ocsp/", "/ocsp/!!!!", "/ocsp/a", "/ocsp/%ff%fe", "/ocsp/" + "A" * 100000):
            self.assertRaises(ValueError, ocsp_request_from_get_path, path)


class OpenSSLTests(SynchronousTestCase):
    """
    The real C{openssl ocsp} accepts txgate's answer as signed by the issuer.
    """

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")

    def _openssl(self, directory: str, *args: str) -> str:
        result = subprocess.run(
            ["openssl", "ocsp", *args], cwd=directory, capture_output=True, text=True, timeout=30
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout + result.stderr

    def _check(self, serial: int) -> str:
        """
        openssl writes the request (with its own nonce), txgate answers it,
        and openssl checks the answer: signature, CertID and nonce.
        """
        ring = keyring()
        now = datetime.datetime.now(datetime.timezone.utc)
        directory = self.mktemp()
        os.makedirs(directory)
        for name, data in [
            ("ca.pem", ring.issuer_cert.public_bytes(serialization.Encoding.PEM)),
            ("leaf.pem", leaf(serial).public_bytes(serialization.Encoding.PEM)),
        ]:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        self._openssl(directory, "-issuer", "ca.pem", "-cert", "leaf.pem", "-reqout", "req.der")
        with open(os.path.join(directory, "req.der"), "rb") as f:
            req_der = f.read()
        self.assertIsNotNone(
            ocsp.load_der_ocsp_request(req_der).extensions.get_extension_for_class(x509.OCSPNonce)
        )
        resp_der = answer_ocsp(
            req_der,
            issuer_cert=ring.issuer_cert,
            issuer_key=ring.issuer_key,
            issued=lambda s: s in (GOOD, REVOKED),
            revoked={REVOKED: REVOKED_AT},
            now=now - datetime.timedelta(minutes=1),
        )
        with open(os.path.join(directory, "resp.der"), "wb") as f:
            f.write(resp_der)
        output = self._openssl(directory, "-reqin", "req.der", "-respin", "resp.der", "-CAfile", "ca.pem", "-resp_text")
        self.assertIn("Response verify OK", output)
        self.assertNotIn("Nonce Verify error", output)
        return output

    def test_good(self) -> None:
        self.assertIn("Cert Status: good", self._check(GOOD))

    def test_revoked(self) -> None:
        self.assertIn("Cert Status: revoked", self._check(REVOKED))

    def test_several_certificates(self) -> None:
        """
        A request about two certificates (made by C{openssl ocsp}; cryptography
        cannot build one) is answered malformedRequest: the responder answers
        one certificate per request.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "ca.pem"), "wb") as f:
            f.write(keyring().issuer_cert.public_bytes(serialization.Encoding.PEM))
        subprocess.run(
            ["openssl", "ocsp", "-issuer", "ca.pem", "-serial", str(GOOD), "-serial", str(REVOKED),
             "-no_nonce", "-reqout", "req.der"],
            cwd=directory,
            check=True,
            capture_output=True,
            timeout=30,
        )
        with open(os.path.join(directory, "req.der"), "rb") as f:
            der = f.read()
        self.assertEqual(answer(der).response_status, ocsp.OCSPResponseStatus.MALFORMED_REQUEST)

    def test_unknown(self) -> None:
        self.assertIn("Cert Status: unknown", self._check(UNKNOWN))
