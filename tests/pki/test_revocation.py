# -*- test-case-name: tests.pki.test_revocation -*-
"""
Tests for L{txgate.pki.revocation}: OCSP about upstream certificates, with a
real responder (L{txgate.pki.ocsp.answer_ocsp}) signing the answers.
"""

from __future__ import annotations

import datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from twisted.trial.unittest import SynchronousTestCase

from txgate.pki.mint import mint_leaf, template_from_upstream
from txgate.pki.ocsp import answer_ocsp, malformed_response
from txgate.pki.revocation import GOOD, REVOKED, UNKNOWN, find_issuer, judge, ocsp_request, ocsp_url_of

from .helpers import NOW, keyring, upstream_cert

URL = "http://ocsp.example.test/ocsp"


def issued_leaf(serial: int = 4242, ocsp_url: str | None = URL):
    """A leaf the keyring's issuer signed, as an upstream CA would."""
    ring = keyring()
    return mint_leaf(
        template_from_upstream(upstream_cert(), now=NOW),
        issuer_cert=ring.issuer_cert,
        issuer_key=ring.issuer_key,
        leaf_key=ring.leaf_ecdsa_key,
        serial=serial,
        crl_url=None,
        ocsp_url=ocsp_url,
        ca_issuers_url=None,
    )


def answer(leaf, *, revoked=(), issued=True, now=NOW) -> bytes:
    ring = keyring()
    return answer_ocsp(
        ocsp_request(leaf, ring.issuer_cert),
        issuer_cert=ring.issuer_cert,
        issuer_key=ring.issuer_key,
        issued=lambda serial: issued,
        revoked={s: NOW - datetime.timedelta(days=1) for s in revoked},
        now=now,
    )


class RequestTests(SynchronousTestCase):
    def test_url(self) -> None:
        self.assertEqual(ocsp_url_of(issued_leaf()), URL)
        self.assertIsNone(ocsp_url_of(issued_leaf(ocsp_url=None)))

    def test_request_names_the_leaf(self) -> None:
        leaf = issued_leaf()
        request = ocsp.load_der_ocsp_request(ocsp_request(leaf, keyring().issuer_cert))
        self.assertEqual(request.serial_number, leaf.serial_number)

    def test_find_issuer(self) -> None:
        ring = keyring()
        leaf = issued_leaf()
        self.assertIs(find_issuer(leaf, [ring.untrusted_cert, ring.issuer_cert]), ring.issuer_cert)
        self.assertIsNone(find_issuer(leaf, [ring.untrusted_cert]))


class JudgeTests(SynchronousTestCase):
    """Only a current answer, signed for the issuer, about this serial counts."""

    def test_good(self) -> None:
        leaf = issued_leaf()
        status = judge(answer(leaf), leaf, keyring().issuer_cert, NOW)
        self.assertEqual(status.status, GOOD)
        self.assertGreater(status.until, NOW)

    def test_revoked(self) -> None:
        leaf = issued_leaf()
        status = judge(answer(leaf, revoked=[leaf.serial_number]), leaf, keyring().issuer_cert, NOW)
        self.assertEqual((status.status, status.reason), (REVOKED, "certificate revoked (OCSP)"))

    def test_unknown_to_the_responder(self) -> None:
        leaf = issued_leaf()
        self.assertEqual(judge(answer(leaf, issued=False), leaf, keyring().issuer_cert, NOW).status, UNKNOWN)

    def test_wrong_signer(self) -> None:
        ring = keyring()
        leaf = issued_leaf()
        forged = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=leaf,
                issuer=ring.issuer_cert,
                algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=NOW,
                next_update=NOW + datetime.timedelta(days=1),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, ring.untrusted_cert)
            .sign(ring.untrusted_key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        status = judge(forged, leaf, keyring().issuer_cert, NOW)
        self.assertEqual((status.status, status.reason), (UNKNOWN, "OCSP response signature does not verify"))

    def test_out_of_date(self) -> None:
        leaf = issued_leaf()
        old = answer(leaf, now=NOW - datetime.timedelta(days=30))
        self.assertEqual(judge(old, leaf, keyring().issuer_cert, NOW).reason, "OCSP response is out of date")

    def test_other_serial(self) -> None:
        leaf, other = issued_leaf(), issued_leaf(serial=777)
        status = judge(answer(other), leaf, keyring().issuer_cert, NOW)
        self.assertEqual(status.reason, "OCSP response is about another certificate")

    def test_error_answers(self) -> None:
        leaf = issued_leaf()
        self.assertEqual(judge(malformed_response(), leaf, keyring().issuer_cert, NOW).reason, "OCSP responder answered malformed_request")
        self.assertEqual(judge(b"garbage", leaf, keyring().issuer_cert, NOW).status, UNKNOWN)
