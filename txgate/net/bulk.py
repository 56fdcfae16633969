# -*- test-case-name: tests.net.test_bulk -*-
"""
The bulk path of a byte tunnel: bytes move socket → buffer → socket with
C{recv_into} and C{send}, without Twisted's per-chunk work.

A tunnel between two plain TCP connections starts in Twisted's usual way
(L{txgate.net.pump.Tunnel}); once it has carried enough bytes to be a bulk
transfer it hands both sockets to a L{BulkPath}, which registers its own
descriptors with the reactor. Per chunk of up to L{CHUNK} bytes Python does
two system calls and a counter: no bytes object, no write buffer, no
producer calls. Every tunnel reads into the same buffer; the part of a
chunk a destination does not take at once is copied aside, and its source
is not read again until that part has gone, so a tunnel holds at most one
chunk.

Why not splice(2): on loopback, where the benchmark measures, the receiving
client then reads the origin's own pages, and that cost curl more than the
two copies cost txgate (S1 in docs/performance.md: 0.57×–0.64× of direct
spliced, 0.68×–0.71× copied, in runs side by side).
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.interfaces import IReadWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["BulkPath", "CHUNK", "plain_socket", "idle"]

CHUNK = 1 << 18
"""The most one read takes; the size of the buffer every tunnel reads into."""

ROUNDS = 4
"""Chunks per readiness event, so one bulk tunnel does not starve the others."""

_BUFFER = memoryview(bytearray(CHUNK))
"""Shared: each chunk is sent before the next read, or what is left copied aside."""


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
    Nothing written to C{transport} is waiting in Twisted's buffer: bytes
    sent past it would overtake it.
    """
    # FileDescriptor's write buffer; _tempDataLen has held the not-yet-joined
    # part since Twisted 8. Anything unknown counts as not idle.
    pending = len(transport.dataBuffer) - transport.offset + getattr(transport, "_tempDataLen", 1)
    return pending == 0


class _Way:
    """One direction: what C{source} sends, C{destination} gets."""

    def __init__(self, source: "_End", destination: "_End", moved: Callable[[int], None]) -> None:
        self.source = source
        self.destination = destination
        self.moved = moved
        self.held: memoryview | None = None
        """The part of the last chunk the destination has not taken yet."""
        self.eof = False
        self.shut = False

    @property
    def wants_read(self) -> bool:
        return not self.eof and self.held is None

    @property
    def wants_write(self) -> bool:
        return self.held is not None


@implementer(IReadWriteDescriptor)
class _End:
    """One socket of a tunnel on the bulk path, as the reactor sees it."""

    def __init__(self, path: "BulkPath", sock: socket.socket, side: str) -> None:
        self._path = path
        self.socket = sock
        self.side = side
        self.reading = False
        self.writing = False

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return f"bulk ({self.side})"

    def doRead(self) -> None:
        self._path._ready(self, reading=True)

    def doWrite(self) -> None:
        self._path._ready(self, reading=False)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor gives up on a descriptor on an error or hang-up
        # without data, and when it shuts down.
        self._path._failed(self.side, reason.getErrorMessage())


class BulkPath:
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
        self._out = _Way(self._server, self._client, moved_out)
        self._ways = (self._in, self._out)

    def start(self) -> None:
        """Take over both sockets: move what is there already, then wait for the reactor."""
        for way in self._ways:
            self._move(way)
            if self._done is None:
                return
        self._register()

    def stop(self) -> None:
        """Give the sockets back (idempotent): nothing registered, nothing held."""
        for end in (self._client, self._server):
            if end.reading:
                self._reactor.removeReader(end)
                end.reading = False
            if end.writing:
                self._reactor.removeWriter(end)
                end.writing = False
        for way in self._ways:
            way.held = None
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
        What C{way} holds, then up to L{ROUNDS} chunks, as far as the
        destination takes them; then a half-close once the source ended.
        """
        if way.held is not None:
            sent = self._send(way, way.held)
            if sent is None or sent < len(way.held):
                if sent:
                    way.held = way.held[sent:]
                return
            way.held = None
        for _ in range(ROUNDS):
            if way.eof:
                break
            try:
                got = way.source.socket.recv_into(_BUFFER)
            except BlockingIOError:
                break
            except OSError as e:
                return self._failed(way.source.side, e.strerror or str(e))
            if not got:
                way.eof = True
                break
            way.moved(got)
            sent = self._send(way, _BUFFER[:got])
            if sent is None:
                return
            if sent < got:
                way.held = memoryview(bytes(_BUFFER[sent:got]))  # the buffer is the next chunk's
                return
        if way.eof and not way.shut:
            way.shut = True
            try:
                way.destination.socket.shutdown(socket.SHUT_WR)
            except OSError as e:
                if e.errno != errno.ENOTCONN:
                    return self._failed(way.destination.side, e.strerror or str(e))
            if all(w.shut for w in self._ways):
                self._end(None)

    def _send(self, way: _Way, data: memoryview) -> int | None:
        """Bytes of C{data} the destination took now; C{None} once the tunnel broke."""
        try:
            return way.destination.socket.send(data)
        except BlockingIOError:
            return 0
        except OSError as e:
            self._failed(way.destination.side, e.strerror or str(e))
            return None

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
