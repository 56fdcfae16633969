"""
Tests for L{txgate.pki.mint}: emulated leaves checked field by field and by
C{cryptography}'s strict (CA/Browser Forum) path validator.
"""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from twisted.trial.unittest import SynchronousTestCase

from txgate.pki.mint import (
    KEY_TYPE_ECDSA,
    KEY_TYPE_RSA,
    MAX_LEAF_VALIDITY,
    LeafCache,
    LeafTemplate,
    key_type_of,
    mint_leaf,
    random_serial,
    template_from_upstream,
)

from tests.pki.helpers import NOW, keyring, upstream_cert

DAY = datetime.timedelta(days=1)
CRL_URL = "http://crl.txgate.test/txgate.crl"
OCSP_URL = "http://crl.txgate.test/ocsp"
CA_ISSUERS_URL = "http://crl.txgate.test/txgate.crt"


def mint(template: LeafTemplate, leaf_key=None, *, serial: int = 0x1234, untrusted: bool = False, **urls):
    ring = keyring()
    kwargs = {"crl_url": CRL_URL, "ocsp_url": OCSP_URL, "ca_issuers_url": CA_ISSUERS_URL}
    kwargs.update(urls)
    return mint_leaf(
        template,
        issuer_cert=ring.untrusted_cert if untrusted else ring.issuer_cert,
        issuer_key=ring.untrusted_key if untrusted else ring.issuer_key,
        leaf_key=leaf_key if leaf_key is not None else ring.leaf_ecdsa_key,
        serial=serial,
        **kwargs,
    )


def verify(leaf: x509.Certificate, name: x509.verification.Subject, *, ca=None, at=NOW):
    store = Store([ca if ca is not None else keyring().issuer_cert])
    return PolicyBuilder().store(store).time(at).build_server_verifier(name).verify(leaf, [])


class TemplateTests(SynchronousTestCase):
    """
    L{template_from_upstream} copies names and picks the validity window.
    """

    def test_copies_names(self) -> None:
        """CN, DNS SANs and IP SANs are copied in order."""
        upstream = upstream_cert(
            common_name="meet.example.com",
            dns_names=["meet.example.com", "dialin.example.com"],
            ip_addresses=["192.0.2.7", "2001:db8::7"],
        )
        template = template_from_upstream(upstream, now=NOW)
        self.assertEqual(template.common_name, "meet.example.com")
        self.assertEqual(template.dns_names, ("meet.example.com", "dialin.example.com"))
        self.assertEqual(
            template.ip_addresses, (ipaddress.ip_address("192.0.2.7"), ipaddress.ip_address("2001:db8::7"))
        )

    def test_cn_only(self) -> None:
        """An upstream without SANs gets its CN as SAN: DNS, or IP for an IP literal."""
        self.assertEqual(template_from_upstream(upstream_cert("old.example.com", None), now=NOW).dns_names, ("old.example.com",))
        template = template_from_upstream(upstream_cert("198.51.100.4", None), now=NOW)
        self.assertEqual((template.dns_names, template.ip_addresses), ((), (ipaddress.ip_address("198.51.100.4"),)))

    def test_no_cn(self) -> None:
        """An upstream without a CN gets its first SAN as CN."""
        template = template_from_upstream(upstream_cert(None, ["a.example.com", "b.example.com"]), now=NOW)
        self.assertEqual(template.common_name, "a.example.com")
        template = template_from_upstream(upstream_cert(None, [], ["192.0.2.1"]), now=NOW)
        self.assertEqual(template.common_name, "192.0.2.1")

    def test_short_validity_copied(self) -> None:
        """An upstream valid at most 397 days gives exactly its validity."""
        before, after = NOW - 100 * DAY, NOW + 297 * DAY
        template = template_from_upstream(upstream_cert(not_before=before, not_after=after), now=NOW)
        self.assertEqual((template.not_before, template.not_after), (before, after))

    def test_long_validity_clipped(self) -> None:
        """
        A two-year upstream gives 397 days inside it, starting the day before
        today (UTC), so the template is stable during the day.
        """
        before, after = NOW - 400 * DAY, NOW + 500 * DAY
        upstream = upstream_cert(not_before=before, not_after=after)
        template = template_from_upstream(upstream, now=NOW)
        self.assertEqual(template.not_before, datetime.datetime(2026, 3, 13, tzinfo=datetime.timezone.utc))
        self.assertEqual(template.not_after - template.not_before, MAX_LEAF_VALIDITY)
        self.assertLessEqual(template.not_after, after)
        self.assertEqual(template, template_from_upstream(upstream, now=NOW + datetime.timedelta(hours=8)))

    def test_long_validity_clipped_to_upstream_end(self) -> None:
        """Near the upstream's end, the window ends with it."""
        before, after = NOW - 700 * DAY, NOW + 30 * DAY
        template = template_from_upstream(upstream_cert(not_before=before, not_after=after), now=NOW)
        self.assertEqual(template.not_after, after)
        self.assertLessEqual(template.not_after - template.not_before, MAX_LEAF_VALIDITY)

    def test_long_validity_clipped_to_upstream_start(self) -> None:
        """A brand-new upstream: the window starts with it, not before."""
        before, after = NOW - datetime.timedelta(hours=1), NOW + 800 * DAY
        template = template_from_upstream(upstream_cert(not_before=before, not_after=after), now=NOW)
        self.assertEqual(template.not_before, before)
        self.assertEqual(template.not_after, before + MAX_LEAF_VALIDITY)

    def test_expired_upstream(self) -> None:
        """An expired long-lived upstream gives a leaf that is just as expired."""
        before, after = NOW - 900 * DAY, NOW - 10 * DAY
        template = template_from_upstream(upstream_cert(not_before=before, not_after=after), now=NOW)
        self.assertEqual((template.not_before, template.not_after), (after - MAX_LEAF_VALIDITY, after))


