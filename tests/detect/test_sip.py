"""
Tests for L{txgate.detect.sip}: SIP requests, responses and keep-alives, and
that SIP and HTTP request lines are told apart whichever detector runs first.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import http, sip
from txgate.detection import detect as run_detectors
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected

from .samples import assert_detects, assert_not_mine, capture

NEGOTIATE = (
    b"NEGOTIATE sip:127.0.0.1:5061 SIP/2.0\r\n"
    b"Via: SIP/2.0/TLS 192.0.2.10:50812\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:127.0.0.1:5061>;tag=1a2b;epid=3c4d\r\n"
    b"To: <sip:127.0.0.1:5061>\r\n"
    b"Call-ID: 93ce7e9d2e1a4f0c8d0f6e3a2b1c0d9e\r\n"
    b"CSeq: 1 NEGOTIATE\r\n"
    b"User-Agent: UCCAPI/16.0.0.0 OC/16.0.0.0 (Skype for Business)\r\n"
    b"Supported: ms-compression\r\n"
    b"Compression: LZ77-8K\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)
"""The shape of the NEGOTIATE Lync sends first (no capture: no Lync client here)."""


def method(name: str, call_id: str | None = None) -> Detected:
    facts: dict[str, object] = {"method": name}
    if call_id is not None:
        facts["call_id"] = call_id
    return Detected("sip", facts)


class SipTests(SynchronousTestCase):
    def test_sipp_invite(self) -> None:
        assert_detects(
            self, sip.detect, capture("sip_sipp_invite"), method("INVITE", "1-21562@127.0.0.1"), "sipp INVITE"
        )

    def test_negotiate(self) -> None:
        assert_detects(self, sip.detect, NEGOTIATE, method("NEGOTIATE", "93ce7e9d2e1a4f0c8d0f6e3a2b1c0d9e"), "NEGOTIATE")

    def test_lync_methods(self) -> None:
        """Every Lync method is SIP with any Request-URI."""
        for name in sorted(sip.LYNC_METHODS):
            for uri in ("sip:alice@example.com", "sips:pool.example.com;transport=tls", "urn:x"):
                data = f"{name} {uri} SIP/2.0\r\n".encode()
                assert_detects(self, sip.detect, data, method(name), f"{name} {uri}")

    def test_other_methods(self) -> None:
        """Another token is SIP only with a sip:, sips: or tel: Request-URI."""
        for uri in ("sip:a@b", "SIPS:a@b", "tel:+15551234567"):
            data = f"X-FOO {uri} SIP/2.0\r\n".encode()
            assert_detects(self, sip.detect, data, method("X-FOO"), uri)
        assert_not_mine(self, sip.detect, b"X-FOO http://a.example/ SIP/2.0\r\n", "http URI")
        assert_not_mine(self, sip.detect, b"X-FOO s:x SIP/2.0\r\n", "s: URI")
        self.assertIs(sip.detect(b"X-FOO si"), NEED_MORE)

    def test_keepalives(self) -> None:
        """CRLF keep-alives alone need more; after them the first message decides."""
        for data in (b"", b"\r", b"\r\n", b"\r\n\r", b"\r\n\r\n", b"\r\n\r\n\r\n\r\n"):
            self.assertIs(sip.detect(data), NEED_MORE, msg=repr(data))
        assert_detects(self, sip.detect, b"\r\n\r\n" + NEGOTIATE, method("NEGOTIATE", "93ce7e9d2e1a4f0c8d0f6e3a2b1c0d9e"), "after keep-alive")
        self.assertIs(sip.detect(b"\r\n\r\nGET / HTTP/1.1\r\n"), NOT_MINE)

    def test_responses(self) -> None:
        cases = {
            b"SIP/2.0 200 OK\r\nCall-ID: abc\r\n\r\n": Detected("sip", {"status": 200, "call_id": "abc"}),
            b"SIP/2.0 401 Unauthorized\r\ni: compact-form\r\nCSeq: 1 REGISTER\r\n\r\n": Detected(
                "sip", {"status": 401, "call_id": "compact-form"}
            ),
            b"sip/2.0 180 Ringing\r\n": Detected("sip", {"status": 180}),
            b"SIP/2.0 603 \r\n": Detected("sip", {"status": 603}),
        }
        for data, expected in cases.items():
            assert_detects(self, sip.detect, data, expected, repr(data))

    def test_not_sip(self) -> None:
        cases = [
            b"SIP/2.0 099 Odd\r\n",
            b"SIP/2.0 20 OK\r\n",
            b"SIP/2.0 2000 OK\r\n",
            b"SIP/3.0 200 OK\r\n",
            b"SIP/2.0 200 O\x00K\r\n",
            b"INVITE sip:a@b SIP/2.1\r\n",
            b"INVITE sip:a@b HTTP/1.1\r\n",
            b"INVITE  sip:a@b SIP/2.0\r\n",
            b"INVITE sip:a@b\r\n",
            b"GET / HTTP/1.1\r\n",
            b"\x00\x03\x00\x20",
        ]
        for data in cases:
            assert_not_mine(self, sip.detect, data, repr(data))

    def test_call_id_needs_headers(self) -> None:
        """Call-ID is reported only once the header block is complete."""
        head = b"REGISTER sip:example.com SIP/2.0\r\nCall-ID: x1\r\n"
        self.assertEqual(sip.detect(head), method("REGISTER"))
        self.assertEqual(sip.detect(head + b"\r\n"), method("REGISTER", "x1"))
        self.assertEqual(
            sip.detect(b"REGISTER sip:e SIP/2.0\r\nCall-ID:\r\n  folded\r\n\r\n"), method("REGISTER", "folded")
        )

    @given(st.binary(max_size=200))
    def test_never_raises(self, data: bytes) -> None:
        sip.detect(data)
        sip.detect(b"SIP/2.0 " + data)
        sip.detect(b"FOO " + data)
        sip.detect(b"INVITE sip:a SIP/2.0\r\n" + data)


class SipOrHttpTests(SynchronousTestCase):
    """The version token decides: the order the two detectors run in does not matter."""

    def test_both_orders(self) -> None:
        class Wrap:
            def __init__(self, name: str, function) -> None:
                self.name = name
                self.detect = function

        orders = {
            "sip first": [Wrap("sip", sip.detect), Wrap("http", http.detect)],
            "http first": [Wrap("http", http.detect), Wrap("sip", sip.detect)],
        }
        samples = {
            "sipp INVITE": (capture("sip_sipp_invite"), "sip"),
            "NEGOTIATE": (NEGOTIATE, "sip"),
            "OPTIONS * SIP": (b"OPTIONS sip:a@b SIP/2.0\r\n", "sip"),
            "curl GET": (capture("http_curl"), "http"),
            "OPTIONS * HTTP": (b"OPTIONS * HTTP/1.1\r\n", "http"),
            "INVITE over HTTP": (b"INVITE /x HTTP/1.1\r\n", "http"),
        }
        for label, (data, protocol) in samples.items():
            for order, detectors in orders.items():
                for i in range(1, len(data) + 1):
                    verdict = run_detectors(detectors, data[:i])
                    if i == len(data):
                        self.assertEqual(verdict.protocol, protocol, msg=f"{label}, {order}")
                    elif verdict is not NEED_MORE:
                        self.assertEqual(verdict.protocol, protocol, msg=f"{label}, {order}, {i} bytes")
