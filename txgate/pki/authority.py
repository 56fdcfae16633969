# -*- test-case-name: tests.pki.test_authority -*-
"""
The certificate authority a running txgate is: it mints emulated leaves, and
it answers for them with a CRL and an OCSP responder.

Sans-IO apart from reading the keyring and the revocation file; time comes
from the C{clock} it is given.

The CRL is the same on every node that shares the keyring and revocation
file, and its number grows across restarts: thisUpdate is the start of the
current UTC day (or the latest revocation, when later), and the number is
that time in seconds since the epoch. It is rebuilt at midnight and whenever
the revocation file changes.
"""

from __future__ import annotations

import collections
import datetime
import os
from typing import Any, Callable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from twisted.logger import Logger

from txgate import metrics
from txgate.config import Config, SSLConfig
from txgate.errors import ConfigErrors
from txgate.pki import keyring as keyrings
from txgate.pki.crl import CRL_CONTENT_TYPE, REVOKED_FILE, RevocationList, build_crl, crl_number_for, load_revocations
from txgate.pki.mint import KEY_TYPE_ECDSA, LeafTemplate, mint_leaf
from txgate.pki.ocsp import OCSP_RESPONSE_CONTENT_TYPE, answer_ocsp, malformed_response, ocsp_request_from_get_path
from txgate.pki.serials import SerialIssuer

__all__ = ["Answer", "Authority", "CRL_PATH", "OCSP_PATH", "ISSUER_PATH", "ca_directory", "keyring_for"]

CRL_PATH = "/txgate.crl"
OCSP_PATH = "/ocsp"
ISSUER_PATH = "/issuer.crt"
MAX_OCSP_BODY = 64 * 1024
"""The largest OCSP POST body read; real requests are a few hundred bytes."""

Clock = Callable[[], datetime.datetime]


def ca_directory(config: Config) -> str:
    """Where the generated keyring and the revocation file live."""
    return os.path.join(config.txgate.state_dir, "ca")


def keyring_for(config: Config, now: datetime.datetime) -> keyrings.Keyring:
    """
    The keyring C{config} names: the one in the state directory (generated on
    first start), with the configured issuer and untrusted issuer in place of
    the generated ones when C{[ssl]} names them.

    @raise ConfigErrors: a key file readable by others, a missing or broken
        file, a certificate that is not a CA or not its key's; each names
        the file.
    """
    ssl = config.ssl
    ring = keyrings.load_or_create(ca_directory(config), now)
    if ssl.issuer_cert:
        cert, key = keyrings.load_ca_pair(ssl.issuer_cert, ssl.issuer_key)
        ring = attrs.evolve(ring, issuer_cert=cert, issuer_key=key)
    if ssl.untrusted_issuer:
        cert, key = keyrings.load_ca_pair(ssl.untrusted_issuer, ssl.untrusted_issuer)
        ring = attrs.evolve(ring, untrusted_cert=cert, untrusted_key=key)
    return ring


