# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{pseudo-ssl} (priority 15).

Google Talk / libjingle pseudo-SSL: the canned 72-byte SSLv2 CLIENT-HELLO
(C{pseudo-ssl}).

The logic lives in L{txgate.detect.pseudossl}; docs/protocols.md describes it.
"""

from txgate.detect import CoreDetector, pseudossl

detector = CoreDetector("pseudo-ssl", 15, pseudossl.detect)
