"""
Tests for L{txgate.metrics}: the code paths that count, read back through
the Prometheus text parser, and the multiprocess mode workers use.

Metrics are process-wide, so each test compares a sample before and after
what it does rather than expecting absolute values.
"""

from __future__ import annotations

import collections
import datetime
import os
import subprocess
import sys
import textwrap
import types
from typing import Any, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp
from OpenSSL import SSL
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.test_accesslog import RECORD as ACCESS_RECORD
from txgate import metrics
from txgate.accesslog import AccessLog
from txgate.config import SSLConfig
from txgate.interfaces import Checkpoint, Decision, IPolicy
from txgate.net.intercept import Decrypted, TLSUpstream, interception_cache, interception_state
from txgate.net.pipeline import Delegating, Pipeline, PipelineSettings
from txgate.net.pump import TunnelHandoff
from txgate.pki.authority import OCSP_PATH, REVOKED_FILE, Authority
from txgate.pki.crl import append_revocation
from txgate.pki.keyring import save_keyring
from txgate.pki.mint import KEY_TYPE_ECDSA, template_from_upstream
from txgate.plugins import Plugin, Registry
from txgate.policy.default import DefaultPolicy
from txgate.policy.live import LivePolicy
from txgate.session import Address, Session
from txgate.testing import HalfCloseableStringTransport, make_upstream

from tests.pki.helpers import NOW, keyring, upstream_cert
from tests.pki.test_authority import FakeClock, ocsp_request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SESSION = Session("s-1", "explicit", Address("10.0.0.1", 4000), 0.0, client_protocol="tcp", tunneled=True)


