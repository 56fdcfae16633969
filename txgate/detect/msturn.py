# -*- test-case-name: tests.detect.test_msturn -*-
"""
[MS-TURN] on TCP: the pseudo-TLS handshake and the TCP framing.

Lync / Skype for Business media relays (the A/V Edge) speak MS-TURN over TCP
port 443. So that firewalls let it through, the client first sends something
that looks like a TLS 1.0 ClientHello but is a fixed 50-byte template
([MS-TURN] 2.1.1); the server answers a fixed-layout 83-byte ServerHello +
ServerHelloDone. No key exchange follows: from then on both sides send
MS-TURN TCP frames ([MS-TURN] 2.1.4) in the clear. A client may also skip the
pseudo-TLS handshake and start with frames directly.

Layouts (hex, C{|} separates fields):

  - client hello, 50 bytes::

      16 03 01 00 2d | 01 00 00 29 | 03 01 | random[32] | 00 | 00 02 00 18 | 01 00

    record header (handshake, TLS 1.0, 45 bytes); handshake header
    (ClientHello, 41 bytes); client_version 3.1; random; empty session id;
    one cipher suite (0x0018); one compression method (null); no extensions.

  - server hello, 83 bytes::

      16 03 01 00 4e | 02 00 00 46 03 01 | random[32] | 20 | session_id[32] |
      00 18 | 00 | 0e 00 00 00

    one record (78 bytes) holding a ServerHello (70 bytes: version 3.1,
    random, a 32-byte session id, suite 0x0018, null compression) and an empty
    ServerHelloDone.

  - a TCP frame: C{type(1) | 0x00 | length(2, big-endian) | payload[length]};
    type 0x02 is a TURN control message, 0x03 end-to-end data. A TURN control
    message has the RFC 3489-style 20-byte header (type, length, 16-byte
    transaction ID) and carries the MAGIC-COOKIE attribute (type 0x000F,
    length 4, value 0x72C64BC6) first.

This module is pure: the detector (L{detect}) and the helpers for the MS-TURN
relay (L{is_pseudo_tls_client_hello}, L{is_pseudo_tls_server_hello},
L{read_frames}) only look at the bytes they are given.
"""

from __future__ import annotations

import enum

import attrs

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

__all__ = [
    "PSEUDO_TLS_CLIENT_HELLO_LENGTH",
    "PSEUDO_TLS_SERVER_HELLO_LENGTH",
    "CLIENT_RANDOM",
    "SERVER_RANDOM",
    "SERVER_SESSION_ID",
    "MAGIC_COOKIE",
    "FRAME_HEADER_LENGTH",
    "FrameType",
    "Frame",
    "FramingError",
    "build_pseudo_tls_client_hello",
    "build_pseudo_tls_server_hello",
    "is_pseudo_tls_client_hello",
    "could_be_pseudo_tls_client_hello",
    "is_pseudo_tls_server_hello",
    "read_frames",
    "detect",
]

PSEUDO_TLS_CLIENT_HELLO_LENGTH = 50
"""The pseudo-TLS client hello is always exactly this long."""

PSEUDO_TLS_SERVER_HELLO_LENGTH = 83
"""The pseudo-TLS server reply (ServerHello + ServerHelloDone) is always exactly this long."""

CLIENT_RANDOM = slice(11, 43)
"""Where the 32 varying bytes (the client random) are in the client hello."""

SERVER_RANDOM = slice(11, 43)
"""Where the server random is in the server hello."""

SERVER_SESSION_ID = slice(44, 76)
"""Where the 32-byte session id is in the server hello."""

_CLIENT_HEAD = bytes.fromhex("16030100 2d 01000029 0301".replace(" ", ""))
_CLIENT_TAIL = bytes.fromhex("00 00020018 0100".replace(" ", ""))
_SERVER_HEAD = bytes.fromhex("160301004e 020000460301")
_SERVER_MIDDLE = b"\x20"
_SERVER_TAIL = bytes.fromhex("0018 00 0e000000".replace(" ", ""))

