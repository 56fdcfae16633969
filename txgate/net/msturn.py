# -*- test-case-name: tests.net.test_msturn -*-
"""
The MS-TURN relay handoff: pseudo-TLS MS-TURN and plain STUN/TURN over TCP.

It is the byte tunnel (L{txgate.net.pump.Tunnel}) with an
L{txgate.msturn.relay.Observer} watching each chunk after it was forwarded.
The observer never changes or holds bytes, so a stream whose framing
deviates from [MS-TURN] (real clients do) is relayed exactly as the tunnel
would; the deviation is logged once and counted.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import HandoffContext, IHandoff
from txgate.msturn.relay import Observer
from txgate.net.pump import Tunnel

__all__ = ["MsTurnRelay", "MsTurnHandoff"]


class MsTurnRelay(Tunnel):
    """
    Relays one MS-TURN or STUN/TURN connection and observes its framing.

    @ivar observer: the L{Observer}, or C{None} if it failed (a bug, logged
        once; the relay carries on as a plain tunnel).
    """

    _log = Logger()
    bulk_path = False  # every byte goes through the framing observer

    def __init__(self, context: HandoffContext) -> None:
        super().__init__(context)
        protocol = "stun" if context.session.client_protocol == "stun" else "ms-turn"
        self.protocol = protocol
        self.observer: Observer | None = Observer(protocol)
        self._logged = 0

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self._observe("client", data)

    def upstream_data(self, data: bytes) -> None:
        super().upstream_data(data)
        self._observe("server", data)

    def _observe(self, side: str, data: bytes) -> None:
        observer = self.observer
        if observer is None:
            return
        try:
            if side == "client":
                observer.client_bytes(data)
            else:
                observer.server_bytes(data)
        except Exception:
            # The observer promises never to raise; if it does, that is a bug
            # in txgate, and it must not cost the user the stream.
            self.observer = None
            self._log.failure("ms-turn {session}: observer failed; relaying unobserved", session=self._session.id)
            return
        while self._logged < len(observer.deviations):
            deviation = observer.deviations[self._logged]
            self._logged += 1
            self._log.info(
                "ms-turn deviation: {deviation}",
                session=self._session.id,
                client_protocol=self.protocol,
                deviation=deviation,
            )

    def _finish(self, reason: str) -> None:
        if not self._done and self.observer is not None:
            observer = self.observer
            self._log.info(
                "ms-turn {session} ended: {control} control and {data} data frames,"
                " {deviations} deviations ({reason})",
                session=self._session.id,
                client_protocol=self.protocol,
                control=observer.control_frames,
                data=observer.data_frames,
                client_control=observer.client.control,
                client_data=observer.client.data,
                server_control=observer.server.control,
                server_data=observer.server.data,
                deviations=len(observer.deviations),
                unparsed=observer.client.unparsed + observer.server.unparsed,
                reason=reason,
            )
        super()._finish(reason)


@implementer(IPlugin, IHandoff)
class MsTurnHandoff:
    """
    The handoff for C{ms-turn} (never intercepted) and C{stun}:
    C{tunneled=no}.
    """

    name = "ms-turn"
    protocols = frozenset({"ms-turn", "stun"})
    tunneled = False

    def build(self, context: HandoffContext) -> MsTurnRelay:
        return MsTurnRelay(context)

    def refusal(self, buffered: bytes, reason: str) -> bytes:
        """MS-TURN has no way to say no before its handshake: the connection is closed."""
        return b""