class MintTests(SynchronousTestCase):
    """
    L{mint_leaf}, field by field, for both leaf key types.
    """

    def setUp(self) -> None:
        self.upstream = upstream_cert(
            dns_names=["meet.example.com", "lyncdiscover.example.com"], ip_addresses=["192.0.2.10"]
        )
        self.template = template_from_upstream(self.upstream, now=NOW)

    def _check_fields(self, leaf: x509.Certificate, leaf_key, *, rsa_key: bool) -> None:
        ring = keyring()
        ext = leaf.extensions
        self.assertEqual(leaf.version, x509.Version.v3)
        self.assertEqual(leaf.serial_number, 0x1234)
        self.assertEqual(leaf.issuer, ring.issuer_cert.subject)
        self.assertEqual(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "meet.example.com")
        self.assertEqual(len(leaf.subject), 1)
        self.assertEqual(leaf.public_key(), leaf_key.public_key())
        self.assertIsInstance(leaf.signature_hash_algorithm, hashes.SHA256)
        leaf.verify_directly_issued_by(ring.issuer_cert)
        # The upstream's validity, but not starting before the issuer's.
        self.assertEqual(
            leaf.not_valid_before_utc,
            max(self.upstream.not_valid_before_utc, ring.issuer_cert.not_valid_before_utc),
        )
        self.assertEqual(leaf.not_valid_after_utc, self.upstream.not_valid_after_utc)

        san = ext.get_extension_for_class(x509.SubjectAlternativeName)
        self.assertFalse(san.critical)
        self.assertEqual(san.value.get_values_for_type(x509.DNSName), ["meet.example.com", "lyncdiscover.example.com"])
        self.assertEqual(san.value.get_values_for_type(x509.IPAddress), [ipaddress.ip_address("192.0.2.10")])

        bc = ext.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertFalse(bc.value.ca)

        ku = ext.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.digital_signature)
        self.assertEqual(ku.value.key_encipherment, rsa_key)
        self.assertFalse(ku.value.key_cert_sign)
        self.assertFalse(ku.value.crl_sign)

        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage)
        self.assertEqual(list(eku.value), [ExtendedKeyUsageOID.SERVER_AUTH])

        ca_ski = ring.issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()))
        self.assertNotEqual(ski.digest, ca_ski.digest)
        aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ca_ski.digest)
        self.assertIsNone(aki.authority_cert_issuer)

        cdp = ext.get_extension_for_class(x509.CRLDistributionPoints).value
        self.assertEqual([[n.value for n in dp.full_name] for dp in cdp], [[CRL_URL]])
        aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
        self.assertEqual(
            [(a.access_method, a.access_location.value) for a in aia],
            [(AuthorityInformationAccessOID.OCSP, OCSP_URL), (AuthorityInformationAccessOID.CA_ISSUERS, CA_ISSUERS_URL)],
        )
        self.assertEqual(
            {e.oid for e in ext},
            {
                x509.SubjectAlternativeName.oid,
                x509.BasicConstraints.oid,
                x509.KeyUsage.oid,
                x509.ExtendedKeyUsage.oid,
                x509.SubjectKeyIdentifier.oid,
                x509.AuthorityKeyIdentifier.oid,
                x509.CRLDistributionPoints.oid,
                x509.AuthorityInformationAccess.oid,
            },
        )

    def test_ecdsa_fields(self) -> None:
        """An ECDSA leaf has every field, and no keyEncipherment."""
        key = keyring().leaf_ecdsa_key
        self._check_fields(mint(self.template, key), key, rsa_key=False)

    def test_rsa_fields(self) -> None:
        """An RSA leaf has every field, with keyEncipherment."""
        key = keyring().leaf_rsa_key
        self._check_fields(mint(self.template, key), key, rsa_key=True)

    def test_strict_validator_dns(self) -> None:
        """Both leaves pass the strict validator for each DNS name."""
        for key in (keyring().leaf_ecdsa_key, keyring().leaf_rsa_key):
            leaf = mint(self.template, key)
            for name in ("meet.example.com", "lyncdiscover.example.com"):
                chain = verify(leaf, x509.DNSName(name))
                self.assertEqual(chain, [leaf, keyring().issuer_cert])

    def test_strict_validator_ip(self) -> None:
        """The IP SAN passes the strict validator."""
        for key in (keyring().leaf_ecdsa_key, keyring().leaf_rsa_key):
            verify(mint(self.template, key), x509.IPAddress(ipaddress.ip_address("192.0.2.10")))

    def test_strict_validator_ipv6_only(self) -> None:
        """A leaf for an IPv6-only upstream (no CN, no DNS) passes too."""
        template = template_from_upstream(upstream_cert(None, [], ["2001:db8::1"]), now=NOW)
        verify(mint(template), x509.IPAddress(ipaddress.ip_address("2001:db8::1")))

    def test_strict_validator_cn_only_upstream(self) -> None:
        """A leaf for a CN-only upstream passes: its CN became a SAN."""
        template = template_from_upstream(upstream_cert("legacy.example.com", None), now=NOW)
        verify(mint(template), x509.DNSName("legacy.example.com"))

    def test_strict_validator_rejects(self) -> None:
        """Another name, another time, or the untrusted issuer: refused."""
        leaf = mint(self.template)
        self.assertRaises(VerificationError, verify, leaf, x509.DNSName("other.example.com"))
        self.assertRaises(VerificationError, verify, leaf, x509.IPAddress(ipaddress.ip_address("192.0.2.11")))
        self.assertRaises(VerificationError, verify, leaf, x509.DNSName("meet.example.com"), at=NOW + 61 * DAY)
        untrusted = mint(self.template, untrusted=True)
        self.assertRaises(VerificationError, verify, untrusted, x509.DNSName("meet.example.com"))
        verify(untrusted, x509.DNSName("meet.example.com"), ca=keyring().untrusted_cert)

    def test_validity_clipped(self) -> None:
        """A long-lived upstream's leaf is at most 397 days and inside the upstream's."""
        upstream = upstream_cert(not_before=NOW - 300 * DAY, not_after=NOW + 430 * DAY)
        leaf = mint(template_from_upstream(upstream, now=NOW))
        self.assertLessEqual(leaf.not_valid_after_utc - leaf.not_valid_before_utc, MAX_LEAF_VALIDITY)
        self.assertGreaterEqual(leaf.not_valid_before_utc, upstream.not_valid_before_utc)
        self.assertLessEqual(leaf.not_valid_after_utc, upstream.not_valid_after_utc)
        verify(leaf, x509.DNSName("meet.example.com"))

    def test_validity_clipped_to_issuer(self) -> None:
        """A leaf never starts before its issuer did."""
        upstream = upstream_cert(not_before=NOW - 300 * DAY, not_after=NOW + 30 * DAY)
        leaf = mint(template_from_upstream(upstream, now=NOW))
        self.assertEqual(leaf.not_valid_before_utc, keyring().issuer_cert.not_valid_before_utc)
        self.assertEqual(leaf.not_valid_after_utc, upstream.not_valid_after_utc)

    def test_expired_before_issuer(self) -> None:
        """An upstream that expired before the issuer existed keeps its expired window."""
        upstream = upstream_cert(not_before=NOW - 100 * DAY, not_after=NOW - 10 * DAY)
        leaf = mint(template_from_upstream(upstream, now=NOW))
        self.assertEqual(leaf.not_valid_before_utc, upstream.not_valid_before_utc)
        self.assertEqual(leaf.not_valid_after_utc, upstream.not_valid_after_utc)
        self.assertRaises(VerificationError, verify, leaf, x509.DNSName("meet.example.com"))

    def test_no_urls(self) -> None:
        """Without URLs there is no CDP and no AIA."""
        leaf = mint(self.template, crl_url=None, ocsp_url=None, ca_issuers_url=None)
        self.assertRaises(x509.ExtensionNotFound, leaf.extensions.get_extension_for_class, x509.CRLDistributionPoints)
        self.assertRaises(
            x509.ExtensionNotFound, leaf.extensions.get_extension_for_class, x509.AuthorityInformationAccess
        )
        verify(leaf, x509.DNSName("meet.example.com"))

    def test_some_urls(self) -> None:
        """Each URL appears exactly when given."""
        leaf = mint(self.template, crl_url=None, ca_issuers_url=None)
        self.assertRaises(x509.ExtensionNotFound, leaf.extensions.get_extension_for_class, x509.CRLDistributionPoints)
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        self.assertEqual([(a.access_method, a.access_location.value) for a in aia], [(AuthorityInformationAccessOID.OCSP, OCSP_URL)])
        leaf = mint(self.template, ocsp_url=None, ca_issuers_url=None)
        self.assertRaises(
            x509.ExtensionNotFound, leaf.extensions.get_extension_for_class, x509.AuthorityInformationAccess
        )
        cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        self.assertEqual(cdp[0].full_name, [x509.UniformResourceIdentifier(CRL_URL)])

    def test_each_key_and_issuer_its_own(self) -> None:
        """
        The extensions made once per issuer, leaf key and URLs are never
        another's: a new key gets its own SKI, the untrusted issuer its own
        AKI, whatever was minted before.
        """
        from cryptography.hazmat.primitives.asymmetric import ec

        ring = keyring()
        mint(self.template)
        for _ in range(3):
            key = ec.generate_private_key(ec.SECP256R1())
            leaf = mint(self.template, key)
            ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(key.public_key()))
            self.assertEqual(leaf.public_key(), key.public_key())
        leaf = mint(self.template, untrusted=True)
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(aki.key_identifier, x509.SubjectKeyIdentifier.from_public_key(ring.untrusted_cert.public_key()).digest)
        verify(leaf, x509.DNSName("meet.example.com"), ca=ring.untrusted_cert)

    def test_empty_subject(self) -> None:
        """A template without CN gives an empty subject and a critical SAN."""
        template = LeafTemplate(None, ("x.example.com",), (), NOW - DAY, NOW + DAY)
        leaf = mint(template)
        self.assertEqual(len(leaf.subject), 0)
        self.assertTrue(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical)
        verify(leaf, x509.DNSName("x.example.com"))

    def test_refuses_nameless_and_bad_serial(self) -> None:
        """No name at all, or a serial that is not positive: ValueError."""
        self.assertRaises(ValueError, mint, LeafTemplate(None, (), (), NOW - DAY, NOW + DAY))
        self.assertRaises(ValueError, mint, self.template, serial=0)

    def test_deterministic(self) -> None:
        """Given the serial, minting is deterministic (RSA issuer signatures are)."""
        self.assertEqual(mint(self.template, serial=99), mint(self.template, serial=99))
        self.assertNotEqual(mint(self.template, serial=99), mint(self.template, serial=100))


