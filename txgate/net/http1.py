# -*- test-case-name: tests.net.test_explicit,tests.net.test_reverse -*-
"""
The HTTP/1.1 glue the explicit and reverse proxies share, between their
protocols and the sans-IO readers of L{txgate.http}: each message is read
once, by the same code in both modes.

  - L{ClientConnection}: the client's request body handed to the exchange
    as its framing delimits it, and responses framed back to the client;
  - L{ServerResponse}: a server's response read (1xx heads, the final head,
    the body) and sent on to the client.

Each proxy keeps what differs: when reading starts and stops, what a
refusal answers, which headers go on, what the books say.
"""

from __future__ import annotations

from typing import Any, Callable

from txgate.http.framing import BadHead, Framing, RequestBody, RequestHead, check_head, frame_response, head_end
from txgate.http.proxying import Headers
from txgate.http.responses import BadResponse, BodyReader, ResponseHead, parse_response_head, response_head_end

__all__ = ["ClientConnection", "ServerResponse"]


class ClientConnection:
    """
    The HTTP/1.1 half of a proxy's client connection.

    The using class sets C{_buffer}, C{_pending} (bytearrays) and
    C{_max_head} when the connection starts, hands client bytes to
    L{_bytes_in}, and defines:

      - C{_request_in(request)}: a whole head was read; start its exchange.
        L{_body_in} then hands the exchange the body when reading is on, and
        ends a request without one at once; a class that ends such a request
        itself (C{client_end([])}) sets L{_request_ended} first;
      - C{_head_refused(error)}: a head L{check_head} refused (a L{BadHead});
      - C{_body_refused(status, reason)}: a chunked body that breaks its
        framing;
      - C{_send(pieces)}: write (and count) bytes to the client.
    """

    transport: Any
    _buffer: bytearray
    """The request head being read."""
    _scanned = 0
    """How much of L{_buffer} was searched for the head's end already."""
    _max_head: int
    _paused = False
    """Whether this connection paused its transport (bytes came while not reading)."""
    _exchange: Any = None
    """The exchange under way: C{client_data(data)} and C{client_end(trailers)}."""
    _request: RequestHead | None = None
    _body: RequestBody | None = None
    _request_ended = False
    _reading = True
    _closing = False
    _pending: bytearray
    """Bytes after the head not handed on yet: its body, then pipelined requests, which wait."""
    _framing: Framing | None = None
    """How the response to C{_request} is framed, once its head is sent."""
    _response_done = False
    _send: Callable[[list[bytes]], None]
    _request_in: Callable[[RequestHead], None]
    _head_refused: Callable[[BadHead], None]
    _body_refused: Callable[[int, str], None]

    def _bytes_in(self, data: bytes) -> None:
        """Client bytes: a head's, a body's, or the next request's (which wait)."""
        if self._request is None:
            self._head_in(data)
            return
        self._pending += data
        if not self._reading or self._request_ended:
            # Pipelined or early bytes wait; no more are read until this
            # exchange is over, so they cannot pile up. (Again each time:
            # the server's connection, as a consumer, may have resumed us.)
            self._paused = True
            self.transport.pauseProducing()
            return
        self._body_in()

    def _head_in(self, data: bytes) -> None:
        """Hold bytes until a whole request head is here, then read it and start its exchange."""
        buffer = self._buffer
        buffer += data
        try:
            end = head_end(buffer, self._max_head, self._scanned)
            if end is None:
                self._head_waits()
                self._scanned = len(buffer)
                return
            request = check_head(memoryview(buffer)[:end].tobytes())
        except BadHead as e:
            self._head_refused(e)
            return
        self._head_read()
        self._scanned = 0
        self._pending += memoryview(buffer)[end:]
        buffer.clear()
        self._request = request
        self._framing = None
        self._response_done = False
        self._body = RequestBody(request)
        self._request_ended = False
        self._request_in(request)
        self._body_in()

    def _head_waits(self) -> None:
        """The head goes on in bytes not here yet."""

    def _head_read(self) -> None:
        """A whole head is here."""

    def _body_in(self) -> None:
        """
        Hand the exchange the request body in L{_pending}, as far as its
        framing goes (a chunked one checked strictly, and decoded, on the
        way); what follows the body is the next request's, and waits.
        """
        exchange, body = self._exchange, self._body
        if self._request_ended or not self._reading or self._closing or exchange is None or body is None:
            return
        data = bytes(self._pending)
        self._pending.clear()
        pieces: list[bytes] = []
        try:
            end = body.feed(data, pieces)
        except BadHead as e:
            self._body_refused(e.status, f"malformed chunked body: {e.reason}")
            return
        if end is not None:
            self._request_ended = True
            self._pending += memoryview(data)[end:]
        for piece in pieces:
            if piece:
                exchange.client_data(piece)
                if self._exchange is not exchange or self._closing:
                    return
        if end is not None:
            exchange.client_end(body.trailers)
        else:
            self._body_waits()

    def _body_waits(self) -> None:
        """The body goes on in bytes not here yet."""

    # -- responses to the client --------------------------------------------

    def send_informational(self, status: int, reason: bytes, headers: Headers) -> None:
        """A 1xx response (100 Continue, 101 Switching Protocols, 103 Early Hints), before the final one."""
        self._send([Framing.informational(status, reason, headers).head])

    def send_response(self, status: int, reason: bytes, headers: Headers) -> None:
        """The final response's head; its body follows with L{send_data} and L{send_end}."""
        assert self._request is not None
        self._framing = framing = frame_response(self._request, status, reason, headers)
        self._send([framing.head])

    def send_data(self, data: bytes) -> None:
        assert self._framing is not None
        pieces = self._framing.data(data)
        if pieces:
            self._send(pieces)

    def send_end(self, trailers: Headers) -> None:
        assert self._framing is not None
        end = self._framing.end(trailers)
        if end:
            self._send([end])
        self._response_done = True