@attrs.frozen
class Answer:
    """An HTTP answer of the CRL/OCSP service."""

    status: int
    content_type: str
    body: bytes

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Its response headers: type, length, and caching (an hour for DER, none for errors)."""
        cache = b"no-cache" if self.content_type.startswith("text/") else b"max-age=3600"
        return [
            (b"content-type", self.content_type.encode("ascii")),
            (b"content-length", str(len(self.body)).encode("ascii")),
            (b"cache-control", cache),
        ]


def _text(status: int, message: str) -> Answer:
    return Answer(status, "text/plain; charset=utf-8", message.encode("utf-8") + b"\n")


class Authority:
    """
    txgate as a CA: mints leaves with serials it can recognise, signs the CRL
    and answers OCSP for them.

    @ivar crl_url: the CRL Distribution Point written into leaves, or C{None}.
    @ivar ocsp_url: the AIA OCSP URL written into leaves, or C{None}.
    @ivar ca_issuers_url: the AIA caIssuers URL (the issuer certificate).
    @ivar ocsp_answers: OCSP answers given, by status (good, revoked,
        unknown, unauthorized, malformed), for the admin console.
    """

    _log = Logger()

    def __init__(self, keyring: keyrings.Keyring, ssl: SSLConfig, ca_dir: str, clock: Clock) -> None:
        self.keyring = keyring
        self.ssl = ssl
        self._clock = clock
        self._revoked_path = os.path.join(ca_dir, REVOKED_FILE)
        self._serials = SerialIssuer.from_key(keyring.issuer_key)
        base = f"http://{ssl.crl_host}"
        self.crl_url = base + CRL_PATH if ssl.crl_distribution_point else None
        self.ocsp_url = base + OCSP_PATH if ssl.ocsp else None
        self.ca_issuers_url = base + ISSUER_PATH
        host, _, port = ssl.crl_host.rpartition(":") if not ssl.crl_host.endswith("]") else (ssl.crl_host, "", "")
        if not host or not port.isdigit():
            host, port = ssl.crl_host, "80"
        self._crl_host = (host.strip("[]").lower().rstrip("."), int(port))
        self._revocations = RevocationList()
        self._revocations_stat: tuple[int, int] | None = None
        self._crl: tuple[tuple[datetime.datetime, int], bytes] | None = None
        self.issuer_der = keyring.issuer_cert.public_bytes(serialization.Encoding.DER)
        self.minted = 0
        self.ocsp_answers: collections.Counter[str] = collections.Counter()
        # At start a bad revocation file is refused (ConfigErrors): starting
        # with none would turn revoked certificates good again.
        self._revocations = load_revocations(self._revoked_path)
        self._revocations_stat = self._stat()

    # -- minting -----------------------------------------------------------------

    def leaf_key(self, key_type: str) -> Any:
        """The private key every leaf of C{key_type} carries."""
        return self.keyring.leaf_ecdsa_key if key_type == KEY_TYPE_ECDSA else self.keyring.leaf_rsa_key

    def mint(self, template: LeafTemplate, key_type: str, *, untrusted: bool = False) -> x509.Certificate:
        """
        A leaf for C{template}, signed by the issuer (or the untrusted issuer,
        whose leaves carry no URLs: nobody is meant to trust them).
        """
        ring = self.keyring
        self.minted += 1
        return mint_leaf(
            template,
            issuer_cert=ring.untrusted_cert if untrusted else ring.issuer_cert,
            issuer_key=ring.untrusted_key if untrusted else ring.issuer_key,
            leaf_key=self.leaf_key(key_type),
            serial=self._serials.new(),
            crl_url=None if untrusted else self.crl_url,
            ocsp_url=None if untrusted else self.ocsp_url,
            ca_issuers_url=None if untrusted else self.ca_issuers_url,
        )

    # -- revocation ----------------------------------------------------------------

    def refresh(self) -> None:
        """
        Read the revocation file again if it changed (a stat per call), so
        C{txgate ca revoke} takes effect without a restart. A file with a bad
        line is logged and the revocations read before stay in force.
        """
        seen = self._stat()
        if seen != self._revocations_stat:
            self._revocations_stat = seen
            try:
                self._revocations = load_revocations(self._revoked_path)
            except ConfigErrors as e:
                # Serving the last good list beats failing every CRL and OCSP
                # request: clients abort handshakes without them.
                self._log.error("{path} not read again, keeping the revocations read before: {errors}", path=self._revoked_path, errors=str(e))

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._revoked_path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    @property
    def revocations(self) -> RevocationList:
        return self._revocations

    def _schedule(self) -> tuple[datetime.datetime, int]:
        now = self._clock().astimezone(datetime.timezone.utc)
        this_update = now.replace(hour=0, minute=0, second=0, microsecond=0)
        for revocation in self._revocations.entries:
            this_update = max(this_update, min(revocation.time, now))
        return this_update, crl_number_for(this_update)

    def crl(self) -> x509.CertificateRevocationList:
        return x509.load_der_x509_crl(self.crl_der())

    def crl_number(self) -> int:
        """The number of the current CRL."""
        self.crl_der()
        assert self._crl is not None
        return self._crl[0][1]

    def crl_der(self) -> bytes:
        """The current CRL (DER), rebuilt when the day or the revocations changed."""
        self.refresh()
        schedule = self._schedule()
        if self._crl is None or self._crl[0] != schedule:
            this_update, number = schedule
            crl = build_crl(
                self.keyring.issuer_cert,
                self.keyring.issuer_key,
                self._revocations.as_pairs(),
                now=this_update,
                number=number,
                validity_days=self.ssl.crl_validity_days,
            )
            self._crl = (schedule, crl.public_bytes(serialization.Encoding.DER))
        return self._crl[1]

    def next_renewal(self) -> datetime.datetime:
        """When the CRL is next rebuilt: the coming UTC midnight."""
        now = self._clock().astimezone(datetime.timezone.utc)
        return now.replace(hour=0, minute=0, second=0, microsecond=0) + datetime.timedelta(days=1)

    def ocsp(self, request_der: bytes) -> bytes:
        """The signed OCSP response to C{request_der}."""
        self.refresh()
        response = answer_ocsp(
            request_der,
            issuer_cert=self.keyring.issuer_cert,
            issuer_key=self.keyring.issuer_key,
            issued=self._serials.issued,
            revoked=self._revocations.as_mapping(),
            now=self._clock(),
        )
        metrics.count_ocsp(self.ocsp_answers, metrics.ocsp_status(response))
        return response

    # -- HTTP --------------------------------------------------------------------

    def is_crl_host(self, host: str, port: int) -> bool:
        """Whether a request to C{host:port} is for this authority (C{crl_host})."""
        return (host.strip("[]").lower().rstrip("."), port) == self._crl_host

    def http_answer(self, method: str, path: str, body: bytes = b"") -> Answer:
        """
        The answer to an HTTP request on the CRL host: the CRL, OCSP (GET and
        POST, RFC 6960 appendix A), or the issuer certificate.
        """
        path = path.split("?", 1)[0]
        if path == CRL_PATH:
            if not self.ssl.crl_distribution_point:
                return _text(404, "the CRL distribution point is turned off (ssl.crl_distribution_point)")
            if method not in ("GET", "HEAD"):
                return _text(405, f"{method} is not allowed here: GET the CRL")
            return Answer(200, CRL_CONTENT_TYPE, self.crl_der())
        if path == ISSUER_PATH:
            if method not in ("GET", "HEAD"):
                return _text(405, f"{method} is not allowed here: GET the certificate")
            return Answer(200, "application/pkix-cert", self.issuer_der)
        if path == OCSP_PATH or path.startswith(OCSP_PATH + "/"):
            if not self.ssl.ocsp:
                return _text(404, "the OCSP responder is turned off (ssl.ocsp)")
            if method == "POST" and path in (OCSP_PATH, OCSP_PATH + "/"):
                if len(body) > MAX_OCSP_BODY:
                    metrics.count_ocsp(self.ocsp_answers, "malformed")
                    return Answer(200, OCSP_RESPONSE_CONTENT_TYPE, malformed_response())
                return Answer(200, OCSP_RESPONSE_CONTENT_TYPE, self.ocsp(body))
            if method == "GET":
                try:
                    request = ocsp_request_from_get_path(path, OCSP_PATH + "/")
                except ValueError:
                    metrics.count_ocsp(self.ocsp_answers, "malformed")
                    return Answer(200, OCSP_RESPONSE_CONTENT_TYPE, malformed_response())
                return Answer(200, OCSP_RESPONSE_CONTENT_TYPE, self.ocsp(request))
            return _text(405, f"{method} is not allowed here: POST or GET an OCSP request")
        return _text(404, f"nothing here: the CRL is at {CRL_PATH}, OCSP at {OCSP_PATH}")
