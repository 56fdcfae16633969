"""
Tests for L{txgate.net.sip}: the SIP handoff between a client and an
upstream on string transports, with the SIPp capture.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.plugin import IPlugin
from twisted.trial.unittest import SynchronousTestCase

from tests.sip.test_framing import NEGOTIATE, UAC, UAS
from txgate.errors import PeerProtocolError
from txgate.interfaces import HandoffContext, IHandoff
from txgate.net.sip import SipHandler, SipHandoff
from txgate.session import Address, Session
from txgate.testing import HalfCloseableStringTransport, RecordingObserver, assert_provides, make_upstream


class SipHandlerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.session = Session("s-1", "transparent", Address("127.0.0.1", 40000), 0.0)
        self.session.client_protocol = "sip"
        self.upstream = make_upstream("192.0.2.10", 5060)
        self.finished: list[str] = []
        self.errors: list[tuple[Exception, bytes]] = []
        self.client = HalfCloseableStringTransport()
        self.events = RecordingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def start(self) -> SipHandler:
        context = HandoffContext(
            session=self.session,
            reactor=self.clock,
            upstream=self.upstream,
            idle_timeout=60.0,
            protocol_error=lambda e, data: self.errors.append((e, data)),
            finished=self.finished.append,
        )
        handler = SipHandoff().build(context)
        handler.makeConnection(self.client)
        return handler

    def sip_events(self) -> list[dict]:
        return [e for e in self.events.events if e.get("log_format", "").startswith("sip {direction}")]

    def test_provides(self) -> None:
        """The handoff provides IPlugin and IHandoff and carries sip and sips, not tunneled."""
        handoff = SipHandoff()
        assert_provides(self, IHandoff, handoff)
        assert_provides(self, IPlugin, handoff)
        self.assertEqual((handoff.name, handoff.protocols, handoff.tunneled), ("sip", frozenset({"sip", "sips"}), False))

    def test_capture_both_ways(self) -> None:
        """The SIPp call goes through byte-exact both ways, one byte at a time, and is counted."""
        handler = self.start()
        for i in range(len(UAC)):
            handler.dataReceived(UAC[i : i + 1])
        for i in range(len(UAS)):
            self.upstream.dataReceived(UAS[i : i + 1])
        self.assertEqual(self.upstream.transport.value(), UAC)
        self.assertEqual(self.client.value(), UAS)
        self.assertEqual((self.session.bytes_in, self.session.bytes_out), (len(UAC), len(UAS)))
        self.assertEqual(handler.messages, {"client": 3, "server": 3})
        self.assertEqual(handler.last_request, {"method": "BYE", "call_id": "1-21282@127.0.0.1", "from": "sipp <sip:sipp@127.0.0.1:15072>;tag=21282SIPpTag001", "to": "service <sip:service@127.0.0.1:15071>;tag=21235SIPpTag011"})

    def test_message_forwarded_whole(self) -> None:
        """Nothing of a message goes upstream before its last byte."""
        handler = self.start()
        handler.dataReceived(UAC[:200])
        self.assertEqual(self.upstream.transport.value(), b"")
        handler.dataReceived(UAC[200:])
        self.assertEqual(self.upstream.transport.value(), UAC)

    def test_logs(self) -> None:
        """Each message is one event with direction, method or status, Call-ID, From and To."""
        handler = self.start()
        handler.dataReceived(UAC)
        self.upstream.dataReceived(UAS)
        events = self.sip_events()
        self.assertEqual([(e["direction"], e["what"]) for e in events], [("client", "INVITE"), ("client", "ACK"), ("client", "BYE"), ("server", "180 Ringing"), ("server", "200 OK"), ("server", "200 OK")])
        first = events[0]
        self.assertEqual((first["method"], first["call_id"], first["from"], first["session"], first["client_protocol"]), ("INVITE", "1-21282@127.0.0.1", "sipp <sip:sipp@127.0.0.1:15072>;tag=21282SIPpTag001", "s-1", "sip"))
        self.assertEqual(events[3]["status"], 180)

    def test_negotiate_rewritten(self) -> None:
        """A NEGOTIATE offering LZ77-8K goes upstream offering None; the rest is unchanged."""
        handler = self.start()
        handler.dataReceived(b"\r\n\r\n" + NEGOTIATE + UAC)
        self.assertEqual(self.upstream.transport.value(), b"\r\n\r\n" + NEGOTIATE.replace(b"LZ77-8K", b"None") + UAC)
        self.assertEqual(self.session.bytes_in, 4 + len(NEGOTIATE) + len(UAC))

    def test_server_accepts_compression_anyway(self) -> None:
        """A server answering with LZ77-8K makes the handler a plain relay, not an error."""
        handler = self.start()
        handler.dataReceived(NEGOTIATE)
        self.upstream.dataReceived(b"SIP/2.0 200 OK\r\nCompression: LZ77-8K\r\nCSeq: 1 NEGOTIATE\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n")
        handler.dataReceived(b"\x80compressed\x00")
        self.upstream.dataReceived(b"\x80also\x00")
        self.assertTrue(handler.passthrough)
        self.assertEqual(self.errors, [])
        self.assertTrue(self.upstream.transport.value().endswith(b"\x80compressed\x00"))
        self.assertTrue(self.client.value().endswith(b"\x80also\x00"))

    def test_error_before_first_message(self) -> None:
        """Garbage first: protocol_error gets every byte and nothing went upstream."""
        handler = self.start()
        handler.dataReceived(b"\r\n\r\nHELLO WORLD\r\n")
        self.assertEqual(self.upstream.transport.value(), b"\r\n\r\n")
        [(error, received)] = self.errors
        self.assertIsInstance(error, PeerProtocolError)
        self.assertEqual(error.protocol, "sip")
        self.assertEqual(received, b"HELLO WORLD\r\n")
        handler.dataReceived(b"more")
        self.assertEqual(len(self.errors), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_error_after_messages(self) -> None:
        """After forwarded messages, protocol_error gets exactly the unforwarded rest: forwarded + replay = the stream."""
        self.session.client_protocol = "sips"
        handler = self.start()
        stream = UAC[:-50] + b"garbage\r\n\r\n"
        cut = UAC.index(b"BYE ")
        handler.dataReceived(stream[:cut])
        handler.dataReceived(stream[cut:])
        [(error, received)] = self.errors
        self.assertEqual(error.protocol, "sips")
        self.assertEqual(self.upstream.transport.value() + received, stream)
        self.assertEqual(self.upstream.transport.value(), UAC[:cut])

    def test_half_close_flushes_partial(self) -> None:
        """A client half-close mid-message passes the partial bytes on, then the half-close."""
        handler = self.start()
        handler.dataReceived(UAC[:100])
        handler.readConnectionLost()
        self.assertEqual(self.upstream.transport.value(), UAC[:100])
        self.assertTrue(self.upstream.transport.write_closed)

    def test_producers_and_idle(self) -> None:
        """Backpressure both ways and the idle timeout, as in the tunnel."""
        handler = self.start()
        self.assertIs(self.client.producer, self.upstream.transport)
        self.assertIs(self.upstream.transport.producer, self.client)
        handler.dataReceived(NEGOTIATE)
        self.clock.advance(61)
        self.assertEqual(self.finished, ["idle timeout (60s)"])
        self.assertTrue(self.client.disconnecting)

    def test_refusal(self) -> None:
        """Refusal answers the first complete request with a 403, else nothing."""
        handoff = SipHandoff()
        answer = handoff.refusal(b"\r\n\r\n" + UAC, "sip denied by rule 3")
        self.assertTrue(answer.startswith(b"SIP/2.0 403 Forbidden\r\n"))
        self.assertIn(b'Warning: 399 txgate "sip denied by rule 3"\r\n', answer)
        self.assertIn(b"Call-ID: 1-21282@127.0.0.1\r\n", answer)
        self.assertEqual(handoff.refusal(UAC[:100], "no"), b"")
        self.assertEqual(handoff.refusal(b"\x16\x03\x01garbage", "no"), b"")
