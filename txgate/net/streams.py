# -*- test-case-name: tests.net.test_transparent,tests.net.test_socks -*-
"""
The stream services: C{transparent} (connections intercepted with iptables
C{REDIRECT}, going to their original destination), C{tcp-tunnel} (every
connection to one configured C{destination}) and C{socks5} (RFC 1928
C{CONNECT}, the negotiation in L{txgate.socks}).

All three do the same once they know where a stream goes: check the client
against the service's C{clients}, ask policy at the request checkpoint,
connect upstream and hand the stream (with every byte already read) to the
connection L{Pipeline}, as the explicit proxy does after C{CONNECT}. Each
connection is one access-log record.
"""

from __future__ import annotations

import base64
import socket
from typing import Any

import attrs
from twisted.internet import error
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate import origdst
from txgate.acl import parse_address
from txgate.auth import Refused
from txgate.interfaces import Checkpoint, Decision
from txgate.net.explicit import ExplicitProxyFactory
from txgate.net.idle import IdleWatch
from txgate.net.pipeline import Delegating, Pipeline
from txgate.net.transaction import Transaction, identify_client, open_session
from txgate.net.upstream import Upstream, describe_connect_failure
from txgate.session import Address, ClientProtocol
from txgate.errors import PeerProtocolError
from txgate.socks import (
    CheckCredentials,
    Close,
    Connect,
    Established,
    Reply,
    Send,
    SocksServer,
)

__all__ = [
    "StreamProxyFactory",
    "TransparentProxy",
    "TCPTunnelProxy",
    "SocksProxy",
    "original_destination",
    "socks_reply_for",
]


def original_destination(transport: Any) -> Address | None:
    """
    Where the client meant to connect before iptables redirected it to us:
    C{SO_ORIGINAL_DST} (IPv4) or C{IP6T_SO_ORIGINAL_DST} (IPv6) of the
    accepted socket. C{None} when the kernel knows none (no conntrack entry,
    not Linux, not a socket).
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if handle is None or not hasattr(handle, "getsockopt"):
        return None
    family = getattr(handle, "family", socket.AF_INET)
    # An IPv6 socket may carry IPv4 connections (dual stack): those answer
    # at the IPv4 level.
    levels = [(origdst.SOL_IPV6, origdst.IP6T_SO_ORIGINAL_DST)] if family == socket.AF_INET6 else []
    levels.append((origdst.SOL_IP, origdst.SO_ORIGINAL_DST))
    for level, option in levels:
        try:
            raw = handle.getsockopt(level, option, origdst.SOCKADDR_SIZE)
        except (OSError, TypeError):
            continue
        found = origdst.parse_sockaddr(raw)
        if found is not None:
            return found
    return None


def socks_reply_for(failure: Failure) -> Reply:
    """The SOCKS5 reply for an upstream connection that could not be opened."""
    if failure.check(error.DNSLookupError, error.NoRouteError):
        return Reply.HOST_UNREACHABLE
    if failure.check(error.ConnectionRefusedError):
        return Reply.CONNECTION_REFUSED
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return Reply.TTL_EXPIRED
    return Reply.GENERAL_FAILURE


def _same_address(a: Address, b: Any) -> bool:
    """Whether C{a} is the listener's own address C{b} (an C{IAddress})."""
    host, port = getattr(b, "host", None), getattr(b, "port", None)
    if host is None or port != a.port:
        return False
    mine, theirs = parse_address(a.host), parse_address(host)
    return mine is not None and mine == theirs


class StreamProxyFactory(ExplicitProxyFactory):
    """
    Shared state of one C{transparent}, C{tcp-tunnel} or C{socks5} service.
    It has what L{ExplicitProxyFactory} has, so the HTTP handoff serves plain
    HTTP found on these streams with the same pool and access log.

    @ivar original_destination: reads a connection's original destination
        from its transport (tests replace it).
    """

    original_destination = staticmethod(original_destination)

    def buildProtocol(self, addr: Any) -> "_StreamProxy":  # type: ignore[override]
        protocol = _PROTOCOLS[self.service.kind]()
        protocol.factory = self
        return protocol


