# -*- test-case-name: tests.pki.test_crl -*-
"""
txgate's certificate revocation list: building it (L{build_crl}), numbering
it (L{crl_number_for}), deciding when to renew it (L{needs_renewal}), and the
list of revoked serials kept in the state directory (C{revoked.jsonl}).

CRL numbering trade-off: the CRL number is the number of seconds since the
epoch of C{now}. It therefore increases across restarts without any stored
counter, and two nodes that share a keyring and sign at the same second give
the same number (and, with an RSA issuer, which signs deterministically, the
very same bytes when their revoked lists agree). The price: it relies on the
clock. A clock stepped backwards yields a number lower than one already
published (clients keep the newer CRL until it expires), two CRLs signed in
the same second with different contents share a number, and nodes whose
clocks differ publish different numbers for the same contents (harmless:
clients only compare numbers to prefer the newer CRL).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Iterable, Mapping

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from txgate.errors import ConfigError, ConfigErrors

__all__ = [
    "CRL_CONTENT_TYPE",
    "DEFAULT_CRL_VALIDITY_DAYS",
    "REVOKED_FILE",
    "Revocation",
    "RevocationList",
    "append_revocation",
    "build_crl",
    "crl_number_for",
    "load_revocations",
    "needs_renewal",
]

CRL_CONTENT_TYPE = "application/pkix-crl"
DEFAULT_CRL_VALIDITY_DAYS = 30
REVOKED_FILE = "revoked.jsonl"
# A revoked.jsonl line longer than this is refused (a serial is at most 40
# hex digits, a time 25 characters).
MAX_REVOCATION_LINE = 1024

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def _utc(when: datetime.datetime) -> datetime.datetime:
    if when.tzinfo is None:
        raise ValueError(f"{when!r} has no time zone")
    return when.astimezone(datetime.timezone.utc)


def crl_number_for(now: datetime.datetime) -> int:
    """
    The CRL number of a CRL signed at C{now}: whole seconds since the epoch
    (see the module docstring for the trade-off).
    """
    return int((_utc(now) - _EPOCH).total_seconds())


def build_crl(
    issuer_cert: x509.Certificate,
    issuer_key,
    revoked: Iterable[tuple[int, datetime.datetime]],
    *,
    now: datetime.datetime,
    number: int,
    validity_days: int = DEFAULT_CRL_VALIDITY_DAYS,
) -> x509.CertificateRevocationList:
    """
    Sign a CRL (SHA-256): thisUpdate C{now}, nextUpdate C{now} +
    C{validity_days}, cRLNumber C{number}, AKI from the issuer's SKI, and one
    entry per C{(serial, revocation time)} in serial order (the first time
    given for a serial wins).
    """
    if validity_days <= 0:
        raise ValueError(f"validity_days must be positive, not {validity_days}")
    this_update = _utc(now).replace(microsecond=0)
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(this_update)
        .next_update(this_update + datetime.timedelta(days=validity_days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki, critical=False)
    )
    entries: dict[int, datetime.datetime] = {}
    for serial, when in revoked:
        entries.setdefault(serial, when)
    for serial in sorted(entries):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(_utc(entries[serial]).replace(microsecond=0))
            .build()
        )
    return builder.sign(issuer_key, hashes.SHA256())


def needs_renewal(
    crl: x509.CertificateRevocationList, now: datetime.datetime, margin_fraction: float = 0.5
) -> bool:
    """
    Whether C{crl} should be replaced at C{now}: once less than
    C{margin_fraction} of its lifetime (thisUpdate to nextUpdate) remains,
    when it has no nextUpdate, or when C{now} is before its thisUpdate (a
    clock stepped back: clients would reject it as not yet valid).
    """
    if not 0 <= margin_fraction <= 1:
        raise ValueError(f"margin_fraction must be within [0, 1], not {margin_fraction}")
    now = _utc(now)
    next_update = crl.next_update_utc
    if next_update is None:
        return True
    last_update = crl.last_update_utc
    if now < last_update:
        return True
    return now >= next_update - (next_update - last_update) * margin_fraction


@attrs.frozen
class Revocation:
    """
    One revoked certificate.

    @ivar serial: its serial number.
    @ivar time: when it was revoked (UTC).
    """

    serial: int
    time: datetime.datetime

    def to_json(self) -> str:
        return json.dumps(
            {"serial": format(self.serial, "x"), "time": _utc(self.time).strftime("%Y-%m-%dT%H:%M:%SZ")},
            sort_keys=True,
        )


@attrs.frozen
class RevocationList:
    """
    The certificates txgate revoked, in revocation order, one per serial
    (the first revocation wins).
    """

    entries: tuple[Revocation, ...] = ()

    def __contains__(self, serial: object) -> bool:
        return any(r.serial == serial for r in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def with_revocation(self, serial: int, time: datetime.datetime) -> RevocationList:
        """This list plus C{serial}, unchanged when it is already revoked."""
        if serial in self:
            return self
        return RevocationList(self.entries + (Revocation(serial, _utc(time).replace(microsecond=0)),))

    def as_mapping(self) -> Mapping[int, datetime.datetime]:
        """serial -> revocation time, as L{txgate.pki.ocsp.answer_ocsp} takes it."""
        return {r.serial: r.time for r in self.entries}

    def as_pairs(self) -> tuple[tuple[int, datetime.datetime], ...]:
        """C{(serial, time)} pairs, as L{build_crl} takes them."""
        return tuple((r.serial, r.time) for r in self.entries)


def _parse_line(path: str, number: int, line: str) -> Revocation | ConfigError:
    if len(line) > MAX_REVOCATION_LINE:
        return ConfigError(path, "", f"line longer than {MAX_REVOCATION_LINE} characters", line=number)
    try:
        record = json.loads(line)
        serial = int(record["serial"], 16)
        time = datetime.datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
    except (ValueError, KeyError, TypeError) as e:
        return ConfigError(
            path,
            "",
            f'expected {{"serial": "<hex>", "time": "YYYY-MM-DDTHH:MM:SSZ"}}: {e}',
            line=number,
        )
    if serial <= 0 or serial.bit_length() > 159:
        return ConfigError(path, "", f"serial must be positive and at most 20 bytes, not {record['serial']!r}", line=number)
    return Revocation(serial, time)


def load_revocations(path: str) -> RevocationList:
    """
    Read C{revoked.jsonl}: one JSON object per line, C{{"serial": "<hex>",
    "time": "YYYY-MM-DDTHH:MM:SSZ"}}; blank lines are skipped. A missing file
    is an empty list (nothing revoked yet).

    @raise ConfigErrors: one error per bad line (naming the file and line),
        or for a file that exists but cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return RevocationList()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigErrors((ConfigError(path, "", f"cannot be read: {e}"),))
    revocations = RevocationList()
    errors: list[ConfigError] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _parse_line(path, number, line)
        if isinstance(parsed, ConfigError):
            errors.append(parsed)
        else:
            revocations = revocations.with_revocation(parsed.serial, parsed.time)
    if errors:
        raise ConfigErrors(tuple(errors))
    return revocations


def append_revocation(path: str, serial: int, time: datetime.datetime) -> Revocation:
    """
    Add one line to C{revoked.jsonl} (created when absent). Serials are
    public, so the file is not secret; one C{write} in append mode, so
    concurrent writers do not interleave lines.

    @return: the record written.
    """
    if serial <= 0:
        raise ValueError(f"serial must be positive, not {serial}")
    revocation = Revocation(serial, _utc(time).replace(microsecond=0))
    data = (revocation.to_json() + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return revocation