MAGIC_COOKIE = bytes.fromhex("000f0004 72c64bc6".replace(" ", ""))
"""The MAGIC-COOKIE attribute (type 0x000F, length 4, 0x72C64BC6) as it appears on the wire."""

FRAME_HEADER_LENGTH = 4
"""C{type(1) 0x00 length(2)}."""

_TURN_HEADER_LENGTH = 20


class FrameType(enum.IntEnum):
    """The MS-TURN TCP frame types ([MS-TURN] 2.1.4)."""

    CONTROL = 0x02
    """A TURN control message (Allocate, Send, Data indication...)."""
    DATA = 0x03
    """End-to-end data (media) between the peers."""


@attrs.frozen
class Frame:
    """
    One MS-TURN TCP frame.

    @ivar type: L{FrameType.CONTROL} or L{FrameType.DATA}.
    @ivar payload: the frame's payload, without the 4-byte header.
    """

    type: FrameType
    payload: bytes

    def to_bytes(self) -> bytes:
        """The frame as sent on the wire, header included."""
        return bytes([self.type, 0]) + len(self.payload).to_bytes(2, "big") + self.payload


class FramingError(ValueError):
    """
    The bytes at C{offset} are not an MS-TURN frame header.

    @ivar frames: the well-formed frames before C{offset}, so a relay that
        keeps going on a deviation can still count them.
    @ivar offset: where, in the buffer given to L{read_frames}, the bad
        header starts.
    """

    def __init__(self, message: str, frames: list[Frame], offset: int) -> None:
        super().__init__(message)
        self.frames = frames
        self.offset = offset


def _template_prefix_matches(data: bytes, template: list[bytes | int]) -> bool:
    """
    Whether C{data} agrees with C{template} as far as it goes. The template is
    a list of literal byte strings and ints (that many bytes of anything).
    """
    position = 0
    for part in template:
        if position >= len(data):
            return True
        if isinstance(part, int):
            position += part
            continue
        chunk = data[position : position + len(part)]
        if chunk != part[: len(chunk)]:
            return False
        position += len(part)
    return True


_CLIENT_TEMPLATE: list[bytes | int] = [_CLIENT_HEAD, 32, _CLIENT_TAIL]
_SERVER_TEMPLATE: list[bytes | int] = [_SERVER_HEAD, 32, _SERVER_MIDDLE, 32, _SERVER_TAIL]


def build_pseudo_tls_client_hello(random: bytes) -> bytes:
    """
    The 50-byte pseudo-TLS client hello with the given 32-byte C{random}.

    @raise ValueError: C{random} is not 32 bytes.
    """
    if len(random) != 32:
        raise ValueError(f"the client random is 32 bytes, not {len(random)}")
    return _CLIENT_HEAD + random + _CLIENT_TAIL


def build_pseudo_tls_server_hello(random: bytes, session_id: bytes) -> bytes:
    """
    The 83-byte pseudo-TLS server reply with the given 32-byte C{random} and
    32-byte C{session_id}.

    @raise ValueError: either is not 32 bytes.
    """
    if len(random) != 32 or len(session_id) != 32:
        raise ValueError("the server random and session id are 32 bytes each")
    return _SERVER_HEAD + random + _SERVER_MIDDLE + session_id + _SERVER_TAIL


def is_pseudo_tls_client_hello(data: bytes) -> bool:
    """
    Whether C{data} starts with a complete pseudo-TLS client hello (any
    random). Bytes after the first 50 are ignored.
    """
    return len(data) >= PSEUDO_TLS_CLIENT_HELLO_LENGTH and _template_prefix_matches(
        data[:PSEUDO_TLS_CLIENT_HELLO_LENGTH], _CLIENT_TEMPLATE
    )


def could_be_pseudo_tls_client_hello(data: bytes) -> bool:
    """
    Whether C{data} is a prefix of a pseudo-TLS client hello or starts with a
    complete one: C{False} as soon as a fixed byte differs.
    """
    return _template_prefix_matches(data[:PSEUDO_TLS_CLIENT_HELLO_LENGTH], _CLIENT_TEMPLATE)


