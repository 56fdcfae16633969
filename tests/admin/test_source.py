"""
Tests for L{txgate.admin.source}: the session view the JSON API promises,
and how the figures of several workers are merged.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txgate.admin.source import LocalSource, merge_realservers, merge_status, session_view
from txgate.session import Address, Session

API_KEYS = {
    "id", "client", "service", "destination", "sni", "protocol", "stack", "tunneled", "intercepted",
    "user", "bytes_in", "bytes_out", "age", "idle", "worker",
}


def _session(**kw: object) -> Session:
    fields: dict[str, object] = dict(id="s-1", service="explicit", client=Address("192.0.2.7", 5060), started=100.0)
    fields.update(kw)
    return Session(**fields)  # type: ignore[arg-type]


class SessionViewTests(SynchronousTestCase):
    def test_keys_and_values(self) -> None:
        session = _session(
            destination=Address("2001:db8::1", 443),
            sni="sip.example.com",
            stack=["ssl", "sips"],
            client_protocol="sips",
            tunneled=False,
            intercepted=True,
            user="alice",
            bytes_in=10,
            bytes_out=20,
            last_active=130.0,
        )
        view = session_view(session, now=160.0, worker=2)
        self.assertEqual(set(view), API_KEYS)
        self.assertEqual(view["client"], "192.0.2.7:5060")
        self.assertEqual(view["destination"], "[2001:db8::1]:443")
        self.assertEqual((view["protocol"], view["stack"]), ("sips", ["ssl", "sips"]))
        self.assertEqual((view["age"], view["idle"], view["worker"]), (60.0, 30.0, 2))

    def test_no_destination(self) -> None:
        self.assertIsNone(session_view(_session(), now=100.0, worker=0)["destination"])


class _Factory:
    def __init__(self, *sessions: Session) -> None:
        self.sessions = {s.id: s for s in sessions}


class _Service:
    def __init__(self, *sessions: Session) -> None:
        self.factories = {"explicit": _Factory(*sessions)}


class LocalSourceTests(SynchronousTestCase):
    def test_sessions_and_terminate(self) -> None:
        ended = []
        one = _session(id="a", terminate=lambda: ended.append("a"))
        two = _session(id="b", terminate=lambda: ended.append("b"))
        clock = Clock()
        clock.advance(150)
        source = LocalSource(_Service(one, two), 1, clock, lambda: {"ok": True, "message": ""})
        views = self.successResultOf(source.sessions())
        self.assertEqual(sorted(v["id"] for v in views), ["a", "b"])
        self.assertEqual({v["worker"] for v in views}, {1})
        self.assertTrue(self.successResultOf(source.terminate("b")))
        self.assertFalse(self.successResultOf(source.terminate("nope")))
        self.assertEqual(ended, ["b"])


def _status(sessions: int, hits: int, protocols: dict[str, int], ocsp: dict[str, int]) -> dict[str, object]:
    return {
        "mode": "forward",
        "services": [{"name": "explicit", "kind": "explicit-http", "listen": "tcp:8080", "address": "127.0.0.1:8080",
                      "sessions": sessions, "transactions": sessions * 10}],
        "protocols": protocols,
        "policy": {"file": "p.cpl", "last_reload": {"time": None, "ok": None, "message": ""},
                   "rule_hits": [{"rule": "p.cpl:3", "hits": hits}]},
        "certificates": {"issuer": "CN=txgate", "crl_number": 7, "crl_next_update": None, "cache_size": 2,
                         "cache_capacity": 1024, "cache_hits": 5, "cache_misses": 2, "ocsp": ocsp},
    }


class MergeTests(SynchronousTestCase):
    def test_status_counts_add_up(self) -> None:
        merged = merge_status(
            [_status(1, 4, {"sips": 1}, {"good": 1}), _status(2, 6, {"sips": 2, "tcp": 1}, {"good": 2, "revoked": 1})]
        )
        (service,) = merged["services"]
        self.assertEqual((service["sessions"], service["transactions"]), (3, 30))
        self.assertEqual(merged["protocols"], {"sips": 3, "tcp": 1})
        self.assertEqual(merged["policy"]["rule_hits"], [{"rule": "p.cpl:3", "hits": 10}])
        certificates = merged["certificates"]
        self.assertEqual((certificates["cache_hits"], certificates["cache_size"]), (10, 4))
        self.assertEqual(certificates["ocsp"], {"good": 3, "revoked": 1})
        self.assertEqual(certificates["crl_number"], 7)

    def test_no_workers(self) -> None:
        self.assertEqual(merge_status([]), {})
        self.assertEqual(merge_realservers([]), [])

    def test_realservers(self) -> None:
        def worker(state: str, requests: int) -> list[dict[str, object]]:
            return [{"name": "web", "listen": "tcp:443", "connections": 1, "requests": requests, "real_servers": [
                {"key": "10.0.0.11:4443", "weight": 1, "state": state, "active": 1, "connections": 2,
                 "requests": requests, "persistence_hits": 1, "last_health": "HTTP 200"}]}]

        (web,) = merge_realservers([worker("Down", 3), worker("Up", 4)])
        self.assertEqual((web["connections"], web["requests"]), (2, 7))
        (server,) = web["real_servers"]
        self.assertEqual((server["state"], server["requests"], server["persistence_hits"]), ("Up", 7, 2))
