"""
Tests for L{txgate.pki.authority}: the running certificate authority that
mints leaves, serves its CRL on a daily schedule and answers OCSP, with time
from a settable fake clock.
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID
from cryptography.x509.verification import PolicyBuilder, Store
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from txgate.config import SSLConfig
from txgate.pki.authority import CRL_PATH, ISSUER_PATH, OCSP_PATH, REVOKED_FILE, Authority
from txgate.pki.crl import CRL_CONTENT_TYPE, append_revocation, crl_number_for
from txgate.pki.keyring import save_keyring
from txgate.pki.mint import KEY_TYPE_ECDSA, KEY_TYPE_RSA, template_from_upstream
from txgate.pki.ocsp import OCSP_RESPONSE_CONTENT_TYPE

from tests.pki.helpers import NOW, keyring, upstream_cert

DAY = datetime.timedelta(days=1)
MIDNIGHT = NOW.replace(hour=0, minute=0, second=0, microsecond=0)
NAME = "meet.example.com"


class FakeClock:
    """A clock callable: returns C{now}, which tests move."""

    def __init__(self, now: datetime.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, delta: datetime.timedelta) -> None:
        self.now += delta


def ocsp_request(cert: x509.Certificate | None = None, serial: int | None = None, nonce: bytes | None = None) -> bytes:
    """A DER OCSP request about C{cert} (or any C{serial} of txgate's issuer)."""
    issuer = keyring().issuer_cert
    builder = ocsp.OCSPRequestBuilder()
    if cert is not None:
        builder = builder.add_certificate(cert, issuer, hashes.SHA1())
    else:
        assert serial is not None
        name_hash = hashes.Hash(hashes.SHA1())
        name_hash.update(issuer.subject.public_bytes())
        # The issuer key hash is over the subjectPublicKey BIT STRING contents:
        # for RSA, the PKCS#1 DER.
        key_hash = hashes.Hash(hashes.SHA1())
        key_hash.update(
            issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        )
        builder = builder.add_certificate_by_hash(name_hash.finalize(), key_hash.finalize(), serial, hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


class _Base(SynchronousTestCase):
    def ca_dir(self) -> str:
        """A fresh directory holding the shared keyring."""
        path = FilePath(self.mktemp())
        path.makedirs()
        save_keyring(keyring(), path.path)
        return path.path

    def authority(self, ca_dir: str | None = None, clock: FakeClock | None = None, **ssl: object) -> Authority:
        options: dict[str, object] = {"crl_host": "crl.test:8080"}
        options.update(ssl)
        return Authority(
            keyring(),
            SSLConfig(**options),  # type: ignore[arg-type]
            ca_dir if ca_dir is not None else self.ca_dir(),
            clock if clock is not None else FakeClock(),
        )

    def leaf(self, authority: Authority, key_type: str = KEY_TYPE_ECDSA, untrusted: bool = False) -> x509.Certificate:
        template = template_from_upstream(upstream_cert(), now=NOW)
        return authority.mint(template, key_type, untrusted=untrusted)


class MintTests(_Base):
    """Leaves carry the CRL and OCSP URLs of C{crl_host}, and verify."""

    def test_urls(self) -> None:
        """
        A minted leaf has CDP C{http://<crl_host>/txgate.crl}, AIA OCSP
        C{http://<crl_host>/ocsp} and caIssuers C{http://<crl_host>/issuer.crt}.
        """
        authority = self.authority()
        leaf = self.leaf(authority)
        cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        self.assertEqual(
            [n.value for point in cdp for n in point.full_name],
            ["http://crl.test:8080/txgate.crl"],
        )
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        self.assertEqual(
            {d.access_method: d.access_location.value for d in aia},
            {
                AuthorityInformationAccessOID.OCSP: "http://crl.test:8080/ocsp",
                AuthorityInformationAccessOID.CA_ISSUERS: "http://crl.test:8080/issuer.crt",
            },
        )
        self.assertEqual(
            (authority.crl_url, authority.ocsp_url, authority.ca_issuers_url),
            ("http://crl.test:8080/txgate.crl", "http://crl.test:8080/ocsp", "http://crl.test:8080/issuer.crt"),
        )
        self.assertEqual(leaf.issuer, keyring().issuer_cert.subject)
        self.assertEqual(authority.minted, 1)

    def test_untrusted(self) -> None:
        """
        A leaf of the untrusted issuer is signed by it and carries no CDP and
        no AIA at all.
        """
        authority = self.authority()
        leaf = self.leaf(authority, untrusted=True)
        ring = keyring()
        self.assertEqual(leaf.issuer, ring.untrusted_cert.subject)
        leaf.verify_directly_issued_by(ring.untrusted_cert)
        for kind in (x509.CRLDistributionPoints, x509.AuthorityInformationAccess):
            self.assertRaises(x509.ExtensionNotFound, leaf.extensions.get_extension_for_class, kind)

    def test_crl_distribution_point_off(self) -> None:
        """C{crl_distribution_point = false}: no CDP; the OCSP URL stays."""
        authority = self.authority(crl_distribution_point=False)
        self.assertIsNone(authority.crl_url)
        leaf = self.leaf(authority)
        self.assertRaises(x509.ExtensionNotFound, leaf.extensions.get_extension_for_class, x509.CRLDistributionPoints)
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        self.assertIn(AuthorityInformationAccessOID.OCSP, [d.access_method for d in aia])

    def test_ocsp_off(self) -> None:
        """C{ocsp = false}: no AIA OCSP entry (caIssuers stays); the CDP stays."""
        authority = self.authority(ocsp=False)
        self.assertIsNone(authority.ocsp_url)
        leaf = self.leaf(authority)
        leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        self.assertEqual(
            [(d.access_method, d.access_location.value) for d in aia],
            [(AuthorityInformationAccessOID.CA_ISSUERS, "http://crl.test:8080/issuer.crt")],
        )

    def test_strict_verifier(self) -> None:
        """
        Leaves of both key types pass C{cryptography}'s strict server
        verifier with the issuer as the only trust anchor.
        """
        authority = self.authority()
        issuer = keyring().issuer_cert
        for key_type in (KEY_TYPE_ECDSA, KEY_TYPE_RSA):
            leaf = self.leaf(authority, key_type)
            verifier = PolicyBuilder().store(Store([issuer])).time(NOW).build_server_verifier(x509.DNSName(NAME))
            chain = verifier.verify(leaf, [])
            self.assertEqual(chain, [leaf, issuer])
            self.assertEqual(
                leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
                authority.leaf_key(key_type)
                .public_key()
                .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
            )

    def test_serials_recognised(self) -> None:
        """Every minted serial is distinct, and one the issuer recognises."""
        authority = self.authority()
        serials = {self.leaf(authority).serial_number for _ in range(5)}
        self.assertEqual(len(serials), 5)
        for serial in serials:
            self.assertTrue(authority._serials.issued(serial))
        self.assertFalse(authority._serials.issued(secrets.randbits(127) | 1))


class CRLTests(_Base):
    """The CRL: signed by the issuer, numbered by the UTC day, rebuilt at midnight."""

    def test_signed_and_numbered(self) -> None:
        """
        The CRL is the issuer's (signature valid), served as
        C{application/pkix-crl}; thisUpdate and the number are the start of
        the current UTC day; nextUpdate is C{crl_validity_days} later.
        """
        authority = self.authority(crl_validity_days=7)
        crl = authority.crl()
        issuer = keyring().issuer_cert
        self.assertTrue(crl.is_signature_valid(issuer.public_key()))
        self.assertEqual(crl.issuer, issuer.subject)
        self.assertEqual(crl_number(crl), crl_number_for(MIDNIGHT))
        self.assertEqual(crl_number(crl), int(MIDNIGHT.timestamp()))
        self.assertEqual(crl.last_update_utc, MIDNIGHT)
        self.assertEqual(crl.next_update_utc, MIDNIGHT + 7 * DAY)
        self.assertEqual(len(crl), 0)
        self.assertEqual(CRL_CONTENT_TYPE, "application/pkix-crl")

    def test_same_day_cached(self) -> None:
        """Within one UTC day the same bytes are served (no re-signing)."""
        clock = FakeClock()
        authority = self.authority(clock=clock)
        first = authority.crl_der()
        clock.advance(datetime.timedelta(hours=8))  # 23:09, still the same day
        self.assertIs(authority.crl_der(), first)

    def test_rebuilt_at_midnight(self) -> None:
        """
        Past UTC midnight the CRL is signed again with the new day's number;
        L{Authority.next_renewal} names that midnight.
        """
        clock = FakeClock()
        authority = self.authority(clock=clock)
        first = authority.crl()
        self.assertEqual(authority.next_renewal(), MIDNIGHT + DAY)
        clock.now = MIDNIGHT + DAY
        second = authority.crl()
        self.assertEqual(crl_number(second), crl_number_for(MIDNIGHT + DAY))
        self.assertGreater(crl_number(second), crl_number(first))
        self.assertEqual(second.last_update_utc, MIDNIGHT + DAY)
        self.assertEqual(authority.next_renewal(), MIDNIGHT + 2 * DAY)

    def test_non_utc_clock(self) -> None:
        """A clock in another time zone gives the same UTC-day schedule."""
        tz = datetime.timezone(datetime.timedelta(hours=-10))
        clock = FakeClock(NOW.astimezone(tz))
        authority = self.authority(clock=clock)
        self.assertEqual(crl_number(authority.crl()), crl_number_for(MIDNIGHT))
        self.assertEqual(authority.next_renewal(), MIDNIGHT + DAY)

    def test_nodes_agree(self) -> None:
        """
        Two authorities over the same keyring and CA directory (two nodes,
        or a restart) serve byte-identical CRLs.
        """
        ca_dir = self.ca_dir()
        one = self.authority(ca_dir, FakeClock())
        two = self.authority(ca_dir, FakeClock(NOW + datetime.timedelta(hours=3)))
        self.assertEqual(one.crl_der(), two.crl_der())
        append_revocation(os.path.join(ca_dir, REVOKED_FILE), 0xDEADBEEF, NOW - DAY)
        self.assertEqual(one.crl_der(), two.crl_der())

    def test_revocation_picked_up(self) -> None:
        """
        A serial appended to C{<ca_dir>/revoked.jsonl} is in the next CRL
        (no restart), whose number is larger; OCSP says it is revoked.
        """
        ca_dir = self.ca_dir()
        clock = FakeClock()
        authority = self.authority(ca_dir, clock)
        leaf = self.leaf(authority)
        before = authority.crl()
        clock.advance(datetime.timedelta(minutes=1))
        revoked_at = clock.now - datetime.timedelta(seconds=30)
        append_revocation(os.path.join(ca_dir, REVOKED_FILE), leaf.serial_number, revoked_at)
        after = authority.crl()
        entry = after.get_revoked_certificate_by_serial_number(leaf.serial_number)
        self.assertIsNotNone(entry)
        self.assertEqual(entry.revocation_date_utc, revoked_at.replace(microsecond=0))
        self.assertGreater(crl_number(after), crl_number(before))
        self.assertEqual(crl_number(after), crl_number_for(revoked_at))
        self.assertTrue(after.is_signature_valid(keyring().issuer_cert.public_key()))
        self.assertIn(leaf.serial_number, authority.revocations)

        response = ocsp.load_der_ocsp_response(authority.ocsp(ocsp_request(leaf)))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.REVOKED)
        self.assertEqual(response.revocation_time_utc, revoked_at.replace(microsecond=0))


class OCSPTests(_Base):
    """OCSP answers about txgate's serials."""

    def answer(self, authority: Authority, request: bytes) -> ocsp.OCSPResponse:
        response = ocsp.load_der_ocsp_response(authority.ocsp(request))
        self.assertEqual(response.response_status, ocsp.OCSPResponseStatus.SUCCESSFUL)
        issuer = keyring().issuer_cert
        issuer.public_key().verify(  # type: ignore[call-arg]
            response.signature,
            response.tbs_response_bytes,
            *_rsa_args(response),
        )
        return response

    def test_good(self) -> None:
        """A minted serial is C{good}; the request's nonce is echoed."""
        authority = self.authority()
        leaf = self.leaf(authority)
        nonce = b"0123456789abcdef"
        response = self.answer(authority, ocsp_request(leaf, nonce=nonce))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(response.serial_number, leaf.serial_number)
        self.assertEqual(response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce, nonce)
        self.assertEqual(response.this_update_utc, NOW.replace(microsecond=0))
        self.assertEqual(authority.ocsp_answers, {"good": 1})

    def test_unknown(self) -> None:
        """A serial txgate did not issue is C{unknown}."""
        authority = self.authority()
        response = self.answer(authority, ocsp_request(serial=secrets.randbits(126) | 1))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.UNKNOWN)

    def test_other_authority_same_keyring(self) -> None:
        """Another authority over the same keyring (a restart) still says C{good}."""
        leaf = self.leaf(self.authority())
        response = self.answer(self.authority(), ocsp_request(leaf))
        self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)


