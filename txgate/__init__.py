# -*- test-case-name: tests.test_package -*-
"""
txgate: a Twisted proxy for Lync / Skype for Business traffic and everything else
that shares port 443 with HTTPS.

The public surface is L{txgate.interfaces}, the value types it passes
(L{txgate.session}, L{txgate.errors}) and L{txgate.testing}.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