class _StreamProxy(Delegating):
    """
    One client connection to a stream service, until the stream is handed to
    the pipeline.

    @ivar method: the access log's C{method} for this kind.
    @ivar session: this connection's L{Session}.
    """

    _log = Logger()
    factory: StreamProxyFactory
    method = "-"

    def connectionMade(self) -> None:
        factory = self.factory
        self.session = open_session(factory, ClientProtocol.TCP, self.transport)
        self._identify_client()
        self._identified = False
        self._closing = False
        self._connecting = False
        self._client_eof = False
        self._pending = b""
        self._transaction: Transaction | None = None
        self._idle: IdleWatch | None = IdleWatch(factory.reactor, factory.service.idle_timeout, self._timed_out)
        # Behind a haproxy: listener the client's address is known only once
        # the PROXY header was read, that is, with the first bytes.
        self._wait_for_client_address = factory.service.listen.startswith("haproxy:")
        self.start()

    def _identify_client(self) -> None:
        self._allowed = identify_client(self.transport, self.session, self.factory.service.clients)

    def start(self) -> None:
        """The connection is accepted; no bytes read yet."""

    def received(self, data: bytes) -> None:
        """Client bytes before the hand-over."""
        self._pending += data

    def dataReceived(self, data: bytes) -> None:
        first = not self._identified
        if first:
            self._identified = True
            self._identify_client()
        if self._idle is not None:
            self._idle.touch()
        if self._closing:
            return
        self.received(data)
        if first and self._wait_for_client_address:
            self._wait_for_client_address = False
            self.start()

    def readConnectionLost(self) -> None:
        if self._delegate is not None:
            super().readConnectionLost()
            return
        # The client may have sent all it has and half-closed while the
        # upstream connects: the pipeline learns of it after the hand-over.
        self._client_eof = True
        if not self._connecting:
            self._end(None, "allow", "client closed before a destination was known")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.sessions.pop(self.session.id, None)
        self._stop_idle()
        if self._delegate is not None:
            super().connectionLost(reason)
            return
        if not self._closing:
            self._closing = True
            self._log_once(None, "allow", "client closed before the tunnel was established")

    def _stop_idle(self) -> None:
        if self._idle is not None:
            self._idle.stop()
            self._idle = None

    def _timed_out(self, idle: float) -> None:
        self._idle = None
        if self._delegate is None:
            self._end(None, "allow", f"idle timeout ({self.factory.service.idle_timeout:g}s) before the tunnel was established")

    # -- the books -------------------------------------------------------------

    def _begin_transaction(self, target: Address) -> Transaction:
        factory = self.factory
        # The connection's first byte counts: SOCKS negotiation is part of it.
        self._transaction = Transaction.begin(
            factory.access, factory.reactor, self.session, self.method, str(target), 0
        )
        self._transaction.bytes_out = 0
        return self._transaction

    def _log_once(self, status: Any, verdict: str, reason: str) -> None:
        transaction = self._transaction
        if transaction is None:
            factory = self.factory
            target = str(self.session.destination) if self.session.destination is not None else "-"
            transaction = self._transaction = Transaction.begin(
                factory.access, factory.reactor, self.session, self.method, target, 0
            )
            transaction.bytes_out = 0
        transaction.log(status, verdict, reason)

    def _end(self, status: Any, verdict: str, reason: str, answer: bytes = b"") -> None:
        """Close the connection before the hand-over, and log why."""
        if self._closing:
            return
        self._closing = True
        self._stop_idle()
        if answer:
            self.session.bytes_out += len(answer)
            self.transport.write(answer)
        self.transport.loseConnection()
        self._log_once(status, verdict, reason)

    # -- the shared path: decide, connect, hand over -----------------------------

    def decide(self, target: Address, extra: dict[str, object] | None = None) -> Decision:
        """Ask policy at the request checkpoint about a stream to C{target}."""
        settings = self.factory.settings
        facts: dict[str, object] = {"url.host": target.host, "url.port": target.port}
        if self.method != "-":
            facts["method"] = self.method
        facts.update(settings.facts_for(target.host))
        if extra:
            facts.update(extra)
        decision = settings.policy.decide(Checkpoint.REQUEST, self.session, facts)
        if self._transaction is not None:
            self._transaction.quiet = decision.properties.get("access_log") is False
        return decision

    def open(self, target: Address, decision: Decision) -> None:
        """
        Connect to C{target} (reading paused meanwhile), then hand the stream
        to the pipeline; a failure is logged and L{connect_failed} answers.
        """
        self._connecting = True
        self.transport.pauseProducing()
        d = self.factory.connector.connect(target.host, target.port)
        d.addCallbacks(self._connected, self._not_connected, (target, decision), None, (target,))

    def _not_connected(self, failure: Failure, target: Address) -> None:
        self._connecting = False
        if self._closing:
            return
        _, reason = describe_connect_failure(failure, target.host, target.port)
        self._log.info(
            "session {session}: {client}: {reason}", session=self.session.id, client=str(self.session.client), reason=reason
        )
        self.connect_failed(failure, reason)

    def connect_failed(self, failure: Failure, reason: str) -> None:
        self._end(None, "allow", reason)

    def _connected(self, upstream: Upstream, target: Address, decision: Decision) -> None:
        self._connecting = False
        if self._closing:
            upstream.transport.loseConnection()
            return
        self.established(upstream)
        transaction = self._transaction
        assert transaction is not None
        transaction.upstream = "new"
        self._stop_idle()
        replay, self._pending = self._pending, b""
        self.transport.resumeProducing()

        def finished(reason: str) -> None:
            if pipeline.denied:
                transaction.log(None, "deny", reason)
            elif not pipeline.quiet:
                transaction.log(None, "allow", reason)

        pipeline = Pipeline(self.factory.settings, self.session, upstream, self, finished, decision)
        self.hand_over(pipeline, b"" if self._closing else replay)
        if self._client_eof:
            self.readConnectionLost()

    def established(self, upstream: Upstream) -> None:
        """The upstream is connected; the client has not been told yet."""

    def route(self, target: Address, extra: dict[str, object] | None = None) -> bool:
        """
        The checks every kind makes once it knows where the stream goes:
        clients, then policy; then connect.

        @return: whether the stream goes on (connecting); when C{False}, the
            refusal is logged and L{refused} has answered.
        """
        session = self.session
        session.destination = target
        self._begin_transaction(target)
        if not self._allowed:
            self._log.info(
                "{client}: denied: client not allowed by service {service}",
                client=str(session.client),
                service=session.service,
            )
            self.refused("client not allowed", "deny")
            return False
        decision = self.decide(target, extra)
        if not decision.allow:
            self.refused(decision.reason or "denied by policy", "deny")
            return False
        self.open(target, decision)
        return True

    def refused(self, reason: str, verdict: str) -> None:
        self._end(None, verdict, reason)