class SerialTests(SynchronousTestCase):
    """
    L{random_serial} and L{key_type_of}.
    """

    def test_random_serial(self) -> None:
        """Serials are positive, at most 128 bits, and do not repeat."""
        serials = {random_serial() for _ in range(1000)}
        self.assertEqual(len(serials), 1000)
        self.assertTrue(all(0 < s < 2**128 for s in serials))
        # Most have a high bit set somewhere in the top byte: really 128 bits.
        self.assertGreater(sum(s >= 2**120 for s in serials), 900)

    def test_key_type_of(self) -> None:
        self.assertEqual(key_type_of(keyring().leaf_ecdsa_key), KEY_TYPE_ECDSA)
        self.assertEqual(key_type_of(keyring().leaf_rsa_key), KEY_TYPE_RSA)
        self.assertRaises(TypeError, key_type_of, object())


class LeafCacheTests(SynchronousTestCase):
    """
    L{LeafCache} is a bounded LRU that counts hits and misses.
    """

    def _template(self, n: int) -> LeafTemplate:
        return LeafTemplate(f"h{n}.example.com", (f"h{n}.example.com",), (), NOW - DAY, NOW + DAY)

    def test_hit_and_miss(self) -> None:
        cache = LeafCache(4)
        cert = keyring().issuer_cert
        self.assertIsNone(cache.get(self._template(1), KEY_TYPE_ECDSA))
        cache.put(self._template(1), KEY_TYPE_ECDSA, cert)
        self.assertIs(cache.get(self._template(1), KEY_TYPE_ECDSA), cert)
        self.assertIsNone(cache.get(self._template(1), KEY_TYPE_RSA))
        self.assertIsNone(cache.get(self._template(1), KEY_TYPE_ECDSA, untrusted=True))
        self.assertEqual((cache.hits, cache.misses), (1, 3))

    def test_lru_eviction(self) -> None:
        """Past capacity, the least recently used leaf goes."""
        cache = LeafCache(2)
        cert = keyring().issuer_cert
        cache.put(self._template(1), KEY_TYPE_ECDSA, cert)
        cache.put(self._template(2), KEY_TYPE_ECDSA, cert)
        cache.get(self._template(1), KEY_TYPE_ECDSA)
        cache.put(self._template(3), KEY_TYPE_ECDSA, cert)
        self.assertEqual(len(cache), 2)
        self.assertIsNone(cache.get(self._template(2), KEY_TYPE_ECDSA))
        self.assertIsNotNone(cache.get(self._template(1), KEY_TYPE_ECDSA))
        self.assertIsNotNone(cache.get(self._template(3), KEY_TYPE_ECDSA))

    def test_get_or_mint(self) -> None:
        """get_or_mint mints once per key."""
        cache = LeafCache(8)
        calls = []
        template = template_from_upstream(upstream_cert(), now=NOW)

        def minter():
            calls.append(1)
            return mint(template, serial=random_serial())

        first = cache.get_or_mint(template, KEY_TYPE_ECDSA, minter)
        self.assertIs(cache.get_or_mint(template, KEY_TYPE_ECDSA, minter), first)
        self.assertEqual(len(calls), 1)
        self.assertEqual((cache.hits, cache.misses), (1, 1))

    def test_capacity(self) -> None:
        self.assertRaises(ValueError, LeafCache, 0)
