"""
Sample first bytes for each protocol, and helpers the detector tests share.

Captures come from captures/ (made with real clients, see its README); the
MS-TURN and pseudo-SSL hellos are built from their published layouts.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from txgate.detect import msturn
from txgate.detect.pseudossl import PSEUDO_SSL_CLIENT_HELLO
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "captures")


def capture(name: str) -> bytes:
    """The bytes of captures/C{name}.bin."""
    with open(os.path.join(CAPTURES, name + ".bin"), "rb") as f:
        return f.read()


RANDOM_A = bytes(range(32))
RANDOM_B = bytes.fromhex("5f1e" * 16)


def msturn_control_frame(attributes: bytes = b"") -> bytes:
    """An MS-TURN 0x02 frame holding an Allocate whose first attribute is MAGIC-COOKIE."""
    body = msturn.MAGIC_COOKIE + attributes
    message = b"\x00\x03" + len(body).to_bytes(2, "big") + bytes(range(100, 116)) + body
    return b"\x02\x00" + len(message).to_bytes(2, "big") + message


def samples() -> dict[str, tuple[bytes, str]]:
    """Every sample, by name: its bytes and the protocol it must be detected as."""
    stun = capture("stun_turnutils")
    return {
        "tls_openssl": (capture("tls_openssl"), "ssl"),
        "tls_curl": (capture("tls_curl"), "ssl"),
        "tls_openssl_split": (capture("tls_openssl_split"), "ssl"),
        "http_curl": (capture("http_curl"), "http"),
        "sip_sipp_invite": (capture("sip_sipp_invite"), "sip"),
        "stun_turnutils": (stun, "stun"),
        "stun_turnutils_rfc4571": (len(stun).to_bytes(2, "big") + stun, "stun"),
        "msturn_pseudo_tls_a": (msturn.build_pseudo_tls_client_hello(RANDOM_A), "ms-turn"),
        "msturn_pseudo_tls_b": (msturn.build_pseudo_tls_client_hello(RANDOM_B), "ms-turn"),
        "msturn_framed": (msturn_control_frame(bytes.fromhex("80080004 00000004".replace(" ", ""))), "ms-turn"),
        "pseudo_ssl": (PSEUDO_SSL_CLIENT_HELLO, "pseudo-ssl"),
    }


TRAILERS = (b"\x00", b"\r\n\r\n", b"\x16\x03\x01\x00\x05hello", bytes(range(256)))
"""Bytes a client may send after its greeting, appended to test it still decides alike."""


def assert_detects(
    testcase: SynchronousTestCase,
    detect: Callable[[bytes], Verdict],
    data: bytes,
    expected: Detected,
    label: str = "",
) -> None:
    """
    C{detect} answers C{expected} for C{data}; every shorter prefix gives
    L{NEED_MORE} or C{expected}'s protocol (never another claim, never
    L{NOT_MINE}); C{data} plus trailing bytes still gives C{expected}'s
    protocol.
    """
    testcase.assertEqual(detect(data), expected, msg=f"{label}: whole input {data!r}")
    for i in range(len(data)):
        verdict = detect(data[:i])
        if verdict is not NEED_MORE:
            testcase.assertIsInstance(verdict, Detected, f"{label}: prefix of {i} bytes: {verdict!r}")
            testcase.assertEqual(verdict.protocol, expected.protocol, msg=f"{label}: prefix of {i} bytes")
    for trailer in TRAILERS:
        verdict = detect(data + trailer)
        testcase.assertIsInstance(verdict, Detected, f"{label}: with trailer {trailer!r}")
        testcase.assertEqual(verdict.protocol, expected.protocol, msg=f"{label}: with trailer {trailer!r}")


def assert_not_mine(
    testcase: SynchronousTestCase, detect: Callable[[bytes], Verdict], data: bytes, label: str = ""
) -> None:
    """C{detect} refuses C{data} and never claims any prefix of it."""
    testcase.assertIs(detect(data), NOT_MINE, msg=f"{label}: input {data!r}")
    for i in range(len(data)):
        testcase.assertFalse(isinstance(detect(data[:i]), Detected), msg=f"{label}: prefix of {i} bytes")
