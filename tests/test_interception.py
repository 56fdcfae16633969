# -*- test-case-name: tests.test_interception -*-
"""
Tests for L{txgate.interception}: the socket-free decisions of SSL
interception.
"""

from __future__ import annotations

import datetime
import ipaddress

from OpenSSL import SSL
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect.tls import parse_client_hello
from txgate.interception import (
    Mode,
    choose_key_type,
    describe_tls_failure,
    describe_verify_error,
    inner_name,
    upstream_alpn,
    vouched_template,
)
from txgate.pki.mint import KEY_TYPE_ECDSA as KEY_ECDSA
from txgate.pki.mint import KEY_TYPE_RSA as KEY_RSA
from txgate.pki.mint import LeafTemplate

from .detect.samples import capture
from .detect.test_tls import client_hello, records, versions

BOTH = (KEY_ECDSA, KEY_RSA)
UTC = datetime.timezone.utc


def sigalgs(*codes: int) -> tuple[int, bytes]:
    block = b"".join(c.to_bytes(2, "big") for c in codes)
    return (0x000D, len(block).to_bytes(2, "big") + block)


def hello(extensions: list[tuple[int, bytes]], suites: bytes = b"\x13\x01") -> object:
    parsed = parse_client_hello(records(client_hello(extensions, suites=suites), 2**14))
    assert parsed is not None
    return parsed


class KeyTypeTests(SynchronousTestCase):
    """Each client gets the leaf key it can verify, ECDSA first."""

    def test_real_clients_get_ecdsa(self) -> None:
        for name in ("tls_curl", "tls_openssl"):
            self.assertEqual(choose_key_type(parse_client_hello(capture(name)), BOTH), KEY_ECDSA, name)

    def test_tls13_with_ecdsa_signature(self) -> None:
        found = hello([versions(0x0304, 0x0303), sigalgs(0x0804, 0x0403)])
        self.assertEqual(choose_key_type(found, BOTH), KEY_ECDSA)  # type: ignore[arg-type]

    def test_rsa_only_signatures(self) -> None:
        found = hello([versions(0x0304), sigalgs(0x0804, 0x0401)])
        self.assertEqual(choose_key_type(found, BOTH), KEY_RSA)  # type: ignore[arg-type]

    def test_tls12_needs_an_ecdsa_suite(self) -> None:
        rsa_suites = hello([sigalgs(0x0403, 0x0401)], suites=b"\xc0\x2f\xc0\x30")
        ecdsa_suites = hello([sigalgs(0x0403, 0x0401)], suites=b"\xc0\x2b\xc0\x2f")
        self.assertEqual(choose_key_type(rsa_suites, BOTH), KEY_RSA)  # type: ignore[arg-type]
        self.assertEqual(choose_key_type(ecdsa_suites, BOTH), KEY_ECDSA)  # type: ignore[arg-type]

    def test_no_signature_algorithms(self) -> None:
        """A client that names none (TLS 1.2 allows it) gets RSA."""
        self.assertEqual(choose_key_type(hello([]), BOTH), KEY_RSA)  # type: ignore[arg-type]
        self.assertEqual(choose_key_type(None, BOTH), KEY_RSA)

    def test_configured_types_only(self) -> None:
        found = hello([versions(0x0304), sigalgs(0x0403)])
        self.assertEqual(choose_key_type(found, (KEY_RSA,)), KEY_RSA)  # type: ignore[arg-type]
        self.assertEqual(choose_key_type(hello([sigalgs(0x0401)]), (KEY_ECDSA,)), KEY_ECDSA)  # type: ignore[arg-type]
        self.assertRaises(ValueError, choose_key_type, None, ())


class ALPNTests(SynchronousTestCase):
    """Only protocols txgate can carry decrypted are offered upstream."""

    def test_h2_dropped(self) -> None:
        self.assertEqual(upstream_alpn(("h2", "http/1.1"), Mode.YES), ("http/1.1",))
        self.assertEqual(upstream_alpn(("h2",), Mode.YES), ())

    def test_other_protocols_kept_under_handoff(self) -> None:
        self.assertEqual(upstream_alpn(("sip", "stun.turn", "http/1.1"), Mode.YES), ("sip", "stun.turn", "http/1.1"))

    def test_https_mode_http1_only(self) -> None:
        self.assertEqual(upstream_alpn(("h2", "sip", "http/1.1", "http/1.0"), Mode.HTTPS), ("http/1.1", "http/1.0"))

    def test_none_offered(self) -> None:
        self.assertEqual(upstream_alpn((), Mode.YES), ())


class InnerNameTests(SynchronousTestCase):
    """The names of decrypted streams, for policy and for the logs."""

    def test_http_is_https(self) -> None:
        self.assertEqual((inner_name("http").policy, inner_name("http").carried), ("https", "https"))

    def test_sip_is_sips(self) -> None:
        self.assertEqual((inner_name("sip").policy, inner_name("sip").carried), ("sips", "sips"))

    def test_unknown_is_tcp_to_policy_and_ssl_when_carried(self) -> None:
        """So C{DENY client.protocol=!ssl tunneled=yes} stops it; allowed, it is STunnel."""
        self.assertEqual((inner_name("tcp").policy, inner_name("tcp").carried), ("tcp", "ssl"))

    def test_relayed_protocols_keep_their_names(self) -> None:
        self.assertEqual(inner_name("stun").carried, "stun")
        self.assertEqual(inner_name("ms-turn").carried, "ms-turn")


class VouchedTemplateTests(SynchronousTestCase):
    """An upstream policy vouches for gets a leaf the client accepts."""

    now = datetime.datetime(2026, 11, 21, 15, 30, tzinfo=UTC)
    expired = LeafTemplate(
        common_name="old.test",
        dns_names=("old.test",),
        ip_addresses=(),
        not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC),
        not_after=datetime.datetime(2021, 1, 1, tzinfo=UTC),
    )

    def test_validity_covers_now(self) -> None:
        vouched = vouched_template(self.expired, "old.test", self.now)
        self.assertLess(vouched.not_before, self.now)
        self.assertGreater(vouched.not_after, self.now)
        self.assertEqual(vouched.dns_names, ("old.test",))

    def test_same_all_day(self) -> None:
        later = self.now.replace(hour=23, minute=59)
        self.assertEqual(vouched_template(self.expired, "old.test", self.now), vouched_template(self.expired, "old.test", later))

    def test_requested_name_added(self) -> None:
        self.assertEqual(vouched_template(self.expired, "other.test", self.now).dns_names, ("old.test", "other.test"))
        self.assertEqual(vouched_template(self.expired, "OLD.test", self.now).dns_names, ("old.test",))
        vouched = vouched_template(self.expired, "127.0.0.1", self.now)
        self.assertEqual(vouched.ip_addresses, (ipaddress.ip_address("127.0.0.1"),))


class DescriptionTests(SynchronousTestCase):
    """Failures are named in OpenSSL's words."""

    def test_verify_errors(self) -> None:
        self.assertEqual(describe_verify_error(10), "certificate has expired")
        self.assertEqual(describe_verify_error(20), "unable to get local issuer certificate")
        self.assertEqual(describe_verify_error(999), "certificate verification error 999")

    def test_tls_failure(self) -> None:
        error = SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")])
        self.assertEqual(describe_tls_failure(Failure(error)), "tlsv1 alert unknown ca")
        self.assertEqual(describe_tls_failure(Failure(ValueError("boom"))), "boom")
        self.assertEqual(describe_tls_failure(None), "connection closed")
