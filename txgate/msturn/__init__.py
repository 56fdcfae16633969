"""
MS-TURN and STUN/TURN over TCP, sans-IO: the observer behind the relay
handoff (L{txgate.net.msturn}). It counts and checks; it never changes bytes.
"""

from txgate.msturn.relay import (
    CLIENT_HELLO_LENGTH,
    SERVER_HELLO_LENGTH,
    Observer,
    is_pseudo_tls_client_hello,
    server_hello_deviation,
)

__all__ = [
    "CLIENT_HELLO_LENGTH",
    "SERVER_HELLO_LENGTH",
    "Observer",
    "is_pseudo_tls_client_hello",
    "server_hello_deviation",
]
