"""
Tests for L{txgate.testing}: the fakes plugin authors test with behave as
documented.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface, implementer

from txgate.net.upstream import Upstream
from txgate.testing import (
    FakeConnector,
    HalfCloseableStringTransport,
    RecordingObserver,
    assert_provides,
    make_upstream,
)


class IGreeter(Interface):
    def greet(name: str) -> str:
        """Say hello."""


@implementer(IGreeter)
class Greeter:
    def greet(self, name: str) -> str:
        return f"hello {name}"


@implementer(IGreeter)
class Mute:
    """Declares L{IGreeter} but has no C{greet}."""


class AssertProvidesTests(SynchronousTestCase):
    """
    C{assert_provides} checks the methods, not only the declaration.
    """

    def test_passes(self) -> None:
        """A full provider passes."""
        assert_provides(self, IGreeter, Greeter())

    def test_missing_method(self) -> None:
        """A provider missing a method fails the test, naming the interface."""
        error = self.assertRaises(self.failureException, assert_provides, self, IGreeter, Mute())
        self.assertIn("does not provide IGreeter", str(error))
        self.assertIn("greet", str(error))


class HalfCloseableStringTransportTests(SynchronousTestCase):
    """
    The transport records half-closes and takes only C{bytes}.
    """

    def test_half_close(self) -> None:
        """C{loseWriteConnection} sets C{write_closed}; the connection stays open."""
        transport = HalfCloseableStringTransport()
        transport.loseWriteConnection()
        self.assertTrue(transport.write_closed)
        self.assertFalse(transport.disconnecting)

    def test_refuses_bytearray(self) -> None:
        """Writing a C{bytearray} (or in C{writeSequence}) raises L{TypeError}, as real transports do."""
        transport = HalfCloseableStringTransport()
        self.assertRaises(TypeError, transport.write, bytearray(b"x"))
        self.assertRaises(TypeError, transport.writeSequence, [bytearray(b"y")])
        self.assertEqual(transport.value(), b"")
        transport.writeSequence([b"a", b"b"])
        self.assertEqual(transport.value(), b"ab")


class MakeUpstreamTests(SynchronousTestCase):
    """
    C{make_upstream} is a connected L{Upstream} on a string transport.
    """

    def test_connected(self) -> None:
        """Its transport records writes and its peer is the given server."""
        upstream = make_upstream("192.0.2.7", 443)
        self.assertIsInstance(upstream, Upstream)
        upstream.transport.write(b"GET / HTTP/1.1\r\n")
        self.assertEqual(upstream.transport.value(), b"GET / HTTP/1.1\r\n")
        self.assertEqual(upstream.transport.getPeer(), IPv4Address("TCP", "192.0.2.7", 443))


class FakeConnectorTests(SynchronousTestCase):
    """
    Connections wait in C{pending} until the test completes them.
    """

    def test_records_and_succeeds(self) -> None:
        """C{connect} is recorded; C{succeed} fires it with a connected L{Upstream}."""
        connector = FakeConnector()
        d = connector.connect("origin.test", 443, tls=True)
        self.assertNoResult(d)
        [pending] = connector.pending
        self.assertEqual((pending.host, pending.port, pending.tls), ("origin.test", 443, True))
        upstream = pending.succeed()
        self.assertIs(self.successResultOf(d), upstream)
        self.assertEqual(upstream.transport.getPeer().port, 443)

    def test_fails(self) -> None:
        """A test fails a pending connection through its Deferred."""
        connector = FakeConnector()
        d = connector.connect("origin.test", 80)
        connector.pending[0].deferred.errback(ConnectionRefusedError())
        self.failureResultOf(d, ConnectionRefusedError)


class RecordingObserverTests(SynchronousTestCase):
    """
    The observer keeps events for assertions on fields.
    """

    def test_records(self) -> None:
        """Every event is kept in order."""
        observer = RecordingObserver()
        observer({"a": 1})
        observer({"b": 2})
        self.assertEqual(observer.events, [{"a": 1}, {"b": 2}])


class CertificateHelperTests(SynchronousTestCase):
    """L{make_ca} and L{make_server_cert} make a chain a client accepts."""

    def test_chain_verifies(self) -> None:
        import datetime
        import os
        import stat

        from cryptography import x509
        from cryptography.x509.verification import PolicyBuilder, Store

        from txgate.testing import make_ca, make_server_cert, write_pem

        now = datetime.datetime.now(datetime.timezone.utc)
        window = {"not_before": now - datetime.timedelta(hours=1), "not_after": now + datetime.timedelta(days=1)}
        ca, ca_key = make_ca("test CA", **window)
        leaf, key = make_server_cert(ca, ca_key, ["origin.test"], ["127.0.0.1"], ocsp_url="http://ocsp.test/", **window)
        verifier = PolicyBuilder().store(Store([ca])).time(now).build_server_verifier(x509.DNSName("origin.test"))
        self.assertEqual(verifier.verify(leaf, [])[-1], ca)
        path = self.mktemp()
        write_pem(path, key=key)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