def samples(text: bytes | str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels, parsed by prometheus-client's own parser."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(name: str, **labels: str) -> float:
    """One sample of L{metrics.render}'s exposition; 0 when absent."""
    return samples(metrics.render()).get((name, frozenset(labels.items())), 0.0)


class _Delta:
    """The change of some samples across a block."""

    def __init__(self, *wanted: tuple[str, Mapping[str, str]]) -> None:
        self._wanted = wanted
        self._before = [value(name, **labels) for name, labels in wanted]

    def __call__(self) -> list[float]:
        return [value(name, **labels) - before for (name, labels), before in zip(self._wanted, self._before)]


RECORD: dict[str, Any] = dict(ACCESS_RECORD, service="metrics-explicit", target="http://origin.test/")


class RenderTests(SynchronousTestCase):
    """The exposition: parseable, txgate's names only, extra families appended."""

    def test_names(self) -> None:
        """Every family is C{txgate_}'s, in the classic text format the parser reads."""
        families = list(text_string_to_metric_families(metrics.render().decode()))
        names = {f.name for f in families}
        self.assertTrue(names)
        self.assertEqual({n for n in names if not n.startswith("txgate_")}, set())
        self.assertIn("version=0.0.4", metrics.CONTENT_TYPE)

    def test_closed_sets_exist_at_zero(self) -> None:
        """Series of closed label sets are there before anything happens, so rate() sees the first one."""
        found = samples(metrics.render())
        for side in ("client", "upstream"):
            for reason in metrics.HandshakeFailure:
                self.assertIn(("txgate_tls_handshake_failures_total", frozenset({("side", side), ("reason", str(reason))})), found)
        for status in metrics.OCSP_STATUSES:
            self.assertIn(("txgate_ocsp_responses_total", frozenset({("status", status)})), found)
        for result in ("hit", "miss"):
            self.assertIn(("txgate_certificate_cache_total", frozenset({("result", result)})), found)

    def test_sessions_family(self) -> None:
        """C{txgate_sessions{protocol}} comes from the counts it is given, appended to the registry's."""
        text = metrics.render(extra=[metrics.sessions_family({"sips": 2, "https": 5})])
        found = samples(text)
        self.assertEqual(found["txgate_sessions", frozenset({("protocol", "sips")})], 2)
        self.assertEqual(found["txgate_sessions", frozenset({("protocol", "https")})], 5)
        self.assertIn(b"txgate_transactions_total", text)

    def test_given_registry(self) -> None:
        """A registry given is rendered instead of txgate's."""
        registry = CollectorRegistry()
        Counter("txgate_only_here", "A test counter.", registry=registry).inc(3)
        found = samples(metrics.render(registry))
        self.assertEqual(found, {("txgate_only_here_total", frozenset()): 3})

    def test_realserver_up(self) -> None:
        """C{set_realserver_up} sets 1 for Up and 0 for Down."""
        labels = {"virtual_service": "metrics-vs", "real_server": "10.0.0.5:443"}
        metrics.set_realserver_up("metrics-vs", "10.0.0.5:443", True)
        self.assertEqual(value("txgate_realserver_up", **labels), 1)
        metrics.set_realserver_up("metrics-vs", "10.0.0.5:443", False)
        self.assertEqual(samples(metrics.render())["txgate_realserver_up", frozenset(labels.items())], 0)


class AccessLogTests(SynchronousTestCase):
    """Each access-log record is a transaction, a duration and bytes in both directions."""

    def test_record(self) -> None:
        """C{AccessLog.record} counts the transaction by service, client.protocol and verdict."""
        service = {"service": "metrics-explicit"}
        delta = _Delta(
            ("txgate_transactions_total", dict(service, client_protocol="http", verdict="allow")),
            ("txgate_transactions_total", dict(service, client_protocol="-", verdict="deny")),
            ("txgate_bytes_total", dict(service, direction="in")),
            ("txgate_bytes_total", dict(service, direction="out")),
            ("txgate_request_duration_seconds_count", service),
            ("txgate_request_duration_seconds_bucket", dict(service, le="0.01")),
            ("txgate_request_duration_seconds_bucket", dict(service, le="0.025")),
            ("txgate_request_duration_seconds_sum", service),
        )
        access = AccessLog()
        access.record(**RECORD)
        access.record(**dict(RECORD, client_protocol=None, verdict="deny", bytes_in=0, bytes_out=0, duration_ms=2000))
        transactions, denied, bytes_in, bytes_out, count, under_10ms, under_25ms, total = delta()
        self.assertEqual((transactions, denied), (1, 1))
        self.assertEqual((bytes_in, bytes_out), (120, 5000))
        self.assertEqual((count, under_10ms, under_25ms), (2, 0, 1))
        self.assertAlmostEqual(total, 2.012)


@implementer(IPolicy)
class _Stub:
    """A policy answering one decision, whatever is asked."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision

    def decide(self, checkpoint: Checkpoint, session: Any, facts: Mapping[str, object]) -> Decision:
        return self.decision


class PolicyTests(SynchronousTestCase):
    """Decisions by checkpoint and verdict; rule hits and the last reload for the admin console."""

    def test_decisions(self) -> None:
        """Each decision counts under its checkpoint and verdict."""
        delta = _Delta(
            ("txgate_policy_decisions_total", {"checkpoint": "request", "verdict": "deny"}),
            ("txgate_policy_decisions_total", {"checkpoint": "ssl-intercept", "verdict": "allow"}),
        )
        live = LivePolicy(_Stub(Decision(False, "no")))
        live.decide(Checkpoint.REQUEST, SESSION, {})
        live.decide(Checkpoint.REQUEST, SESSION, {})
        live.current = _Stub(Decision(True))
        live.decide(Checkpoint.SSL_INTERCEPT, SESSION, {})
        self.assertEqual(delta(), [2, 1])

    def test_hits(self) -> None:
        """Each rule that took part in a decision is counted under its C{file:line}."""
        matched = ("local.cpl:3 <proxy>", "local.cpl:9 <ssl>")
        live = LivePolicy(_Stub(Decision(True, matched=matched)))
        live.decide(Checkpoint.CONNECTION, SESSION, {})
        live.current = _Stub(Decision(False, matched=matched[:1]))
        live.decide(Checkpoint.REQUEST, SESSION, {})
        live.current = _Stub(Decision(True))
        live.decide(Checkpoint.REQUEST, SESSION, {})
        self.assertEqual(live.hits, collections.Counter({"local.cpl:3": 2, "local.cpl:9": 1}))

    def test_last_reload(self) -> None:
        """
        The last reload's time, outcome and message are kept; a good reload
        empties the rule hits, whose lines may now hold other rules.
        """
        now = [1_700_000_000.0]
        live = LivePolicy(_Stub(Decision(True, matched=("p.cpl:1 <proxy>",))), clock=lambda: now[0])
        self.assertEqual(live.last_reload, {"time": None, "ok": None, "message": ""})
        live.decide(Checkpoint.REQUEST, SESSION, {})

        def broken() -> IPolicy:
            raise ValueError("p.cpl:3:5: unknown action 'x'")

        self.assertFalse(live.reload(broken))
        self.assertEqual(
            live.last_reload, {"time": "2023-11-14T22:13:20+00:00", "ok": False, "message": "p.cpl:3:5: unknown action 'x'"}
        )
        self.assertEqual(live.hits, {"p.cpl:1": 1})
        now[0] += 60
        self.assertTrue(live.reload(lambda: DefaultPolicy(True)))
        self.assertEqual(live.last_reload, {"time": "2023-11-14T22:14:20+00:00", "ok": True, "message": "policy reloaded"})
        self.assertEqual(live.hits, {})


class OCSPTests(SynchronousTestCase):
    """The responder's answers by status, in the metric and on the authority."""

    def authority(self) -> tuple[Authority, str]:
        path = FilePath(self.mktemp())
        path.makedirs()
        save_keyring(keyring(), path.path)
        return Authority(keyring(), SSLConfig(crl_host="crl.test:8080"), path.path, FakeClock()), path.path  # type: ignore[call-arg]

    def test_statuses(self) -> None:
        """good, revoked, unknown, unauthorized and malformed answers are told apart, GET and POST alike."""
        delta = _Delta(*(("txgate_ocsp_responses_total", {"status": s}) for s in metrics.OCSP_STATUSES))
        authority, ca_dir = self.authority()
        good = authority.mint(template_from_upstream(upstream_cert(), now=NOW), KEY_TYPE_ECDSA)
        revoked = authority.mint(template_from_upstream(upstream_cert("other.example.com", ["other.example.com"]), now=NOW), KEY_TYPE_ECDSA)
        append_revocation(os.path.join(ca_dir, REVOKED_FILE), revoked.serial_number, NOW - datetime.timedelta(hours=1))

        self.assertEqual(authority.http_answer("POST", OCSP_PATH, ocsp_request(good)).status, 200)
        authority.ocsp(ocsp_request(good))
        authority.ocsp(ocsp_request(revoked))
        authority.ocsp(ocsp_request(serial=12345))
        self.assertEqual(authority.http_answer("POST", OCSP_PATH, b"garbage").status, 200)
        self.assertEqual(authority.http_answer("POST", OCSP_PATH, b"x" * (1024 * 1024)).status, 200)
        self.assertEqual(authority.http_answer("GET", OCSP_PATH + "/%%%").status, 200)
        other_issuer = ocsp_request(upstream_cert())
        authority.ocsp(other_issuer)

        expected = {"good": 2, "revoked": 1, "unknown": 1, "unauthorized": 1, "malformed": 3}
        self.assertEqual(dict(authority.ocsp_answers), expected)
        self.assertEqual(delta(), [expected[s] for s in metrics.OCSP_STATUSES])

    def test_ocsp_status(self) -> None:
        """Bytes that are no OCSP response at all are C{malformed}."""
        self.assertEqual(metrics.ocsp_status(b"\x00"), "malformed")
        unsuccessful = ocsp.OCSPResponseBuilder.build_unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
        self.assertEqual(metrics.ocsp_status(unsuccessful.public_bytes(serialization.Encoding.DER)), "malformed")


def _failures(side: str) -> list[tuple[str, Mapping[str, str]]]:
    return [("txgate_tls_handshake_failures_total", {"side": side, "reason": str(r)}) for r in metrics.HandshakeFailure]


def _ssl_error() -> Failure:
    return Failure(SSL.Error([("SSL routines", "", "tlsv1 alert unknown ca")]))


class HandshakeTests(SynchronousTestCase):
    """Failed handshakes of intercepted connections, by side and reason."""

    def reasons(self, delta: _Delta) -> dict[str, float]:
        return {str(r): d for r, d in zip(metrics.HandshakeFailure, delta()) if d}

    def test_client(self) -> None:
        """A client's TLS alert is C{client-rejected}; a client closing without one is C{other}."""
        delta = _Delta(*_failures("client"))
        failed: list[str] = []
        Decrypted(None, None, lambda owner: None, failed.append).connectionLost(_ssl_error())
        Decrypted(None, None, lambda owner: None, failed.append).connectionLost(
            Failure(ConnectionDone())
        )
        self.assertEqual(len(failed), 2)
        self.assertEqual(self.reasons(delta), {"client-rejected": 1, "other": 1})

    def test_upstream(self) -> None:
        """
        An upstream's TLS error or close is C{upstream-failed}; an upstream
        aborted before its handshake ended is the handshake timer's C{timeout}.
        """
        delta = _Delta(*_failures("upstream"))
        for reason in (_ssl_error(), Failure(ConnectionDone()), Failure(ConnectionAborted())):
            upstream = TLSUpstream("meet.example.com", ())
            handshake = upstream.handshake
            assert handshake is not None
            upstream.connectionLost(reason)
            self.failureResultOf(handshake)
        self.assertEqual(self.reasons(delta), {"upstream-failed": 2, "timeout": 1})

    def test_given_reason(self) -> None:
        """A reason from the closed set is counted as given."""
        delta = _Delta(*_failures("upstream"))
        metrics.tls_handshake_failed("upstream", metrics.HandshakeFailure.UNTRUSTED_UPSTREAM)
        self.assertEqual(self.reasons(delta), {"untrusted-upstream": 1})


class CertificateCacheTests(SynchronousTestCase):
    """Lookups of minted certificates: the first mints (miss), the next is served (hit)."""

    def test_hit_and_miss(self) -> None:
        """Two lookups of one template: a miss, then a hit; the admin console's cache is the same one."""
        delta = _Delta(("txgate_certificate_cache_total", {"result": "hit"}), ("txgate_certificate_cache_total", {"result": "miss"}))
        path = FilePath(self.mktemp())
        path.makedirs()
        save_keyring(keyring(), path.path)
        ssl = SSLConfig(crl_host="crl.test:8080", upstream_ca_bundle="system")  # type: ignore[call-arg]
        authority = Authority(keyring(), ssl, path.path, FakeClock())
        self.assertIsNone(interception_cache(authority))
        state = interception_state(types.SimpleNamespace(ssl=ssl, authority=authority, reactor=Clock()))
        template = template_from_upstream(upstream_cert(), now=NOW)
        first = state.leaf_for(template, KEY_TYPE_ECDSA, False)
        self.assertIs(state.leaf_for(template, KEY_TYPE_ECDSA, False), first)
        self.assertEqual(delta(), [1, 1])
        cache = interception_cache(authority)
        assert cache is not None
        self.assertEqual((len(cache), cache.hits, cache.misses), (1, 1, 1))


class ProtocolTests(SynchronousTestCase):
    """Detected protocols: the pipeline counts each stream once detection settles."""

    def test_pipeline(self) -> None:
        """A stream nobody claims is counted as C{tcp}, in the metric and in L{metrics.detected_protocols}."""
        delta = _Delta(
            ("txgate_detected_protocols_total", {"protocol": "tcp"}),
            ("txgate_policy_decisions_total", {"checkpoint": "connection", "verdict": "allow"}),
        )
        before = metrics.detected_protocols["tcp"]
        clock = MemoryReactorClock()
        registry = Registry((Plugin("handoff", "tunnel", "test", TunnelHandoff()),))
        settings = PipelineSettings(registry, LivePolicy(DefaultPolicy(True)), clock, True, False, 60.0)
        session = Session("s-2", "explicit", Address("127.0.0.1", 1), 0.0)
        owner = Delegating()
        owner.makeConnection(HalfCloseableStringTransport())
        owner.hand_over(Pipeline(settings, session, make_upstream(), owner, lambda reason: None))
        owner.dataReceived(b"\x00\x01\x02")
        self.assertEqual(session.client_protocol, "tcp")
        self.assertEqual(delta(), [1, 1])
        self.assertEqual(metrics.detected_protocols["tcp"], before + 1)


class ReverseTests(SynchronousTestCase):
    """Reverse-proxy requests by virtual service, real server and status class."""

    def test_status_classes(self) -> None:
        """Statuses count by class; a request without a response is C{error}; durations are observed."""
        vs = {"virtual_service": "metrics-vs"}
        rs = dict(vs, real_server="fe1:443")
        delta = _Delta(
            ("txgate_reverse_requests_total", dict(rs, code="2xx")),
            ("txgate_reverse_requests_total", dict(rs, code="5xx")),
            ("txgate_reverse_requests_total", dict(rs, code="error")),
            ("txgate_reverse_request_duration_seconds_count", vs),
            ("txgate_reverse_request_duration_seconds_bucket", dict(vs, le="0.05")),
        )
        metrics.reverse_request("metrics-vs", "fe1:443", 200, 0.01)
        metrics.reverse_request("metrics-vs", "fe1:443", 204, 0.02)
        metrics.reverse_request("metrics-vs", "fe1:443", 502, 1.0)
        metrics.reverse_request("metrics-vs", "fe1:443", None, 30.0)
        self.assertEqual(delta(), [2, 1, 1, 4, 2])


_WORKER = textwrap.dedent(
    """
    import sys
    from txgate import metrics
    metrics.count_protocol("sips")
    metrics.count_decision("request", "allow")
    metrics.set_realserver_up("vs", "fe1:443", sys.argv[1] == "up")
    sys.stdout.write("counted")
    sys.stdout.flush()
    sys.stdin.read()
    """
)

_RENDER = textwrap.dedent(
    """
    import sys
    from txgate import metrics
    sys.stdout.write(metrics.render().decode())
    """
)


class MultiprocessTests(SynchronousTestCase):
    """Workers' metrics land in one directory, and a third process renders their sum."""

    def run_python(self, code: str, env: dict[str, str], *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", code, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout

    def test_sum(self) -> None:
        """
        Counters of two workers add up; the real server is Up while a live
        worker says so, and a dead worker's say goes with L{metrics.process_dead}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=directory)
        workers = []
        for state in ("up", "down"):
            worker = subprocess.Popen(
                [sys.executable, "-c", _WORKER, state],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.addCleanup(worker.wait, 60)
            self.addCleanup(worker.kill)
            self.assertEqual(worker.stdout.read(len("counted")), "counted")  # type: ignore[union-attr]
            workers.append(worker)

        found = samples(self.run_python(_RENDER, env))
        self.assertEqual(found["txgate_detected_protocols_total", frozenset({("protocol", "sips")})], 2)
        self.assertEqual(
            found["txgate_policy_decisions_total", frozenset({("checkpoint", "request"), ("verdict", "allow")})], 2
        )
        up = ("txgate_realserver_up", frozenset({("virtual_service", "vs"), ("real_server", "fe1:443")}))
        self.assertEqual(found[up], 1)
        self.assertEqual({name for name, _ in found if not name.startswith("txgate_")}, set())

        # The main process has no PROMETHEUS_MULTIPROC_DIR of its own: it names the directory.
        self.assertEqual(samples(metrics.render(multiprocess_dir=directory))[up], 1)

        for worker in workers:
            worker.stdin.close()  # type: ignore[union-attr]
            self.assertEqual(worker.wait(60), 0)
        metrics.process_dead(workers[0].pid, directory)
        found = samples(self.run_python(_RENDER, env))
        self.assertEqual(found[up], 0)
        self.assertEqual(found["txgate_detected_protocols_total", frozenset({("protocol", "sips")})], 2)


class ImportTests(SynchronousTestCase):
    """Cores that count stay importable without a reactor."""

    def test_no_reactor(self) -> None:
        """Importing the metrics and the cores that use them installs no reactor."""
        code = (
            "import sys, txgate.metrics, txgate.accesslog, txgate.policy.live, txgate.pki.authority; "
            "print('twisted.internet.reactor' in sys.modules)"
        )
        env = {k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout.strip()), (0, "False"), out.stderr)
