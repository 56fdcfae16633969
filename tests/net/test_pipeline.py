"""
Tests for L{txgate.net.pipeline}: detection, policy and handoff for a stream
whose upstream is connected.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txgate.errors import PeerProtocolError
from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, HandoffContext, Verdict
from txgate.net.pipeline import PEEK_TIMEOUT, Delegating, Pipeline, PipelineSettings
from txgate.net.pump import TunnelHandoff
from txgate.plugins import Plugin, Registry
from txgate.policy.default import DefaultPolicy
from txgate.session import Address, Session
from txgate.testing import HalfCloseableStringTransport, make_upstream


@attrs.frozen
class _Greeting:
    """Detects streams starting with C{HELO} as protocol C{greet}."""

    name: str = "greet"
    priority: int = 10

    def detect(self, buffered: bytes) -> Verdict:
        if buffered.startswith(b"HELO"):
            return Detected("greet", {"sni": "greet.example"})
        return NEED_MORE if b"HELO".startswith(buffered) else NOT_MINE


class _Strict(Protocol):
    """A handler that accepts C{HELO} lines and fails on anything else."""

    def __init__(self, context: HandoffContext) -> None:
        self.context = context
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"BAD" in self.received:
            self.context.protocol_error(PeerProtocolError("greet", "expected HELO lines"), self.received)


@attrs.define
class _StrictHandoff:
    name: str = "strict"
    protocols: frozenset[str] = frozenset({"greet"})
    tunneled: bool = False
    built: list[_Strict] = attrs.Factory(list)

    def build(self, context: HandoffContext) -> _Strict:
        self.built.append(_Strict(context))
        return self.built[-1]

    def refusal(self, buffered: bytes, reason: str) -> bytes:
        return b"NO " + buffered + b": " + reason.encode()


def _run(
    data: bytes, *, detect_protocol: bool = True, tunnel_on_error: bool = False, allow: bool = True
) -> tuple[Session, Any, HalfCloseableStringTransport, _StrictHandoff, list[str], MemoryReactorClock, Pipeline]:
    clock = MemoryReactorClock()
    strict = _StrictHandoff()
    registry = Registry(
        (
            Plugin("detector", "greet", "test", _Greeting()),
            Plugin("handoff", "strict", "test", strict),
            Plugin("handoff", "tunnel", "test", TunnelHandoff()),
        )
    )
    settings = PipelineSettings(registry, DefaultPolicy(allow), clock, detect_protocol, tunnel_on_error, 60.0)
    session = Session("s-1", "explicit", Address("127.0.0.1", 1), 0.0)
    upstream = make_upstream()
    owner = Delegating()
    client = HalfCloseableStringTransport()
    owner.makeConnection(client)
    finished: list[str] = []
    pipeline = Pipeline(settings, session, upstream, owner, finished.append)
    owner.hand_over(pipeline)
    if data:
        owner.dataReceived(data)
    return session, upstream, client, strict, finished, clock, pipeline


class PipelineTests(SynchronousTestCase):
    """
    Detected protocols go to their handoff with every peeked byte;
    others to the tunnel.
    """


    def test_detected(self) -> None:
        """C{HELO} goes to the strict handoff: client_protocol greet, not tunneled, SNI fact kept."""
        session, upstream, client, strict, finished, clock, _ = _run(b"HELO there")
        [handler] = strict.built
        self.assertEqual(handler.received, b"HELO there")
        self.assertEqual((session.client_protocol, session.tunneled, session.sni, session.stack), ("greet", False, "greet.example", ["greet"]))

    def test_unknown_tunneled(self) -> None:
        """Bytes nobody claims are tunneled as C{tcp}."""
        session, upstream, client, strict, finished, clock, _ = _run(b"\x00\x01\x02")
        self.assertEqual(upstream.transport.value(), b"\x00\x01\x02")
        self.assertEqual((session.client_protocol, session.tunneled), ("tcp", True))

    def test_detection_off(self) -> None:
        """With detection off even a known greeting is tunneled as C{tcp}."""
        session, upstream, client, strict, finished, clock, _ = _run(b"HELO", detect_protocol=False)
        self.assertEqual(strict.built, [])
        self.assertEqual(upstream.transport.value(), b"HELO")
        self.assertEqual(session.client_protocol, "tcp")

    def test_peek_timeout(self) -> None:
        """An incomplete greeting becomes C{tcp} after the peek timeout, bytes intact."""
        session, upstream, client, strict, finished, clock, _ = _run(b"HEL")
        clock.advance(PEEK_TIMEOUT - 0.1)
        self.assertEqual(upstream.transport.value(), b"")
        clock.advance(0.2)
        self.assertEqual(upstream.transport.value(), b"HEL")
        self.assertEqual(session.client_protocol, "tcp")

    def test_denied(self) -> None:
        """Policy denying the detected protocol answers in that protocol's words, closes both sides and says why."""
        session, upstream, client, strict, finished, clock, _ = _run(b"HELO", allow=False)
        self.assertTrue(client.disconnecting)
        self.assertTrue(upstream.transport.disconnecting)
        self.assertEqual(finished, ["denied: denied by default_policy"])
        self.assertEqual(client.value(), b"NO HELO: denied by default_policy")

    def test_protocol_error_closes(self) -> None:
        """Without tunnel on error, a handler's protocol error closes and names the protocol."""
        session, upstream, client, strict, finished, clock, _ = _run(b"HELO BAD")
        self.assertTrue(client.disconnecting)
        self.assertEqual(finished, ["greet protocol error: greet: expected HELO lines"])

    def test_protocol_error_tunnels(self) -> None:
        """With tunnel on error, every byte the handler received is replayed upstream."""
        session, upstream, client, strict, finished, clock, _ = _run(b"HELO BAD", tunnel_on_error=True)
        self.assertEqual(upstream.transport.value(), b"HELO BAD")
        self.assertFalse(client.disconnecting)
        self.assertTrue(session.tunneled)
        upstream.dataReceived(b"ok")
        self.assertEqual(client.value(), b"ok")
