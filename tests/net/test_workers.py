"""
Tests for the pieces of C{--workers}: sockets bound by one process and
adopted by another (L{txgate.net.listeners}), and draining
(L{txgate.net.operations.drain}). The whole process model runs end to end
in C{tests.e2e.test_workers}.
"""

from __future__ import annotations

import os
import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txgate.errors import ConfigErrors
from txgate.net.listeners import Adopted, bind, listen, unwrapped
from txgate.net.operations import drain, load_admin_token, raise_open_files_limit


class AdoptedTests(SynchronousTestCase):
    def test_argument_round_trip(self) -> None:
        adopted = Adopted(7, socket.AF_INET6, True)
        self.assertEqual(Adopted.parse(adopted.argument("web=1")), ("web=1", adopted))

    def test_unwrapped(self) -> None:
        self.assertEqual(unwrapped("haproxy:haproxy:tcp:443"), ("tcp:443", True))
        self.assertEqual(unwrapped("tcp:443"), ("tcp:443", False))


class _Hello(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"hello from the adopter")
        self.transport.loseConnection()


class BindAndAdoptTests(TestCase):
    """
    A socket bound by L{bind} accepts nothing itself; L{listen} with the
    L{Adopted} description serves it (as a worker does).
    """

    async def test_adopt(self) -> None:
        port, adopted = await bind(reactor, "tcp:0:interface=127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertEqual((adopted.family, adopted.haproxy), (socket.AF_INET, False))
        # A worker gets its own copy of the descriptor, as spawnProcess's childFDs give it.
        copy = Adopted(os.dup(adopted.fd), adopted.family, adopted.haproxy)
        adopter = await listen(reactor, "ignored", Factory.forProtocol(_Hello), copy)
        self.addCleanup(adopter.stopListening)
        # adoptStreamPort listens on a duplicate, and listen closed the copy
        # handed down, so that stopping listening releases the socket.
        with self.assertRaises(OSError):
            os.fstat(copy.fd)
        address = port.getHost()
        data = await _read_all(address.host, address.port)
        self.assertEqual(data, b"hello from the adopter")


async def _read_all(host: str, port: int) -> bytes:
    from twisted.internet.endpoints import TCP4ClientEndpoint

    received: list[bytes] = []
    done: Deferred[None] = Deferred()

    class Reader(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

        def connectionLost(self, reason: object = None) -> None:
            done.callback(None)

    await TCP4ClientEndpoint(reactor, host, port).connect(Factory.forProtocol(Reader))
    await done
    return b"".join(received)


class DrainTests(SynchronousTestCase):
    def test_nothing_to_drain(self) -> None:
        self.successResultOf(drain(Clock(), lambda: 0, 30, lambda: None))

    def test_connections_end_in_time(self) -> None:
        clock, live, ended = Clock(), [2], []
        d = drain(clock, lambda: live[0], 30, lambda: ended.append(True))
        clock.advance(1)
        self.assertNoResult(d)
        live[0] = 0
        clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(ended, [])

    def test_timeout_ends_the_rest(self) -> None:
        clock, ended = Clock(), []
        d = drain(clock, lambda: 1, 3, lambda: ended.append(True))
        clock.pump([0.1] * 29)
        self.assertNoResult(d)
        clock.pump([0.1] * 2)
        self.successResultOf(d)
        self.assertEqual(ended, [True])


class AdminTokenTests(SynchronousTestCase):
    def write(self, text: str, mode: int) -> str:
        path = os.path.abspath(self.mktemp())
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, mode), "w") as f:
            f.write(text)
        os.chmod(path, mode)
        return path

    def test_none(self) -> None:
        self.assertIsNone(load_admin_token(""))

    def test_good(self) -> None:
        self.assertEqual(load_admin_token(self.write("s3cret-token-0123456789\n", 0o600)), "s3cret-token-0123456789")

    def test_refused(self) -> None:
        for text, mode, why in (
            ("s3cret-token-0123456789", 0o644, "readable by others"),
            ("short", 0o600, "at least 16"),
        ):
            path = self.write(text, mode)
            with self.assertRaises(ConfigErrors) as caught:
                load_admin_token(path)
            (error,) = caught.exception.errors
            self.assertEqual((error.path, error.key), (path, "admin.token_file"))
            self.assertIn(why, error.message)
        with self.assertRaises(ConfigErrors):
            load_admin_token("/nonexistent/token")


class OpenFilesTests(SynchronousTestCase):
    def test_raised_to_hard_limit(self) -> None:
        """Each proxied connection takes two descriptors: the soft limit goes up to the hard one."""
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        limit = raise_open_files_limit()
        self.assertEqual(resource.getrlimit(resource.RLIMIT_NOFILE), (limit, hard))
        self.assertEqual(limit, hard if hard != resource.RLIM_INFINITY else limit)
