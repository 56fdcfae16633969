# -*- test-case-name: tests.detect.test_pseudossl -*-
"""
Google Talk "pseudo-SSL": libjingle's (now WebRTC's) C{AsyncSSLSocket}.

To get through firewalls that only allow SSL on port 443, libjingle opens the
TCP connection with a fixed, canned SSL 2.0-format CLIENT_HELLO
(C{kSslClientHello} in libjingle's C{socketadapters.cc}, today WebRTC's
C{rtc_base/socket_adapters.cc} and Chromium's
C{components/webrtc/fake_ssl_client_socket.cc}); the server answers a canned
TLS 1.0 ServerHello (C{kSslServerHello}), and then both sides speak their
protocol (XMPP, STUN, RTP) in the clear. The server side in libjingle accepts
exactly these 72 bytes and nothing else, so this detector does the same.

Layout of the 72 bytes (SSLv2 record header with the high bit set)::

    80 46            record length 70
    01               CLIENT-HELLO
    03 01            version 3.1
    00 2d            cipher-specs length 45 (15 three-byte specs)
    00 00            session-id length 0
    00 10            challenge length 16
    [45 bytes]       the cipher specs
    [16 bytes]       a fixed challenge
"""

from __future__ import annotations

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, Verdict

__all__ = ["PSEUDO_SSL_CLIENT_HELLO", "detect"]

PSEUDO_SSL_CLIENT_HELLO = bytes.fromhex(
    # SSLv2 header, CLIENT-HELLO, version 3.1, lengths (45, 0, 16)
    "8046" "01" "0301" "002d" "0000" "0010"
    # cipher specs
    "010080" "030080" "0700c0" "060040" "020080" "040080" "000004" "00feff"
    "00000a" "00fefe" "000009" "000064" "000062" "000003" "000006"
    # challenge
    "1f170ca62f0078fc" "46552eb18339f1ea"
)
"""libjingle's C{kSslClientHello}: every pseudo-SSL client sends exactly these bytes."""

assert len(PSEUDO_SSL_CLIENT_HELLO) == 72


def detect(buffered: bytes) -> Verdict:
    """
    C{pseudo-ssl} when the stream starts with L{PSEUDO_SSL_CLIENT_HELLO};
    L{NEED_MORE} while it is a prefix of it.
    """
    head = buffered[: len(PSEUDO_SSL_CLIENT_HELLO)]
    if head != PSEUDO_SSL_CLIENT_HELLO[: len(head)]:
        return NOT_MINE
    if len(head) < len(PSEUDO_SSL_CLIENT_HELLO):
        return NEED_MORE
    return Detected("pseudo-ssl")