def is_pseudo_tls_server_hello(data: bytes) -> bool:
    """
    Whether C{data} is exactly the 83-byte pseudo-TLS server reply (any random
    and session id). A relay reads 83 bytes from the server and checks them
    here; what follows them is MS-TURN framing (see L{read_frames}).
    """
    return len(data) == PSEUDO_TLS_SERVER_HELLO_LENGTH and _template_prefix_matches(
        data, _SERVER_TEMPLATE
    )


def read_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """
    Split C{buffer} into complete MS-TURN TCP frames.

    Call it with everything received and not yet framed; keep C{rest} and
    prepend it to the next bytes::

        frames, pending = read_frames(pending + data)

    @return: the complete frames in order, and the bytes after them (an
        incomplete header or payload, possibly empty).
    @raise FramingError: a header's type is neither 0x02 nor 0x03, or its
        reserved byte is not 0x00. The error carries the good C{frames}
        before it and the C{offset} of the bad header, so a relay can count
        them, log the deviation and keep relaying the raw bytes.
    """
    frames: list[Frame] = []
    offset = 0
    while len(buffer) - offset >= 2:
        kind, reserved = buffer[offset], buffer[offset + 1]
        if kind not in (FrameType.CONTROL, FrameType.DATA) or reserved != 0:
            raise FramingError(
                f"bad MS-TURN frame header {buffer[offset:offset + 4].hex()} at offset {offset}",
                frames,
                offset,
            )
        if len(buffer) - offset < FRAME_HEADER_LENGTH:
            break
        length = int.from_bytes(buffer[offset + 2 : offset + 4], "big")
        end = offset + FRAME_HEADER_LENGTH + length
        if end > len(buffer):
            break
        frames.append(Frame(FrameType(kind), buffer[offset + FRAME_HEADER_LENGTH : end]))
        offset = end
    return frames, buffer[offset:]


def _detect_framing(buffered: bytes) -> Verdict:
    """
    A stream that starts with an MS-TURN control frame holding a TURN message
    whose first attribute is MAGIC-COOKIE::

        02 00 LL LL | tt tt ll ll | transaction-id[16] | 00 0f 00 04 72 c6 4b c6

    with C{LLLL == 20 + llll}, C{llll} a multiple of 4 and at least 8, and the
    top two bits of C{tttt} zero. A stream starting with a data frame (0x03)
    is not claimed: four header bytes are too weak a signal, and a client
    always begins with a control message (Allocate).
    """
    template: list[bytes | int] = [b"\x02\x00", 2]
    if not _template_prefix_matches(buffered, template):
        return NOT_MINE
    if len(buffered) >= 5 and buffered[4] & 0xC0:
        return NOT_MINE
    if len(buffered) >= 8:
        frame_length = int.from_bytes(buffered[2:4], "big")
        message_length = int.from_bytes(buffered[6:8], "big")
        if (
            frame_length != _TURN_HEADER_LENGTH + message_length
            or message_length % 4
            or message_length < len(MAGIC_COOKIE)
        ):
            return NOT_MINE
    start = FRAME_HEADER_LENGTH + _TURN_HEADER_LENGTH
    cookie = buffered[start : start + len(MAGIC_COOKIE)]
    if cookie != MAGIC_COOKIE[: len(cookie)]:
        return NOT_MINE
    if len(buffered) < start + len(MAGIC_COOKIE):
        return NEED_MORE
    return Detected("ms-turn", {"pseudo_tls": False})


def detect(buffered: bytes) -> Verdict:
    """
    C{ms-turn} for the pseudo-TLS client hello (C{pseudo_tls=True}) or a
    stream starting with a TURN control frame (C{pseudo_tls=False}).
    """
    if not buffered:
        return NEED_MORE
    if buffered[0] == 0x16:
        if not could_be_pseudo_tls_client_hello(buffered):
            return NOT_MINE
        if len(buffered) < PSEUDO_TLS_CLIENT_HELLO_LENGTH:
            return NEED_MORE
        return Detected("ms-turn", {"pseudo_tls": True})
    return _detect_framing(buffered)
