"""
Tests for L{txgate.pki.crl}, including one check with the real C{openssl}
command.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import ConfigErrors
from txgate.pki.crl import (
    Revocation,
    RevocationList,
    append_revocation,
    build_crl,
    crl_number_for,
    load_revocations,
    needs_renewal,
)
from txgate.pki.mint import mint_leaf, template_from_upstream

from tests.pki.helpers import NOW, keyring, upstream_cert

DAY = datetime.timedelta(days=1)


def crl(revoked=(), *, now=NOW, number=None, validity_days=30, untrusted=False):
    ring = keyring()
    return build_crl(
        ring.untrusted_cert if untrusted else ring.issuer_cert,
        ring.untrusted_key if untrusted else ring.issuer_key,
        list(revoked),
        now=now,
        number=crl_number_for(now) if number is None else number,
        validity_days=validity_days,
    )


class BuildTests(SynchronousTestCase):
    """
    L{build_crl}.
    """

    def test_empty(self) -> None:
        """An empty CRL: signed by the issuer, thisUpdate now, nextUpdate +30 days."""
        ring = keyring()
        c = crl()
        self.assertTrue(c.is_signature_valid(ring.issuer_cert.public_key()))
        self.assertFalse(c.is_signature_valid(ring.untrusted_cert.public_key()))
        self.assertEqual(c.issuer, ring.issuer_cert.subject)
        self.assertEqual(c.last_update_utc, NOW)
        self.assertEqual(c.next_update_utc, NOW + 30 * DAY)
        self.assertIsInstance(c.signature_hash_algorithm, hashes.SHA256)
        self.assertEqual(len(c), 0)

    def test_extensions(self) -> None:
        """cRLNumber as given; AKI is the issuer's SKI."""
        c = crl(number=4242)
        self.assertEqual(c.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number, 4242)
        ski = keyring().issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = c.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ski.digest)

    def test_validity_days(self) -> None:
        self.assertEqual(crl(validity_days=7).next_update_utc, NOW + 7 * DAY)
        self.assertRaises(ValueError, crl, validity_days=0)

    def test_revoked_entries(self) -> None:
        """Each revoked serial is listed with its time; a repeated serial once."""
        t1, t2 = NOW - 2 * DAY, NOW - DAY
        c = crl([(0xBEEF, t2), (0xABC, t1), (0xBEEF, NOW)])
        self.assertEqual(len(c), 2)
        self.assertEqual(c.get_revoked_certificate_by_serial_number(0xABC).revocation_date_utc, t1)
        self.assertEqual(c.get_revoked_certificate_by_serial_number(0xBEEF).revocation_date_utc, t2)
        self.assertIsNone(c.get_revoked_certificate_by_serial_number(0x1))
        self.assertEqual([r.serial_number for r in c], [0xABC, 0xBEEF])

    def test_deterministic(self) -> None:
        """
        Two nodes sharing the keyring, signing at the same second with the same
        list, publish the very same bytes (RSA signatures are deterministic).
        """
        a = crl([(7, NOW)]).public_bytes(serialization.Encoding.DER)
        b = crl([(7, NOW)], now=NOW + datetime.timedelta(microseconds=500)).public_bytes(serialization.Encoding.DER)
        self.assertEqual(a, b)


class NumberTests(SynchronousTestCase):
    """
    L{crl_number_for} increases with time and agrees between nodes.
    """

    def test_monotonic(self) -> None:
        numbers = [crl_number_for(NOW + n * datetime.timedelta(seconds=1)) for n in range(5)]
        self.assertEqual(numbers, sorted(set(numbers)))
        self.assertLess(crl_number_for(NOW), crl_number_for(NOW + DAY))

    def test_same_second(self) -> None:
        """The same second, in any time zone, gives the same number."""
        other_zone = NOW.astimezone(datetime.timezone(datetime.timedelta(hours=-5)))
        self.assertEqual(crl_number_for(NOW), crl_number_for(other_zone))
        self.assertEqual(crl_number_for(NOW), crl_number_for(NOW + datetime.timedelta(microseconds=999999)))
        self.assertEqual(crl_number_for(NOW), int(NOW.timestamp()))

    def test_naive_refused(self) -> None:
        self.assertRaises(ValueError, crl_number_for, datetime.datetime(2026, 1, 1))

    def test_in_crl(self) -> None:
        """CRLs signed later carry larger numbers."""
        first = crl(now=NOW).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        later = crl(now=NOW + DAY).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        self.assertGreater(later, first)


