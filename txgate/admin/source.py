# -*- test-case-name: tests.admin.test_source -*-
"""
Where the admin console's figures come from: this process's services
(L{LocalSource}), or, with C{--workers}, every worker's, fetched over their
control sockets and merged (L{WorkersSource}).
"""

from __future__ import annotations

import collections
import copy
import datetime
import json
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import Interface, implementer

from txgate import metrics
from txgate.session import Session

__all__ = ["IAdminSource", "LocalSource", "WorkersSource", "session_view", "merge_status", "merge_realservers"]


class IAdminSource(Interface):
    """What the admin console shows and does; every answer is a Deferred."""

    def sessions() -> Deferred[list[dict[str, Any]]]:
        """Every live session, as the JSON API shows it."""

    def terminate(session_id: str) -> Deferred[bool]:
        """End a session; C{True} if it was found."""

    def realservers() -> Deferred[list[dict[str, Any]]]:
        """Reverse mode: the virtual services and their real servers."""

    def status() -> Deferred[dict[str, Any]]:
        """The forward (or reverse) page's figures."""

    def reload() -> Deferred[dict[str, Any]]:
        """Reload policy and configuration: C{{"ok": bool, "message": str}}."""

    def metrics() -> Deferred[bytes]:
        """The Prometheus text exposition."""


def session_view(session: Session, now: float, worker: int) -> dict[str, Any]:
    """A session as the JSON API shows it (the keys are part of the interface)."""
    return {
        "id": session.id,
        "client": str(session.client),
        "service": session.service,
        "destination": str(session.destination) if session.destination is not None else None,
        "sni": session.sni,
        "protocol": str(session.client_protocol),
        "stack": list(session.stack),
        "tunneled": session.tunneled,
        "intercepted": session.intercepted,
        "user": session.user,
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        "age": max(0.0, now - session.started),
        "idle": max(0.0, now - (session.last_active or session.started)),
        "worker": worker,
    }


def _iso(when: datetime.datetime | None) -> str | None:
    return when.astimezone(datetime.timezone.utc).isoformat() if when is not None else None


def protocol_counts(sessions: Iterable[dict[str, Any]]) -> dict[str, int]:
    return dict(collections.Counter(s["protocol"] for s in sessions))


@implementer(IAdminSource)
class LocalSource:
    """
    The figures of the services of this process (a worker, or the only
    process with C{--workers 0}).

    @ivar reload_all: what a reload does (SIGHUP's handler).
    """

    def __init__(self, service: Any, worker: int, clock: Any, reload_all: Callable[[], dict[str, Any]]) -> None:
        self._service = service
        self._worker = worker
        self._clock = clock
        self._reload = reload_all

    def _sessions(self) -> Iterable[Session]:
        for factory in getattr(self._service, "factories", {}).values():
            yield from list(factory.sessions.values())

    def sessions(self) -> Deferred[list[dict[str, Any]]]:
        now = self._clock.seconds()
        return succeed([session_view(s, now, self._worker) for s in self._sessions()])

    def terminate(self, session_id: str) -> Deferred[bool]:
        for session in self._sessions():
            if session.id == session_id and session.terminate is not None:
                session.terminate()
                return succeed(True)
        return succeed(False)

    def realservers(self) -> Deferred[list[dict[str, Any]]]:
        snapshot = getattr(self._service, "snapshot", None)
        return succeed(snapshot() if snapshot is not None else [])

    def status(self) -> Deferred[dict[str, Any]]:
        service = self._service
        if not hasattr(service, "factories"):
            return succeed({"mode": "reverse", "services": service.snapshot()})
        return succeed(service.status())

    def reload(self) -> Deferred[dict[str, Any]]:
        return succeed(self._reload())

    def metrics(self) -> Deferred[bytes]:
        d = self.sessions()
        return d.addCallback(lambda sessions: metrics.render(extra=[metrics.sessions_family(protocol_counts(sessions))]))


