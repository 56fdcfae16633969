# -*- test-case-name: tests.msturn.test_relay -*-
"""
An observer of one MS-TURN or STUN/TURN connection over TCP, sans-IO.

It watches the bytes a relay moves and never changes or stops them: real
clients and servers deviate from the specifications, and a relay that broke
their streams would break Lync media. What it learns is the number of control
(TURN/STUN) and data frames each way, and a short reason for each deviation.

MS-TURN over TCP ([MS-TURN] 2.1.1, 2.1.4):

    client  50-byte pseudo-TLS ClientHello
    server  83-byte pseudo-TLS ServerHello + ServerHelloDone
    both    frames: type(1) 0x00 length(2) payload; 0x02 TURN control,
            0x03 end-to-end data

Plain STUN/TURN over TCP frames messages by their own header (RFC 5389: a
20-byte header whose bytes 2-3 are the attribute length; RFC 5766 ChannelData:
a 4-byte header, padded to 4 bytes over TCP) or by an RFC 4571 two-byte
length prefix; each direction's framing is recognised from its first bytes.

The states of each direction and the events allowed in each are a table
(L{TRANSITIONS}), as in h11: an event not in the table is a bug in this
module, never the peer's fault; a peer's deviation is the C{DEVIATION}
event, after which that direction is only counted in bytes.
"""

from __future__ import annotations

import enum
import struct

import attrs

from txgate.detect.msturn import (
    PSEUDO_TLS_CLIENT_HELLO_LENGTH,
    PSEUDO_TLS_SERVER_HELLO_LENGTH,
    is_pseudo_tls_client_hello,
)

__all__ = [
    "CLIENT_HELLO_LENGTH",
    "SERVER_HELLO_LENGTH",
    "Event",
    "Observer",
    "Side",
    "State",
    "TRANSITIONS",
    "is_pseudo_tls_client_hello",
    "server_hello_deviation",
]

# The pseudo-TLS layouts are the detector's: one definition of the bytes.
CLIENT_HELLO_LENGTH = PSEUDO_TLS_CLIENT_HELLO_LENGTH
SERVER_HELLO_LENGTH = PSEUDO_TLS_SERVER_HELLO_LENGTH
_SERVER_HELLO_HEAD = bytes.fromhex("160301004e" "02000046" "0301")
_SERVER_HELLO_DONE = bytes.fromhex("0e000000")
STUN_COOKIE = 0x2112A442
CONTROL, DATA = 0x02, 0x03


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    HELLO = enum.auto()
    """Waiting for the pseudo-TLS hello of this side (MS-TURN only)."""
    FRAMES = enum.auto()
    """Parsing frames."""
    RAW = enum.auto()
    """After a deviation: bytes are counted, not parsed."""


class Event(enum.Enum):
    HELLO = enum.auto()
    FRAME = enum.auto()
    DEVIATION = enum.auto()


TRANSITIONS: dict[State, dict[Event, State]] = {
    State.HELLO: {Event.HELLO: State.FRAMES, Event.DEVIATION: State.RAW},
    State.FRAMES: {Event.FRAME: State.FRAMES, Event.DEVIATION: State.RAW},
    State.RAW: {},
}
"""For each state, the events allowed in it and the state each leads to."""


def server_hello_deviation(reply: bytes) -> str | None:
    """
    Check the 83-byte ServerHello + ServerHelloDone of [MS-TURN] 2.1.1:
    C{16 03 01 00 4e | 02 00 00 46 03 01 | random[32] | 20 | session_id[32] |
    00 18 | 00 | 0e 00 00 00}.

    @return: C{None} when it matches, else what differs.
    """
    if len(reply) != SERVER_HELLO_LENGTH:
        return f"server hello: {len(reply)} bytes, expected {SERVER_HELLO_LENGTH}"
    if not reply.startswith(_SERVER_HELLO_HEAD):
        return f"server hello: header {reply[:11].hex(' ')}, expected {_SERVER_HELLO_HEAD.hex(' ')}"
    if reply[43] != 0x20:
        return f"server hello: session id length {reply[43]}, expected 32"
    if reply[76:78] != b"\x00\x18":
        return f"server hello: cipher suite 0x{reply[76:78].hex()}, expected 0x0018"
    if reply[78] != 0:
        return f"server hello: compression method {reply[78]}, expected 0"
    if reply[79:83] != _SERVER_HELLO_DONE:
        return f"server hello: {reply[79:83].hex(' ')} where ServerHelloDone 0e 00 00 00 belongs"
    return None


