"""
An example txgate plugin module: a detector and a handoff for a made-up
line protocol whose clients open with C{HELO }.

Drop this file into a directory listed in C{plugin_path} and txgate uses it
with no change to its own code: a CONNECT tunnel whose first bytes are
C{HELO ...} is logged as C{client_protocol=greeting}, C{tunneled=no}, and the
handoff answers each line itself. docs/plugins.md walks through it, and
tests/e2e/test_plugins.py runs it inside a real txgate.
"""

from twisted.internet.protocol import Protocol
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.errors import PeerProtocolError
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, HandoffContext, IDetector, IHandoff

GREETING = b"HELO "


@implementer(IPlugin, IDetector)
class GreetingDetector:
    """Claims streams that start with C{HELO }."""

    name = "greeting"
    priority = 50

    def detect(self, buffered: bytes):
        if buffered.startswith(GREETING):
            return Detected("greeting")
        if GREETING.startswith(buffered):
            return NEED_MORE
        return NOT_MINE


class GreetingHandler(Protocol):
    """Answers C{HELO name} lines with C{HI name}; anything else is a protocol error."""

    def __init__(self, context: HandoffContext) -> None:
        self.context = context
        self.buffer = b""
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        session = self.context.session
        session.bytes_in += len(data)
        self.received += data
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if not line.startswith(GREETING):
                self.context.protocol_error(
                    PeerProtocolError("greeting", f"expected a HELO line, got {line[:20]!r}"), self.received
                )
                return
            reply = b"HI " + line[len(GREETING):].strip() + b"\n"
            session.bytes_out += len(reply)
            self.transport.write(reply)

    def connectionLost(self, reason=None) -> None:
        self.context.upstream.transport.loseConnection()
        self.context.finished("greeting finished")


@implementer(IPlugin, IHandoff)
class GreetingHandoff:
    """Carries the C{greeting} protocol itself (the upstream is not used)."""

    name = "greeting"
    protocols = frozenset({"greeting"})
    tunneled = False

    def build(self, context: HandoffContext) -> GreetingHandler:
        return GreetingHandler(context)

    def refusal(self, buffered: bytes, reason: str) -> bytes:
        """Refused clients are told so in the protocol's own words."""
        return b"NO " + reason.encode("utf-8", "replace") + b"\n"


detector = GreetingDetector()
handoff = GreetingHandoff()
