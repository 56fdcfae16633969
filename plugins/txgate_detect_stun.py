# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{stun} (priority 50).

STUN / TURN over TCP, plain or with RFC 4571 framing: C{stun}, with facts
C{framing} and C{cookie}.

The logic lives in L{txgate.detect.stun}; docs/protocols.md describes it.
"""

from txgate.detect import CoreDetector, stun

detector = CoreDetector("stun", 50, stun.detect)
