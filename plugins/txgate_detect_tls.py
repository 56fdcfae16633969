# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{tls} (priority 20).

A TLS ClientHello, reassembled across records and TCP segments: C{ssl}, with
facts C{sni}, C{alpn}, C{versions} and C{ech}. It leaves the [MS-TURN] pseudo-
TLS hello to the C{ms-turn} detector.

The logic lives in L{txgate.detect.tls}; docs/protocols.md describes it.
"""

from txgate.detect import CoreDetector, tls

detector = CoreDetector("tls", 20, tls.detect)
