# -*- test-case-name: tests.pki.test_keyring -*-
"""
The issuer keyring: the CA that signs emulated certificates, the CRL and OCSP
answers, the "untrusted issuer" CA for upstreams that failed verification, and
the two leaf keys every emulated certificate reuses.

On disk (one directory, normally C{<state_dir>/ca}):

    issuer.pem      the CA certificate users import (0644)
    issuer.key      its private key                 (0600)
    untrusted.pem   the untrusted issuer            (0644)
    untrusted.key   its private key                 (0600)
    leaf-ecdsa.key  ECDSA P-256 leaf key            (0600)
    leaf-rsa.key    RSA-2048 leaf key               (0600)

Key files are created with mode 0600 from the start (never chmod-ed after the
secret is written) and a key file that group or others can read is refused.
"""

from __future__ import annotations

import datetime
import errno
import os
import stat
from typing import Union

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from txgate.errors import ConfigError, ConfigErrors

__all__ = [
    "CA_VALIDITY",
    "ISSUER_COMMON_NAME",
    "Keyring",
    "UNTRUSTED_COMMON_NAME",
    "generate_keyring",
    "fingerprint",
    "has_keyring",
    "load_ca_pair",
    "private_directory",
    "read_file",
    "load_keyring",
    "load_or_create",
    "save_keyring",
]

IssuerKey = Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]

ISSUER_COMMON_NAME = "txgate issuer"
UNTRUSTED_COMMON_NAME = "txgate untrusted issuer (upstream failed verification)"
CA_VALIDITY = datetime.timedelta(days=3650)
# A freshly generated CA is backdated a little so a client whose clock is
# slightly behind does not see it as "not yet valid".
CA_BACKDATE = datetime.timedelta(hours=1)

ISSUER_CERT = "issuer.pem"
ISSUER_KEY = "issuer.key"
UNTRUSTED_CERT = "untrusted.pem"
UNTRUSTED_KEY = "untrusted.key"
LEAF_ECDSA_KEY = "leaf-ecdsa.key"
LEAF_RSA_KEY = "leaf-rsa.key"

CERT_FILES = (ISSUER_CERT, UNTRUSTED_CERT)
KEY_FILES = (ISSUER_KEY, UNTRUSTED_KEY, LEAF_ECDSA_KEY, LEAF_RSA_KEY)
ALL_FILES = CERT_FILES + KEY_FILES


@attrs.frozen
class Keyring:
    """
    Everything txgate signs with.

    @ivar issuer_cert: the CA users trust; signs leaves, the CRL and OCSP.
    @ivar issuer_key: its private key.
    @ivar untrusted_cert: a second CA nobody trusts; signs leaves emulating
        upstream certificates that failed verification.
    @ivar untrusted_key: its private key.
    @ivar leaf_ecdsa_key: the ECDSA P-256 key of every emulated ECDSA leaf.
    @ivar leaf_rsa_key: the RSA-2048 key of every emulated RSA leaf.
    """

    issuer_cert: x509.Certificate
    issuer_key: IssuerKey = attrs.field(eq=False, repr=False)
    untrusted_cert: x509.Certificate
    untrusted_key: IssuerKey = attrs.field(eq=False, repr=False)
    leaf_ecdsa_key: ec.EllipticCurvePrivateKey = attrs.field(eq=False, repr=False)
    leaf_rsa_key: rsa.RSAPrivateKey = attrs.field(eq=False, repr=False)


