"""
Tests for L{txgate.detect.msturn}: the pseudo-TLS layouts, the TCP framing
reader and the C{ms-turn} detector.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import msturn
from txgate.detect.msturn import Frame, FrameType, FramingError
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected

from .samples import RANDOM_A, RANDOM_B, assert_detects, assert_not_mine, msturn_control_frame

SPEC_CLIENT_HELLO = bytes.fromhex(
    "16 03 01 00 2d 01 00 00 29 03 01" + " 00" * 32 + " 00 00 02 00 18 01 00"
)
"""The client hello of [MS-TURN] 2.1.1 written out byte by byte, random all zero."""

PSEUDO = Detected("ms-turn", {"pseudo_tls": True})
FRAMED = Detected("ms-turn", {"pseudo_tls": False})


class PseudoTlsClientHelloTests(SynchronousTestCase):
    """The 50-byte hello is C{ms-turn} whatever its random."""

    def test_layout(self) -> None:
        self.assertEqual(msturn.build_pseudo_tls_client_hello(bytes(32)), SPEC_CLIENT_HELLO)
        self.assertEqual(len(SPEC_CLIENT_HELLO), msturn.PSEUDO_TLS_CLIENT_HELLO_LENGTH)
        hello = msturn.build_pseudo_tls_client_hello(RANDOM_B)
        self.assertEqual(hello[msturn.CLIENT_RANDOM], RANDOM_B)

    def test_two_randoms(self) -> None:
        for label, random in (("random A", RANDOM_A), ("random B", RANDOM_B)):
            data = msturn.build_pseudo_tls_client_hello(random)
            self.assertTrue(msturn.is_pseudo_tls_client_hello(data), label)
            assert_detects(self, msturn.detect, data, PSEUDO, label)

    def test_fixed_bytes_matter(self) -> None:
        """Changing any byte outside the random makes it not the pseudo-TLS hello."""
        hello = msturn.build_pseudo_tls_client_hello(RANDOM_A)
        for index in [*range(0, 11), *range(43, 50)]:
            data = bytearray(hello)
            data[index] ^= 0x01
            self.assertFalse(msturn.is_pseudo_tls_client_hello(bytes(data)), f"byte {index}")
            self.assertIs(msturn.detect(bytes(data)), NOT_MINE, msg=f"byte {index} changed")

    def test_short(self) -> None:
        self.assertFalse(msturn.is_pseudo_tls_client_hello(SPEC_CLIENT_HELLO[:49]))
        self.assertTrue(msturn.could_be_pseudo_tls_client_hello(SPEC_CLIENT_HELLO[:49]))

    def test_real_tls_is_not_mine(self) -> None:
        from .samples import capture

        assert_not_mine(self, msturn.detect, capture("tls_openssl"), "openssl hello")

    def test_build_checks_length(self) -> None:
        self.assertRaises(ValueError, msturn.build_pseudo_tls_client_hello, bytes(31))
        self.assertRaises(ValueError, msturn.build_pseudo_tls_server_hello, bytes(32), bytes(31))


class PseudoTlsServerHelloTests(SynchronousTestCase):
    """The 83-byte server reply check the relay uses."""

    def test_layout(self) -> None:
        reply = msturn.build_pseudo_tls_server_hello(RANDOM_A, RANDOM_B)
        expected = bytes.fromhex(
            "16 03 01 00 4e 02 00 00 46 03 01"
            + RANDOM_A.hex()
            + "20"
            + RANDOM_B.hex()
            + "00 18 00 0e 00 00 00"
        )
        self.assertEqual(reply, expected)
        self.assertEqual(len(reply), msturn.PSEUDO_TLS_SERVER_HELLO_LENGTH)
        self.assertEqual(reply[msturn.SERVER_RANDOM], RANDOM_A)
        self.assertEqual(reply[msturn.SERVER_SESSION_ID], RANDOM_B)

    def test_accepts_any_random_and_session(self) -> None:
        for random, session in ((RANDOM_A, RANDOM_B), (bytes(32), bytes(32)), (RANDOM_B, RANDOM_A)):
            reply = msturn.build_pseudo_tls_server_hello(random, session)
            self.assertTrue(msturn.is_pseudo_tls_server_hello(reply))

    def test_rejects(self) -> None:
        reply = msturn.build_pseudo_tls_server_hello(RANDOM_A, RANDOM_B)
        self.assertFalse(msturn.is_pseudo_tls_server_hello(reply[:82]), "82 bytes")
        self.assertFalse(msturn.is_pseudo_tls_server_hello(reply + b"\x00"), "84 bytes")
        for index in [*range(0, 11), 43, *range(76, 83)]:
            data = bytearray(reply)
            data[index] ^= 0x01
            self.assertFalse(msturn.is_pseudo_tls_server_hello(bytes(data)), f"byte {index} changed")


class ReadFramesTests(SynchronousTestCase):
    """L{msturn.read_frames} splits a buffer into frames and keeps the rest."""

    def test_frames_and_rest(self) -> None:
        control = Frame(FrameType.CONTROL, b"\x00\x03\x00\x00" + bytes(16))
        data = Frame(FrameType.DATA, b"media")
        empty = Frame(FrameType.DATA, b"")
        wire = control.to_bytes() + data.to_bytes() + empty.to_bytes()
        self.assertEqual(msturn.read_frames(wire), ([control, data, empty], b""))
        self.assertEqual(msturn.read_frames(wire + b"\x03\x00\x00"), ([control, data, empty], b"\x03\x00\x00"))
        self.assertEqual(msturn.read_frames(wire + b"\x03\x00\x00\x09abc"), ([control, data, empty], b"\x03\x00\x00\x09abc"))

    def test_byte_by_byte(self) -> None:
        """Fed one byte at a time, the reader yields the same frames."""
        frames = [Frame(FrameType.CONTROL, bytes(range(24))), Frame(FrameType.DATA, b"xyz")]
        wire = b"".join(f.to_bytes() for f in frames)
        seen: list[Frame] = []
        pending = b""
        for i in range(len(wire)):
            got, pending = msturn.read_frames(pending + wire[i : i + 1])
            seen += got
        self.assertEqual((seen, pending), (frames, b""))

    def test_bad_header(self) -> None:
        good = Frame(FrameType.DATA, b"ok")
        for label, bad in (("type 0x04", b"\x04\x00\x00\x00"), ("reserved 0x01", b"\x02\x01\x00\x00"), ("TLS", b"\x16\x03")):
            with self.assertRaises(FramingError, msg=label) as caught:
                msturn.read_frames(good.to_bytes() + bad)
            self.assertEqual(caught.exception.frames, [good], label)
            self.assertEqual(caught.exception.offset, 6, label)
            self.assertIsInstance(caught.exception, ValueError)

    @given(
        st.lists(st.tuples(st.sampled_from([FrameType.CONTROL, FrameType.DATA]), st.binary(max_size=40)), max_size=5),
        st.integers(0, 3),
    )
    def test_roundtrip(self, specs, cut: int) -> None:
        frames = [Frame(t, p) for t, p in specs]
        partial = Frame(FrameType.DATA, b"abc").to_bytes()[:cut]
        wire = b"".join(f.to_bytes() for f in frames) + partial
        self.assertEqual(msturn.read_frames(wire), (frames, partial))

    @given(st.binary(max_size=200))
    def test_arbitrary(self, data: bytes) -> None:
        try:
            frames, rest = msturn.read_frames(data)
        except FramingError as e:
            self.assertLessEqual(e.offset, len(data))
        else:
            self.assertEqual(b"".join(f.to_bytes() for f in frames) + rest, data)


class FramedDetectionTests(SynchronousTestCase):
    """A stream opening with a TURN control frame is C{ms-turn} without pseudo-TLS."""

    def test_control_frame(self) -> None:
        assert_detects(self, msturn.detect, msturn_control_frame(), FRAMED, "Allocate")
        assert_detects(self, msturn.detect, msturn_control_frame(b"\x80\x08\x00\x04\x00\x00\x00\x04"), FRAMED, "MS-Version")

    def test_not_framed(self) -> None:
        frame = msturn_control_frame()
        cases = {
            "data frame first": b"\x03" + frame[1:],
            "reserved byte set": frame[:1] + b"\x01" + frame[2:],
            "frame length mismatch": frame[:3] + bytes([frame[3] + 4]) + frame[4:],
            "type top bits set": frame[:4] + b"\x40" + frame[5:],
            "message length not multiple of 4": frame[:7] + bytes([frame[7] + 1]) + frame[8:],
            "wrong cookie": frame[:-1] + b"\xc7",
            "cookie not first": b"\x02\x00\x00\x20\x00\x03\x00\x0c" + bytes(16) + b"\x80\x08\x00\x04\x00\x00\x00\x04",
            "RFC 5389 STUN": bytes.fromhex("000300082112a442") + bytes(12) + bytes(8),
        }
        for label, data in cases.items():
            assert_not_mine(self, msturn.detect, data, label)

    def test_empty(self) -> None:
        self.assertIs(msturn.detect(b""), NEED_MORE)

    @given(st.binary(max_size=120))
    def test_never_raises(self, data: bytes) -> None:
        msturn.detect(data)
        msturn.detect(b"\x02\x00" + data)
        msturn.detect(SPEC_CLIENT_HELLO[:11] + data)
        msturn.is_pseudo_tls_server_hello(data)
