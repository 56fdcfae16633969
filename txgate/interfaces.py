# -*- test-case-name: tests.test_interfaces -*-
"""
The plugin-facing interfaces: detectors, interceptors, handoffs and policy
providers. Built-in plugins in C{plugins/} implement them exactly as a
third-party module in a directory named by C{plugin_path} would.

A plugin is a module-level object providing L{twisted.plugin.IPlugin} and one of
these interfaces; see docs/plugins.md.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Callable, Mapping

import attrs
from zope.interface import Attribute, Interface

if TYPE_CHECKING:  # pragma: no cover
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IProtocol, IReactorTime

    from txgate.session import Session

__all__ = [
    "IDetector",
    "IHandoff",
    "IInterceptor",
    "IPolicy",
    "IPolicyProvider",
    "Detected",
    "NEED_MORE",
    "NOT_MINE",
    "Verdict",
    "HandoffContext",
    "InterceptRequest",
    "Checkpoint",
    "Decision",
    "PolicyEnvironment",
]


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_MORE = _Sentinel("NEED_MORE")
"""A detector's answer: the bytes so far could be mine; show me more."""

NOT_MINE = _Sentinel("NOT_MINE")
"""A detector's answer: these bytes are not my protocol."""


@attrs.frozen
class Detected:
    """
    A detector's answer: the stream is C{protocol}.

    @ivar protocol: the C{client.protocol} name (see L{txgate.session.ClientProtocol}).
    @ivar facts: what the detector learnt (e.g. C{{"sni": ..., "alpn": (...)}}).
    """

    protocol: str
    facts: Mapping[str, object] = attrs.field(factory=dict)


Verdict = Detected | _Sentinel


class IDetector(Interface):
    """
    Names the protocol of a stream from its first bytes.

    A detector never consumes, blocks, does I/O or logs: it is handed the bytes
    buffered so far and answers; the pipeline replays every buffered byte to
    whatever carries the stream next.
    """

    name = Attribute("A short unique name, e.g. C{'tls'}.")
    priority = Attribute(
        "An int; lower runs first. A detector that answers NEED_MORE holds back"
        " the answers of detectors after it."
    )

    def detect(buffered: bytes) -> Verdict:
        """
        @param buffered: every byte the client sent so far (at most the peek cap).
        @return: L{Detected}, L{NEED_MORE} or L{NOT_MINE}; never raises for
            malformed input (malformed means L{NOT_MINE}).
        """


@attrs.frozen
class HandoffContext:
    """
    What a handoff needs to carry one stream.

    @ivar session: the connection's L{Session}; the handoff keeps its byte
        counts and C{last_active} current.
    @ivar reactor: the reactor, for timers.
    @ivar upstream: the already-connected upstream, an object with C{transport}
        and C{attach(receiver)}; after C{attach}, upstream bytes go to
        C{receiver.upstream_data(bytes)}, end-of-stream to
        C{receiver.upstream_eof()} and loss to C{receiver.upstream_lost(reason)}.
    @ivar idle_timeout: seconds without traffic after which to close.
    @ivar protocol_error: call with a L{txgate.errors.PeerProtocolError} and the
        client bytes received so far when the stream turns out not to be the
        protocol this handoff speaks: the pipeline then tunnels (replaying those
        bytes) or closes, as the service and policy say.
    @ivar finished: call once when the stream is over, with a short reason.
    @ivar service: the service's shared state (its configuration as
        C{service}, C{settings}, C{connector}, C{pool}, C{access} log,
        C{reactor}), for handoffs that open more upstream connections or
        record a transaction per request; C{None} outside a service.
    """

    session: Session
    reactor: IReactorTime
    upstream: object
    idle_timeout: float
    protocol_error: Callable[[Exception, bytes], None]
    finished: Callable[[str], None]
    service: object = None


class IHandoff(Interface):
    """
    Carries a stream whose protocol is known: the byte tunnel, an HTTP handler,
    a SIP handler, an MS-TURN relay.
    """

    name = Attribute("A short unique name, e.g. C{'tunnel'}.")
    protocols = Attribute(
        "A frozenset of the client.protocol names this handoff carries."
    )
    tunneled = Attribute(
        "C{True} when it moves bytes without understanding them (the"
        " C{tunneled} policy fact)."
    )

    def build(context: HandoffContext) -> IProtocol:
        """
        @return: a protocol that takes over the client connection: the pipeline
            calls its C{makeConnection} with the client transport, then
            C{dataReceived} with every byte buffered during detection.
        """

    def refusal(buffered: bytes, reason: str) -> bytes:
        """
        What to send a client of this protocol that policy refuses, before
        the connection is closed: an HTTP 403 page, a SIP C{403 Forbidden}
        with a Warning header, or C{b""} to just close.

        @param buffered: the client bytes peeked during detection (the first
            request, for protocols that answer one).
        @param reason: why, to show the client where the protocol allows.
        """


