# -*- test-case-name: tests.net.test_splice -*-
"""
Zero-copy tunnels on Linux: bytes move socket → pipe → socket inside the
kernel with splice(2) instead of being copied into Python and back.

A tunnel between two plain TCP connections starts in Twisted's usual way
(L{txgate.net.pump.Tunnel}); once it has carried enough bytes to be a bulk
transfer it hands both sockets to a L{Splice}, which registers its own
descriptors with the reactor and moves each direction through a pipe. What
Python still does per chunk is two system calls and a counter. Backpressure
is the pipe: a direction whose destination is not writable stops reading its
source until the pipe has drained.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["AVAILABLE", "Splice", "plain_socket", "idle"]

AVAILABLE = hasattr(os, "splice")
"""splice(2) exists here (Linux, Python 3.10+)."""

PIPE_SIZE = 1 << 18
"""Bytes a direction holds in flight; also the most one splice moves."""

ROUNDS = 4
"""Moves per readiness event, so one bulk tunnel does not starve the others."""

_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def plain_socket(transport: Any) -> socket.socket | None:
    """
    The socket of C{transport} when bytes may go straight to it: a TCP
    connection of Twisted's, open both ways, without TLS.
    """
    if not isinstance(transport, tcp.Connection) or getattr(transport, "TLS", False):
        return None
    if not transport.connected or transport.disconnecting or getattr(transport, "_writeDisconnecting", True):
        return None
    return transport.getHandle()  # type: ignore[no-any-return]


def idle(transport: tcp.Connection) -> bool:
    """
    Nothing written to C{transport} is waiting in Twisted's buffer: spliced
    bytes would overtake it.
    """
    # FileDescriptor's write buffer; _tempDataLen has held the not-yet-joined
    # part since Twisted 8. Anything unknown counts as not idle.
    pending = len(transport.dataBuffer) - transport.offset + getattr(transport, "_tempDataLen", 1)
    return pending == 0


class _Way:
    """One direction: bytes read from C{source} wait in the pipe until C{destination} takes them."""

    def __init__(self, source: "_End", destination: "_End", moved: Callable[[int], None]) -> None:
        self.source = source
        self.destination = destination
        self.moved = moved
        self.pipe_out, self.pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.pipe_in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # a lower /proc/sys/fs/pipe-max-size: the default 64 KiB works too
        self.queued = 0
        self.eof = False
        self.shut = False

    @property
    def wants_read(self) -> bool:
        return not self.eof and self.queued < PIPE_SIZE

    @property
    def wants_write(self) -> bool:
        return bool(self.queued)

    def close(self) -> None:
        for fd in (self.pipe_out, self.pipe_in):
            try:
                os.close(fd)
            except OSError:
                pass


@implementer(IReadWriteDescriptor)
class _End:
    """One socket of a spliced tunnel, as the reactor sees it."""

    def __init__(self, splice: "Splice", sock: socket.socket, side: str) -> None:
        self._splice = splice
        self.socket = sock
        self.side = side
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return f"splice ({self.side})"

    def doRead(self) -> None:
        self._splice._ready(self, reading=True)

    def doWrite(self) -> None:
        self._splice._ready(self, reading=False)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor gives up on a descriptor only when it shuts down.
        self._splice._failed(self.side, reason.getErrorMessage())


class Splice:
    """
    Moves bytes both ways between two connected, non-blocking sockets that
    nobody else reads or writes meanwhile.

    @param moved_in: called with the count of each chunk from the client.
    @param moved_out: likewise for chunks from the server.
    @param done: called once with C{None} when both directions ended with a
        half-close passed on, or with why the tunnel broke ("client
        connection lost: ..."); the sockets are then the caller's again.
    """

    def __init__(
        self,
        reactor: Any,
        client: socket.socket,
        server: socket.socket,
        moved_in: Callable[[int], None],
        moved_out: Callable[[int], None],
        done: Callable[[str | None], None],
    ) -> None:
        self._reactor = reactor
        self._done: Callable[[str | None], None] | None = done
        self._client = _End(self, client, "client")
        self._server = _End(self, server, "server")
        self._in = _Way(self._client, self._server, moved_in)
        try:
            self._out = _Way(self._server, self._client, moved_out)
        except OSError:
            self._in.close()
            raise
        self._ways = (self._in, self._out)

    def start(self) -> None:
        """Take over both sockets: move what is there already, then wait for the reactor."""
        for way in self._ways:
            self._move(way)
            if self._done is None:
                return
        self._register()

    def stop(self) -> None:
        """Give the sockets back (idempotent): nothing registered, pipes closed."""
        for end in (self._client, self._server):
            if end.reading:
                self._reactor.removeReader(end)
                end.reading = False
            if end.writing:
                self._reactor.removeWriter(end)
                end.writing = False
        for way in self._ways:
            way.close()
        self._ways = ()

    def _ready(self, end: _End, reading: bool) -> None:
        if self._done is None:
            return
        way = self._in if (end is self._client) == reading else self._out
        self._move(way)
        if self._done is not None:
            self._register()

    def _move(self, way: _Way) -> None:
        """
        As many bytes as C{way} can take now, then a half-close once its
        source ended. Reading goes on while the pipe has room and writing
        while it holds bytes, so a destination that is briefly full does not
        stop the source.
        """
        source, destination = way.source.fileno(), way.destination.fileno()
        for _ in range(ROUNDS):
            got = 0
            room = PIPE_SIZE - way.queued
            if room and not way.eof:
                try:
                    got = os.splice(source, way.pipe_in, room, flags=_FLAGS)
                except BlockingIOError:
                    pass
                except OSError as e:
                    return self._failed(way.source.side, e.strerror or str(e))
                else:
                    if got:
                        way.queued += got
                        way.moved(got)
                    else:
                        way.eof = True
            if way.queued:
                try:
                    sent = os.splice(way.pipe_out, destination, way.queued, flags=_FLAGS)
                except BlockingIOError:
                    pass
                except OSError as e:
                    return self._failed(way.destination.side, e.strerror or str(e))
                else:
                    way.queued -= sent
            if way.queued or not got:
                # The destination is full, or the source had nothing more
                # (or ended): wait for epoll.
                break
        if way.eof and not way.queued and not way.shut:
            way.shut = True
            try:
                way.destination.socket.shutdown(socket.SHUT_WR)
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    return self._failed(way.destination.side, e.strerror or str(e))
            if all(w.shut for w in self._ways):
                self._end(None)

    def _register(self) -> None:
        """Each socket registered for exactly what its two directions wait for."""
        for end, outgoing, incoming in ((self._client, self._in, self._out), (self._server, self._out, self._in)):
            reading = outgoing.wants_read
            writing = incoming.wants_write
            if reading != end.reading:
                (self._reactor.addReader if reading else self._reactor.removeReader)(end)
                end.reading = reading
            if writing != end.writing:
                (self._reactor.addWriter if writing else self._reactor.removeWriter)(end)
                end.writing = writing

    def _failed(self, side: str, why: str) -> None:
        self._end(f"{side} connection lost: {why}")

    def _end(self, reason: str | None) -> None:
        done, self._done = self._done, None
        self.stop()
        if done is not None:
            done(reason)
