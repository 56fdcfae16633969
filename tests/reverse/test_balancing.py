"""
Tests for L{txgate.reverse.balancing}: real server state and the three
schedulers.
"""

from __future__ import annotations

import json
from collections import Counter

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse import balancing
from txgate.reverse.balancing import LeastConnection, RealServer, RoundRobin, Weighted, scheduler_for


def _servers(*weights: int) -> list[RealServer]:
    return [RealServer(f"10.0.0.{i + 1}:4443", weight=w) for i, w in enumerate(weights)]


class RealServerTests(SynchronousTestCase):
    """
    A real server's snapshot is what the admin console shows.
    """

    def test_snapshot(self) -> None:
        """
        The snapshot holds every counter, the state in words, and is JSON-ready.
        """
        server = RealServer("10.0.0.1:4443", weight=3, active=2, requests=7, persistence_hits=5,
                            last_health="HTTP 200", connections=4)
        snapshot = server.snapshot()
        self.assertEqual(
            snapshot,
            {"key": "10.0.0.1:4443", "weight": 3, "state": "Up", "active": 2, "connections": 4,
             "requests": 7, "persistence_hits": 5, "last_health": "HTTP 200"},
        )
        self.assertEqual(json.loads(json.dumps(snapshot)), snapshot)
        server.up = False
        self.assertEqual(server.snapshot()["state"], "Down")

    def test_identity(self) -> None:
        """
        Two servers with the same fields are still two servers.
        """
        self.assertNotEqual(RealServer("a:1"), RealServer("a:1"))
        self.assertEqual(len({RealServer("a:1"), RealServer("a:1")}), 2)


class _SchedulerContract:
    """Behaviour every scheduler shares."""

    def make(self):
        raise NotImplementedError

    def test_empty(self) -> None:
        """
        No servers: no choice.
        """
        self.assertIsNone(self.make().choose([]))  # type: ignore[attr-defined]

    def test_none_eligible(self) -> None:
        """
        Servers that are Down or of weight 0 are never chosen; with only
        those, the answer is C{None}.
        """
        servers = _servers(1, 0, 2)
        servers[0].up = False
        servers[2].up = False
        scheduler = self.make()
        for _ in range(5):
            self.assertIsNone(scheduler.choose(servers))  # type: ignore[attr-defined]

    def test_skips_ineligible(self) -> None:
        """
        Only Up servers with a positive weight are chosen.
        """
        servers = _servers(1, 1, 0, 1)
        servers[1].up = False
        scheduler = self.make()
        chosen = {scheduler.choose(servers).key for _ in range(20)}
        self.assertEqual(chosen, {servers[0].key, servers[3].key})  # type: ignore[attr-defined]


class LeastConnectionTests(_SchedulerContract, SynchronousTestCase):
    """
    L{LeastConnection} picks the lowest C{active / weight}, taking turns on ties.
    """

    def make(self) -> LeastConnection:
        return LeastConnection()

    def test_picks_minimum(self) -> None:
        """
        The server with the fewest requests in flight wins.
        """
        servers = _servers(1, 1, 1)
        servers[0].active, servers[1].active, servers[2].active = 5, 2, 3
        scheduler = self.make()
        for _ in range(4):
            self.assertIs(scheduler.choose(servers), servers[1])

    def test_weight_divides(self) -> None:
        """
        Load is counted per unit of weight: 4 in flight on weight 4 is lighter
        than 2 on weight 1.
        """
        servers = _servers(4, 1)
        servers[0].active, servers[1].active = 4, 2
        self.assertIs(self.make().choose(servers), servers[0])

    def test_ties_alternate(self) -> None:
        """
        Equal servers take turns even when their load never changes.
        """
        servers = _servers(1, 1, 1)
        scheduler = self.make()
        keys = [scheduler.choose(servers).key for _ in range(6)]
        self.assertEqual(keys, [s.key for s in servers] * 2)

    def test_ties_among_minimum_only(self) -> None:
        """
        Turn-taking only happens among the least loaded.
        """
        servers = _servers(1, 1, 1)
        servers[1].active = 1
        scheduler = self.make()
        keys = [scheduler.choose(servers).key for _ in range(4)]
        self.assertEqual(keys, [servers[0].key, servers[2].key] * 2)

    def test_counting_spreads(self) -> None:
        """
        When the caller counts requests in flight, N requests spread evenly.
        """
        servers = _servers(1, 1, 1)
        scheduler = self.make()
        for _ in range(9):
            scheduler.choose(servers).active += 1
        self.assertEqual([s.active for s in servers], [3, 3, 3])

    @given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 10)), min_size=1, max_size=12))
    def test_minimum_property(self, loads: list[tuple[int, int]]) -> None:
        """
        Whatever the loads and weights, the choice has the minimal
        C{active / weight}.
        """
        servers = [RealServer(f"s{i}:1", weight=w, active=a) for i, (a, w) in enumerate(loads)]
        chosen = LeastConnection().choose(servers)
        assert chosen is not None
        best = min(s.active / s.weight for s in servers)
        self.assertAlmostEqual(chosen.active / chosen.weight, best)