class RenewalTests(SynchronousTestCase):
    """
    L{needs_renewal} with a fake clock.
    """

    def test_half_life(self) -> None:
        """A 30-day CRL is renewed once 15 days have passed, not before."""
        c = crl()
        self.assertFalse(needs_renewal(c, NOW))
        self.assertFalse(needs_renewal(c, NOW + 15 * DAY - datetime.timedelta(seconds=1)))
        self.assertTrue(needs_renewal(c, NOW + 15 * DAY))
        self.assertTrue(needs_renewal(c, NOW + 31 * DAY))

    def test_margin(self) -> None:
        c = crl()
        self.assertFalse(needs_renewal(c, NOW + 20 * DAY, margin_fraction=0.25))
        self.assertTrue(needs_renewal(c, NOW + 23 * DAY, margin_fraction=0.25))
        self.assertRaises(ValueError, needs_renewal, c, NOW, margin_fraction=1.5)

    def test_clock_stepped_back(self) -> None:
        """A CRL from the future (clock stepped back) is renewed."""
        self.assertTrue(needs_renewal(crl(), NOW - datetime.timedelta(minutes=5)))

    def test_renewed_crl_is_fresh(self) -> None:
        """The CRL built at renewal time does not need renewal itself."""
        later = NOW + 16 * DAY
        self.assertTrue(needs_renewal(crl(), later))
        self.assertFalse(needs_renewal(crl(now=later), later))


class RevocationListTests(SynchronousTestCase):
    """
    L{RevocationList}, L{load_revocations} and L{append_revocation}.
    """

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "revoked.jsonl")
        os.makedirs(os.path.dirname(self.path))

    def test_missing_file_is_empty(self) -> None:
        self.assertEqual(load_revocations(self.path), RevocationList())

    def test_round_trip(self) -> None:
        """Appended revocations load back in order, first revocation wins."""
        append_revocation(self.path, 0xDEADBEEF, NOW)
        append_revocation(self.path, 2**127 + 5, NOW + DAY)
        append_revocation(self.path, 0xDEADBEEF, NOW + 2 * DAY)
        loaded = load_revocations(self.path)
        self.assertEqual(loaded.entries, (Revocation(0xDEADBEEF, NOW), Revocation(2**127 + 5, NOW + DAY)))
        self.assertIn(0xDEADBEEF, loaded)
        self.assertNotIn(1, loaded)
        self.assertEqual(loaded.as_mapping(), {0xDEADBEEF: NOW, 2**127 + 5: NOW + DAY})
        with open(self.path) as f:
            self.assertEqual(f.readline(), '{"serial": "deadbeef", "time": "2026-03-14T15:09:26Z"}\n')

    def test_with_revocation(self) -> None:
        revocations = RevocationList().with_revocation(5, NOW)
        self.assertIs(revocations.with_revocation(5, NOW + DAY), revocations)
        self.assertEqual(revocations.as_pairs(), ((5, NOW),))

    def test_bad_lines(self) -> None:
        """Each bad line is reported with the file and line number; blank lines are fine."""
        with open(self.path, "w") as f:
            f.write('{"serial": "ab", "time": "2026-03-14T15:09:26Z"}\n\nnot json\n{"serial": "zz", "time": "x"}\n')
        with self.assertRaises(ConfigErrors) as raised:
            load_revocations(self.path)
        self.assertEqual([(e.path, e.line) for e in raised.exception.errors], [(self.path, 3), (self.path, 4)])

    def test_refuses_bad_serial(self) -> None:
        self.assertRaises(ValueError, append_revocation, self.path, 0, NOW)


class OpenSSLTests(SynchronousTestCase):
    """
    The real C{openssl verify -crl_check} accepts a minted leaf with txgate's
    CRL, and refuses it once its serial is revoked.
    """

    def setUp(self) -> None:
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")

    def _verify(self, revoked) -> subprocess.CompletedProcess:
        ring = keyring()
        now = datetime.datetime.now(datetime.timezone.utc)
        upstream = upstream_cert(not_before=now - 10 * DAY, not_after=now + 80 * DAY)
        leaf = mint_leaf(
            template_from_upstream(upstream, now=now),
            issuer_cert=ring.issuer_cert,
            issuer_key=ring.issuer_key,
            leaf_key=ring.leaf_rsa_key,
            serial=0x7E57,
            crl_url="http://crl.txgate.test/txgate.crl",
            ocsp_url="http://crl.txgate.test/ocsp",
            ca_issuers_url=None,
        )
        the_crl = build_crl(
            ring.issuer_cert, ring.issuer_key, revoked, now=now - datetime.timedelta(minutes=1), number=crl_number_for(now)
        )
        directory = self.mktemp()
        os.makedirs(directory)
        pem = serialization.Encoding.PEM
        for name, data in [
            ("ca.pem", ring.issuer_cert.public_bytes(pem)),
            ("leaf.pem", leaf.public_bytes(pem)),
            ("crl.pem", the_crl.public_bytes(pem)),
        ]:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(data)
        return subprocess.run(
            ["openssl", "verify", "-crl_check", "-CAfile", "ca.pem", "-CRLfile", "crl.pem", "leaf.pem"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def test_good(self) -> None:
        result = self._verify([])
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("leaf.pem: OK", result.stdout)

    def test_revoked(self) -> None:
        result = self._verify([(0x7E57, datetime.datetime.now(datetime.timezone.utc) - DAY)])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("certificate revoked", result.stdout + result.stderr)
