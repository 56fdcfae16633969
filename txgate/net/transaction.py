# -*- test-case-name: tests.net.test_explicit -*-
"""
The books of one transaction (an HTTP request, a tunnel) for its access-log
record, shared by every service.
"""

from __future__ import annotations

from typing import Any

import attrs

from txgate.accesslog import AccessLog
from txgate.acl import client_allowed
from txgate.net.upstream import no_delay
from txgate.session import Address, Session, new_session_id

__all__ = ["Transaction", "open_session", "identify_client"]


def open_session(factory: Any, client_protocol: str, transport: Any) -> Session:
    """
    A new session for a connection accepted by C{factory}'s service,
    registered in C{factory.sessions} until the connection ends; its socket
    sends small writes at once (L{no_delay}).
    """
    no_delay(transport)
    now = factory.reactor.seconds()
    session = Session(
        id=new_session_id(),
        service=factory.service.name,
        client=Address("", 0),
        started=now,
        last_active=now,
        client_protocol=client_protocol,
        terminate=transport.abortConnection,
    )
    factory.sessions[session.id] = session
    return session


def identify_client(transport: Any, session: Session, clients: Any) -> bool:
    """
    Take the client address from C{transport} into C{session}. Behind a
    C{haproxy:} listener it is the real client's only once the PROXY header
    has been read, that is, with the first bytes: call this again then.

    @return: whether the service's C{clients} list allows it.
    """
    session.client = Address.of(transport.getPeer())
    return client_allowed(session.client.host, clients)


@attrs.define
class Transaction:
    """
    One transaction on a session: what it was, when it started and the
    session's byte counts then, so its record shows only its own bytes.

    @ivar upstream: C{new}, C{reused} or C{-} (no upstream connection).
    @ivar quiet: policy said C{access_log(no)}.
    """

    access: AccessLog
    clock: Any
    session: Session
    seq: int
    method: str
    target: str
    started: float
    bytes_in: int
    bytes_out: int
    upstream: str = "-"
    logged: bool = False
    quiet: bool = False

    @classmethod
    def begin(
        cls, access: AccessLog, clock: Any, session: Session, method: str, target: str, bytes_in: int | None = None
    ) -> "Transaction":
        """
        Start the next transaction of C{session}.

        @param bytes_in: the session's C{bytes_in} when the transaction began,
            if earlier than now (a request head already read).
        """
        return cls(
            access=access,
            clock=clock,
            session=session,
            seq=session.next_transaction(),
            method=method,
            target=target,
            started=clock.seconds(),
            bytes_in=session.bytes_in if bytes_in is None else bytes_in,
            bytes_out=session.bytes_out,
        )

    def log(self, status: int | str | None, verdict: str, reason: str = "") -> None:
        """Write the access-log record, once, unless policy said C{access_log(no)}."""
        if self.logged or self.quiet:
            return
        self.logged = True
        session = self.session
        self.access.record(
            time=self.started,
            session=session.id,
            seq=self.seq,
            client=str(session.client),
            user=session.user,
            service=session.service,
            client_protocol=session.client_protocol,
            tunneled=session.tunneled,
            method=self.method,
            target=self.target,
            status=status,
            verdict=verdict,
            bytes_in=session.bytes_in - self.bytes_in,
            bytes_out=session.bytes_out - self.bytes_out,
            duration_ms=int((self.clock.seconds() - self.started) * 1000),
            upstream=self.upstream,
            reason=reason,
        )