class RoundRobinTests(_SchedulerContract, SynchronousTestCase):
    """
    L{RoundRobin} takes eligible servers in order.
    """

    def make(self) -> RoundRobin:
        return RoundRobin()

    def test_in_turn(self) -> None:
        """
        Each server in configuration order, ignoring weights.
        """
        servers = _servers(1, 5, 1)
        scheduler = self.make()
        self.assertEqual([scheduler.choose(servers) for _ in range(6)], servers * 2)

    def test_down_server_skipped(self) -> None:
        """
        A server going Down is skipped; the others keep their turns.
        """
        servers = _servers(1, 1, 1)
        scheduler = self.make()
        self.assertIs(scheduler.choose(servers), servers[0])
        servers[1].up = False
        self.assertIs(scheduler.choose(servers), servers[2])
        self.assertIs(scheduler.choose(servers), servers[0])


class WeightedTests(_SchedulerContract, SynchronousTestCase):
    """
    L{Weighted} is nginx's smooth weighted round-robin.
    """

    def make(self) -> Weighted:
        return Weighted()

    def test_nginx_sequence(self) -> None:
        """
        Weights 5, 1, 1 give nginx's documented sequence a a b a c a a.
        """
        servers = _servers(5, 1, 1)
        scheduler = self.make()
        names = {s.key: n for s, n in zip(servers, "abc")}
        sequence = "".join(names[scheduler.choose(servers).key] for _ in range(7))
        self.assertEqual(sequence, "aabacaa")

    @given(st.lists(st.integers(0, 9), min_size=1, max_size=8), st.integers(1, 3))
    def test_exact_shares_per_cycle(self, weights: list[int], cycles: int) -> None:
        """
        Over each cycle of C{sum(weights)} choices, every server is chosen
        exactly C{weight} times.
        """
        servers = _servers(*weights)
        scheduler = self.make()
        total = sum(weights)
        if total == 0:
            self.assertIsNone(scheduler.choose(servers))
            return
        for _ in range(cycles):
            counts = Counter(scheduler.choose(servers).key for _ in range(total))
            self.assertEqual(counts, Counter({s.key: s.weight for s in servers if s.weight}))

    def test_server_rejoins(self) -> None:
        """
        A server that was Down rejoins with its full share from the next cycle.
        """
        servers = _servers(2, 1)
        scheduler = self.make()
        servers[0].up = False
        for _ in range(3):
            self.assertIs(scheduler.choose(servers), servers[1])
        servers[0].up = True
        counts = Counter(scheduler.choose(servers).key for _ in range(3))
        self.assertEqual(counts, {servers[0].key: 2, servers[1].key: 1})


class SchedulerForTests(SynchronousTestCase):
    """
    L{scheduler_for} maps the configuration's names to new schedulers.
    """

    def test_names(self) -> None:
        """
        Each known name gives a fresh scheduler of its kind.
        """
        self.assertIsInstance(scheduler_for("least-connection"), LeastConnection)
        self.assertIsInstance(scheduler_for("round-robin"), RoundRobin)
        self.assertIsInstance(scheduler_for("weighted"), Weighted)
        self.assertIsNot(scheduler_for("weighted"), scheduler_for("weighted"))

    def test_unknown(self) -> None:
        """
        An unknown name is a L{ValueError} listing the known ones.
        """
        e = self.assertRaises(ValueError, scheduler_for, "random")
        self.assertIn("'random'", str(e))
        self.assertIn('"least-connection"', str(e))

    def test_all(self) -> None:
        """
        The public names are exported.
        """
        for name in balancing.__all__:
            self.assertTrue(hasattr(balancing, name), name)
