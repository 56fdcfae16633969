# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{ms-turn} (priority 10).

[MS-TURN] over TCP: the 50-byte pseudo-TLS client hello (C{pseudo_tls=True}) or
a stream opening with a TURN control frame (C{pseudo_tls=False}). It runs
before C{tls}: the pseudo-TLS hello is a well-formed TLS 1.0 ClientHello too.

The logic lives in L{txgate.detect.msturn}; docs/protocols.md describes it.
"""

from txgate.detect import CoreDetector, msturn

detector = CoreDetector("ms-turn", 10, msturn.detect)