def merge_status(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """
    One status out of every worker's: counts summed, the rest (issuer,
    policy file, last reload) from the first worker.
    """
    if not answers:
        return {}
    merged = copy.deepcopy(answers[0])
    if merged.get("mode") != "forward":
        merged["services"] = merge_realservers([a.get("services", []) for a in answers])
        return merged
    by_name = {s["name"]: s for s in merged["services"]}
    protocols: collections.Counter[str] = collections.Counter(merged.get("protocols", {}))
    hits: collections.Counter[str] = collections.Counter({h["rule"]: h["hits"] for h in merged["policy"]["rule_hits"]})
    certificates = merged.get("certificates") or {}
    for answer in answers[1:]:
        for service in answer.get("services", []):
            mine = by_name.get(service["name"])
            if mine is not None:
                mine["sessions"] += service["sessions"]
                mine["transactions"] += service["transactions"]
        protocols.update(answer.get("protocols", {}))
        hits.update({h["rule"]: h["hits"] for h in answer["policy"]["rule_hits"]})
        theirs = answer.get("certificates") or {}
        for key in ("cache_size", "cache_hits", "cache_misses"):
            if key in certificates and key in theirs:
                certificates[key] += theirs[key]
        if "ocsp" in certificates and "ocsp" in theirs:
            certificates["ocsp"] = dict(collections.Counter(certificates["ocsp"]) + collections.Counter(theirs["ocsp"]))
    merged["protocols"] = dict(protocols)
    merged["policy"]["rule_hits"] = [{"rule": r, "hits": n} for r, n in hits.most_common()]
    return merged


def merge_realservers(answers: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    One list of virtual services out of every worker's: counters summed; a
    real server is Up when any worker's checks see it Up (each worker checks
    on its own, so they disagree only for a check interval).
    """
    if not answers:
        return []
    merged = copy.deepcopy(answers[0])
    services = {s["name"]: s for s in merged}
    for answer in answers[1:]:
        for theirs in answer:
            mine = services.get(theirs["name"])
            if mine is None:
                continue
            mine["connections"] += theirs["connections"]
            mine["requests"] += theirs["requests"]
            servers = {r["key"]: r for r in mine["real_servers"]}
            for server in theirs["real_servers"]:
                own = servers.get(server["key"])
                if own is None:
                    continue
                for key in ("active", "connections", "requests", "persistence_hits"):
                    own[key] += server[key]
                if server["state"] == "Up":
                    own["state"] = "Up"
    return merged


@implementer(IAdminSource)
class WorkersSource:
    """
    The figures of every worker, asked over each worker's control socket
    (the admin JSON API, served on a UNIX socket in the private run
    directory), merged.
    """

    _log = Logger()
    timeout = 5.0

    def __init__(
        self,
        reactor: Any,
        sockets: Callable[[], dict[int, str]],
        reload_all: Callable[[], dict[str, Any]],
        metrics_dir: str,
    ) -> None:
        self._reactor = reactor
        self._sockets = sockets
        self._reload = reload_all
        self._metrics_dir = metrics_dir
        self._pool = HTTPConnectionPool(reactor)
        self._pool._factory = _QuietFactory
        self._agents: dict[str, Agent] = {}

    def _agent(self, path: str) -> Agent:
        agent = self._agents.get(path)
        if agent is None:
            agent = self._agents[path] = Agent.usingEndpointFactory(self._reactor, _Unix(self._reactor, path), self._pool)
        return agent

    def _ask(self, method: bytes, uri: str) -> Deferred[list[tuple[int, bytes]]]:
        """C{(status, body)} from each worker that answered."""
        calls = []
        for worker, path in sorted(self._sockets().items()):
            url = f"http://worker-{worker}{uri}".encode("ascii")  # the pool tells workers apart by host
            d = self._agent(path).request(method, url, Headers())
            d.addCallback(lambda response: readBody(response).addCallback(lambda body, r=response: (r.code, body)))
            d.addTimeout(self.timeout, self._reactor)
            d.addErrback(self._unanswered, worker)
            calls.append(d)
        return DeferredList(calls).addCallback(lambda results: [r for ok, r in results if ok and r is not None])

    def _unanswered(self, failure: Any, worker: int) -> None:
        self._log.warn("worker {worker} did not answer the admin console: {error}", worker=worker, error=failure.getErrorMessage())
        return None

    def _json(self, uri: str) -> Deferred[list[Any]]:
        return self._ask(b"GET", uri).addCallback(lambda answers: [json.loads(body) for code, body in answers if code == 200])

    def sessions(self) -> Deferred[list[dict[str, Any]]]:
        return self._json("/api/sessions").addCallback(lambda answers: [s for a in answers for s in a["sessions"]])

    def terminate(self, session_id: str) -> Deferred[bool]:
        d = self._ask(b"DELETE", f"/api/sessions/{_quote(session_id)}")
        return d.addCallback(lambda answers: any(code == 200 for code, _ in answers))

    def realservers(self) -> Deferred[list[dict[str, Any]]]:
        d = self._json("/api/realservers")
        return d.addCallback(lambda answers: merge_realservers([a["virtual_services"] for a in answers]))

    def status(self) -> Deferred[dict[str, Any]]:
        d = self._json("/api/status")
        return d.addCallback(lambda answers: {**merge_status(answers), "workers": len(answers)})

    def reload(self) -> Deferred[dict[str, Any]]:
        return succeed(self._reload())

    def metrics(self) -> Deferred[bytes]:
        d = self.sessions()
        return d.addCallback(
            lambda sessions: metrics.render(
                extra=[metrics.sessions_family(protocol_counts(sessions))], multiprocess_dir=self._metrics_dir
            )
        )


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False  # a line per worker connection would drown the log


def _quote(text: str) -> str:
    return quote(text, safe="")


@implementer(IAgentEndpointFactory)
class _Unix:
    def __init__(self, reactor: Any, path: str) -> None:
        self._reactor = reactor
        self._path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(self._reactor, self._path, timeout=2)