class ServerResponse:
    """
    The reading half of an exchange's server connection: 1xx heads go on to
    the client, the final head starts the body, the body goes on as it
    comes, and the exchange ends with it.

    The using exchange keeps C{_proxy} (a L{ClientConnection}), C{_request}
    (the client's L{RequestHead}), C{_inbox} (a bytearray) and C{_body}
    (C{None} until the final head), and defines:

      - C{_respond(head)}: send the final head on;
      - C{_switching(head, rest)}: a 101;
      - C{_bad_response(reason)}: a response that cannot be forwarded;
      - C{_finish()}: the response has ended (C{_body.reusable} says
        whether the connection can carry another request).
    """

    lenient = False
    """Read heads as browsers do (L{parse_response_head}): the forward proxy's origin servers."""
    _proxy: Any
    _request: Any
    _inbox: bytearray
    _body: BodyReader | None = None
    _finished = False
    _response_started = False
    _status: int | None = None
    _upstream_eof = False
    _respond: Callable[[ResponseHead], None]
    _switching: Callable[[ResponseHead, bytes], None]
    _bad_response: Callable[[str], None]
    _finish: Callable[[], None]

    def _heads(self) -> None:
        """Read response heads from C{_inbox}: 1xx ones, then the final one."""
        proxy = self._proxy
        while self._body is None and not self._finished:
            inbox = self._inbox
            try:
                end = response_head_end(inbox, self.lenient)
                if end is None:
                    self._waiting()
                    return
                head = parse_response_head(bytes(inbox[:end]), self.lenient)
            except BadResponse as e:
                self._bad_response(str(e))
                return
            rest = bytes(inbox[end:])
            inbox.clear()
            if head.status == 101:
                self._switching(head, rest)
                return
            if head.status < 200:
                proxy.send_informational(head.status, head.reason, head.headers)
                inbox += rest
                continue
            try:
                self._body = BodyReader(self._request.method, head)
            except BadResponse as e:
                self._bad_response(str(e))
                return
            self._response_started = True
            self._status = head.status
            self._respond(head)
            if not self._finished:
                self._body_in(rest)

    def _body_in(self, data: bytes) -> None:
        """Bytes of the response body: on to the client; the exchange ends with the body."""
        body = self._body
        assert body is not None
        pieces: list[bytes] = []
        try:
            end = body.feed(data, pieces)
        except BadResponse as e:
            self._bad_response(str(e))
            return
        proxy = self._proxy
        for piece in pieces:
            if piece:
                proxy.send_data(piece)
        if end is None:
            self._waiting()
            return
        if end < len(data):
            # Bytes after the response's end (a body after a HEAD, a wrong
            # Content-Length): the connection cannot be trusted with another
            # request, or they would become the next client's response.
            body.reusable = False
        proxy.send_end(body.trailers)
        self._finish()

    def _read_eof(self) -> None:
        """The server closed: the end of a body that ends that way."""
        if not self._upstream_eof:
            self._upstream_eof = True
            body = self._body
            if body is not None and not self._finished and body.eof():
                self._proxy.send_end(body.trailers)
                self._finish()

    def _waiting(self) -> None:
        """The response goes on in bytes not here yet."""