def _rsa_args(response: ocsp.OCSPResponse) -> tuple[object, ...]:
    from cryptography.hazmat.primitives.asymmetric import padding

    assert response.signature_hash_algorithm is not None
    return (padding.PKCS1v15(), response.signature_hash_algorithm)


class HTTPTests(_Base):
    """L{Authority.http_answer}: the paths served on the CRL host."""

    def test_crl(self) -> None:
        """GET and HEAD of C{/txgate.crl}: 200, C{application/pkix-crl}, the CRL."""
        authority = self.authority()
        for method in ("GET", "HEAD"):
            answer = authority.http_answer(method, CRL_PATH)
            self.assertEqual((answer.status, answer.content_type), (200, "application/pkix-crl"))
            self.assertEqual(answer.body, authority.crl_der())
        self.assertEqual(authority.http_answer("GET", CRL_PATH + "?x=1").status, 200)

    def test_issuer(self) -> None:
        """GET C{/issuer.crt}: the issuer certificate, DER."""
        authority = self.authority()
        answer = authority.http_answer("GET", ISSUER_PATH)
        self.assertEqual((answer.status, answer.content_type), (200, "application/pkix-cert"))
        self.assertEqual(x509.load_der_x509_certificate(answer.body), keyring().issuer_cert)

    def test_ocsp_post(self) -> None:
        """POST C{/ocsp} with a DER request: the OCSP response."""
        authority = self.authority()
        leaf = self.leaf(authority)
        answer = authority.http_answer("POST", OCSP_PATH, ocsp_request(leaf))
        self.assertEqual((answer.status, answer.content_type), (200, OCSP_RESPONSE_CONTENT_TYPE))
        self.assertEqual(ocsp.load_der_ocsp_response(answer.body).certificate_status, ocsp.OCSPCertStatus.GOOD)

    def test_ocsp_get(self) -> None:
        """GET C{/ocsp/<url-encoded base64>} (RFC 6960 appendix A.1): the OCSP response."""
        authority = self.authority()
        leaf = self.leaf(authority)
        encoded = urllib.parse.quote(base64.b64encode(ocsp_request(leaf)).decode("ascii"), safe="")
        answer = authority.http_answer("GET", OCSP_PATH + "/" + encoded)
        self.assertEqual((answer.status, answer.content_type), (200, OCSP_RESPONSE_CONTENT_TYPE))
        self.assertEqual(ocsp.load_der_ocsp_response(answer.body).certificate_status, ocsp.OCSPCertStatus.GOOD)

    def test_ocsp_garbage(self) -> None:
        """A request that does not parse gets C{malformedRequest} (still HTTP 200)."""
        authority = self.authority()
        for answer in (
            authority.http_answer("POST", OCSP_PATH, b"garbage"),
            authority.http_answer("GET", OCSP_PATH + "/!!!"),
        ):
            self.assertEqual((answer.status, answer.content_type), (200, OCSP_RESPONSE_CONTENT_TYPE))
            self.assertEqual(
                ocsp.load_der_ocsp_response(answer.body).response_status,
                ocsp.OCSPResponseStatus.MALFORMED_REQUEST,
            )

    def test_not_found(self) -> None:
        """Any other path: 404, plain text."""
        authority = self.authority()
        for path in ("/", "/favicon.ico", "/txgate.crl/x", "/ocspx"):
            answer = authority.http_answer("GET", path)
            self.assertEqual(answer.status, 404, path)
            self.assertTrue(answer.content_type.startswith("text/plain"))

    def test_wrong_method(self) -> None:
        """Methods a path does not take: 405."""
        authority = self.authority()
        for method, path in (
            ("POST", CRL_PATH),
            ("PUT", CRL_PATH),
            ("POST", ISSUER_PATH),
            ("PUT", OCSP_PATH),
            ("DELETE", OCSP_PATH + "/abc"),
        ):
            self.assertEqual(authority.http_answer(method, path, b"x").status, 405, (method, path))

    def test_turned_off(self) -> None:
        """C{crl_distribution_point = false} / C{ocsp = false}: their paths are 404."""
        no_crl = self.authority(crl_distribution_point=False)
        self.assertEqual(no_crl.http_answer("GET", CRL_PATH).status, 404)
        self.assertEqual(no_crl.http_answer("GET", ISSUER_PATH).status, 200)
        no_ocsp = self.authority(ocsp=False)
        self.assertEqual(no_ocsp.http_answer("POST", OCSP_PATH, ocsp_request(serial=5)).status, 404)
        self.assertEqual(no_ocsp.http_answer("GET", OCSP_PATH + "/AAAA").status, 404)
        self.assertEqual(no_ocsp.http_answer("GET", CRL_PATH).status, 200)


