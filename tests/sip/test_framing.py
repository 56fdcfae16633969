"""
Tests for L{txgate.sip.framing}: SIP over a byte stream, the NEGOTIATE
compression rewrite and the 403 answer.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import PeerProtocolError
from txgate.sip.framing import (
    KeepAlive,
    Message,
    SipReader,
    first_request,
    forbidden_response,
    rewrite_negotiate_compression,
)

CAPTURES = Path(__file__).parent / "captures"
UAC = (CAPTURES / "sipp_uac_to_uas.bin").read_bytes()
UAS = (CAPTURES / "sipp_uas_to_uac.bin").read_bytes()

# [MS-SIPCOMP] 4.1's example, with the addresses filled in.
NEGOTIATE = (
    b"NEGOTIATE sip:192.0.0.1:5061 SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.0.2:2616\r\n"
    b"CSeq: 1 NEGOTIATE\r\n"
    b"Call-ID: 8d8b20f87c9c4221a732f3a70f57e9b8\r\n"
    b"From: <sip:alice@example.com>;tag=984721fb59b64e45b469c91aba8a9f8f\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Compression: LZ77-8K\r\n"
    b"Max-Forwards: 0\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

COMPACT = (
    b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
    b"v: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    b"f: <sip:alice@example.com>;tag=1\r\n"
    b"t: <sip:bob@example.com>\r\n"
    b"i: compact-1\r\n"
    b"CSeq: 7 MESSAGE\r\n"
    b"c: text/plain\r\n"
    b"l: 5\r\n"
    b"\r\n"
    b"hello"
)


def _one_byte_at_a_time(data: bytes) -> list[Message | KeepAlive]:
    reader = SipReader()
    events: list[Message | KeepAlive] = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1])
    return events


def _messages(events: list[Message | KeepAlive]) -> list[Message]:
    return [e for e in events if isinstance(e, Message)]


class ReaderTests(SynchronousTestCase):
    """Messages framed by Content-Length keep their exact bytes."""

    def test_capture_whole(self) -> None:
        """The SIPp UAC capture is three requests, INVITE with its SDP body, ACK and BYE."""
        events = SipReader().feed(UAC)
        self.assertEqual([e.summary for e in _messages(events)], ["INVITE", "ACK", "BYE"])
        self.assertEqual(b"".join(e.raw for e in events), UAC)
        invite = events[0]
        assert isinstance(invite, Message)
        self.assertEqual(invite.call_id, "1-21282@127.0.0.1")
        self.assertEqual(invite.from_, "sipp <sip:sipp@127.0.0.1:15072>;tag=21282SIPpTag001")
        self.assertEqual(invite.to, "service <sip:service@127.0.0.1:15071>")
        self.assertEqual(invite.cseq, "1 INVITE")
        self.assertEqual(invite.uri, "sip:service@127.0.0.1:15071")
        self.assertEqual(len(invite.body), 129)
        self.assertTrue(invite.body.startswith(b"v=0\r\n"))

    def test_capture_responses(self) -> None:
        """The UAS capture is 180, 200 (with SDP) and 200, parsed as responses."""
        events = _messages(SipReader().feed(UAS))
        self.assertEqual([(e.status, e.reason, e.cseq_method) for e in events], [(180, "Ringing", "INVITE"), (200, "OK", "INVITE"), (200, "OK", "BYE")])
        self.assertEqual([e.method for e in events], [None] * 3)
        self.assertEqual(b"".join(e.raw for e in events), UAS)

    def test_one_byte_at_a_time(self) -> None:
        """Fed one byte at a time, both captures give the same messages as whole."""
        for capture in (UAC, UAS, NEGOTIATE, COMPACT):
            self.assertEqual(_one_byte_at_a_time(capture), SipReader().feed(capture), msg=f"input {capture[:20]!r}")

    def test_trailing_bytes_held(self) -> None:
        """Bytes after the last complete message wait, in C{pending}, for the rest."""
        reader = SipReader()
        events = reader.feed(NEGOTIATE + UAC[:100])
        self.assertEqual(len(events), 1)
        self.assertEqual(reader.pending, UAC[:100])
        self.assertEqual(_messages(reader.feed(UAC[100:]))[0].method, "INVITE")
        self.assertEqual(reader.pending, b"")

    def test_pipelined(self) -> None:
        """Several messages in one read come out in order."""
        events = SipReader().feed(NEGOTIATE + COMPACT + UAC)
        self.assertEqual([e.summary for e in _messages(events)], ["NEGOTIATE", "MESSAGE", "INVITE", "ACK", "BYE"])

    def test_compact_forms(self) -> None:
        """C{l:} frames the body; C{i: f: t: v: c:} are found under their long names."""
        [message] = SipReader().feed(COMPACT + b"")
        assert isinstance(message, Message)
        self.assertEqual(message.body, b"hello")
        self.assertEqual(message.call_id, "compact-1")
        self.assertEqual(message.from_, "<sip:alice@example.com>;tag=1")
        self.assertEqual(message.to, "<sip:bob@example.com>")
        self.assertEqual(message.header("Via"), "SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1")
        self.assertEqual(message.header("content-type"), "text/plain")
        self.assertEqual(message.header("CONTENT-LENGTH"), "5")

    def test_folded_header(self) -> None:
        """A continuation line is joined to its header."""
        data = NEGOTIATE.replace(b"Max-Forwards: 0\r\n", b"Subject: one\r\n  two\r\nMax-Forwards: 0\r\n")
        [message] = SipReader().feed(data)
        assert isinstance(message, Message)
        self.assertEqual(message.header("subject"), "one two")
        self.assertEqual(message.raw, data)

    def test_keep_alives(self) -> None:
        """CRLFCRLF pings and CRLF pongs between messages are events of their own."""
        events = SipReader().feed(b"\r\n\r\n" + NEGOTIATE + b"\r\n" + NEGOTIATE + b"\r\n\r\n")
        self.assertEqual(
            [e.raw if isinstance(e, KeepAlive) else e.summary for e in events],
            [b"\r\n\r\n", "NEGOTIATE", b"\r\n", "NEGOTIATE", b"\r\n\r\n"],
        )

    def test_keep_alive_split(self) -> None:
        """A ping split across reads arrives as its bytes, possibly as two pongs."""
        events = _one_byte_at_a_time(b"\r\n\r\n")
        self.assertEqual(b"".join(e.raw for e in events), b"\r\n\r\n")
        self.assertTrue(all(isinstance(e, KeepAlive) for e in events))

    def test_large_body(self) -> None:
        """A body larger than a read is held until complete."""
        body = b"x" * 100_000
        data = COMPACT.replace(b"l: 5", b"l: 100000").replace(b"hello", body)
        reader = SipReader()
        self.assertEqual(reader.feed(data[:50_000]), [])
        [message] = reader.feed(data[50_000:])
        assert isinstance(message, Message)
        self.assertEqual(message.body, body)


class MalformedTests(SynchronousTestCase):
    """Bytes that are not SIP raise L{PeerProtocolError} naming what was wrong."""

    def assertRefused(self, data: bytes, reason: str, protocol: str = "sip") -> PeerProtocolError:
        reader = SipReader(protocol)
        with self.assertRaises(PeerProtocolError, msg=f"input {data!r}") as caught:
            reader.feed(data)
        error = caught.exception
        self.assertEqual(error.protocol, protocol)
        self.assertIn(reason, error.reason, msg=f"input {data!r}")
        return error

    def test_cases(self) -> None:
        """Each malformed input is refused with its reason."""
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "expected a SIP request or status line"),
            (b"SIP/2.0 OK\r\n\r\n", "malformed status line"),
            (NEGOTIATE.replace(b"Content-Length: 0\r\n", b""), "Content-Length missing"),
            (NEGOTIATE.replace(b"Content-Length: 0", b"Content-Length: ten"), "not a number"),
            (NEGOTIATE.replace(b"Max-Forwards: 0\r\n", b"l: 3\r\n"), "conflicting Content-Length"),
            (NEGOTIATE.replace(b"Max-Forwards: 0", b"Max Forwards 0"), "malformed header line"),
            (b"\x16\x03\x01\x00\x2d\x01\x00\x00\x29\r\n", "expected a SIP request or status line"),
            (b"OPTIONS sip:x SIP/2.0\n", "bare LF"),
        ]
        for data, reason in cases:
            self.assertRefused(data, reason)

    def test_protocol_name(self) -> None:
        """The error names the protocol the reader was made for."""
        self.assertRefused(b"garbage here\r\n", "expected", protocol="sips")

    def test_header_limit(self) -> None:
        """A header block that never ends is refused at the limit, not buffered for ever."""
        reader = SipReader(max_header=1024)
        reader.feed(b"OPTIONS sip:x SIP/2.0\r\n")
        with self.assertRaises(PeerProtocolError) as caught:
            for _ in range(100):
                reader.feed(b"X-Filler: " + b"a" * 50 + b"\r\n")
        self.assertIn("longer than 1024", caught.exception.reason)

    def test_body_limit(self) -> None:
        """A Content-Length over the body limit is refused before the body is read."""
        reader = SipReader(max_body=10)
        with self.assertRaises(PeerProtocolError) as caught:
            reader.feed(COMPACT.replace(b"l: 5", b"l: 11"))
        self.assertIn("exceeds the limit", caught.exception.reason)

    def test_error_keeps_pending(self) -> None:
        """Events before the bad bytes come out of next_event; pending then holds the rest exactly."""
        reader = SipReader()
        reader.receive(NEGOTIATE + b"\r\n\r\nnot sip at all\r\n")
        self.assertEqual(reader.next_event().raw, NEGOTIATE)  # type: ignore[union-attr]
        self.assertEqual(reader.next_event(), KeepAlive(b"\r\n\r\n"))
        self.assertRaises(PeerProtocolError, reader.next_event)
        self.assertEqual(reader.pending, b"not sip at all\r\n")


class RewriteTests(SynchronousTestCase):
    """A NEGOTIATE's LZ77-8K offer becomes None and nothing else changes."""

    def test_rewrite(self) -> None:
        """Only the Compression value changes; the message still frames the same."""
        [message] = SipReader().feed(NEGOTIATE)
        rewritten = rewrite_negotiate_compression(message)  # type: ignore[arg-type]
        self.assertEqual(rewritten.raw, NEGOTIATE.replace(b"Compression: LZ77-8K", b"Compression: None"))
        self.assertEqual(rewritten.header("compression"), "None")
        self.assertEqual(rewritten.call_id, message.call_id)  # type: ignore[union-attr]

    def test_rewrite_with_body(self) -> None:
        """With a body, the body and Content-Length are untouched."""
        data = NEGOTIATE.replace(b"Content-Length: 0", b"Content-Length: 4") + b"abcd"
        [message] = SipReader().feed(data)
        rewritten = rewrite_negotiate_compression(message)  # type: ignore[arg-type]
        self.assertEqual(rewritten.raw, data.replace(b"LZ77-8K", b"None"))
        self.assertEqual(rewritten.body, b"abcd")

    def test_case_and_spacing(self) -> None:
        """The header name in any case and the spaces after the colon are kept."""
        data = NEGOTIATE.replace(b"Compression: LZ77-8K", b"compression:   lz77-8k")
        [message] = SipReader().feed(data)
        rewritten = rewrite_negotiate_compression(message)  # type: ignore[arg-type]
        self.assertEqual(rewritten.raw, NEGOTIATE.replace(b"Compression: LZ77-8K", b"compression:   None"))

    def test_unchanged(self) -> None:
        """Other methods, and NEGOTIATE without an LZ77 offer, are returned as they are."""
        for data in (
            UAC,
            NEGOTIATE.replace(b"Compression: LZ77-8K", b"Compression: None"),
            NEGOTIATE.replace(b"Compression: LZ77-8K\r\n", b""),
            NEGOTIATE.replace(b"NEGOTIATE sip", b"OPTIONS sip"),
        ):
            message = SipReader().feed(data)[0]
            self.assertIs(rewrite_negotiate_compression(message), message, msg=f"input {data[:40]!r}")  # type: ignore[arg-type]