@attrs.frozen
class InterceptRequest:
    """
    What an interceptor needs to take over one stream.

    @ivar context: the stream's handoff context (its C{upstream} is the
        plain connection to the server, still unattached, or C{None}: see
        C{connect}).
    @ivar settings: the service's pipeline settings (C{ssl}, C{authority},
        C{reactor}).
    @ivar hello: the client bytes peeked so far (the ClientHello).
    @ivar mode: policy's C{ssl.forward_proxy} value (C{https} or C{yes}).
    @ivar decision: policy's decision at the C{ssl-intercept} checkpoint.
    @ivar inner: builds the protocol for the decrypted stream: called with
        the protocol owning the decrypted client side (it can hand the
        stream on) and the decrypted upstream (an object like
        C{HandoffContext.upstream}).
    @ivar connect: when C{context.upstream} is C{None} (a CONNECT answered
        before connecting, because idle intercepted connections to its
        server were kept), opens the plain connection to the server: returns
        a L{Deferred} firing with an object like C{HandoffContext.upstream}.
    """

    context: HandoffContext
    settings: Any
    hello: bytes
    mode: str
    decision: "Decision"
    inner: Callable[[Any, Any], Any]
    connect: Callable[[], Any] | None = None


class IInterceptor(Interface):
    """
    Terminates a protocol towards the client and re-originates it upstream
    (SSL interception), so the inner stream can go back through the detectors.
    """

    name = Attribute("A short unique name, e.g. C{'ssl'}.")
    protocols = Attribute("A frozenset of client.protocol names it can intercept.")

    def intercept(request: InterceptRequest) -> Deferred:
        """
        Open the protocol towards the upstream, then prepare the client side.

        @return: a L{Deferred} firing with the protocol that takes over the
            client connection (the pipeline replays the peeked bytes into
            it), or failing with the reason interception is impossible (the
            pipeline then closes the stream). Once the client side is up,
            that protocol calls C{request.inner}, and on a failure before
            that, C{request.context.finished}.
        """


class Checkpoint(enum.StrEnum):
    """
    Where in a connection's life policy is asked.
    """

    CONNECTION = "connection"
    SSL_INTERCEPT = "ssl-intercept"
    REQUEST = "request"


@attrs.frozen
class Decision:
    """
    The answer of policy at one checkpoint.

    @ivar allow: the verdict.
    @ivar reason: why, shown in the error page and the log (e.g. the rule's
        C{file:line} and DENY text).
    @ivar properties: other properties set by policy: C{ssl.forward_proxy}
        (C{"no"}, C{"yes"}, C{"https"}), C{detect_protocol} (absent, or an
        object with C{enabled(protocol, service_default)} and
        C{any_enabled(service_default)}), C{tunnel_on_error} (bool or absent),
        C{authenticate} (a realm name or C{None}), C{access_log} and
        C{server.certificate.validate} (bool).
    @ivar matched: where the rules that applied are (C{file:line}), for
        policy traces.
    """

    allow: bool
    reason: str = ""
    properties: Mapping[str, object] = attrs.field(factory=dict)
    matched: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        return "allow" if self.allow else "deny"


class IPolicy(Interface):
    """
    A loaded policy.
    """

    def decide(checkpoint: Checkpoint, session: Session, facts: Mapping[str, object]) -> Decision:
        """
        @param facts: the transaction's facts beyond the session (C{url}, C{method}).
        @return: a L{Decision}; never raises for any session.
        """


class IPolicyProvider(Interface):
    """
    Loads policy files of one language.
    """

    name = Attribute("A short unique name, e.g. C{'cpl'}.")

    def accepts(path: str) -> bool:
        """
        @return: whether this provider reads the file at C{path} (by suffix).
        """

    def load(path: str, default_allow: bool, environment: PolicyEnvironment) -> IPolicy:
        """
        @param default_allow: the verdict when no rule decides
            (C{default_policy}).
        @param environment: the names the policy may refer to besides its own.
        @raise txgate.errors.ConfigErrors: the file is not valid policy; each
            error names the file and line:column.
        """


@attrs.frozen
class PolicyEnvironment:
    """
    What a policy file may refer to that the configuration defines.

    @ivar categories: category names loaded from C{[txgate] categories}.
    @ivar realms: authentication realm names (C{[realm.NAME]} tables).
    """

    categories: frozenset[str] = frozenset()
    realms: frozenset[str] = frozenset()
