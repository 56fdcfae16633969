# -*- test-case-name: tests.reverse.test_balancing -*-
"""
Which real server gets a new client: the real servers' live state and the
three schedulers a virtual service can use.

Schedulers only look at servers that are Up and have a weight above zero
(weight 0 drains a server: persistence may still send its clients there, the
schedulers send it nobody new). Each choice is one pass over the list with
no allocation, since it runs once per new client.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import attrs

__all__ = [
    "RealServer",
    "Scheduler",
    "LeastConnection",
    "RoundRobin",
    "Weighted",
    "SCHEDULERS",
    "scheduler_for",
]


@attrs.define(eq=False)
class RealServer:
    """
    One real server of a virtual service, as the balancer, the health checks
    and the admin console see it.

    Identity is the object (C{eq=False}): two servers with equal counters are
    still two servers.

    @ivar key: C{host:port} (C{[v6]:port}); names the server in cookies and
        in rendezvous hashing, so it must be the same on every node.
    @ivar weight: relative share of new clients; 0 takes no new clients.
    @ivar up: whether health checks currently say it serves.
    @ivar active: requests in flight to it now.
    @ivar requests: requests sent to it since start.
    @ivar persistence_hits: requests persistence kept on it.
    @ivar last_health: the last health check's verdict, in words.
    @ivar connections: open connections to it (pooled or busy).
    """

    key: str
    weight: int = 1
    up: bool = True
    active: int = 0
    requests: int = 0
    persistence_hits: int = 0
    last_health: str = ""
    connections: int = 0

    def snapshot(self) -> dict[str, Any]:
        """The server's state as JSON-ready values, for the admin console and logs."""
        return {
            "key": self.key,
            "weight": self.weight,
            "state": "Up" if self.up else "Down",
            "active": self.active,
            "connections": self.connections,
            "requests": self.requests,
            "persistence_hits": self.persistence_hits,
            "last_health": self.last_health,
        }


class Scheduler(Protocol):
    """What persistence asks when it has no server for a client yet."""

    def choose(self, servers: Sequence[RealServer]) -> RealServer | None:
        """A server that is Up with weight above 0, or C{None} when none is."""


class LeastConnection:
    """
    The server with the fewest requests in flight per unit of weight.

    Equal servers take turns: the scan starts one place after the last
    choice, so with no load at all (every C{active} 0, as in a test or a quiet
    night) clients are still spread instead of all landing on the first
    server. Loads are compared as C{a.active * b.weight < b.active *
    a.weight}, exact integers, so ties are real ties.
    """

    def __init__(self) -> None:
        self._next = 0

    def choose(self, servers: Sequence[RealServer]) -> RealServer | None:
        n = len(servers)
        if n == 0:
            return None
        start = self._next % n
        best: RealServer | None = None
        best_index = 0
        for offset in range(n):
            index = start + offset
            if index >= n:
                index -= n
            server = servers[index]
            if not (server.up and server.weight > 0):
                continue
            if best is None or server.active * best.weight < best.active * server.weight:
                best = server
                best_index = index
        if best is not None:
            self._next = best_index + 1
        return best


class RoundRobin:
    """
    Each eligible server in turn, in configuration order; weights other
    than 0 are ignored (use L{Weighted} for shares).
    """

    def __init__(self) -> None:
        self._next = 0

    def choose(self, servers: Sequence[RealServer]) -> RealServer | None:
        n = len(servers)
        if n == 0:
            return None
        start = self._next % n
        for offset in range(n):
            index = start + offset
            if index >= n:
                index -= n
            server = servers[index]
            if server.up and server.weight > 0:
                self._next = index + 1
                return server
        return None


class Weighted:
    """
    Smooth weighted round-robin, as nginx does it (C{ngx_http_upstream_round_robin.c}):
    every choice adds each eligible server's weight to its current weight,
    picks the highest and takes the total off the winner.

    Over any run of C{sum(weights)} choices each server is chosen exactly
    C{weight} times, interleaved (weights 5, 1, 1 give a a b a c a a rather
    than a a a a a b c), so a heavy server is not hit in bursts. A server
    that goes Down or to weight 0 simply stops taking part; its current
    weight is forgotten so it rejoins fresh.
    """

    def __init__(self) -> None:
        self._current: dict[str, int] = {}

    def choose(self, servers: Sequence[RealServer]) -> RealServer | None:
        current = self._current
        total = 0
        best: RealServer | None = None
        best_weight = 0
        for server in servers:
            if not (server.up and server.weight > 0):
                if server.key in current:
                    del current[server.key]
                continue
            weight = current.get(server.key, 0) + server.weight
            current[server.key] = weight
            total += server.weight
            if best is None or weight > best_weight:
                best = server
                best_weight = weight
        if best is not None:
            current[best.key] = best_weight - total
        return best


SCHEDULERS: dict[str, type] = {
    "least-connection": LeastConnection,
    "round-robin": RoundRobin,
    "weighted": Weighted,
}


def scheduler_for(name: str) -> LeastConnection | RoundRobin | Weighted:
    """
    A new scheduler for the configuration's C{scheduling} value (each
    virtual service gets its own, since schedulers keep turn state).

    @raise ValueError: for a name not in L{SCHEDULERS}, listing those that are.
    """
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        known = ", ".join(f'"{n}"' for n in SCHEDULERS)
        raise ValueError(f"unknown scheduling {name!r}; expected one of {known}") from None
    return cls()