class _Framing(enum.Enum):
    UNKNOWN = enum.auto()
    MS_TURN = enum.auto()  # type 0x00 length(2)
    STUN = enum.auto()  # the message's own header (STUN 20 bytes, ChannelData 4)
    RFC4571 = enum.auto()  # length(2) payload


@attrs.define
class Direction:
    """
    What one direction of the connection has shown.

    @ivar seen: every byte seen.
    @ivar control: control frames (MS-TURN type 0x02, STUN/TURN messages).
    @ivar data: data frames (MS-TURN type 0x03, ChannelData, non-STUN RFC 4571 frames).
    @ivar unparsed: bytes seen after a deviation, counted only.
    """

    side: Side
    state: State
    framing: _Framing
    seen: int = 0
    control: int = 0
    data: int = 0
    unparsed: int = 0
    # The header (or hello) being assembled, and the payload bytes still to skip.
    head: bytes = b""
    remaining: int = 0


class Observer:
    """
    Watches both directions of one connection.

    @ivar protocol: C{"ms-turn"} (pseudo-TLS hellos, then 0x02/0x03 frames)
        or C{"stun"} (STUN/TURN messages, self-framed or RFC 4571).
    @ivar deviations: short reasons, in the order they were seen; each side
        records at most one, since it stops parsing after it.
    @ivar max_frame: the largest frame payload accepted as a frame; a longer
        one is a deviation (the 16-bit length fields cap frames at 65535, so
        this only matters when set lower).
    """

    def __init__(self, protocol: str = "ms-turn", max_frame: int = 0xFFFF) -> None:
        if protocol not in ("ms-turn", "stun"):
            raise ValueError(f"protocol must be 'ms-turn' or 'stun', got {protocol!r}")
        self.protocol = protocol
        self.max_frame = max_frame
        self.deviations: list[str] = []
        if protocol == "ms-turn":
            start, framing = State.HELLO, _Framing.MS_TURN
        else:
            start, framing = State.FRAMES, _Framing.UNKNOWN
        self.client = Direction(Side.CLIENT, start, framing)
        self.server = Direction(Side.SERVER, start, framing)

    @property
    def control_frames(self) -> int:
        return self.client.control + self.server.control

    @property
    def data_frames(self) -> int:
        return self.client.data + self.server.data

    def client_bytes(self, data: bytes) -> None:
        """Observe bytes the client sent. Never raises for any input."""
        self._observe(self.client, data)

    def server_bytes(self, data: bytes) -> None:
        """Observe bytes the server sent. Never raises for any input."""
        if self.client.state is State.HELLO and self.server.state is State.HELLO and data:
            self._deviate(self.server, "server spoke before the client hello was complete")
        self._observe(self.server, data)

    # -- the state machine

    def _transition(self, direction: Direction, event: Event) -> None:
        try:
            direction.state = TRANSITIONS[direction.state][event]
        except KeyError:
            raise AssertionError(f"{direction.side.value}: event {event.name} in state {direction.state.name}") from None

    def _deviate(self, direction: Direction, reason: str) -> None:
        self.deviations.append(f"{direction.side.value}: {reason}")
        self._transition(direction, Event.DEVIATION)
        direction.head = b""
        direction.remaining = 0

    def _observe(self, direction: Direction, data: bytes) -> None:
        direction.seen += len(data)
        self._parse(direction, memoryview(data))

    def _parse(self, direction: Direction, view: memoryview) -> None:
        while view:
            state = direction.state
            if state is State.RAW:
                direction.unparsed += len(view)
                return
            if direction.remaining:
                step = min(direction.remaining, len(view))
                direction.remaining -= step
                view = view[step:]
                continue
            if state is State.HELLO:
                view = self._hello(direction, view)
            else:
                view = self._frame_header(direction, view)

    def _hello(self, direction: Direction, view: memoryview) -> memoryview:
        size = CLIENT_HELLO_LENGTH if direction.side is Side.CLIENT else SERVER_HELLO_LENGTH
        take = size - len(direction.head)
        direction.head += bytes(view[:take])
        view = view[take:]
        if len(direction.head) < size:
            return view
        hello, direction.head = direction.head, b""
        if direction.side is Side.CLIENT:
            reason = None if is_pseudo_tls_client_hello(hello) else "client hello is not the [MS-TURN] pseudo-TLS ClientHello"
        else:
            reason = server_hello_deviation(hello)
        if reason is not None:
            self._deviate(direction, reason)
            direction.unparsed += len(view)
            return view[len(view) :]
        self._transition(direction, Event.HELLO)
        return view

    def _need(self, direction: Direction, view: memoryview, size: int) -> tuple[bytes | None, memoryview]:
        """Assemble C{size} header bytes; C{None} while more are needed."""
        take = size - len(direction.head)
        if take > 0:
            direction.head += bytes(view[:take])
            view = view[take:]
        if len(direction.head) < size:
            return None, view
        return direction.head, view

    def _frame_header(self, direction: Direction, view: memoryview) -> memoryview:
        if direction.framing is _Framing.UNKNOWN:
            head, view = self._need(direction, view, 10)
            if head is None:
                return view
            framing = _sniff_stun_framing(head)
            if framing is None:
                self._deviate(direction, f"neither STUN/TURN nor RFC 4571 framing: {head.hex(' ')}")
                direction.unparsed += len(head)
                return view
            # Parse the sniffed bytes again under the framing they revealed:
            # they may hold a whole short frame and the start of the next.
            direction.framing = framing
            direction.head = b""
            self._parse(direction, memoryview(head))
            return view
        if direction.framing is _Framing.MS_TURN:
            head, view = self._need(direction, view, 4)
            if head is None:
                return view
            kind, zero, length = struct.unpack("!BBH", head)
            if kind not in (CONTROL, DATA) or zero != 0:
                return self._bad(direction, view, f"frame header {head.hex(' ')}: type 0x{kind:02x}, expected 02 00 or 03 00")
            return self._counted(direction, view, kind == CONTROL, length)
        if direction.framing is _Framing.RFC4571:
            head, view = self._need(direction, view, 2)
            if head is None:
                return view
            (length,) = struct.unpack("!H", head[:2])
            if length == 0:
                return self._counted(direction, view, False, 0)
            if len(head) < 3:
                # Classify by the payload's first byte (STUN's top two bits are 0).
                head, view = self._need(direction, view, 3)
                if head is None:
                    return view
            control = head[2] < 0x40
            return self._counted(direction, view, control, length)
        # Self-framed STUN messages and ChannelData.
        head, view = self._need(direction, view, 4)
        if head is None:
            return view
        first = head[0] >> 6
        (length,) = struct.unpack("!H", head[2:4])
        if first == 0:
            if length % 4:
                return self._bad(direction, view, f"STUN message length {length} is not a multiple of 4")
            return self._counted(direction, view, True, 20 + length)
        if first == 1:
            return self._counted(direction, view, False, 4 + length + (-length % 4))
        return self._bad(direction, view, f"not a STUN message or ChannelData: {head.hex(' ')}")

    def _counted(self, direction: Direction, view: memoryview, control: bool, length: int) -> memoryview:
        """Count one frame of C{length} bytes (after its length prefix, if any) and skip the rest of it."""
        limit = self.max_frame + (20 if direction.framing is _Framing.STUN else 0)
        if length > limit:
            return self._bad(direction, view, f"frame of {length} bytes exceeds the cap of {limit}")
        if control:
            direction.control += 1
        else:
            direction.data += 1
        self._transition(direction, Event.FRAME)
        # Bytes of the frame already held in head (beyond the length prefix) count as read.
        prefix = 2 if direction.framing is _Framing.RFC4571 else (4 if direction.framing is _Framing.MS_TURN else 0)
        consumed = len(direction.head) - prefix
        direction.head = b""
        direction.remaining = max(length - consumed, 0)
        return view

    def _bad(self, direction: Direction, view: memoryview, reason: str) -> memoryview:
        held = len(direction.head)
        self._deviate(direction, reason)
        direction.unparsed += held + len(view)
        return view[len(view) :]


def _sniff_stun_framing(head: bytes) -> _Framing | None:
    """
    The framing of a STUN/TURN stream from its first 10 bytes: the RFC 5389
    cookie at offset 4 (self-framed) or 6 (RFC 4571), ChannelData (top bits
    01), or an RFC 3489-style message (top bits 00, length a multiple of 4).
    """
    cookie = STUN_COOKIE.to_bytes(4, "big")
    if head[4:8] == cookie and head[0] >> 6 == 0:
        return _Framing.STUN
    if head[6:10] == cookie and head[2] >> 6 == 0:
        return _Framing.RFC4571
    if head[0] >> 6 == 1:
        return _Framing.STUN
    if head[0] >> 6 == 0 and int.from_bytes(head[2:4], "big") % 4 == 0 and head[0] <= 0x01:
        return _Framing.STUN
    if head[2] >> 6 == 0:
        return _Framing.RFC4571
    return None
