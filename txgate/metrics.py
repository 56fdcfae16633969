# -*- test-case-name: tests.test_metrics -*-
"""
txgate's Prometheus metrics: every metric defined once, here, and the
one-line calls the rest of txgate makes to move them.

Names start with C{txgate_}. Label values come from small closed sets (service
and virtual-service names from the configuration, protocol names, verdicts,
status classes), never from hosts or client addresses, so the number of
series stays bounded however much traffic passes.

Worker processes (C{--workers N}) run in prometheus-client's multiprocess
mode: the main process puts C{PROMETHEUS_MULTIPROC_DIR} in each worker's
environment before it starts, every value lands in a memory-mapped file of
that directory, and the main renders them all with L{render}. prometheus-client
reads the variable when it is first imported, so it must be set before the
process imports this module.

Without workers the values stay in the process, in txgate's own registry
rather than prometheus-client's default one, so the exposition is the same
in both modes: C{txgate_} names only, without the default registry's
C{process_} and C{python_} families, which multiprocess mode lacks too.

The calls run per transaction, per decision or per handshake, never per
chunk, and each keeps the labelled children it has made in a dict, so a call
costs a dict lookup and an increment.

Some numbers are also kept as plain counters for the admin console, which
shows them per process without parsing the exposition: L{detected_protocols} here,
C{LivePolicy.hits}, C{Authority.ocsp_answers}, C{LeafCache.hits}/C{misses}.
"""

from __future__ import annotations

import collections
import enum
import os
from typing import Any, Iterable, Iterator, Mapping

from cryptography.x509 import ocsp
from OpenSSL import SSL
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "HandshakeFailure",
    "OCSP_STATUSES",
    "certificate_lookup",
    "count_decision",
    "count_ocsp",
    "count_protocol",
    "count_transaction",
    "detected_protocols",
    "ocsp_status",
    "process_dead",
    "render",
    "reverse_request",
    "sessions_family",
    "set_realserver_up",
    "tls_handshake_failed",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of L{render}'s output: the classic text format, which it is."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable naming the multiprocess directory."""

_pid = os.getpid()


def _process_identifier() -> int:
    """
    This process's id, kept rather than asked for: prometheus-client asks on
    every increment to notice a fork, and getpid is a system call.
    """
    return _pid


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)
if os.environ.get(MULTIPROC_ENV):
    values.ValueClass = values.MultiProcessValue(_process_identifier)

# The *_created samples double the exposition for a start time Prometheus
# does not use; multiprocess mode never has them, so neither does one process.
disable_created_metrics()

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""
Seconds. A proxied HTTP request takes milliseconds; a tunnel or a SIP
connection lasts minutes to hours, hence the long tail.
"""


_registry = CollectorRegistry()
"""Where this process's metrics live (rendered when there is no multiprocess directory)."""


class HandshakeFailure(enum.StrEnum):
    """Why a TLS handshake of an intercepted connection failed: the C{reason} label."""

    UNTRUSTED_UPSTREAM = "untrusted-upstream"
    """The upstream's certificate failed verification (its leaf is emulated under the untrusted issuer, or vouched for)."""
    CLIENT_REJECTED = "client-rejected"
    """The client refused the handshake with a TLS alert (usually: it does not trust the emulated certificate)."""
    UPSTREAM_FAILED = "upstream-failed"
    """The upstream handshake failed (alert, no certificate, closed)."""
    TIMEOUT = "timeout"
    """The upstream handshake took longer than the interceptor waits."""
    OTHER = "other"
    """The client closed or reset the connection without an alert."""


_SIDES = ("client", "upstream")

OCSP_STATUSES = ("good", "revoked", "unknown", "unauthorized", "malformed")
"""The C{status} label of OCSP answers: the certificate status, or why there was none."""

