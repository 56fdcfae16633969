# -*- test-case-name: tests.net.test_httphandler -*-
"""
The HTTP handoff: HTTP found inside a tunnel (a CONNECT, a SOCKS or TCP
tunnel) or on a transparent port, carried request by request.

It is the explicit proxy's HTTP machinery with two differences: requests are
origin-form and always go to the connection's destination (the Host header
only names it, for policy and logs), and a stream that turns out not to be
HTTP is handed back to the pipeline (tunnel on protocol error) instead of
being answered with 400.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate.errors import PeerProtocolError
from txgate.http.proxying import Target, error_response, parse_host_header, parse_target
from txgate.interfaces import HandoffContext, IHandoff
from txgate.net.explicit import ExplicitProxy
from txgate.http.framing import BadHead, RequestHead
from txgate.session import ClientProtocol

__all__ = ["HTTPHandoff", "InnerHTTP"]


class InnerHTTP(ExplicitProxy):
    """
    HTTP/1.1 requests of one stream whose destination is already known.

    @ivar _received: the client bytes of the request head being read, kept so
        a stream that is not HTTP after all can be tunneled with every byte.
    """

    def __init__(self, context: HandoffContext) -> None:
        self.context = context
        self.factory = context.service  # type: ignore[assignment]

    def connectionMade(self) -> None:
        context = self.context
        self.session = context.session
        self.connection_user = context.session.user
        self.session.client_protocol = self.session.client_protocol or ClientProtocol.HTTP
        self._identified = True
        self._allowed = True  # the service checked the client before the pipeline
        self._received = bytearray()
        self._ended = False
        self.begin_http()
        self.spare = context.upstream
        # Inside intercepted TLS requests go only to the server the client's
        # handshake was emulated for: over this connection's upstream, or
        # one its source (the interceptor's) hands out.
        self.pinned = context.session.intercepted
        self.scheme = "https" if self.pinned else "http"
        self._source = getattr(context.upstream, "source", None) if self.pinned else None
        self._authenticated = False
        """Set once NTLM or Negotiate began: the upstream then stays with this connection."""

    def dataReceived(self, data: bytes) -> None:
        if self.spare is not None and len(self._received) <= self.factory.service.max_header_size:
            self._received += data
        super().dataReceived(data)

    def target_of(self, request: RequestHead) -> Target:
        """
        Origin-form targets go to the connection's destination; the Host
        header names it.
        """
        destination = self.session.destination
        if destination is None or request.method == b"CONNECT":
            raise PeerProtocolError("http", "CONNECT inside a tunnel is not supported")
        name, path = destination.host, request.target
        if not (request.target.startswith(b"/") or request.target == b"*"):
            absolute = parse_target(request.method, request.target)
            name, path = absolute.host, absolute.path
        else:
            host = dict(request.headers).get(b"host")
            if host:
                name = parse_host_header(host)
        return Target(self.scheme, name, destination.port, path, address=destination.host)

    def _bad_request(self, e: BadHead) -> None:
        error = PeerProtocolError("http", f"malformed HTTP request: {e.reason}", e.status)
        if self.spare is not None:
            # Nothing was forwarded yet: the pipeline may tunnel the stream
            # with every byte received, or close it, as policy says; either
            # way the stream and its upstream are the pipeline's again.
            self._closing = self._ended = True
            self.spare = None
            self._stop_idle()
            self.context.protocol_error(error, bytes(self._received))
            return
        super()._bad_request(e)

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.stop()
            self._idle = None

    def exchange_done(self, reusable: bool) -> None:
        self._received = bytearray()
        super().exchange_done(reusable)

    def keep_upstream(self, upstream: Any, authenticating: bool = False) -> None:
        """
        After a clean exchange, give the upstream back to its source, for
        whichever client needs one next.

        A connection NTLM or Negotiate authenticated (C{authenticating}, or
        any earlier exchange), or one without a source, is kept for this
        client's next request instead; if the server closes it (or speaks)
        meanwhile, the client connection is closed too, so the client opens
        a new one (which gets a new upstream).
        """
        self._authenticated = self._authenticated or authenticating
        if self._source is not None and not self._authenticated:
            self._source.put(upstream)
            return
        self.spare = upstream
        upstream.attach(_PinnedWatch(self, upstream))

    def next_upstream(self) -> Any:
        """
        A L{Deferred} upstream (and whether it was reused) for a request when
        this connection holds none, or C{None} when it must not get another:
        the client authenticated its connection, or there is no source.
        """
        if self._source is None or self._authenticated:
            return None
        return self._source.get()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        spare, self.spare = self.spare, None
        if spare is not None:  # opened for a request that never came, or kept for the next
            if self._source is not None and not self._authenticated:
                self._source.put(spare)  # idle and verified: another client's
            else:
                spare.transport.loseConnection()
        super().connectionLost(reason)
        if not self._ended:
            self._ended = True
            self.context.finished("closed by client")


@attrs.define
class _PinnedWatch:
    """The receiver of a pinned upstream between two requests."""

    proxy: InnerHTTP
    upstream: Any

    def upstream_data(self, data: bytes) -> None:
        self.upstream_lost(None)

    def upstream_eof(self) -> None:
        self.upstream_lost(None)

    def upstream_lost(self, reason: Failure | None) -> None:
        proxy = self.proxy
        if proxy.spare is self.upstream:
            proxy.spare = None
            self.upstream.transport.loseConnection()
            if proxy._exchange is None and not proxy._closing:
                proxy._closing = True
                proxy.transport.loseConnection()


@implementer(IPlugin, IHandoff)
class HTTPHandoff:
    """
    Carries C{http}: plain HTTP inside a tunnel or on a transparent port
    (C{tunneled=no}, a record per request).
    """

    name = "http"
    protocols = frozenset({"http"})
    tunneled = False

    def build(self, context: HandoffContext) -> Any:
        if context.service is None:
            raise ValueError("the http handoff needs the service's shared state (HandoffContext.service)")
        return InnerHTTP(context)

    def refusal(self, buffered: bytes, reason: str) -> bytes:
        """A 403 page, as the explicit proxy answers a denied request."""
        return error_response(403, reason)
