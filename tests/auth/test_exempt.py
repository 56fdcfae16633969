"""
Tests for L{txgate.auth.exempt}: which requests are revocation or
CA-issuer fetches, never challenged for proxy credentials.
"""

from __future__ import annotations

import base64
import datetime
from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from txgate.auth.exempt import MAX_OCSP_GET_PATH, is_revocation_fetch
from txgate.http.proxying import parse_target


def _certificate(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey, public: object) -> x509.Certificate:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def ocsp_request_der() -> bytes:
    """The DER of a real OCSP request for a leaf signed by a test CA."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test CA", "Test CA", ca_key, ca_key.public_key())
    leaf = _certificate("leaf.test", "Test CA", ca_key, leaf_key.public_key())
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, hashes.SHA1()).build()
    return request.public_bytes(Encoding.DER)


OCSP_DER = ocsp_request_der()


def _find_der_with(character: str) -> tuple[bytes, str]:
    """A real OCSP request whose base64 holds C{character} ('/' or '+')."""
    for _ in range(200):
        der = ocsp_request_der()
        encoded = base64.b64encode(der).decode("ascii")
        if character in encoded:
            return der, encoded
    raise AssertionError(f"no OCSP request with {character!r} in its base64 in 200 tries")


def exempt(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]] | None = None, own: frozenset[str] = frozenset()) -> bool:
    return is_revocation_fetch(method, parse_target(method, url), headers or [], own)


class RevocationFetchTests(SynchronousTestCase):
    """
    CRL, CA-issuer and OCSP fetches are recognised; other requests are not.
    """

    def test_table(self) -> None:
        """Each row: method, URL, headers, whether it is exempt."""
        encoded = base64.b64encode(OCSP_DER).decode("ascii")
        url_encoded = quote(encoded, safe="")
        ocsp_type = [(b"content-type", b"application/ocsp-request")]
        rows: list[tuple[bytes, str, list[tuple[bytes, bytes]], bool]] = [
            # CRLs and CA-issuer certificates
            (b"GET", "http://crl.microsoft.com/pki/crl/products/MicRooCerAut_2010-06-23.crl", [], True),
            (b"HEAD", "http://crl.example/ca.crl", [], True),
            (b"GET", "http://crl.example/CA.CRL", [], True),
            (b"GET", "http://crl.example/ca.crl?cache=1", [], True),
            (b"GET", "http://www.microsoft.com/pki/certs/MicRooCerAut_2010-06-23.crt", [], True),
            (b"GET", "http://aia.example/issuer.Cer", [], True),
            (b"GET", "http://aia.example/bundle.p7c", [], True),
            (b"GET", "http://crl.example:8080/ca.crl", [], True),
            (b"POST", "http://crl.example/ca.crl", [], False),
            (b"PUT", "http://crl.example/ca.crl", [], False),
            (b"GET", "http://crl.example/ca.crl.html", [], False),
            (b"GET", "http://crl.example/ca.crl/", [], False),
            (b"GET", "http://crl.example/page?file=ca.crl", [], False),
            (b"GET", "http://crl.example/crl", [], False),
            (b"GET", "http://example.com/", [], False),
            (b"GET", "http://example.com/index.html", [], False),
            # OCSP by POST
            (b"POST", "http://ocsp.example/", ocsp_type, True),
            (b"POST", "http://ocsp.example/", [(b"content-type", b"Application/OCSP-Request; charset=x")], True),
            (b"POST", "http://ocsp.example/", [(b"Content-Type", b"application/ocsp-request")], True),
            (b"POST", "http://ocsp.example/", [(b"content-type", b"application/ocsp-response")], False),
            (b"POST", "http://ocsp.example/", [(b"content-type", b"application/x-www-form-urlencoded")], False),
            (b"POST", "http://ocsp.example/", ocsp_type * 2, False),
            (b"POST", "http://ocsp.example/", [], False),
            (b"PUT", "http://ocsp.example/", ocsp_type, False),
            (b"GET", "http://ocsp.example/", ocsp_type, False),
            # OCSP by GET (RFC 6960 appendix A.1)
            (b"GET", f"http://ocsp.example/{url_encoded}", [], True),
            (b"GET", f"http://ocsp.example/ocsp/{url_encoded}", [], True),
            (b"GET", f"http://ocsp.example/{quote(encoded.rstrip('='), safe='')}", [], True),
            (b"HEAD", f"http://ocsp.example/{url_encoded}", [], False),
            (b"POST", f"http://ocsp.example/{url_encoded}", [], False),
            (b"GET", f"http://ocsp.example/{url_encoded}/", [], False),
            (b"GET", f"http://ocsp.example/{quote(base64.b64encode(b'not an ocsp request').decode(), safe='')}", [], False),
            (b"GET", f"http://ocsp.example/{quote(base64.b64encode(OCSP_DER[:-3]).decode(), safe='')}", [], False),
            (b"GET", "http://ocsp.example/MA==", [], False),
            (b"GET", "http://ocsp.example/aGVsbG8=", [], False),
            (b"GET", "http://ocsp.example/%%%", [], False),
            (b"GET", "http://ocsp.example/" + "A" * 50, [], False),
            # CONNECT shows no path
            (b"CONNECT", "crl.example:443", [], False),
        ]
        for method, url, headers, expected in rows:
            self.assertEqual(
                exempt(method, url.encode("ascii"), headers), expected, msg=f"{method!r} {url} {headers}"
            )

    def test_ocsp_get_unescaped_slash(self) -> None:
        """
        An OCSP GET whose base64 keeps its C{/} unescaped (as some clients
        send it) spans two path segments and is still recognised; so is one
        with a raw C{+}.
        """
        _, with_slash = _find_der_with("/")
        self.assertTrue(exempt(b"GET", f"http://ocsp.example/ocsp/{with_slash}".encode()))
        self.assertTrue(exempt(b"GET", f"http://ocsp.example/{with_slash}".encode()))
        _, with_plus = _find_der_with("+")
        self.assertTrue(exempt(b"GET", f"http://ocsp.example/{with_plus}".encode()))

    def test_ocsp_get_too_long(self) -> None:
        """A path longer than L{MAX_OCSP_GET_PATH} is not parsed."""
        encoded = quote(base64.b64encode(OCSP_DER).decode("ascii"), safe="")
        padding = "p/" * ((MAX_OCSP_GET_PATH - len(encoded)) // 2 + 1)
        self.assertFalse(exempt(b"GET", f"http://ocsp.example/{padding}{encoded}".encode()))

    def test_own_hosts(self) -> None:
        """
        Every request to one of txgate's own CRL/OCSP hosts is exempt,
        CONNECT included; other hosts are not.
        """
        own = frozenset({"crl.txgate.test"})
        for method, url in [
            (b"GET", b"http://crl.txgate.test/anything"),
            (b"GET", b"http://CRL.txgate.test:8080/"),
            (b"POST", b"http://crl.txgate.test/ocsp"),
            (b"CONNECT", b"crl.txgate.test:443"),
        ]:
            self.assertTrue(exempt(method, url, own=own), msg=f"{method!r} {url!r}")
        self.assertFalse(exempt(b"GET", b"http://other.test/anything", own=own))
        self.assertFalse(exempt(b"GET", b"http://crl.txgate.test/anything"))