transactions_total = Counter(
    "txgate_transactions",
    "Transactions (access-log records) by service, client.protocol and verdict.",
    ["service", "client_protocol", "verdict"],
    registry=_registry,
)
request_duration_seconds = Histogram(
    "txgate_request_duration_seconds",
    "Duration of transactions (access-log records), by service.",
    ["service"],
    buckets=_DURATION_BUCKETS,
    registry=_registry,
)
bytes_total = Counter(
    "txgate_bytes",
    "Bytes of transactions by service; direction in is from the client, out is to it (the access log's bytes_in/bytes_out).",
    ["service", "direction"],
    registry=_registry,
)
policy_decisions_total = Counter(
    "txgate_policy_decisions",
    "Policy decisions by checkpoint and verdict.",
    ["checkpoint", "verdict"],
    registry=_registry,
)
tls_handshake_failures_total = Counter(
    "txgate_tls_handshake_failures",
    "TLS handshakes of intercepted connections that failed, by side (client, upstream) and reason.",
    ["side", "reason"],
    registry=_registry,
)
certificate_cache_total = Counter(
    "txgate_certificate_cache",
    "Lookups of minted certificates in the interception cache, by result (hit, miss).",
    ["result"],
    registry=_registry,
)
ocsp_responses_total = Counter(
    "txgate_ocsp_responses",
    "OCSP answers of txgate's responder, by status.",
    ["status"],
    registry=_registry,
)
detected_protocols_total = Counter(
    "txgate_detected_protocols",
    "Streams by the protocol detection found (client.protocol: https, ssl, sips, ms-turn, tcp ...).",
    ["protocol"],
    registry=_registry,
)
reverse_requests_total = Counter(
    "txgate_reverse_requests",
    "Reverse-proxy requests sent to a real server, by virtual service, real server and status class"
    " (1xx..5xx; error: no response).",
    ["virtual_service", "real_server", "code"],
    registry=_registry,
)
reverse_request_duration_seconds = Histogram(
    "txgate_reverse_request_duration_seconds",
    "Duration of reverse-proxy requests, from the request head to the end of the response, by virtual service.",
    ["virtual_service"],
    buckets=_DURATION_BUCKETS,
    registry=_registry,
)
realserver_up = Gauge(
    "txgate_realserver_up",
    "1 when a real server is Up by its health checks, 0 when Down.",
    ["virtual_service", "real_server"],
    # Each worker checks health on its own: Up when one of the live workers
    # sees it Up. "live": a dead worker's value goes with process_dead(pid).
    multiprocess_mode="livemax",
    registry=_registry,
)

detected_protocols: collections.Counter[str] = collections.Counter()
"""Detected-protocol counts of this process since it started, for the admin console."""

# Pre-made children: every series of a closed set exists from the start (at 0),
# so rate() sees the first increment.
_failures = {(side, reason): tls_handshake_failures_total.labels(side, reason) for side in _SIDES for reason in HandshakeFailure}
_cache = {True: certificate_cache_total.labels("hit"), False: certificate_cache_total.labels("miss")}
_ocsp = {status: ocsp_responses_total.labels(status) for status in OCSP_STATUSES}

_transactions: dict[tuple[Any, Any, Any], tuple[Any, Any, Any, Any]] = {}
_decisions: dict[tuple[str, str], Any] = {}
_protocols: dict[str, Any] = {}
_reverse: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_realservers: dict[tuple[str, str], Any] = {}


def count_transaction(fields: Mapping[str, Any]) -> None:
    """
    Count one access-log record: the transaction, its duration and bytes.

    @param fields: the record's fields (L{txgate.accesslog.FIELDS}).
    """
    key = (fields.get("service"), fields.get("client_protocol"), fields.get("verdict"))
    children = _transactions.get(key)
    if children is None:
        service, client_protocol, verdict = (str(v) if v else "-" for v in key)
        children = _transactions[key] = (
            transactions_total.labels(service, client_protocol, verdict),
            request_duration_seconds.labels(service),
            bytes_total.labels(service, "in"),
            bytes_total.labels(service, "out"),
        )
    count, duration, bytes_in, bytes_out = children
    count.inc()
    duration.observe((fields.get("duration_ms") or 0) / 1000.0)
    if fields.get("bytes_in"):
        bytes_in.inc(fields["bytes_in"])
    if fields.get("bytes_out"):
        bytes_out.inc(fields["bytes_out"])


def count_decision(checkpoint: str, verdict: str) -> None:
    """Count one policy decision (C{verdict}: allow, deny)."""
    key = (checkpoint, verdict)
    child = _decisions.get(key)
    if child is None:
        child = _decisions[key] = policy_decisions_total.labels(str(checkpoint), verdict)
    child.inc()


def tls_handshake_failed(side: str, why: Failure | HandshakeFailure | None) -> None:
    """
    Count one failed TLS handshake of an intercepted connection.

    @param side: C{"client"} or C{"upstream"}.
    @param why: the reason, or the failure the TLS layer reported, which is
        classified: an OpenSSL error is the client's refusal (client side) or
        an upstream failure; an aborted upstream is the handshake timer's
        doing (only it aborts an upstream before its handshake is done);
        anything else is C{other} on the client side (it closed) and an
        upstream failure on the upstream side.
    """
    if not isinstance(why, HandshakeFailure):
        why = _classify(side, why)
    _failures[side, why].inc()


