# -*- test-case-name: tests.detect.test_registry -*-
"""
Built-in detector C{http} (priority 40).

An HTTP/1.x request line: C{http}, with facts C{method} and C{target}.

The logic lives in L{txgate.detect.http}; docs/protocols.md describes it.
"""

from txgate.detect import CoreDetector, http

detector = CoreDetector("http", 40, http.detect)
