# -*- test-case-name: tests.detect.test_tls -*-
"""
TLS: reading a ClientHello from the first bytes of a stream.

A ClientHello is one handshake message (type 1) carried in one or more TLS
records (C{16 03 0x length[2] fragment}); the records may arrive in any
number of TCP segments. L{parse_client_hello} reassembles the message from
the records and reads it; L{detect} turns that into a verdict.
"""

from __future__ import annotations

import functools
import struct

import attrs

from txgate.detect import msturn
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

__all__ = ["ClientHello", "parse_client_hello", "detect", "uint16s", "MAX_RECORD_LENGTH"]

MAX_RECORD_LENGTH = 2**14
"""The largest plaintext record fragment (RFC 8446 5.1); anything longer is not TLS."""

_RECORD_HEADER_LENGTH = 5
_HANDSHAKE_HEADER_LENGTH = 4
_CONTENT_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D


@attrs.frozen
class ClientHello:
    """
    What a ClientHello offers.

    @ivar legacy_version: C{client_version}, e.g. C{0x0303}.
    @ivar random: the 32-byte client random.
    @ivar session_id: the legacy session id (0 to 32 bytes).
    @ivar cipher_suites: the offered suites, in order.
    @ivar extensions: every extension as C{(type, data)}, in order.
    @ivar sni: the C{host_name} of the server_name extension, or C{None}.
    @ivar alpn: the ALPN protocol names offered, in order.
    @ivar supported_versions: the versions of the supported_versions
        extension (e.g. C{0x0304} for TLS 1.3), in order; empty without it.
    @ivar ech: whether the encrypted_client_hello extension is present (the
        real SNI and ALPN are then inside it; C{sni} is the outer, public name).
    """

    legacy_version: int
    random: bytes
    session_id: bytes
    cipher_suites: tuple[int, ...]
    extensions: tuple[tuple[int, bytes], ...]
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    supported_versions: tuple[int, ...] = ()
    ech: bool = False