def _classify(side: str, failure: Failure | None) -> HandshakeFailure:
    if side == "client":
        if failure is not None and failure.check(SSL.Error):
            return HandshakeFailure.CLIENT_REJECTED
        return HandshakeFailure.OTHER
    if failure is not None and failure.check(ConnectionAborted):
        return HandshakeFailure.TIMEOUT
    return HandshakeFailure.UPSTREAM_FAILED


def certificate_lookup(hit: bool) -> None:
    """Count one lookup of the minted-certificate cache."""
    _cache[hit].inc()


def ocsp_status(response: bytes) -> str:
    """
    The C{status} label of a DER OCSP response txgate made: C{good}, C{revoked},
    C{unknown}, or why no certificate status was given (C{unauthorized},
    C{malformed}).
    """
    try:
        parsed = ocsp.load_der_ocsp_response(response)
    except ValueError:
        return "malformed"
    if parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL:
        return parsed.certificate_status.name.lower()
    if parsed.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED:
        return "unauthorized"
    return "malformed"


def count_ocsp(counts: collections.Counter[str], status: str) -> None:
    """
    Count one OCSP answer, in C{counts} (the authority's, for the admin
    console) and in the metric.

    @param status: one of L{OCSP_STATUSES}.
    """
    counts[status] += 1
    _ocsp[status].inc()


def count_protocol(protocol: str) -> None:
    """Count one stream whose protocol detection settled (in L{detected_protocols} and the metric)."""
    detected_protocols[protocol] += 1
    child = _protocols.get(protocol)
    if child is None:
        child = _protocols[protocol] = detected_protocols_total.labels(protocol)
    child.inc()


def reverse_request(virtual_service: str, real_server: str, status: int | None, seconds: float) -> None:
    """
    Count one reverse-proxy request sent to C{real_server} (its key, as
    configured) and observe how long it took.

    @param status: the response's status code; C{None} when none came.
    """
    code = f"{status // 100}xx" if status is not None and 100 <= status < 600 else "error"
    key = (virtual_service, real_server, code)
    children = _reverse.get(key)
    if children is None:
        children = _reverse[key] = (
            reverse_requests_total.labels(virtual_service, real_server, code),
            reverse_request_duration_seconds.labels(virtual_service),
        )
    count, duration = children
    count.inc()
    duration.observe(seconds)


def set_realserver_up(virtual_service: str, real_server: str, up: bool) -> None:
    """Record a real server's health state (Up: 1, Down: 0)."""
    key = (virtual_service, real_server)
    child = _realservers.get(key)
    if child is None:
        child = _realservers[key] = realserver_up.labels(virtual_service, real_server)
    child.set(1 if up else 0)


def sessions_family(counts: Mapping[str, int]) -> GaugeMetricFamily:
    """
    C{txgate_sessions{protocol}}: live sessions by client.protocol, made at
    render time from the sessions themselves (pass it to L{render}'s C{extra}).
    """
    family = GaugeMetricFamily("txgate_sessions", "Live sessions by client.protocol.", labels=["protocol"])
    for protocol, count in sorted(counts.items()):
        family.add_metric([protocol], count)
    return family


def process_dead(pid: int, multiprocess_dir: str | None = None) -> None:
    """
    Forget the live gauges of a worker that exited (its C{txgate_realserver_up}
    values), so a restarted worker's say counts and the dead one's does not.
    Its counters stay: they are history.
    """
    path = multiprocess_dir or os.environ.get(MULTIPROC_ENV)
    if path:
        mark_process_dead(pid, path)


class _Together:
    """A collector yielding a registry's families, then some more."""

    def __init__(self, registry: Any, extra: Iterable[Metric]) -> None:
        self._registry = registry
        self._extra = list(extra)

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra


def render(registry: Any = None, extra: Iterable[Metric] = (), multiprocess_dir: str | None = None) -> bytes:
    """
    The text exposition (L{CONTENT_TYPE}) of C{registry} and the C{extra}
    families.

    @param registry: by default, every worker's metrics merged from the
        multiprocess directory when there is one (C{multiprocess_dir}, else
        C{$PROMETHEUS_MULTIPROC_DIR}), else this process's.
    @param extra: families made at render time, such as L{sessions_family}.
    @param multiprocess_dir: the directory the workers write to, for a main
        process that does not have C{PROMETHEUS_MULTIPROC_DIR} itself.
    """
    if registry is None:
        path = multiprocess_dir or os.environ.get(MULTIPROC_ENV)
        if path:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=path)
        else:
            registry = _registry
    return generate_latest(_Together(registry, extra))  # type: ignore[arg-type]
