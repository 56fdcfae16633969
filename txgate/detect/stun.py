# -*- test-case-name: tests.detect.test_stun -*-
"""
STUN / TURN over TCP.

A STUN message starts with a 20-byte header::

    0 0 type(14 bits) | length(2) | magic cookie 21 12 a4 42 | transaction id[12]

(RFC 5389 / RFC 8489); the length counts the attributes after the header and
is a multiple of 4. RFC 3489 ("classic") STUN and the MS-TURN dialect have a
16-byte transaction id where the cookie would be. Over TCP a message is sent
as is (C{plain}) or, for ICE-TCP (RFC 6544), behind an RFC 4571 2-byte length
(C{rfc4571}), which puts the STUN header at offset 2 and the cookie at 6.

To keep false positives rare:
  - with the cookie, the top two bits of the type must be 0, the length a
    multiple of 4 and (for RFC 4571) the frame length equal to 20 + the STUN
    length;
  - without the cookie, only a request a client opens with is accepted
    (L{CLASSIC_REQUESTS}: Binding, Allocate), the whole message must be
    buffered, no longer than L{MAX_CLASSIC_LENGTH}, and its attributes must
    fill it exactly.
"""

from __future__ import annotations

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

__all__ = ["MAGIC_COOKIE", "CLASSIC_REQUESTS", "MAX_CLASSIC_LENGTH", "detect"]

MAGIC_COOKIE = bytes.fromhex("2112a442")
"""The RFC 5389 magic cookie, at offset 4 of the header."""

CLASSIC_REQUESTS = frozenset({0x0001, 0x0003})
"""Message types accepted without the cookie: Binding request, Allocate request."""

MAX_CLASSIC_LENGTH = 2048
"""The longest attribute block accepted for a message without the cookie."""

_HEADER_LENGTH = 20


def _attributes_fit(block: bytes) -> bool:
    """Whether C{block} is a sequence of TLVs (4-byte padded) filling it exactly."""
    position = 0
    while position < len(block):
        if len(block) - position < 4:
            return False
        length = int.from_bytes(block[position + 2 : position + 4], "big")
        position += 4 + length + (-length % 4)
    return position == len(block)


def _message(data: bytes) -> tuple[Verdict, bool]:
    """
    Judge a STUN message at the start of C{data}.

    @return: the verdict, and whether it has the cookie.
    """
    if data[:1] and data[0] & 0xC0:
        return NOT_MINE, False
    if len(data) >= 4 and int.from_bytes(data[2:4], "big") % 4:
        return NOT_MINE, False
    cookie = data[4:8]
    if cookie == MAGIC_COOKIE[: len(cookie)]:
        if len(data) < _HEADER_LENGTH:
            return NEED_MORE, True
        return Detected("stun"), True
    # Classic (RFC 3489 / MS-TURN style) message: no cookie.
    if len(data) >= 2 and int.from_bytes(data[0:2], "big") not in CLASSIC_REQUESTS:
        return NOT_MINE, False
    if len(data) < 4:
        return NEED_MORE, False
    length = int.from_bytes(data[2:4], "big")
    if length > MAX_CLASSIC_LENGTH:
        return NOT_MINE, False
    if len(data) < _HEADER_LENGTH + length:
        return NEED_MORE, False
    if not _attributes_fit(data[_HEADER_LENGTH : _HEADER_LENGTH + length]):
        return NOT_MINE, False
    return Detected("stun"), False


def _plain(buffered: bytes) -> tuple[Verdict, bool]:
    return _message(buffered)


def _rfc4571(buffered: bytes) -> tuple[Verdict, bool]:
    if len(buffered) >= 6:
        frame_length = int.from_bytes(buffered[0:2], "big")
        if frame_length != _HEADER_LENGTH + int.from_bytes(buffered[4:6], "big"):
            return NOT_MINE, False
    verdict, cookie = _message(buffered[2:])
    if not cookie:
        # Only RFC 5389 STUN is framed this way (ICE-TCP).
        return (NEED_MORE if len(buffered) < 2 else NOT_MINE), False
    return verdict, cookie


def detect(buffered: bytes) -> Verdict:
    """
    C{stun} with facts C{framing} (C{"plain"} or C{"rfc4571"}) and
    C{cookie} (whether the RFC 5389 magic cookie is there).
    """
    if not buffered:
        return NEED_MORE
    waiting = False
    for framing, judge in (("plain", _plain), ("rfc4571", _rfc4571)):
        verdict, cookie = judge(buffered)
        if isinstance(verdict, Detected):
            return Detected("stun", {"framing": framing, "cookie": cookie})
        waiting = waiting or verdict is NEED_MORE
    return NEED_MORE if waiting else NOT_MINE
