# -*- test-case-name: tests.net.test_sip -*-
"""
The SIP handoff: carries SIP (or SIP decrypted from TLS) between the client
and its upstream, message by message.

It is the byte tunnel (L{txgate.net.pump.Tunnel}: producers both ways,
half-close, idle timeout, byte counts) with a SIP reader on each direction.
Client messages are forwarded whole, as they arrived, except that a NEGOTIATE
offering C{Compression: LZ77-8K} is rewritten to offer C{None}; server bytes
are forwarded as they arrive and framed only to be logged.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.errors import PeerProtocolError
from txgate.interfaces import HandoffContext, IHandoff
from txgate.net.pump import Tunnel
from txgate.sip.framing import (
    KeepAlive,
    Message,
    SipReader,
    first_request,
    forbidden_response,
    rewrite_negotiate_compression,
)

__all__ = ["SipHandler", "SipHandoff"]


class SipHandler(Tunnel):
    """
    Relays one SIP connection.

    @ivar last_request: the method, Call-ID, From and To of the last request
        the client sent (C{{"method": ..., "call_id": ..., "from": ...,
        "to": ...}}), empty before the first; for policy at the SIP
        checkpoints to come.
    @ivar messages: how many messages each way (C{"client"}, C{"server"}).
    @ivar passthrough: C{True} once the stream is no longer parsed (the
        server accepted compression anyway); bytes then move as in a tunnel.

    On a framing error in the client's bytes, L{HandoffContext.protocol_error}
    gets every client byte not yet forwarded: each message is forwarded only
    when complete, so the server has seen whole messages and those bytes are
    exactly the rest of the stream. A tunnel that replays them carries on
    byte-exact whether the error came in the first message or the hundredth.
    Errors in the server's bytes are logged once and that direction is no
    longer parsed; the server's bytes are forwarded unchanged either way.
    """

    _log = Logger()
    bulk_path = False  # every byte goes through the SIP reader

    def __init__(self, context: HandoffContext) -> None:
        super().__init__(context)
        protocol = context.session.client_protocol if context.session.client_protocol in ("sip", "sips") else "sip"
        self._protocol = protocol
        self._client_reader = SipReader(protocol)
        self._server_reader: SipReader | None = SipReader(protocol)
        self.last_request: dict[str, str] = {}
        self.messages = {"client": 0, "server": 0}
        self.passthrough = False
        self._negotiate_rewritten = False
        self._failed = False

    # client -> upstream
    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        session = self._session
        session.bytes_in += len(data)
        session.last_active = self._idle.last = self._seconds()  # type: ignore[union-attr]
        if self.passthrough:
            self._upstream.transport.write(data)
            return
        reader = self._client_reader
        reader.receive(data)
        write = self._upstream.transport.write
        while True:
            try:
                event = reader.next_event()
            except PeerProtocolError as error:
                self._client_error(error, reader.pending)
                return
            if event is None:
                return
            if isinstance(event, KeepAlive):
                write(event.raw)
                continue
            self.messages["client"] += 1
            message = rewrite_negotiate_compression(event)
            if message is not event:
                self._negotiate_rewritten = True
                self._log.info(
                    "sip {session}: NEGOTIATE offered {offer}; offering Compression: None so the stream stays readable",
                    session=session.id,
                    offer=event.header("compression"),
                )
            if message.is_request:
                self.last_request = {
                    "method": message.method or "",
                    "call_id": message.call_id,
                    "from": message.from_,
                    "to": message.to,
                }
            self._log_message("client", message)
            write(message.raw)

    def _client_error(self, error: PeerProtocolError, unforwarded: bytes) -> None:
        """Hand the rest of the stream to the pipeline: tunnel (replaying it) or close."""
        self._failed = True
        self._done = True
        if self._idle is not None:
            self._idle.stop()
        self._log.info(
            "sip {session}: client framing error after {count} messages: {error}",
            session=self._session.id,
            count=self.messages["client"],
            error=str(error),
        )
        self._context.protocol_error(error, unforwarded)

    def readConnectionLost(self) -> None:
        # A client that half-closes mid-message: the server gets the partial
        # message as it would without txgate, then the half-close.
        pending = self._client_reader.pending
        if pending and not self._failed and not self.passthrough:
            self._client_reader = SipReader(self._protocol)
            self._upstream.transport.write(pending)
        super().readConnectionLost()

    # upstream -> client
    def upstream_data(self, data: bytes) -> None:
        super().upstream_data(data)
        reader = self._server_reader
        if reader is None:
            return
        reader.receive(data)
        while True:
            try:
                event = reader.next_event()
            except PeerProtocolError as error:
                self._server_reader = None
                self._log.info(
                    "sip {session}: server framing error, relaying its bytes unparsed: {error}",
                    session=self._session.id,
                    error=str(error),
                )
                return
            if event is None:
                return
            if isinstance(event, Message):
                self.messages["server"] += 1
                self._log_message("server", event)
                self._check_compression_answer(event)
                if self._server_reader is None:
                    return

    def _check_compression_answer(self, response: Message) -> None:
        """
        A server that answers our C{Compression: None} with a compressed
        NEGOTIATE anyway makes both directions LZ77 from here on; stop parsing
        rather than call the compressed bytes a protocol error.
        """
        if response.is_request or response.cseq_method != "NEGOTIATE":
            return
        if response.status is None or not 200 <= response.status < 300:
            return
        answer = response.header("compression").strip()
        if answer and answer.lower() != "none":
            self._log.warn(
                "sip {session}: server chose Compression: {answer}; relaying the rest of the stream unparsed",
                session=self._session.id,
                answer=answer,
            )
            self.passthrough = True
            self._server_reader = None
            pending = self._client_reader.pending
            if pending:
                self._upstream.transport.write(pending)

    def _log_message(self, direction: str, message: Message) -> None:
        fields: dict[str, Any] = {
            "session": self._session.id,
            "client_protocol": self._protocol,
            "direction": direction,
            "what": message.summary,
            "method": message.method,
            "status": message.status,
            "call_id": message.call_id,
            "from": message.from_,
            "to": message.to,
            "cseq": message.cseq,
        }
        self._log.info("sip {direction} {what} call_id={call_id} from={from} to={to}", **fields)


@implementer(IPlugin, IHandoff)
class SipHandoff:
    """
    The handoff for C{sip} and C{sips} (SIP found inside intercepted TLS):
    C{tunneled=no}.
    """

    name = "sip"
    protocols = frozenset({"sip", "sips"})
    tunneled = False

    def build(self, context: HandoffContext) -> SipHandler:
        return SipHandler(context)

    def refusal(self, buffered: bytes, reason: str) -> bytes:
        """
        A C{403 Forbidden} with C{Warning: 399 txgate "reason"} answering the
        first complete request in C{buffered}; C{b""} (just close) when there
        is none.
        """
        return forbidden_response(first_request(buffered), reason)
