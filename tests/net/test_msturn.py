"""
Tests for L{txgate.net.msturn}: the relay moves bytes exactly as the tunnel
does and logs what the observer saw.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase

from tests.msturn.test_relay import CLIENT, CLIENT_HELLO, SERVER, SERVER_HELLO, frame, ms_turn_message, stun
from txgate.interfaces import HandoffContext, IHandoff
from txgate.net.msturn import MsTurnHandoff, MsTurnRelay
from txgate.session import Address, Session
from txgate.testing import HalfCloseableStringTransport, RecordingObserver, assert_provides, make_upstream


class MsTurnRelayTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.session = Session("s-1", "transparent", Address("127.0.0.1", 40000), 0.0)
        self.session.client_protocol = "ms-turn"
        self.upstream = make_upstream("192.0.2.10", 443)
        self.finished: list[str] = []
        self.client = HalfCloseableStringTransport()
        self.events = RecordingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def start(self) -> MsTurnRelay:
        context = HandoffContext(
            session=self.session,
            reactor=self.clock,
            upstream=self.upstream,
            idle_timeout=60.0,
            protocol_error=lambda e, data: self.fail("the relay never reports protocol errors"),
            finished=self.finished.append,
        )
        relay = MsTurnHandoff().build(context)
        relay.makeConnection(self.client)
        return relay

    def logged(self, prefix: str) -> list[dict]:
        return [e for e in self.events.events if e.get("log_format", "").startswith(prefix)]

    def test_provides(self) -> None:
        """The handoff provides IPlugin and IHandoff; ms-turn and stun, not tunneled; refusal closes."""
        handoff = MsTurnHandoff()
        assert_provides(self, IHandoff, handoff)
        assert_provides(self, IPlugin, handoff)
        self.assertEqual((handoff.name, handoff.protocols, handoff.tunneled), ("ms-turn", frozenset({"ms-turn", "stun"}), False))
        self.assertEqual(handoff.refusal(CLIENT_HELLO, "no"), b"")

    def test_byte_exact_and_counted(self) -> None:
        """The spec exchange goes through unchanged, counted, and the summary names the frames."""
        relay = self.start()
        for i in range(0, len(CLIENT), 5):
            relay.dataReceived(CLIENT[i : i + 5])
        self.upstream.dataReceived(SERVER)
        self.assertEqual(self.upstream.transport.value(), CLIENT)
        self.assertEqual(self.client.value(), SERVER)
        self.assertEqual((self.session.bytes_in, self.session.bytes_out), (len(CLIENT), len(SERVER)))
        self.assertIs(self.client.producer, self.upstream.transport)
        relay.readConnectionLost()
        self.upstream.readConnectionLost()
        self.assertEqual(self.finished, ["closed by both sides"])
        [summary] = self.logged("ms-turn {session} ended")
        self.assertEqual((summary["control"], summary["data"], summary["deviations"], summary["client_protocol"]), (3, 2, 0, "ms-turn"))
        self.assertEqual(self.logged("ms-turn deviation"), [])

    def test_deviation_logged_once_and_relayed(self) -> None:
        """A bad server reply and bad frames are logged once each; every byte still moves."""
        relay = self.start()
        relay.dataReceived(CLIENT_HELLO)
        bad_reply = SERVER_HELLO[:79] + b"\x0f\x00\x00\x00"
        self.upstream.dataReceived(bad_reply)
        self.upstream.dataReceived(b"\xff" * 100)
        relay.dataReceived(b"\x09\x00\x00\x01x")
        relay.dataReceived(frame(2, ms_turn_message(3)))
        self.assertEqual(self.client.value(), bad_reply + b"\xff" * 100)
        self.assertEqual(self.upstream.transport.value(), CLIENT_HELLO + b"\x09\x00\x00\x01x" + frame(2, ms_turn_message(3)))
        deviations = [e["deviation"] for e in self.logged("ms-turn deviation")]
        self.assertEqual(len(deviations), 2)
        self.assertTrue(deviations[0].startswith("server: server hello:"), deviations[0])
        self.assertTrue(deviations[1].startswith("client: frame header 09 00 00 01"), deviations[1])
        self.clock.advance(61)
        self.assertEqual(self.finished, ["idle timeout (60s)"])
        [summary] = self.logged("ms-turn {session} ended")
        self.assertEqual(summary["deviations"], 2)

    def test_stun(self) -> None:
        """Plain STUN/TURN over TCP is observed with its own framing."""
        self.session.client_protocol = "stun"
        relay = self.start()
        relay.dataReceived(stun(0x0003))
        self.upstream.dataReceived(stun(0x0103))
        self.assertEqual(relay.protocol, "stun")
        assert relay.observer is not None
        self.assertEqual(relay.observer.control_frames, 2)
        self.assertEqual(self.upstream.transport.value(), stun(0x0003))

    def test_observer_bug_not_fatal(self) -> None:
        """An observer that raises (a bug) is dropped and logged; the relay carries on."""
        relay = self.start()

        class Broken:
            deviations: list[str] = []

            def client_bytes(self, data: bytes) -> None:
                raise RuntimeError("bug")

        relay.observer = Broken()  # type: ignore[assignment]
        relay.dataReceived(b"abc")
        relay.dataReceived(b"def")
        self.assertEqual(self.upstream.transport.value(), b"abcdef")
        self.assertIsNone(relay.observer)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
