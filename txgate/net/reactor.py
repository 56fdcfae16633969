# -*- test-case-name: tests.net.test_reactor -*-
"""
The reactor txgate's workers run on: Twisted's epoll reactor, dispatching
each readiness event straight to its connection.

Twisted's C{doPoll} hands every event through L{twisted.python.log.callWithLogger},
which asks the connection for its log prefix, builds a context dictionary
and pushes it on the context stack, so that legacy C{log.msg} lines written
while the event is handled name the connection. That is about 2 us per
event, two events per kept-alive reverse request: without it, S4a went
from 0.122 to 0.113 CPU-ms per request (docs/performance.md). txgate logs with L{twisted.logger} events that carry
their own fields; an exception escaping a connection's C{doRead} is still
logged, with its traceback (by C{_doReadOrWrite}), only without the
connection's prefix.
"""

from __future__ import annotations

import errno

from twisted.internet import epollreactor
from twisted.internet.main import installReactor

__all__ = ["EPollReactor", "install"]


class EPollReactor(epollreactor.EPollReactor):
    """Twisted's, without the per-event log context (see the module's docstring)."""

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        dispatch = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:  # removed by an earlier event of this poll
                dispatch(selectable, fd, event)

    doIteration = doPoll


def install() -> EPollReactor:
    """Install it as the global reactor (before anything imports C{twisted.internet.reactor})."""
    reactor = EPollReactor()
    installReactor(reactor)
    return reactor
