"""
Tests for L{txgate.pki.keyring}.
"""

from __future__ import annotations

import datetime
import os
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import ConfigErrors
from txgate.pki.keyring import (
    ALL_FILES,
    CERT_FILES,
    KEY_FILES,
    Keyring,
    load_keyring,
    load_or_create,
    save_keyring,
)

from tests.pki.helpers import NOW, keyring


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class GenerateTests(SynchronousTestCase):
    """
    L{txgate.pki.keyring.generate_keyring} makes two CAs and two leaf keys.
    """

    def _check_ca(self, cert: x509.Certificate) -> None:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(bc.critical)
        self.assertTrue(bc.value.ca)
        self.assertEqual(bc.value.path_length, 0)
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(ku.critical)
        self.assertTrue(ku.value.key_cert_sign)
        self.assertTrue(ku.value.crl_sign)
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(cert.public_key()))
        self.assertEqual(cert.subject, cert.issuer)
        cert.verify_directly_issued_by(cert)
        self.assertLessEqual(cert.not_valid_before_utc, NOW)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertEqual(lifetime, datetime.timedelta(days=3650))

    def test_issuer(self) -> None:
        """The issuer is a CA that can sign certificates and CRLs, valid ten years."""
        ring = keyring()
        self._check_ca(ring.issuer_cert)
        self.assertEqual(
            ring.issuer_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, "txgate issuer"
        )
        self.assertEqual(ring.issuer_cert.public_key(), ring.issuer_key.public_key())

    def test_untrusted(self) -> None:
        """The untrusted issuer is another CA whose name says it is untrusted."""
        ring = keyring()
        self._check_ca(ring.untrusted_cert)
        cn = ring.untrusted_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertIn("untrusted", cn)
        self.assertNotEqual(ring.untrusted_cert.public_key(), ring.issuer_cert.public_key())
        self.assertEqual(ring.untrusted_cert.public_key(), ring.untrusted_key.public_key())

    def test_leaf_keys(self) -> None:
        """The leaf keys are ECDSA P-256 and RSA-2048."""
        ring = keyring()
        self.assertIsInstance(ring.leaf_ecdsa_key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(ring.leaf_ecdsa_key.curve, ec.SECP256R1)
        self.assertIsInstance(ring.leaf_rsa_key, rsa.RSAPrivateKey)
        self.assertEqual(ring.leaf_rsa_key.key_size, 2048)

    def test_repr_hides_keys(self) -> None:
        """The repr of a keyring names its certificates, not its keys."""
        self.assertNotIn("PrivateKey", repr(keyring()))


class SaveLoadTests(SynchronousTestCase):
    """
    L{save_keyring} and L{load_keyring}.
    """

    def setUp(self) -> None:
        self.directory = os.path.join(self.mktemp(), "ca")
        save_keyring(keyring(), self.directory)

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def _error_messages(self) -> list[str]:
        with self.assertRaises(ConfigErrors) as raised:
            load_keyring(self.directory)
        return [str(e) for e in raised.exception.errors]

    def test_round_trip(self) -> None:
        """What is saved loads back: same certificates, same keys."""
        ring = keyring()
        loaded = load_keyring(self.directory)
        self.assertIsInstance(loaded, Keyring)
        self.assertEqual(loaded.issuer_cert, ring.issuer_cert)
        self.assertEqual(loaded.untrusted_cert, ring.untrusted_cert)
        self.assertEqual(loaded.issuer_key.public_key(), ring.issuer_key.public_key())
        self.assertEqual(loaded.untrusted_key.public_key(), ring.untrusted_key.public_key())
        self.assertEqual(loaded.leaf_ecdsa_key.public_key(), ring.leaf_ecdsa_key.public_key())
        self.assertEqual(loaded.leaf_rsa_key.public_key(), ring.leaf_rsa_key.public_key())
        self.assertEqual(loaded, ring)

    def test_file_names(self) -> None:
        """Exactly the six documented files are written."""
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            sorted(["issuer.pem", "issuer.key", "untrusted.pem", "untrusted.key", "leaf-ecdsa.key", "leaf-rsa.key"]),
        )
        self.assertEqual(sorted(ALL_FILES), sorted(os.listdir(self.directory)))

    def test_key_modes(self) -> None:
        """Every key file is 0600, certificates 0644, the directory 0700."""
        for name in KEY_FILES:
            self.assertEqual(_mode(self._path(name)), 0o600, name)
        for name in CERT_FILES:
            self.assertEqual(_mode(self._path(name)), 0o644, name)
        self.assertEqual(_mode(self.directory), 0o700)

    def test_key_modes_with_permissive_umask(self) -> None:
        """
        Key files are 0600 even under umask 0, and saving over a key file
        that was 0644 leaves a 0600 one: the mode comes from creation.
        """
        os.chmod(self._path("issuer.key"), 0o644)
        old = os.umask(0)
        try:
            directory = self.mktemp()
            save_keyring(keyring(), directory)
            save_keyring(keyring(), self.directory)
        finally:
            os.umask(old)
        for name in KEY_FILES:
            self.assertEqual(_mode(os.path.join(directory, name)), 0o600, name)
            self.assertEqual(_mode(self._path(name)), 0o600, name)
        self.assertEqual(sorted(os.listdir(self.directory)), sorted(ALL_FILES))

    def test_refuses_readable_key(self) -> None:
        """A key file readable by others is refused, naming it and its mode."""
        os.chmod(self._path("issuer.key"), 0o644)
        [message] = self._error_messages()
        self.assertEqual(
            message,
            f"{self._path('issuer.key')}: private key is readable by others (mode 0644); chmod 600 it",
        )

    def test_refuses_group_readable_key(self) -> None:
        """Group read access is refused too, for every key file."""
        for name in KEY_FILES:
            os.chmod(self._path(name), 0o640)
        messages = self._error_messages()
        self.assertEqual(len(messages), len(KEY_FILES))
        for name, message in zip(KEY_FILES, messages):
            self.assertIn(self._path(name), message)
            self.assertIn("(mode 0640); chmod 600 it", message)

    def test_certificate_mode_is_not_checked(self) -> None:
        """Certificates are public: a 0644 certificate loads."""
        os.chmod(self._path("issuer.pem"), 0o644)
        load_keyring(self.directory)

    def test_missing_files(self) -> None:
        """Each missing file is reported by path."""
        os.unlink(self._path("leaf-rsa.key"))
        os.unlink(self._path("issuer.pem"))
        messages = self._error_messages()
        self.assertEqual(
            sorted(messages),
            sorted([f"{self._path('leaf-rsa.key')}: missing", f"{self._path('issuer.pem')}: missing"]),
        )

    def test_unparseable_certificate(self) -> None:
        """A certificate file that is not PEM is reported by path."""
        with open(self._path("untrusted.pem"), "wb") as f:
            f.write(b"not a certificate\n")
        [message] = self._error_messages()
        self.assertTrue(message.startswith(f"{self._path('untrusted.pem')}: not a PEM certificate"), message)

    def test_unparseable_key(self) -> None:
        """A key file that is not a PEM key is reported by path."""
        fd = os.open(self._path("leaf-ecdsa.key"), os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"garbage")
        os.close(fd)
        [message] = self._error_messages()
        self.assertTrue(message.startswith(f"{self._path('leaf-ecdsa.key')}: not an unencrypted PEM private key"))

    def test_wrong_leaf_key_type(self) -> None:
        """An RSA key where the ECDSA leaf key belongs is refused."""
        os.replace(self._path("leaf-rsa.key"), self._path("leaf-ecdsa.key"))
        messages = self._error_messages()
        self.assertIn(f"{self._path('leaf-ecdsa.key')}: expected an ECDSA P-256 key, found RSAPrivateKey", messages)

    def test_mismatched_key(self) -> None:
        """An issuer key that is not the issuer certificate's is refused."""
        os.replace(self._path("untrusted.key"), self._path("issuer.key"))
        messages = self._error_messages()
        self.assertIn(f"{self._path('issuer.pem')}: does not match its private key", messages)


