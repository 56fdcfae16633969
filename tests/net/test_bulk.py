"""
Tests for L{txgate.net.bulk} and the tunnel's switch to it: real loopback
sockets, the real reactor, bytes checked end to end.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from txgate.interfaces import HandoffContext
from txgate.net import bulk
from txgate.net.pump import BULK_AFTER, Tunnel
from txgate.net.msturn import MsTurnRelay
from txgate.net.upstream import Connector
from txgate.session import Address, Session

TIMEOUT = 30.0


def _pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        outer = socket.create_connection(server.getsockname())
        inner, _ = server.accept()
    return outer, inner


def _send_then_drain(sock: socket.socket, payload: bytes) -> bytes:
    """Send C{payload}, half-close, read until the other side's EOF (blocking, in a thread)."""
    received: list[bytes] = []

    def read() -> None:
        while chunk := sock.recv(1 << 16):
            received.append(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    reader.join(TIMEOUT)
    sock.close()
    return b"".join(received)


class BulkPathTests(TestCase):
    """
    L{bulk.BulkPath} moves every byte both ways, passes half-closes on, and
    says why when a side breaks.
    """

    timeout = TIMEOUT

    def start(self) -> tuple[Any, Any, Deferred[str | None], list[int]]:
        client, client_near = _pair()
        server_near, server = _pair()
        for sock in (client_near, server_near):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        done: Deferred[str | None] = Deferred()
        counts = [0, 0]

        def moved(index: int) -> Any:
            def count(n: int) -> None:
                counts[index] += n
            return count

        self.path = path = bulk.BulkPath(reactor, client_near, server_near, moved(0), moved(1), done.callback)
        self.addCleanup(path.stop)
        path.start()
        return client, server, done, counts

    @inlineCallbacks
    def test_both_ways(self) -> Any:
        """Several MiB each way arrive byte-exact and counted; both half-closes end the bulk path with C{None}."""
        up, down = os.urandom(5 << 20), os.urandom(3 << 20)
        client, server, done, counts = self.start()
        at_client, at_server = yield gatherResults(
            [deferToThread(_send_then_drain, client, up), deferToThread(_send_then_drain, server, down)]
        )
        self.assertEqual(hashlib.sha256(at_server).digest(), hashlib.sha256(up).digest())
        self.assertEqual(hashlib.sha256(at_client).digest(), hashlib.sha256(down).digest())
        self.assertEqual(counts, [len(up), len(down)])
        reason = yield done
        self.assertIsNone(reason)

    @inlineCallbacks
    def test_half_close_keeps_other_way(self) -> Any:
        """A client that half-closes at once still gets everything the server sends after."""
        reply = os.urandom(2 << 20)
        client, server, done, _ = self.start()

        def server_side() -> None:
            assert server.recv(1) == b""  # the client's FIN came through
            server.sendall(reply)
            server.close()

        at_client, _ = yield gatherResults([deferToThread(_send_then_drain, client, b""), deferToThread(server_side)])
        self.assertEqual(at_client, reply)
        self.assertIsNone((yield done))

    @inlineCallbacks
    def test_slow_reader_holds_one_chunk(self) -> Any:
        """
        A server that stops reading: once the kernel's buffers are full the
        client's sends are no longer taken, the path holds at most one
        chunk and reads no more; once the server reads, every byte arrives.
        """
        client, server, done, counts = self.start()
        client.setblocking(False)
        block = os.urandom(1 << 20)
        sent = bytearray()
        refused = 0
        while refused < 20:  # 20 tries in a row, 10 ms apart, with nothing taken
            try:
                taken = client.send(block)
            except BlockingIOError:
                taken = 0
            sent += block[:taken]
            refused = 0 if taken else refused + 1
            self.assertLess(len(sent), 256 << 20, "the client's sends were never refused")
            yield deferLater(reactor, 0.01, lambda: None)
        held = self.path._in.held
        self.assertIsNotNone(held)
        self.assertLessEqual(len(held), bulk.CHUNK)
        self.assertFalse(self.path._client.reading)
        client.setblocking(True)
        client.shutdown(socket.SHUT_WR)

        def client_side() -> bytes:
            got = client.recv(1)
            client.close()
            return got

        at_server, at_client = yield gatherResults(
            [deferToThread(_send_then_drain, server, b""), deferToThread(client_side)]
        )
        self.assertEqual((len(at_server), at_client), (len(sent), b""))
        self.assertTrue(at_server == sent, "bytes changed on the way")
        self.assertEqual(counts, [len(sent), 0])
        self.assertIsNone((yield done))

    @inlineCallbacks
    def test_reset(self) -> Any:
        """A server that resets: the bulk path ends naming the server."""
        client, server, done, _ = self.start()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        reason = yield done
        client.close()
        self.assertTrue(reason.startswith("server connection lost: "), reason)


def _receive_or_reset(sock: socket.socket, payload: bytes) -> bytes:
    """L{_send_then_drain}, with a connection reset ending it like an EOF."""
    try:
        return _send_then_drain(sock, payload)
    except ConnectionResetError:
        sock.close()
        return b"<reset>"


def _drain_until_reset(sock: socket.socket, payload: bytes) -> bytes:
    """Read (sending nothing, never half-closing) until the connection ends."""
    received = []
    try:
        while chunk := sock.recv(1 << 16):
            received.append(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    return b"".join(received)


class _Finished:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.deferred: Deferred[str] = Deferred()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.deferred.callback(reason)


class TunnelBulkTests(TestCase):
    """
    A tunnel between two real TCP connections switches to the bulk path once
    it carried L{BULK_AFTER} bytes, and loses and counts nothing doing so.
    """

    timeout = TIMEOUT

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @inlineCallbacks
    def tunnel(
        self,
        up: bytes,
        down: bytes,
        origin_side: Any = _send_then_drain,
        handler: Any = Tunnel,
        client_side: Any = _receive_or_reset,
    ) -> Any:
        """
        Client → tunnel → origin with C{up}, and C{down} back (by
        C{origin_side(socket, down)}, in a thread); what each end got.
        """
        origin = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(origin.close)
        accepted = deferToThread(origin.accept)
        upstream = yield Connector(reactor).connect("127.0.0.1", origin.getsockname()[1])
        origin_sock, _ = yield accepted
        session = Session("s-bulk", "explicit", Address("127.0.0.1", 1), 0.0)
        finished = _Finished()
        context = HandoffContext(
            session=session, reactor=reactor, upstream=upstream, idle_timeout=60.0,
            protocol_error=lambda e, data: None, finished=finished,
        )
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: handler(context)), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        at_origin, at_client = yield gatherResults(  # each end's result is what it received
            [deferToThread(origin_side, origin_sock, down), deferToThread(client_side, client, up)]
        )
        reason = yield finished.deferred
        return at_origin, at_client, session, reason

    @inlineCallbacks
    def test_bulk_path(self) -> Any:
        """Megabytes each way: byte-exact, counted, closed by both sides, and on the bulk path."""
        up, down = os.urandom(4 << 20), os.urandom(6 << 20)
        at_origin, at_client, session, reason = yield self.tunnel(up, down)
        self.assertEqual(hashlib.sha256(at_origin).digest(), hashlib.sha256(up).digest())
        self.assertEqual(hashlib.sha256(at_client).digest(), hashlib.sha256(down).digest())
        self.assertEqual((session.bytes_in, session.bytes_out), (len(up), len(down)))
        self.assertEqual(reason, "closed by both sides")
        self.assertIn("tunnel {session}: on the bulk path from here on", [e.get("log_format") for e in self.events])

    @inlineCallbacks
    def test_small_stays(self) -> Any:
        """A tunnel that stays under the threshold stays on Twisted's path."""
        up, down = os.urandom(BULK_AFTER // 4), os.urandom(BULK_AFTER // 4)
        at_origin, at_client, _, reason = yield self.tunnel(up, down)
        self.assertEqual((at_origin, at_client), (up, down))
        self.assertEqual(reason, "closed by both sides")
        self.assertNotIn("tunnel {session}: on the bulk path from here on", [e.get("log_format") for e in self.events])

    @inlineCallbacks
    def test_reset_on_bulk_path(self) -> Any:
        """An origin that resets once the tunnel is on the bulk path ends it naming the server; the client is closed."""
        switched = threading.Event()

        def watch(event: dict[str, Any]) -> None:
            if event.get("log_format") == "tunnel {session}: on the bulk path from here on":
                switched.set()

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)

        def send_then_reset(sock: socket.socket, payload: bytes) -> bytes:
            sock.sendall(payload)  # past BULK_AFTER
            if not switched.wait(TIMEOUT / 2):
                raise AssertionError("the tunnel never switched to the bulk path")
            sock.sendall(payload)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, not a FIN
            return b""

        _, _, _, reason = yield self.tunnel(
            b"", os.urandom(1 << 20), origin_side=send_then_reset, client_side=_drain_until_reset
        )
        self.assertTrue(reason.startswith("server connection lost: "), reason)

    @inlineCallbacks
    def test_switch_loses_nothing(self) -> Any:
        """
        Twenty tunnels, each switching while both directions stream: the
        switch races reads already under way, and none may lose a byte.
        """
        for _ in range(20):
            up, down = os.urandom(1 << 20), os.urandom(1 << 20)
            at_origin, at_client, _, reason = yield self.tunnel(up, down)
            self.assertEqual((len(at_origin), len(at_client)), (len(up), len(down)))
            self.assertTrue(at_origin == up and at_client == down, "bytes changed on the way")
            self.assertEqual(reason, "closed by both sides")

    @inlineCallbacks
    def test_observed_relay_stays(self) -> Any:
        """The MS-TURN relay reads every byte it relays (its observer), so it never takes the bulk path."""
        up, down = os.urandom(2 << 20), os.urandom(2 << 20)
        at_origin, at_client, session, reason = yield self.tunnel(up, down, handler=MsTurnRelay)
        self.assertEqual((at_origin, at_client), (up, down))
        self.assertEqual((session.bytes_in, session.bytes_out), (len(up), len(down)))
        self.assertNotIn("tunnel {session}: on the bulk path from here on", [e.get("log_format") for e in self.events])
