# -*- test-case-name: tests.pki.test_mint -*-
"""
Emulated leaf certificates: what to copy from the upstream certificate
(L{template_from_upstream}), one signature to mint it (L{mint_leaf}), and a
bounded cache of minted leaves (L{LeafCache}).

Everything here is deterministic given its arguments: the serial comes from
L{random_serial}, called by the glue, and the leaf key from the keyring.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import secrets
from typing import Callable, Generic, Hashable, TypeVar, Union

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "KEY_TYPE_ECDSA",
    "KEY_TYPE_RSA",
    "LeafCache",
    "LeafTemplate",
    "MAX_LEAF_VALIDITY",
    "key_type_of",
    "mint_leaf",
    "random_serial",
    "template_from_upstream",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
LeafKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
Minted = TypeVar("Minted")

# CA/Browser Forum baseline requirements (and Apple, Chrome): at most 398
# days; one day of margin.
MAX_LEAF_VALIDITY = datetime.timedelta(days=397)
# When the upstream certificate lives longer than MAX_LEAF_VALIDITY, the
# emulated one starts this long before the current UTC day, so a client whose
# clock is behind still accepts it and the template (the cache key) changes
# once a day, not once a second.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(days=1)
DEFAULT_CACHE_SIZE = 1024

KEY_TYPE_ECDSA = "ecdsa-p256"
KEY_TYPE_RSA = "rsa-2048"


@attrs.frozen
class LeafTemplate:
    """
    What an emulated leaf copies from the upstream certificate: hashable, so
    it is the cache key.

    @ivar common_name: the subject CN, or C{None} for an empty subject.
    @ivar dns_names: DNS subjectAltNames, in upstream order.
    @ivar ip_addresses: IP subjectAltNames, in upstream order.
    @ivar not_before: start of validity (UTC, whole seconds).
    @ivar not_after: end of validity (UTC, whole seconds).
    """

    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[IPAddress, ...]
    not_before: datetime.datetime
    not_after: datetime.datetime


def _validity(
    upstream_before: datetime.datetime, upstream_after: datetime.datetime, now: datetime.datetime
) -> tuple[datetime.datetime, datetime.datetime]:
    """
    A window inside the upstream's, at most L{MAX_LEAF_VALIDITY} long, that
    contains C{now} whenever the upstream's does (an expired or not yet
    valid upstream gives an equally expired or not yet valid leaf).
    """
    if upstream_after - upstream_before <= MAX_LEAF_VALIDITY:
        return upstream_before, upstream_after
    if now > upstream_after:
        return upstream_after - MAX_LEAF_VALIDITY, upstream_after
    if now < upstream_before:
        return upstream_before, upstream_before + MAX_LEAF_VALIDITY
    day = now.astimezone(datetime.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    start = max(upstream_before, day - CLOCK_SKEW_ALLOWANCE)
    return start, min(upstream_after, start + MAX_LEAF_VALIDITY)


def template_from_upstream(cert: x509.Certificate, *, now: datetime.datetime) -> LeafTemplate:
    """
    The template of the leaf that emulates C{cert}.

    Copies the subject CN and the DNS and IP subjectAltNames. An upstream
    without a subjectAltName extension (CN-only, pre-2000 style) gets its CN
    as the only SAN (an IP SAN when the CN is an IP literal), since clients
    no longer match names against the CN. An upstream without a CN gets its
    first SAN as the CN, for people reading certificate dialogs.

    Validity: the upstream's when it is at most L{MAX_LEAF_VALIDITY} long;
    otherwise a L{MAX_LEAF_VALIDITY} window inside it starting a day before
    C{now}'s UTC day (never before the upstream's start, never past its end).

    @param now: the current time; only used when the upstream validity is
        longer than L{MAX_LEAF_VALIDITY}.
    """
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(cns[0].value) if cns else None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
        ip_addresses = tuple(san.get_values_for_type(x509.IPAddress))
    else:
        dns_names, ip_addresses = (), ()
        if common_name:
            try:
                ip_addresses = (ipaddress.ip_address(common_name),)
            except ValueError:
                dns_names = (common_name,)
    if common_name is None:
        if dns_names:
            common_name = dns_names[0]
        elif ip_addresses:
            common_name = str(ip_addresses[0])
    not_before, not_after = _validity(cert.not_valid_before_utc, cert.not_valid_after_utc, now)
    return LeafTemplate(
        common_name=common_name,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        not_before=not_before.replace(microsecond=0),
        not_after=not_after.replace(microsecond=0),
    )


def random_serial() -> int:
    """
    A fresh serial number: 128 random bits, positive and non-zero (at most
    17 DER bytes, within RFC 5280's 20).
    """
    return secrets.randbelow(2**128 - 1) + 1


def key_type_of(key: LeafKey) -> str:
    """
    L{KEY_TYPE_ECDSA} or L{KEY_TYPE_RSA} for a leaf key (the cache key part).
    """
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return KEY_TYPE_ECDSA
    if isinstance(key, rsa.RSAPrivateKey):
        return KEY_TYPE_RSA
    raise TypeError(f"unsupported leaf key {type(key).__name__}")


def _authority_key_identifier(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


@attrs.frozen
class _Fixed:
    """What every leaf of one issuer, leaf key and set of URLs shares."""

    issuer_cert: x509.Certificate
    leaf_key: LeafKey
    public_key: object
    before_names: tuple[tuple[x509.ExtensionType, bool], ...]
    after_names: tuple[tuple[x509.ExtensionType, bool], ...]


_fixed: dict[tuple[int, int, str | None, str | None, str | None], _Fixed] = {}
_FIXED_MAX = 16


def _fixed_for(
    issuer_cert: x509.Certificate,
    leaf_key: LeafKey,
    crl_url: str | None,
    ocsp_url: str | None,
    ca_issuers_url: str | None,
) -> _Fixed:
    """
    The extensions that do not depend on the template, made once per issuer
    certificate, leaf key and URLs (keys are not hashable, so by identity,
    each entry holding what it was made for): building them is about a
    third of minting a leaf.
    """
    key = (id(issuer_cert), id(leaf_key), crl_url, ocsp_url, ca_issuers_url)
    fixed = _fixed.get(key)
    if fixed is not None and fixed.issuer_cert is issuer_cert and fixed.leaf_key is leaf_key:
        return fixed
    public_key = leaf_key.public_key()
    before: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(leaf_key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
        (_authority_key_identifier(issuer_cert), False),
    ]
    after: list[tuple[x509.ExtensionType, bool]] = []
    if crl_url is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None, crl_issuer=None
        )
        after.append((x509.CRLDistributionPoints([point]), False))
    access: list[x509.AccessDescription] = []
    if ocsp_url is not None:
        access.append(x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)))
    if ca_issuers_url is not None:
        access.append(
            x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(ca_issuers_url))
        )
    if access:
        after.append((x509.AuthorityInformationAccess(access), False))
    if len(_fixed) >= _FIXED_MAX:
        _fixed.clear()
    fixed = _fixed[key] = _Fixed(issuer_cert, leaf_key, public_key, tuple(before), tuple(after))
    return fixed


def mint_leaf(
    template: LeafTemplate,
    *,
    issuer_cert: x509.Certificate,
    issuer_key: Union[rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey],
    leaf_key: LeafKey,
    serial: int,
    crl_url: str | None,
    ocsp_url: str | None,
    ca_issuers_url: str | None,
) -> x509.Certificate:
    """
    Sign an emulated server certificate for C{template} with one SHA-256
    signature.

    Contents: subject CN (when the template has one), subjectAltName (DNS
    then IP; critical when the subject is empty), basicConstraints CA:false
    (critical), keyUsage digitalSignature (+ keyEncipherment for an RSA
    key; critical), extendedKeyUsage serverAuth, SKI of C{leaf_key}, AKI
    from the issuer's SKI, cRLDistributionPoints with C{crl_url} and
    authorityInfoAccess with C{ocsp_url} / C{ca_issuers_url}, each only when
    given. Validity is the template's, clipped to the issuer's
    when the two overlap.

    @raise ValueError: when the template has neither a CN nor a SAN, or
        C{serial} is not positive.
    """
    if serial <= 0:
        raise ValueError(f"serial must be positive, not {serial}")
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in template.dns_names]
    names += [x509.IPAddress(a) for a in template.ip_addresses]
    if not names and not template.common_name:
        raise ValueError("a leaf needs a common name or a subjectAltName")
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, template.common_name)] if template.common_name else []
    )
    fixed = _fixed_for(issuer_cert, leaf_key, crl_url, ocsp_url, ca_issuers_url)
    not_before = max(template.not_before, issuer_cert.not_valid_before_utc)
    not_after = min(template.not_after, issuer_cert.not_valid_after_utc)
    if not_before >= not_after:
        # An upstream that expired before the issuer existed: keep its
        # (expired) window rather than invent a valid one.
        not_before, not_after = template.not_before, template.not_after
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(fixed.public_key)  # type: ignore[arg-type]
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in fixed.before_names:
        builder = builder.add_extension(extension, critical=critical)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=not template.common_name)
    for extension, critical in fixed.after_names:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


class LeafCache(Generic[Minted]):
    """
    A bounded least-recently-used cache of what is minted per leaf (the
    certificate, or the server context holding it), keyed by template, leaf
    key type and issuer (trusted or untrusted), so a host's certificate is
    minted once per template change and key type.

    @ivar capacity: how many entries it keeps.
    @ivar hits: lookups answered from the cache.
    @ivar misses: lookups that were not.
    """

    def __init__(self, capacity: int = DEFAULT_CACHE_SIZE) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[Hashable, Minted] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _key(template: LeafTemplate, key_type: str, untrusted: bool) -> Hashable:
        return (template, key_type, untrusted)

    def get(self, template: LeafTemplate, key_type: str, *, untrusted: bool = False) -> Minted | None:
        """
        The cached entry, marked most recently used, or C{None} (counted as a
        miss).
        """
        key = self._key(template, key_type, untrusted)
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, template: LeafTemplate, key_type: str, entry: Minted, *, untrusted: bool = False) -> None:
        """
        Remember C{entry}, evicting the least recently used one when full.
        """
        key = self._key(template, key_type, untrusted)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get_or_mint(
        self,
        template: LeafTemplate,
        key_type: str,
        mint: Callable[[], Minted],
        *,
        untrusted: bool = False,
    ) -> Minted:
        """
        The cached entry, or C{mint()}'s, cached.
        """
        entry = self.get(template, key_type, untrusted=untrusted)
        if entry is None:
            entry = mint()
            self.put(template, key_type, entry, untrusted=untrusted)
        return entry