class _Reader:
    """Reads big-endian fields from a byte string; ValueError when it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.position = 0

    def take(self, count: int) -> bytes:
        end = self.position + count
        if end > len(self.data):
            raise ValueError("truncated field")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def integer(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, length_size: int) -> bytes:
        return self.take(self.integer(length_size))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.position


def _handshake_bytes(data: bytes) -> bytes | None:
    """
    The ClientHello handshake message (header included) reassembled from the
    records at the start of C{data}, or C{None} while it is incomplete.
    """
    message = b""
    offset = 0
    needed: int | None = None
    while needed is None or len(message) < needed:
        header = data[offset : offset + _RECORD_HEADER_LENGTH]
        if header[:1] and header[0] != _CONTENT_HANDSHAKE:
            raise ValueError(f"record type {header[0]:#04x} is not handshake")
        if len(header) >= 2 and header[1] != 0x03:
            raise ValueError("record version is not 3.x")
        if len(header) >= 3 and header[2] > 0x04:
            raise ValueError(f"record version 3.{header[2]} is unknown")
        if len(header) < _RECORD_HEADER_LENGTH:
            return None
        length = int.from_bytes(header[3:5], "big")
        if length == 0 or length > MAX_RECORD_LENGTH:
            raise ValueError(f"record length {length} is out of range")
        fragment = data[offset + _RECORD_HEADER_LENGTH : offset + _RECORD_HEADER_LENGTH + length]
        message += fragment
        if needed is None and message:
            if message[0] != _CLIENT_HELLO:
                raise ValueError(f"handshake type {message[0]} is not ClientHello")
        if needed is None and len(message) >= _HANDSHAKE_HEADER_LENGTH:
            needed = _HANDSHAKE_HEADER_LENGTH + int.from_bytes(message[1:4], "big")
            if needed < _HANDSHAKE_HEADER_LENGTH + 2 + 32 + 1 + 2 + 2 + 1 + 1:
                raise ValueError("ClientHello too short")
        if len(fragment) < length:
            if needed is not None and len(message) >= needed:
                break
            return None
        offset += _RECORD_HEADER_LENGTH + length
    # A record may also carry the start of a following handshake message.
    return message[:needed]


def _parse_server_name(data: bytes) -> str | None:
    reader = _Reader(data)
    names = _Reader(reader.vector(2))
    if reader.remaining:
        raise ValueError("trailing bytes in server_name")
    host = None
    while names.remaining:
        name_type = names.integer(1)
        name = names.vector(2)
        if name_type == 0 and host is None:
            if not name:
                raise ValueError("empty host_name")
            try:
                host = name.decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("host_name is not ASCII") from None
    return host


def _parse_alpn(data: bytes) -> tuple[str, ...]:
    reader = _Reader(data)
    names = _Reader(reader.vector(2))
    if reader.remaining:
        raise ValueError("trailing bytes in ALPN")
    protocols = []
    while names.remaining:
        name = names.vector(1)
        if not name:
            raise ValueError("empty ALPN protocol name")
        protocols.append(name.decode("ascii", "backslashreplace"))
    return tuple(protocols)


def _parse_supported_versions(data: bytes) -> tuple[int, ...]:
    reader = _Reader(data)
    versions = reader.vector(1)
    if reader.remaining or len(versions) % 2:
        raise ValueError("malformed supported_versions")
    return uint16s(versions)


def uint16s(data: bytes) -> tuple[int, ...]:
    """A run of big-endian 16-bit numbers, as TLS lists them (an odd last byte is left out)."""
    return struct.unpack_from(f">{len(data) // 2}H", data)


_TYPE_AND_LENGTH = struct.Struct(">HH")


def _extensions(block: bytes) -> list[tuple[int, bytes]]:
    """
    Every extension of an extensions block as C{(type, data)}: read in one
    loop over offsets, since a browser's hello carries some twenty and
    L{_Reader}'s calls per field were most of the parse.
    """
    extensions = []
    unpack = _TYPE_AND_LENGTH.unpack_from
    position, end = 0, len(block)
    while position < end:
        if position + 4 > end:
            raise ValueError("truncated field")
        kind, length = unpack(block, position)
        position += 4
        if position + length > end:
            raise ValueError("truncated field")
        extensions.append((kind, block[position : position + length]))
        position += length
    return extensions


@functools.lru_cache(maxsize=32)
def parse_client_hello(data: bytes) -> ClientHello | None:
    """
    Read the ClientHello at the start of C{data}, which may span several
    records. Bytes after the ClientHello's last record are ignored.

    The last few results are kept: detection reads a hello, and SSL
    interception reads the same bytes again to pick the leaf's key type.

    @return:
        - a L{ClientHello} on success;
        - C{None} if the records seen so far are well formed but the
          ClientHello is not complete yet.
    @raise ValueError: the bytes are not a well-formed ClientHello (wrong
        record or handshake type, bad lengths, malformed extensions,
        duplicate extensions).
    """
    message = _handshake_bytes(data)
    if message is None:
        return None
    reader = _Reader(message[_HANDSHAKE_HEADER_LENGTH:])
    legacy_version = reader.integer(2)
    if legacy_version >> 8 != 0x03:
        raise ValueError(f"client_version {legacy_version:#06x} is not 3.x")
    random = reader.take(32)
    session_id = reader.vector(1)
    if len(session_id) > 32:
        raise ValueError("session id longer than 32 bytes")
    suites = reader.vector(2)
    if not suites or len(suites) % 2:
        raise ValueError("malformed cipher_suites")
    cipher_suites = uint16s(suites)
    if not reader.vector(1):
        raise ValueError("no compression methods")
    extensions: list[tuple[int, bytes]] = []
    if reader.remaining:
        extensions = _extensions(reader.vector(2))
        if reader.remaining:
            raise ValueError("trailing bytes after extensions")
    types = [t for t, _ in extensions]
    if len(set(types)) != len(types):
        raise ValueError("duplicate extension")
    found = dict(extensions)
    return ClientHello(
        legacy_version=legacy_version,
        random=random,
        session_id=session_id,
        cipher_suites=cipher_suites,
        extensions=tuple(extensions),
        sni=_parse_server_name(found[EXT_SERVER_NAME]) if EXT_SERVER_NAME in found else None,
        alpn=_parse_alpn(found[EXT_ALPN]) if EXT_ALPN in found else (),
        supported_versions=(
            _parse_supported_versions(found[EXT_SUPPORTED_VERSIONS])
            if EXT_SUPPORTED_VERSIONS in found
            else ()
        ),
        ech=EXT_ENCRYPTED_CLIENT_HELLO in found,
    )


def detect(buffered: bytes) -> Verdict:
    """
    C{ssl} for a well-formed ClientHello, with facts C{sni}, C{alpn},
    C{versions} (supported_versions, or the legacy version alone without
    that extension) and C{ech}. The [MS-TURN] pseudo-TLS hello parses as a
    ClientHello too, but it is not TLS: it is left to the C{ms-turn} detector.
    """
    if not buffered:
        return NEED_MORE
    if buffered[0] != _CONTENT_HANDSHAKE:
        return NOT_MINE
    if msturn.is_pseudo_tls_client_hello(buffered):
        return NOT_MINE
    try:
        hello = parse_client_hello(buffered)
    except ValueError:
        return NOT_MINE
    if hello is None:
        return NEED_MORE
    return Detected(
        "ssl",
        {
            "sni": hello.sni,
            "alpn": hello.alpn,
            "versions": hello.supported_versions or (hello.legacy_version,),
            "ech": hello.ech,
        },
    )