class LoadOrCreateTests(SynchronousTestCase):
    """
    L{load_or_create} generates a keyring on first start only.
    """

    def test_first_start(self) -> None:
        """An empty or absent directory gets a new keyring, loaded back after."""
        directory = os.path.join(self.mktemp(), "state", "ca")
        first = load_or_create(directory, NOW)
        self.assertEqual(sorted(os.listdir(directory)), sorted(ALL_FILES))
        for name in KEY_FILES:
            self.assertEqual(_mode(os.path.join(directory, name)), 0o600)
        second = load_or_create(directory, NOW + datetime.timedelta(days=1))
        self.assertEqual(second.issuer_cert, first.issuer_cert)
        self.assertEqual(second.leaf_rsa_key.public_key(), first.leaf_rsa_key.public_key())

    def test_partial_keyring_not_replaced(self) -> None:
        """A keyring with a missing key is reported, not regenerated."""
        directory = self.mktemp()
        save_keyring(keyring(), directory)
        os.unlink(os.path.join(directory, "issuer.key"))
        with self.assertRaises(ConfigErrors) as raised:
            load_or_create(directory, NOW)
        self.assertEqual(
            [str(e) for e in raised.exception.errors], [f"{os.path.join(directory, 'issuer.key')}: missing"]
        )
        self.assertFalse(os.path.exists(os.path.join(directory, "issuer.key")))
        with open(os.path.join(directory, "issuer.pem"), "rb") as f:
            self.assertEqual(x509.load_pem_x509_certificate(f.read()), keyring().issuer_cert)
