"""
Sans-IO protocol detectors: bytes in, a verdict out.

Each module here reads the first bytes a client sent and answers
L{txgate.interfaces.Detected}, L{txgate.interfaces.NEED_MORE} or
L{txgate.interfaces.NOT_MINE}. None of them consumes, blocks, does I/O, logs
or raises for any input; the plugin modules in C{plugins/} (C{txgate_detect_*})
wrap them for the registry. docs/protocols.md describes what each recognises.

  - L{txgate.detect.tls}: TLS ClientHello (C{ssl}), with a ClientHello parser.
  - L{txgate.detect.msturn}: [MS-TURN] pseudo-TLS and TCP framing (C{ms-turn}),
    with the layout helpers the MS-TURN relay uses.
  - L{txgate.detect.pseudossl}: libjingle's canned SSLv2 hello (C{pseudo-ssl}).
  - L{txgate.detect.http}: HTTP/1.x request lines (C{http}).
  - L{txgate.detect.sip}: SIP requests, responses and keep-alives (C{sip}).
  - L{txgate.detect.stun}: STUN/TURN over TCP, plain or RFC 4571 framed (C{stun}).
"""

from typing import Callable

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import IDetector, Verdict

__all__ = ["CoreDetector"]


@implementer(IPlugin, IDetector)
@attrs.frozen
class CoreDetector:
    """
    A detector plugin made of one of these cores: the plugin modules in
    C{plugins/} are each one line that names the core and its priority.
    """

    name: str
    priority: int
    core: Callable[[bytes], Verdict] = attrs.field(repr=False)

    def detect(self, buffered: bytes) -> Verdict:
        return self.core(buffered)