class ForbiddenTests(SynchronousTestCase):
    """The 403 copies what RFC 3261 8.2.6.2 says to copy and carries a Warning."""

    def test_forbidden(self) -> None:
        """Via, From, Call-ID and CSeq copied; To gets a tag; Warning 399 with the reason; no body."""
        invite = SipReader().feed(UAC)[0]
        response = forbidden_response(invite, 'calls are "not" allowed', tag="t1")  # type: ignore[arg-type]
        self.assertEqual(
            response,
            b"SIP/2.0 403 Forbidden\r\n"
            b"Via: SIP/2.0/TCP 127.0.0.1:15072;branch=z9hG4bK-21282-1-0\r\n"
            b"From: sipp <sip:sipp@127.0.0.1:15072>;tag=21282SIPpTag001\r\n"
            b"To: service <sip:service@127.0.0.1:15071>;tag=t1\r\n"
            b"Call-ID: 1-21282@127.0.0.1\r\n"
            b"CSeq: 1 INVITE\r\n"
            b'Warning: 399 txgate "calls are not allowed"\r\n'
            b"Content-Length: 0\r\n\r\n",
        )
        [parsed] = SipReader().feed(response)
        self.assertEqual(parsed.status, 403)  # type: ignore[union-attr]

    def test_existing_tag_kept(self) -> None:
        """A To that already has a tag (in-dialog request) is copied as it is."""
        bye = SipReader().feed(UAC)[2]
        response = forbidden_response(bye, "no")  # type: ignore[arg-type]
        self.assertIn(b"To: service <sip:service@127.0.0.1:15071>;tag=21235SIPpTag011\r\n", response)

    def test_random_tag(self) -> None:
        """Without a tag given, each 403 gets its own."""
        invite = SipReader().feed(UAC)[0]
        self.assertNotEqual(forbidden_response(invite, "no"), forbidden_response(invite, "no"))  # type: ignore[arg-type]

    def test_nothing_to_answer(self) -> None:
        """Responses, ACKs, unparsable input and nothing get C{b""}."""
        self.assertEqual(forbidden_response(SipReader().feed(UAS)[0], "no"), b"")  # type: ignore[arg-type]
        self.assertEqual(forbidden_response(SipReader().feed(UAC)[1], "no"), b"")  # type: ignore[arg-type]
        self.assertEqual(forbidden_response(first_request(b"garbage\r\n\r\n"), "no"), b"")
        self.assertEqual(forbidden_response(None, "no"), b"")

    def test_first_request(self) -> None:
        """C{first_request} skips keep-alives and responses and ignores an incomplete tail."""
        self.assertEqual(first_request(b"\r\n\r\n" + UAS + UAC[:300]), None)
        self.assertEqual(first_request(b"\r\n\r\n" + UAS + UAC).method, "INVITE")  # type: ignore[union-attr]