def _ca_certificate(
    key: IssuerKey, common_name: str, *, now: datetime.datetime, serial: int
) -> x509.Certificate:
    """
    A self-signed CA certificate for C{key}: basicConstraints CA:true
    pathlen 0, keyUsage keyCertSign + cRLSign (+ digitalSignature, as it also
    signs OCSP responses itself), SKI, AKI, valid for L{CA_VALIDITY}.
    """
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "txgate"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    not_before = now.replace(microsecond=0) - CA_BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def generate_keyring(
    now: datetime.datetime,
    *,
    common_name: str = ISSUER_COMMON_NAME,
    untrusted_common_name: str = UNTRUSTED_COMMON_NAME,
) -> Keyring:
    """
    Generate a new keyring: two RSA-2048 CAs (RSA so that clients without
    ECDSA support can still build the chain) and the two leaf keys.

    Key generation draws its own randomness; nothing else here does.

    @param now: the current time; the CAs are valid from an hour before it.
    @param common_name: the CN of the trusted issuer (what users see when they
        import it).
    @param untrusted_common_name: the CN of the untrusted issuer, worded so a
        user who inspects a refused certificate sees why.
    """
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    untrusted_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keyring(
        issuer_cert=_ca_certificate(issuer_key, common_name, now=now, serial=x509.random_serial_number()),
        issuer_key=issuer_key,
        untrusted_cert=_ca_certificate(
            untrusted_key, untrusted_common_name, now=now, serial=x509.random_serial_number()
        ),
        untrusted_key=untrusted_key,
        leaf_ecdsa_key=ec.generate_private_key(ec.SECP256R1()),
        leaf_rsa_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    """
    Write C{data} to C{path} through a temporary file created with C{mode}
    (so a key is never readable by others, even for an instant, and an
    existing file with looser permissions is replaced rather than reused).
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _key_pem(key: IssuerKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_directory(path: str) -> None:
    """Make C{path} (and its parents) a directory only its owner can read: keys live there."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


def has_keyring(directory: str) -> bool:
    """Whether any keyring file exists in C{directory} (a partial keyring counts)."""
    return any(os.path.lexists(os.path.join(directory, name)) for name in ALL_FILES)


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as C{openssl x509 -fingerprint -sha256} prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def save_keyring(keyring: Keyring, directory: str) -> None:
    """
    Write C{keyring} into C{directory} (made private, L{private_directory}):
    certificates 0644, keys 0600 from creation.
    """
    private_directory(directory)
    pem = serialization.Encoding.PEM
    files: list[tuple[str, bytes, int]] = [
        (ISSUER_CERT, keyring.issuer_cert.public_bytes(pem), 0o644),
        (UNTRUSTED_CERT, keyring.untrusted_cert.public_bytes(pem), 0o644),
        (ISSUER_KEY, _key_pem(keyring.issuer_key), 0o600),
        (UNTRUSTED_KEY, _key_pem(keyring.untrusted_key), 0o600),
        (LEAF_ECDSA_KEY, _key_pem(keyring.leaf_ecdsa_key), 0o600),
        (LEAF_RSA_KEY, _key_pem(keyring.leaf_rsa_key), 0o600),
    ]
    for name, data, mode in files:
        _write_atomically(os.path.join(directory, name), data, mode)


def read_file(path: str, errors: list[ConfigError], *, secret: bool) -> bytes | None:
    """
    The bytes of C{path}, or C{None} with the reason appended to C{errors}.
    A secret file readable by group or others is refused before it is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        if e.errno == errno.ENOENT:
            errors.append(ConfigError(path, "", "missing"))
        else:
            errors.append(ConfigError(path, "", f"cannot be read: {e.strerror}"))
        return None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if secret and mode & 0o077:
            errors.append(
                ConfigError(
                    path,
                    "",
                    f"private key is readable by others (mode {mode:04o}); chmod 600 it",
                )
            )
            return None
        try:
            return f.read()
        except OSError as e:
            errors.append(ConfigError(path, "", f"cannot be read: {e.strerror}"))
            return None


def _load_cert(directory: str, name: str, errors: list[ConfigError]) -> x509.Certificate | None:
    path = os.path.join(directory, name)
    data = read_file(path, errors, secret=False)
    if data is None:
        return None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        errors.append(ConfigError(path, "", f"not a PEM certificate: {e}"))
        return None


def _load_key(directory: str, name: str, errors: list[ConfigError], kinds: tuple[type, ...], what: str):
    path = os.path.join(directory, name)
    data = read_file(path, errors, secret=True)
    if data is None:
        return None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        errors.append(ConfigError(path, "", f"not an unencrypted PEM private key: {e}"))
        return None
    except UnsupportedAlgorithm as e:
        errors.append(ConfigError(path, "", f"unsupported private key: {e}"))
        return None
    if not isinstance(key, kinds):
        errors.append(ConfigError(path, "", f"expected {what}, found {type(key).__name__}"))
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and kinds == (ec.EllipticCurvePrivateKey,):
        if not isinstance(key.curve, ec.SECP256R1):
            errors.append(ConfigError(path, "", f"expected {what}, found curve {key.curve.name}"))
            return None
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < 2048:
        errors.append(ConfigError(path, "", f"RSA key of {key.key_size} bits is too small (2048 at least)"))
        return None
    return key


def _check_pair(
    directory: str, cert_name: str, cert: x509.Certificate | None, key, errors: list[ConfigError]
) -> None:
    """
    The certificate is a CA that can sign certificates and CRLs, with the key
    next to it.
    """
    if cert is None or key is None:
        return
    path = os.path.join(directory, cert_name)
    if cert.public_key() != key.public_key():
        errors.append(ConfigError(path, "", "does not match its private key"))
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        errors.append(ConfigError(path, "", "is not a CA certificate (basicConstraints CA:true)"))
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not (ku.key_cert_sign and ku.crl_sign):
        errors.append(ConfigError(path, "", "keyUsage lacks keyCertSign or cRLSign"))


def load_keyring(directory: str) -> Keyring:
    """
    Read the keyring L{save_keyring} wrote.

    @raise ConfigErrors: one error per file that is missing, unreadable,
        unparseable, of the wrong kind, not matching its certificate, or (key
        files) readable by group or others; each names the file.
    """
    errors: list[ConfigError] = []
    ca_kinds = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)
    issuer_cert = _load_cert(directory, ISSUER_CERT, errors)
    issuer_key = _load_key(directory, ISSUER_KEY, errors, ca_kinds, "an RSA or ECDSA key")
    untrusted_cert = _load_cert(directory, UNTRUSTED_CERT, errors)
    untrusted_key = _load_key(directory, UNTRUSTED_KEY, errors, ca_kinds, "an RSA or ECDSA key")
    leaf_ecdsa_key = _load_key(
        directory, LEAF_ECDSA_KEY, errors, (ec.EllipticCurvePrivateKey,), "an ECDSA P-256 key"
    )
    leaf_rsa_key = _load_key(directory, LEAF_RSA_KEY, errors, (rsa.RSAPrivateKey,), "an RSA key")
    _check_pair(directory, ISSUER_CERT, issuer_cert, issuer_key, errors)
    _check_pair(directory, UNTRUSTED_CERT, untrusted_cert, untrusted_key, errors)
    if errors:
        raise ConfigErrors(tuple(errors))
    return Keyring(
        issuer_cert=issuer_cert,
        issuer_key=issuer_key,
        untrusted_cert=untrusted_cert,
        untrusted_key=untrusted_key,
        leaf_ecdsa_key=leaf_ecdsa_key,
        leaf_rsa_key=leaf_rsa_key,
    )


def load_or_create(directory: str, now: datetime.datetime) -> Keyring:
    """
    The keyring in C{directory}; on first start (none of its files exists)
    a new one is generated and saved there first.

    A partial keyring is never completed or overwritten: it is loaded, and
    the missing files are reported, so a lost key is noticed instead of
    silently replaced by a CA nobody trusts yet.

    @raise ConfigErrors: as L{load_keyring}.
    """
    if not has_keyring(directory):
        save_keyring(generate_keyring(now), directory)
    return load_keyring(directory)


def load_ca_pair(cert_path: str, key_path: str) -> tuple[x509.Certificate, IssuerKey]:
    """
    A configured CA: its certificate and private key, from two files or one
    PEM file holding both (C{cert_path == key_path}).

    @raise ConfigErrors: as L{load_keyring}, naming the files.
    """
    errors: list[ConfigError] = []
    ca_kinds = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)
    cert_dir, cert_name = os.path.split(os.path.abspath(cert_path))
    key_dir, key_name = os.path.split(os.path.abspath(key_path))
    cert = _load_cert(cert_dir, cert_name, errors)
    key = _load_key(key_dir, key_name, errors, ca_kinds, "an RSA or ECDSA key")
    _check_pair(cert_dir, cert_name, cert, key, errors)
    if errors:
        raise ConfigErrors(tuple(errors))
    return cert, key  # type: ignore[return-value]