class CRLHostTests(_Base):
    """L{Authority.is_crl_host}: which requests are for the authority."""

    def test_host_and_port(self) -> None:
        """The host matches case-insensitively (and with a trailing dot); the port must match."""
        authority = self.authority(crl_host="crl.test:8080")
        self.assertTrue(authority.is_crl_host("crl.test", 8080))
        self.assertTrue(authority.is_crl_host("CRL.Test", 8080))
        self.assertTrue(authority.is_crl_host("crl.test.", 8080))
        self.assertFalse(authority.is_crl_host("crl.test", 80))
        self.assertFalse(authority.is_crl_host("other.test", 8080))

    def test_default_port(self) -> None:
        """A C{crl_host} without a port is port 80."""
        authority = self.authority(crl_host="Proxy.Example.Com")
        self.assertTrue(authority.is_crl_host("proxy.example.com", 80))
        self.assertFalse(authority.is_crl_host("proxy.example.com", 8080))
        self.assertEqual(authority.crl_url, "http://Proxy.Example.Com/txgate.crl")

    def test_ipv6(self) -> None:
        """C{[v6]:port} and bare C{[v6]} (port 80)."""
        authority = self.authority(crl_host="[::1]:8080")
        self.assertTrue(authority.is_crl_host("::1", 8080))
        self.assertTrue(authority.is_crl_host("[::1]", 8080))
        self.assertEqual(authority.ocsp_url, "http://[::1]:8080/ocsp")
        bare = self.authority(crl_host="[2001:db8::1]")
        self.assertTrue(bare.is_crl_host("2001:db8::1", 80))