class TransparentProxy(_StreamProxy):
    """
    A connection redirected to us by the kernel: it goes where the client
    sent it. SNI and Host (found later by detection) only name it.
    """

    def start(self) -> None:
        if self._wait_for_client_address:
            return
        target = self.factory.original_destination(self.transport)
        if target is None:
            reason = "no original destination (the connection was not redirected to this port)"
        elif _same_address(target, self.transport.getHost()):
            self.session.destination = target
            reason = f"original destination {target} is this listener (not redirected): connecting would loop"
        else:
            self.route(target)
            return
        self._log.warn(
            "session {session}: {client}: {reason}; closing",
            session=self.session.id,
            client=str(self.session.client),
            reason=reason,
        )
        self._end(None, "deny", reason)


class TCPTunnelProxy(_StreamProxy):
    """Every connection goes to the service's C{destination}."""

    def start(self) -> None:
        if self._wait_for_client_address:
            return
        destination = self.factory.service.destination
        assert destination is not None, "config validation requires destination"
        self.route(Address(*destination))


class SocksProxy(_StreamProxy):
    """
    A SOCKS5 client: negotiation by L{SocksServer}, then the shared path.
    """

    method = "CONNECT"

    def start(self) -> None:
        if self._wait_for_client_address:
            self._wait_for_client_address = False  # SOCKS waits for bytes anyway
        self._socks = SocksServer(require_credentials=self.factory.service.realm is not None)

    def received(self, data: bytes) -> None:
        self.session.bytes_in += len(data)
        try:
            commands = self._socks.receive_data(data)
        except PeerProtocolError as e:
            self._log.info(
                "session {session}: {client}: {reason}", session=self.session.id, client=str(self.session.client), reason=str(e)
            )
            self._end(None, "allow", str(e))
            return
        self._run(commands)

    def _run(self, commands: list[Any]) -> None:
        for command in commands:
            if self._closing:
                return
            if isinstance(command, Send):
                self.session.bytes_out += len(command.data)
                self.transport.write(command.data)
            elif isinstance(command, CheckCredentials):
                self._run(self._check(command))
            elif isinstance(command, Connect):
                self._connect(command)
            elif isinstance(command, Close):
                verdict = "deny" if command.reply is Reply.NOT_ALLOWED else "allow"
                self._end(None, verdict, f"socks5: {command.reason}")
            elif isinstance(command, Established):
                self._pending = command.trailing
                # Those bytes are counted again as the tunnel carries them.
                self.session.bytes_in -= len(command.trailing)
            else:
                raise RuntimeError(f"unexpected SOCKS command: {command!r}")

    def _check(self, command: CheckCredentials) -> list[Any]:
        if not self._allowed:
            # A client the service does not serve learns nothing about the
            # passwords: it is refused at its request, with 0x02.
            return self._socks.credentials_checked(True)
        name = self.factory.service.realm
        realm = self.factory.settings.realms.get(name or "")
        if realm is None:
            self._log.error("service {service} names realm {realm}, which is not loaded", service=self.session.service, realm=name)
            return self._socks.credentials_checked(False, f"authentication realm {name} is not configured")
        if command.username is None or ":" in command.username:
            return self._socks.credentials_checked(False, f"invalid credentials for realm {name}")
        value = b"Basic " + base64.b64encode(command.username.encode("utf-8") + b":" + command.password)
        outcome = realm.authenticate([value], self.factory.reactor.seconds())
        if isinstance(outcome, Refused):
            self._log.info(
                "session {session}: {client}: socks5 authentication failed: {reason}",
                session=self.session.id,
                client=str(self.session.client),
                reason=outcome.reason,
            )
            return self._socks.credentials_checked(False, outcome.reason)
        self.session.user = outcome.user
        return self._socks.credentials_checked(True)

    def _connect(self, command: Connect) -> None:
        extra: dict[str, object] = {}
        if self.session.user is not None:
            extra = {"user": self.session.user, "authenticated": True}
        self.route(Address(command.host, command.port), extra)

    def decide(self, target: Address, extra: dict[str, object] | None = None) -> Decision:
        decision = super().decide(target, extra)
        wanted = decision.properties.get("authenticate")
        if decision.allow and wanted and self.session.user is None:
            # Fail closed: SOCKS5 can only ask for credentials at the start,
            # through the service's realm.
            reason = f"policy requires authentication (realm {wanted}); SOCKS5 asks only through the service's realm"
            return attrs.evolve(decision, allow=False, reason=reason)
        return decision

    def refused(self, reason: str, verdict: str) -> None:
        self._reject(Reply.NOT_ALLOWED, reason, verdict)

    def connect_failed(self, failure: Failure, reason: str) -> None:
        self._reject(socks_reply_for(failure), reason, "allow")

    def _reject(self, reply: Reply, reason: str, verdict: str) -> None:
        commands = self._socks.reject(reply, reason)
        for command in commands:
            if isinstance(command, Send):
                self._end(None, verdict, reason, command.data)

    def established(self, upstream: Upstream) -> None:
        host = upstream.transport.getHost()
        self._run(self._socks.connected(getattr(host, "host", "0.0.0.0"), getattr(host, "port", 0)))


_PROTOCOLS: dict[str, type[_StreamProxy]] = {
    "transparent": TransparentProxy,
    "tcp-tunnel": TCPTunnelProxy,
    "socks5": SocksProxy,
}
