"""
Built-in handoff: the MS-TURN relay for pseudo-TLS MS-TURN and plain
STUN/TURN over TCP (C{client.protocol=ms-turn} or C{stun}, C{tunneled=no}).
"""

from txgate.net.msturn import MsTurnHandoff

msturn = MsTurnHandoff()
