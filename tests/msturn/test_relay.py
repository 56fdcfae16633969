"""
Tests for L{txgate.msturn.relay}: the observer counts frames and records
deviations without ever raising.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from txgate.msturn.relay import TRANSITIONS, Observer, State, is_pseudo_tls_client_hello, server_hello_deviation

RANDOM = bytes(range(32))
CLIENT_HELLO = bytes.fromhex("160301002d" "01000029" "0301") + RANDOM + bytes.fromhex("00" "00020018" "0100")
SERVER_HELLO = bytes.fromhex("160301004e" "02000046" "0301") + RANDOM + b"\x20" + RANDOM + bytes.fromhex("0018" "00" "0e000000")
COOKIE = struct.pack("!I", 0x2112A442)


def ms_turn_message(message_type: int) -> bytes:
    """A TURN message with MAGIC-COOKIE (0x000F = 0x72C64BC6) first and MS-Version (0x8008)."""
    attributes = struct.pack("!HHI", 0x000F, 4, 0x72C64BC6) + struct.pack("!HHI", 0x8008, 4, 6)
    return struct.pack("!HH", message_type, len(attributes)) + b"t" * 16 + attributes


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack("!BBH", kind, 0, len(payload)) + payload


def stun(message_type: int = 0x0001, attributes: bytes = b"") -> bytes:
    return struct.pack("!HH", message_type, len(attributes)) + COOKIE + b"x" * 12 + attributes


def channel_data(payload: bytes) -> bytes:
    return struct.pack("!HH", 0x4000, len(payload)) + payload + b"\x00" * (-len(payload) % 4)


CLIENT = CLIENT_HELLO + frame(2, ms_turn_message(0x0003)) + frame(3, b"media" * 50) + frame(2, ms_turn_message(0x0004))
SERVER = SERVER_HELLO + frame(2, ms_turn_message(0x0103)) + frame(3, b"m" * 300)


def feed(observer: Observer, client: bytes, server: bytes, step: int | None = None) -> None:
    if step is None:
        observer.client_bytes(client)
        observer.server_bytes(server)
        return
    for i in range(0, len(client), step):
        observer.client_bytes(client[i : i + step])
    for i in range(0, len(server), step):
        observer.server_bytes(server[i : i + step])


class HelloTests(SynchronousTestCase):
    def test_spec_bytes(self) -> None:
        """The [MS-TURN] 2.1.1 hello and reply are 50 and 83 bytes and pass the checks."""
        self.assertEqual((len(CLIENT_HELLO), len(SERVER_HELLO)), (50, 83))
        self.assertTrue(is_pseudo_tls_client_hello(CLIENT_HELLO))
        self.assertIsNone(server_hello_deviation(SERVER_HELLO))
        # The relay's detailed check and the detector's agree on the layout.
        from txgate.detect.msturn import is_pseudo_tls_server_hello

        self.assertTrue(is_pseudo_tls_server_hello(SERVER_HELLO))

    def test_server_hello_deviations(self) -> None:
        """Each wrong piece of the reply is named."""
        cases = [
            (SERVER_HELLO[:82], "82 bytes"),
            (b"\x17" + SERVER_HELLO[1:], "header"),
            (SERVER_HELLO[:43] + b"\x10" + SERVER_HELLO[44:], "session id length"),
            (SERVER_HELLO[:76] + b"\x00\x2f" + SERVER_HELLO[78:], "cipher suite 0x002f"),
            (SERVER_HELLO[:78] + b"\x01" + SERVER_HELLO[79:], "compression method"),
            (SERVER_HELLO[:79] + b"\x0f\x00\x00\x00", "ServerHelloDone"),
        ]
        for reply, reason in cases:
            self.assertIn(reason, server_hello_deviation(reply) or "", msg=f"input {reply.hex()}")

    def test_table(self) -> None:
        """After a deviation nothing more is parsed."""
        self.assertEqual(TRANSITIONS[State.RAW], {})


class MsTurnTests(SynchronousTestCase):
    def test_counts(self) -> None:
        """Control and data frames are counted each way, whole or one byte at a time."""
        for step in (None, 1, 7):
            observer = Observer("ms-turn")
            feed(observer, CLIENT, SERVER, step)
            self.assertEqual(observer.deviations, [], msg=f"step {step}")
            self.assertEqual((observer.client.control, observer.client.data, observer.server.control, observer.server.data), (2, 1, 1, 1), msg=f"step {step}")
            self.assertEqual((observer.control_frames, observer.data_frames), (3, 2))
            self.assertEqual((observer.client.seen, observer.server.seen), (len(CLIENT), len(SERVER)))

    def test_bad_server_hello(self) -> None:
        """A wrong reply is one deviation; the server side is then only counted."""
        observer = Observer("ms-turn")
        bad = SERVER_HELLO[:76] + b"\x00\x2f" + SERVER_HELLO[78:]
        feed(observer, CLIENT, bad + frame(2, ms_turn_message(0x0103)))
        self.assertEqual(observer.deviations, ["server: server hello: cipher suite 0x002f, expected 0x0018"])
        self.assertEqual(observer.server.state, State.RAW)
        self.assertEqual(observer.server.unparsed, len(frame(2, ms_turn_message(0x0103))))
        self.assertEqual(observer.client.control, 2)

    def test_unknown_frame_type(self) -> None:
        """An unknown frame type is a deviation; later bytes are counted, not parsed."""
        observer = Observer("ms-turn")
        observer.client_bytes(CLIENT_HELLO + frame(2, ms_turn_message(3)) + b"\x05\x00\x00\x04abcd" + frame(3, b"x"))
        self.assertEqual(observer.deviations, ["client: frame header 05 00 00 04: type 0x05, expected 02 00 or 03 00"])
        self.assertEqual((observer.client.control, observer.client.data, observer.client.unparsed), (1, 0, 13))

    def test_frame_cap(self) -> None:
        """A frame longer than the cap is a deviation."""
        observer = Observer("ms-turn", max_frame=100)
        observer.client_bytes(CLIENT_HELLO + frame(3, b"x" * 101))
        self.assertEqual(observer.deviations, ["client: frame of 101 bytes exceeds the cap of 100"])

    def test_server_first(self) -> None:
        """A server speaking before the client hello is recorded."""
        observer = Observer("ms-turn")
        observer.server_bytes(SERVER_HELLO)
        self.assertEqual(observer.deviations, ["server: server spoke before the client hello was complete"])

    def test_garbage_never_raises(self) -> None:
        """Any bytes in any order are observed without an exception."""
        for data in (b"", b"\x00" * 200, bytes(range(256)) * 3, CLIENT_HELLO[:10]):
            for protocol in ("ms-turn", "stun"):
                observer = Observer(protocol)
                feed(observer, data, data, 3)
                feed(observer, data, data)


class StunTests(SynchronousTestCase):
    def test_rfc5389_framing(self) -> None:
        """Self-framed STUN messages and ChannelData: control and data."""
        client = stun(0x0003, b"\x00\x19\x00\x04\x11\x00\x00\x00") + channel_data(b"abc") + channel_data(b"") + stun(0x0009)
        server = stun(0x0103) + channel_data(b"x" * 100)
        for step in (None, 1, 5):
            observer = Observer("stun")
            feed(observer, client, server, step)
            self.assertEqual(observer.deviations, [], msg=f"step {step}")
            self.assertEqual((observer.client.control, observer.client.data, observer.server.control, observer.server.data), (2, 2, 1, 1), msg=f"step {step}")

    def test_rfc4571_framing(self) -> None:
        """Two-byte length framing: STUN inside is control, anything else data."""
        def framed(payload: bytes) -> bytes:
            return struct.pack("!H", len(payload)) + payload

        client = framed(stun()) + framed(b"\x80rtp-ish") + framed(stun(0x0101))
        for step in (None, 1):
            observer = Observer("stun")
            feed(observer, client, framed(stun(0x0101)), step)
            self.assertEqual(observer.deviations, [], msg=f"step {step}")
            self.assertEqual((observer.client.control, observer.client.data, observer.server.control), (2, 1, 1), msg=f"step {step}")

    def test_deviation(self) -> None:
        """Bytes that are neither framing are a deviation, counted not fatal."""
        observer = Observer("stun")
        observer.client_bytes(b"\xff" * 40)
        self.assertEqual(len(observer.deviations), 1)
        self.assertIn("neither STUN/TURN nor RFC 4571", observer.deviations[0])
        self.assertEqual(observer.client.unparsed, 40)
