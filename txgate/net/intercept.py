# -*- test-case-name: tests.net.test_intercept -*-
"""
SSL interception: TLS towards the upstream with the client's SNI and ALPN,
the upstream certificate verified, an emulated certificate minted (or taken
from the cache) and TLS towards the client completed with it; the decrypted
stream then goes back through the pipeline (proxy handoff).

Both TLS layers are L{TLSMemoryBIOProtocol}s laid over connections that are
already open, since C{startTLS} would drop the ClientHello txgate peeked.
The client's handshake waits (reading paused, its ClientHello held) until
the upstream handshake is done, because the emulated certificate copies the
upstream's.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import weakref
from ssl import get_default_verify_paths as ssl_paths
from typing import Any, Callable, Hashable

import attrs
import service_identity
import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from OpenSSL.crypto import PKey, X509

try:  # the OpenSSL binding under pyOpenSSL, for the two calls it does not wrap (see below)
    from OpenSSL._util import ffi as _ffi, lib as _lib
except ImportError:  # pragma: no cover - a pyOpenSSL laid out otherwise
    _ffi = _lib = None
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txgate import metrics
from txgate.detect.tls import parse_client_hello
from txgate.interception import (
    Mode,
    choose_key_type,
    describe_tls_failure,
    describe_verify_error,
    upstream_alpn,
    vouched_template,
)
from txgate.interfaces import IInterceptor, InterceptRequest
from txgate.net.pipeline import Delegating
from txgate.net.tlslayer import TLSLayer
from txgate.net.upstream import IdlePools, Upstream
from txgate.pki import revocation
from txgate.pki.mint import LeafCache, LeafTemplate, template_from_upstream
from txgate.session import Address

__all__ = [
    "SSLInterceptor",
    "InterceptionFailed",
    "TLSUpstream",
    "UpstreamSource",
    "Decrypted",
    "Leaf",
    "close_idle_upstreams",
    "has_idle_upstreams",
    "interception_cache",
    "server_context",
]

HANDSHAKE_TIMEOUT = 30.0
"""Seconds the upstream TLS handshake may take before the client is told no."""

REUSE_MAX_IDLE = 8
"""Idle upstream TLS connections kept per intercepted server (as the explicit proxy's pool keeps per server)."""

REUSE_IDLE_TIMEOUT = 60.0
"""Seconds an idle upstream TLS connection is kept for the next intercepted client."""


class InterceptionFailed(Exception):
    """The stream could not be intercepted; the message says why."""


@implementer(IHandshakeListener)
class TLSUpstream(Upstream):
    """
    The decrypted side of the upstream TLS connection: an L{Upstream} like
    any other for the handoff that carries the stream.

    @ivar sni: the server name sent, or C{None}.
    @ivar alpn: the ALPN protocols offered.
    @ivar errors: C{(depth, code)} of every certificate verification error
        OpenSSL reported during the handshake.
    @ivar handshake: fires with this object once the handshake is done, or
        fails with the reason; C{None} afterwards.
    """

    def __init__(
        self, sni: str | None, alpn: tuple[str, ...], resume: Hashable = None, sessions: "SessionCache | None" = None
    ) -> None:
        super().__init__()
        self.sni = sni
        self.alpn = alpn
        self.errors: list[tuple[int, int]] = []
        self.handshake: Deferred[TLSUpstream] | None = Deferred()
        self.resume = resume
        self.sessions = sessions
        self.verified = False
        """Set once the server's certificate passed verification: only then is its session kept for resumption, and the connection reused."""
        self.template: LeafTemplate | None = None
        """The template of the leaf emulating this server's certificate, once verified."""
        self.source: UpstreamSource | None = None
        """Where this connection goes between exchanges, and where the next one comes from."""
        self.address: tuple[str, int] | None = None
        """The server's address and port, once connected."""

    def connectionMade(self) -> None:
        """The TCP connection under the TLS layer already sends at once."""

    def handshakeCompleted(self) -> None:
        if self.sessions is not None and self.resume is not None:
            group = self.transport.getHandle().get_group_name()  # type: ignore[union-attr]
            if group is not None:
                self.sessions.put_group(self.resume, group, self.address)
        d, self.handshake = self.handshake, None
        if d is not None:
            d.callback(self)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.verified and self.sessions is not None and self.resume is not None:
            # TLS 1.3 tickets arrive after the handshake: the session is
            # taken when the connection ends, for the next one to this server.
            session = self.transport.getHandle().get_session()  # type: ignore[union-attr]
            if session is not None:
                self.sessions.put(self.resume, session)
        d, self.handshake = self.handshake, None
        if d is not None:
            metrics.tls_handshake_failed("upstream", reason)
            d.errback(InterceptionFailed(f"upstream TLS handshake failed: {describe_tls_failure(reason)}"))
        super().connectionLost(reason)


@attrs.define
class _Ciphertext:
    """
    The receiver of the upstream TCP connection once TLS runs over it: every
    byte goes to the TLS layer.
    """

    tls: Any
    tcp: Upstream

    def upstream_data(self, data: bytes) -> None:
        self.tls.dataReceived(data)

    def upstream_eof(self) -> None:
        # TLS has no half-close: a server's FIN ends the connection.
        self.tcp.transport.loseConnection()

    def upstream_lost(self, reason: Failure) -> None:
        self.tls.connectionLost(reason)


@implementer(IHandshakeListener)
class Decrypted(Delegating):
    """
    The client's side once TLS towards it is ours: waits for the client's
    handshake, then hands the decrypted stream to C{start(self)} (the
    pipeline again).

    @ivar leaf: the emulated leaf (L{Leaf}) the client is shown.
    @ivar alpn: the ALPN protocol the upstream chose, offered to the client.
    """

    def __init__(
        self,
        leaf: "Leaf | None",
        alpn: bytes | None,
        start: Callable[["Decrypted"], Any],
        failed: Callable[[str], None],
    ) -> None:
        self.leaf = leaf
        self.alpn = alpn
        self._start = start
        self._failed = failed

    def select_alpn(self, offered: list[bytes]) -> bytes | Any:
        if self.alpn is not None and self.alpn in offered:
            return self.alpn
        return SSL.NO_OVERLAPPING_PROTOCOLS

    def handshakeCompleted(self) -> None:
        self.hand_over(self._start(self))
        # Both callables hold the interception request (ClientHello, context,
        # decision) for as long as the connection lives; neither runs again.
        self._start = self._failed = _spent

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._delegate is None:
            metrics.tls_handshake_failed("client", reason)
            self._failed(f"client TLS handshake failed: {describe_tls_failure(reason)}")
            return
        super().connectionLost(reason)


_CAN_RENEW_BIOS = _lib is not None and all(
    hasattr(_lib, name) for name in ("BIO_get_mem_data", "BIO_new", "BIO_s_mem", "BIO_free", "SSL_set_bio")
)
_CAN_PREDICT_KEY_SHARE = _lib is not None and hasattr(_lib, "SSL_set1_curves_list")
_CAN_TELL_RESUMED = _lib is not None and hasattr(_lib, "SSL_session_reused")


def _resumed(connection: SSL.Connection) -> bool:
    """
    Whether C{connection}'s handshake resumed a session. pyOpenSSL does not
    wrap C{SSL_session_reused}, so this uses its C{_ssl}; a pyOpenSSL
    without it answers C{False} (every handshake is then verified anew).
    """
    ssl = getattr(connection, "_ssl", None)
    return ssl is not None and _CAN_TELL_RESUMED and bool(_lib.SSL_session_reused(ssl))


def _renew_bios(connection: SSL.Connection) -> bool:
    """
    Give C{connection} new, empty memory BIOs once both of its own are
    drained, and free the old ones.

    A memory BIO keeps the largest buffer it ever held, and the handshake
    flights are the largest thing most connections ever carry: an idle
    intercepted connection would keep about 5 KiB of them for its two TLS
    layers. pyOpenSSL offers no way to swap BIOs, so this reaches into its
    C{_ssl}, C{_into_ssl} and C{_from_ssl}; a pyOpenSSL without them keeps
    its BIOs.

    @return: whether the BIOs were renewed (or cannot be): C{False} while
        either still holds bytes.
    """
    ssl = getattr(connection, "_ssl", None)
    into, out = getattr(connection, "_into_ssl", None), getattr(connection, "_from_ssl", None)
    if ssl is None or into is None or out is None or not _CAN_RENEW_BIOS:
        return True
    if _lib.BIO_get_mem_data(into, _ffi.NULL) or _lib.BIO_get_mem_data(out, _ffi.NULL):
        return False
    fresh_into, fresh_out = _lib.BIO_new(_lib.BIO_s_mem()), _lib.BIO_new(_lib.BIO_s_mem())
    if fresh_into == _ffi.NULL or fresh_out == _ffi.NULL:
        for bio in (fresh_into, fresh_out):
            if bio != _ffi.NULL:
                _lib.BIO_free(bio)
        return True
    _lib.SSL_set_bio(ssl, fresh_into, fresh_out)  # frees the old pair
    connection._into_ssl, connection._from_ssl = fresh_into, fresh_out  # type: ignore[attr-defined]
    return True


def _spent(*args: Any) -> Any:
    """Stands in for a callback dropped once used, so that a second call fails loudly."""
    raise AssertionError("called after the client's TLS handshake was done")


class _TLSLayer(TLSLayer):
    """
    Twisted's TLS layer, except that closing reads again: a TLS close waits
    for the peer's close_notify, which a connection paused for backpressure
    (or between two requests) would never read; and that the memory BIOs
    grown by the handshake are replaced by small ones once it is done
    (L{_renew_bios}).
    """

    _bios_renewed = False

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # Twisted's own state (getattr: a Twisted without it never renews).
        if not self._bios_renewed and getattr(self, "_handshakeDone", False) and not getattr(
            self, "_lostTLSConnection", True
        ):
            connection = self.getHandle()
            if connection is not None:
                self._bios_renewed = _renew_bios(connection)

    def loseConnection(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.resumeProducing()
        super().loseConnection()


@attrs.frozen
class Leaf:
    """
    A minted leaf as OpenSSL takes it, converted once: what the cache keeps
    and each client connection shows.
    """

    certificate: X509
    key: PKey


@implementer(IOpenSSLServerConnectionCreator)
class _ClientSide:
    """
    Connections towards clients: one server context for all, each connection
    with its L{Decrypted}'s leaf. A context per leaf would cost a new
    C{SSL_CTX} (and its ALPN callback) for every host name seen.
    """

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def serverConnectionForTLS(self, tls: Any) -> SSL.Connection:
        leaf = tls.wrappedProtocol.leaf
        connection = SSL.Connection(self._context, None)
        connection.use_certificate(leaf.certificate)
        connection.use_privatekey(leaf.key)
        connection.set_accept_state()
        return connection


@attrs.define
class _Remembered:
    """What txgate keeps of one upstream server between connections."""

    session: SSL.Session | None = None
    group: str | None = None


class SessionCache:
    """
    What txgate remembers of each upstream server, by server name and port,
    least recently used dropped first: its TLS session, kept only once its
    certificate verified, so the next connection resumes (no certificate
    chain to send, parse and verify again); and the key exchange group it
    chose last, verified or not, only a guess of which key share to send
    (also kept by server address, for names not seen yet).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._servers: collections.OrderedDict[Hashable, _Remembered] = collections.OrderedDict()

    def __len__(self) -> int:
        """How many sessions are kept."""
        return sum(1 for server in self._servers.values() if server.session is not None)

    def get(self, key: Hashable) -> SSL.Session | None:
        server = self._servers.get(key)
        if server is None:
            return None
        self._servers.move_to_end(key)
        return server.session

    def group(self, key: Hashable, address: Hashable = None) -> str | None:
        """
        The key exchange group the server at C{key} chose last; for a
        server not seen yet, the one chosen last at its C{address} (a name
        new to txgate is often served by a known machine); or C{None}.
        """
        server = self._servers.get(key)
        if server is None and address is not None:
            server = self._servers.get(("address", address))
        return server.group if server is not None else None

    def put(self, key: Hashable, session: SSL.Session) -> None:
        self._server(key).session = session

    def put_group(self, key: Hashable, group: str, address: Hashable = None) -> None:
        self._server(key).group = group
        if address is not None:
            self._server(("address", address)).group = group

    def _server(self, key: Hashable) -> _Remembered:
        server = self._servers.get(key)
        if server is None:
            server = self._servers[key] = _Remembered()
            while len(self._servers) > self.capacity:
                self._servers.popitem(last=False)
        else:
            self._servers.move_to_end(key)
        return server


UPSTREAM_GROUPS = ("X25519MLKEM768", "X25519", "secp256r1", "X448", "secp384r1", "secp521r1", "ffdhe2048", "ffdhe3072")
"""
The key exchange groups offered upstream once a server's choice is known: the
default list of OpenSSL 3.5 and later, in its order. With no better guess
(the first connection to a server) OpenSSL's default applies, with key shares
for the first two; the hybrid
post-quantum one costs about 10 KiB per connection for as long as the
connection lives (OpenSSL keeps every key share it generated), even when the
server picks X25519.
"""


def key_shares_for(group: str) -> bytes | None:
    """
    The OpenSSL groups list offering every group of L{UPSTREAM_GROUPS} with
    a key share for C{group} alone (C{?}: skipped where this OpenSSL lacks
    it), or C{None} for a group not in it. A server that now wants another
    group asks for it (HelloRetryRequest): one more round trip, never a
    weaker exchange.
    """
    group = group.lower()  # OpenSSL names X25519 "x25519" when it reports the group chosen
    if group not in (g.lower() for g in UPSTREAM_GROUPS):
        return None
    return ":".join(("?*" if g.lower() == group else "?") + g for g in UPSTREAM_GROUPS).encode("ascii")


def _predict_key_share(connection: SSL.Connection, group: str) -> None:
    """
    Send only the key share of C{group}, the one the server chose last time
    (as browsers predict it). pyOpenSSL has no per-connection groups call,
    so this uses its C{_ssl}; an OpenSSL refusing the list keeps its default.
    """
    shares = key_shares_for(group)
    ssl = getattr(connection, "_ssl", None)
    if shares is not None and ssl is not None and _CAN_PREDICT_KEY_SHARE:
        _lib.SSL_set1_curves_list(ssl, shares)


@implementer(IOpenSSLClientConnectionCreator)
class _UpstreamSide:
    """Connections towards upstream servers, with the client's SNI and ALPN, resuming known sessions."""

    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def clientConnectionForTLS(self, tls: Any) -> SSL.Connection:
        upstream: TLSUpstream = tls.wrappedProtocol
        connection = SSL.Connection(self._context, None)
        if upstream.sessions is not None and upstream.resume is not None:
            session = upstream.sessions.get(upstream.resume)
            if session is not None:
                connection.set_session(session)
            group = upstream.sessions.group(upstream.resume, upstream.address)
            if group is not None:
                _predict_key_share(connection, group)
        if upstream.sni:
            connection.set_tlsext_host_name(upstream.sni.encode("ascii"))
        if upstream.alpn:
            connection.set_alpn_protos([p.encode("ascii", "replace") for p in upstream.alpn])
        connection.set_connect_state()
        return connection


def _record_verify_error(connection: SSL.Connection, cert: X509, code: int, depth: int, ok: int) -> bool:
    """
    Note each verification error and let the handshake go on: an upstream
    that fails verification is still emulated, under the untrusted issuer.
    """
    if not ok:
        # Twisted makes the TLS layer the connection's app data.
        connection.get_app_data().wrappedProtocol.errors.append((depth, code))
    return True


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> Any:
    return connection.get_app_data().wrappedProtocol.select_alpn(offered)


def upstream_context(bundle: str) -> SSL.Context:
    """
    The one client context for every upstream connection: TLS 1.2 or later,
    peer verification against C{bundle} (C{"system"} for the system store)
    with errors recorded rather than fatal.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle connection keeps no 34 KiB of record buffers
    context.set_verify(SSL.VERIFY_PEER, _record_verify_error)
    if bundle == "system":
        context.set_default_verify_paths()
    else:
        context.load_verify_locations(bundle)
    return context


def server_context() -> SSL.Context:
    """The one server context towards clients; each connection brings its own leaf (L{_ClientSide})."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle connection keeps no 34 KiB of record buffers
    context.set_alpn_select_callback(_select_alpn)
    context.set_session_id(b"txgate")
    return context


def verify_upstream(upstream: TLSUpstream, leaf: x509.Certificate, name: str) -> str | None:
    """
    Why the upstream certificate is not to be trusted for C{name} (chain
    errors first, then the name), or C{None} when it is.
    """
    if upstream.errors:
        depth, code = min(upstream.errors)
        return describe_verify_error(code) + (f" (certificate {depth} of the chain)" if depth else "")
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    try:
        if address is not None:
            verify_certificate_ip_address(leaf, str(address))
        else:
            verify_certificate_hostname(leaf, name)
    except (service_identity.VerificationError, service_identity.CertificateError):
        return f"certificate does not match {name}"
    return None


def trust_anchors(bundle: str) -> list[x509.Certificate]:
    """
    The certificates of C{bundle} (C{"system"}: OpenSSL's default file), to
    find the issuer of an upstream leaf sent without its chain.
    """
    path = bundle
    if bundle == "system":
        path = ssl_paths().cafile or ssl_paths().openssl_cafile
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        return []


class RevocationChecker:
    """
    Asks the OCSP responder an upstream leaf names whether it is revoked,
    remembering answers until they go stale.

    C{soft-fail} refuses only a certificate the responder says is revoked;
    C{hard-fail} also one it cannot get a good answer for.
    """

    timeout = 5.0
    _log = Logger()

    def __init__(self, reactor: Any, mode: str, anchors: list[x509.Certificate]) -> None:
        self._reactor = reactor
        self._mode = mode
        self._anchors = anchors
        self._answers: dict[tuple[bytes, int], revocation.Status] = {}

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.timezone.utc)

    def check(self, leaf: x509.Certificate, chain: list[x509.Certificate]) -> Deferred[str | None]:
        """
        @return: a L{Deferred} firing with why C{leaf} is not to be trusted,
            or C{None}.
        """
        issuer = revocation.find_issuer(leaf, [*chain, *self._anchors])
        url = revocation.ocsp_url_of(leaf)
        if issuer is None or url is None:
            missing = "its issuer is unknown" if issuer is None else "it names no OCSP responder"
            return succeed(self._verdict(revocation.Status(revocation.UNKNOWN, f"revocation not checked: {missing}", self._now())))
        key = (issuer.fingerprint(hashes.SHA256()), leaf.serial_number)
        known = self._answers.get(key)
        if known is not None and known.until > self._now():
            return succeed(self._verdict(known))
        d = treq.post(
            url,
            data=revocation.ocsp_request(leaf, issuer),
            headers={b"Content-Type": [b"application/ocsp-request"]},
            timeout=self.timeout,
            persistent=False,
            reactor=self._reactor,
        )
        d.addCallback(treq.content)

        def answered(der: bytes) -> str | None:
            status = revocation.judge(der, leaf, issuer, self._now())
            self._answers[key] = status
            return self._verdict(status)

        def failed(failure: Failure) -> str | None:
            reason = f"OCSP responder {url} unreachable: {failure.getErrorMessage()}"
            return self._verdict(revocation.Status(revocation.UNKNOWN, reason, self._now()))

        d.addCallbacks(answered, failed)
        return d

    def _verdict(self, status: revocation.Status) -> str | None:
        if status.status == revocation.REVOKED:
            return status.reason
        if status.status == revocation.UNKNOWN:
            if self._mode == "hard-fail":
                return status.reason
            self._log.info("upstream revocation (soft-fail): {reason}; accepted", reason=status.reason)
        return None


class _Interception:
    """What one authority's interception keeps between connections."""

    def __init__(self, ssl: Any, authority: Any, reactor: Any) -> None:
        self.ssl = ssl
        self.authority = authority
        # Minted leaves: a host's certificate is minted once per template,
        # key type and issuer.
        self.leaves: LeafCache[Leaf] = LeafCache(ssl.cert_cache_size)
        self._keys: dict[str, PKey] = {}
        self.sessions = SessionCache(ssl.cert_cache_size)
        upstream_side = _UpstreamSide(upstream_context(ssl.upstream_ca_bundle))
        self.upstream_factory = TLSMemoryBIOFactory(upstream_side, True, Factory(), clock=reactor)
        self.upstream_factory.protocol = _TLSLayer
        self.client_factory = TLSMemoryBIOFactory(_ClientSide(server_context()), False, Factory(), clock=reactor)
        self.client_factory.protocol = _TLSLayer
        self.client_factory.server_side = True  # type: ignore[attr-defined]  # see TLSLayer._checkHandshakeStatus
        self.revocation: RevocationChecker | None = None
        if ssl.upstream_revocation != "off":
            self.revocation = RevocationChecker(reactor, ssl.upstream_revocation, trust_anchors(ssl.upstream_ca_bundle))
        self.reactor = reactor
        # Verified upstream TLS connections between two HTTP exchanges, by
        # _ReuseKey: the next intercepted client of that server takes one
        # instead of a handshake of its own.
        self.idle = IdlePools(reactor, REUSE_MAX_IDLE, REUSE_IDLE_TIMEOUT, group=lambda key: (key.host, key.port))

    def handshake(self, tcp: Upstream, upstream: "TLSUpstream") -> Deferred["TLSUpstream"]:
        """
        Lay TLS towards the server over the open connection C{tcp}, with
        C{upstream} as its decrypted side; fires once the handshake is done
        (within L{HANDSHAKE_TIMEOUT}), or fails.
        """
        address = Address.of(tcp.transport.getPeer())
        upstream.address = (address.host, address.port)
        tls = self.upstream_factory.protocol(self.upstream_factory, upstream)
        tls.makeConnection(tcp.transport)
        tcp.attach(_Ciphertext(tls, tcp))
        handshake = upstream.handshake
        assert handshake is not None
        timer = self.reactor.callLater(HANDSHAKE_TIMEOUT, tls.abortConnection)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return handshake.addBoth(done)

    def judge(self, upstream: "TLSUpstream", leaf: x509.Certificate, name: str) -> Deferred[str | None]:
        """
        Why the server's certificate C{leaf} is not to be trusted for
        C{name}, or C{None}: nothing is checked unless C{verify_upstream} is
        C{"strict"}. A resumed session is one txgate kept only after this
        certificate verified for this name and port (L{SessionCache}), so its
        chain and name are not checked again, as TLS clients do not on
        resumption; revocation still is (its answers are cached).
        """
        if self.ssl.verify_upstream != "strict":
            return succeed(None)
        connection = upstream.transport.getHandle()  # type: ignore[union-attr]
        problem = None if _resumed(connection) else verify_upstream(upstream, leaf, name)
        if problem is not None or self.revocation is None:
            return succeed(problem)
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        return self.revocation.check(leaf, chain[1:])

    def server_certificate(self, upstream: "TLSUpstream") -> x509.Certificate:
        """The certificate the server showed; L{InterceptionFailed} (the connection closed) when it showed none."""
        leaf = upstream.transport.getHandle().get_peer_certificate(as_cryptography=True)  # type: ignore[union-attr]
        if leaf is None:
            metrics.tls_handshake_failed("upstream", metrics.HandshakeFailure.UPSTREAM_FAILED)
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            raise InterceptionFailed(f"upstream {upstream.sni or upstream.address} sent no certificate")
        return leaf

    def trusted(self, upstream: "TLSUpstream", leaf: x509.Certificate) -> LeafTemplate:
        """Mark C{upstream} verified; the template of the leaf emulating its certificate C{leaf}."""
        now = datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)
        upstream.verified = True
        upstream.template = template_from_upstream(leaf, now=now)
        return upstream.template

    def leaf_for(self, template: LeafTemplate, key_type: str, untrusted: bool) -> Leaf:
        authority = self.authority

        def make() -> Leaf:
            key = self._keys.get(key_type)
            if key is None:
                key = self._keys[key_type] = PKey.from_cryptography_key(authority.leaf_key(key_type))
            return Leaf(X509.from_cryptography(authority.mint(template, key_type, untrusted=untrusted)), key)

        misses = self.leaves.misses
        leaf = self.leaves.get_or_mint(template, key_type, make, untrusted=untrusted)
        metrics.certificate_lookup(self.leaves.misses == misses)
        return leaf


@attrs.frozen
class _ReuseKey:
    """What makes two upstream TLS connections interchangeable for intercepted HTTP."""

    sni: str | None
    host: str
    port: int
    alpn: tuple[str, ...]

    @property
    def resume(self) -> tuple[str | None, str, int]:
        """The L{SessionCache} key of this server (the ALPN offer does not matter to a TLS session)."""
        return (self.sni, self.host, self.port)


class UpstreamSource:
    """
    Upstream TLS connections for the intercepted HTTP of one client
    connection: the HTTP handoff returns a connection here after a clean
    exchange (kept for the next intercepted client of the same server, name
    and ALPN offer), and gets one here for its next request, from the idle
    ones or newly opened and verified.

    Connection-oriented authentication (NTLM, Negotiate) is the handoff's
    to notice: such a connection stays with its client and never comes here.
    """

    def __init__(self, state: _Interception, key: _ReuseKey, connector: Any) -> None:
        self._state = state
        self.key = key
        self._connector = connector

    def take(self) -> "TLSUpstream | None":
        """An idle verified connection, or C{None}."""
        return self._state.idle.take(self.key)  # type: ignore[return-value]

    def put(self, upstream: "TLSUpstream") -> None:
        """Keep C{upstream}, between two exchanges, for whoever needs one next; an unverified one is closed."""
        if not upstream.verified:
            upstream.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._state.idle.put(self.key, upstream)

    def lend(self, upstream: "TLSUpstream") -> bool:
        """
        Keep C{upstream} among the idle ones while its client, decrypted,
        has not spoken yet, when what runs inside is sure to wait for the
        client: HTTP/1.1 agreed by ALPN. An idle client then holds no
        upstream connection; L{get} fetches one when it speaks.

        @return: whether C{upstream} was taken.
        """
        if not upstream.verified or upstream._held or upstream.eof or upstream.lost is not None:
            return False
        if upstream.transport.negotiatedProtocol != b"http/1.1":  # type: ignore[union-attr]
            return False
        self.put(upstream)
        return True

    def get(self) -> Deferred[tuple["TLSUpstream", bool]]:
        """A connection for the next request, and whether it was idle (reused)."""
        idle = self.take()
        if idle is not None:
            return succeed((idle, True))
        return self.connect().addCallback(lambda upstream: (upstream, False))

    def connect(self) -> Deferred["TLSUpstream"]:
        """
        A new connection, handshaken and verified; fails with
        L{InterceptionFailed} when the server's certificate is not to be
        trusted (the client was shown a trusted leaf for this server).
        """
        key, state = self.key, self._state
        upstream = TLSUpstream(key.sni, key.alpn, key.resume, state.sessions)
        upstream.source = self
        d = self._connector.connect(key.host, key.port)
        d.addCallback(state.handshake, upstream)
        d.addCallback(self._verify)
        return d

    def _verify(self, upstream: "TLSUpstream") -> Deferred["TLSUpstream"]:
        name = self.key.sni or self.key.host
        leaf = self._state.server_certificate(upstream)

        def judged(problem: str | None) -> "TLSUpstream":
            if problem is not None:
                upstream.transport.loseConnection()  # type: ignore[union-attr]
                raise InterceptionFailed(f"upstream certificate of {name} not trusted: {problem}")
            self._state.trusted(upstream, leaf)
            return upstream

        return self._state.judge(upstream, leaf, name).addCallback(judged)


_states: "weakref.WeakKeyDictionary[Any, _Interception]" = weakref.WeakKeyDictionary()


def interception_state(settings: Any) -> _Interception:
    """The interception state of C{settings}' authority (made on first use)."""
    state = _states.get(settings.authority)
    if state is None:
        state = _states[settings.authority] = _Interception(settings.ssl, settings.authority, settings.reactor)
    return state


def close_idle_upstreams(authority: Any) -> None:
    """Close the idle upstream TLS connections kept for C{authority}'s interception (at shutdown)."""
    state = _states.get(authority) if authority is not None else None
    if state is not None:
        state.idle.close_all()


def has_idle_upstreams(authority: Any, host: str, port: int) -> bool:
    """
    Whether C{authority}'s interception keeps idle verified TLS connections
    to C{host} and C{port}: a CONNECT there is likely to be served by one,
    and need not open a connection before the client speaks.
    """
    state = _states.get(authority) if authority is not None else None
    return state is not None and state.idle.has_group((host, port))


def interception_cache(authority: Any) -> LeafCache[Leaf] | None:
    """
    The minted-certificate cache of C{authority}'s interception (its size,
    C{hits} and C{misses} are the admin console's), or C{None} while nothing
    has been intercepted.
    """
    state = _states.get(authority)
    return state.leaves if state is not None else None


@implementer(IPlugin, IInterceptor)
class SSLInterceptor:
    """
    Intercepts C{ssl}: policy's C{ssl.forward_proxy(https)} or C{(yes)} on a
    stream whose ClientHello was detected.
    """

    name = "ssl"
    protocols = frozenset({"ssl"})
    _log = Logger()

    def intercept(self, request: InterceptRequest) -> Deferred[Any]:
        context = request.context
        state = interception_state(request.settings)
        session = context.session
        tcp: Upstream = context.upstream  # type: ignore[assignment]
        destination = session.destination
        alpn = upstream_alpn(session.alpn, Mode(request.mode))
        key = _ReuseKey(session.sni, destination.host, destination.port, alpn) if destination is not None else None
        source = None
        connector = getattr(context.service, "connector", None)
        if key is not None and connector is not None:
            source = UpstreamSource(state, key, connector)
            idle = source.take()
            if idle is not None:
                # A verified connection to this server is idle: the client is
                # shown the leaf emulating its certificate, and a connection
                # opened for this client is not needed.
                idle.detach()
                if tcp is not None:
                    tcp.transport.loseConnection()
                assert idle.template is not None
                return succeed(self._client_side(idle, request, state, idle.template, untrusted=False))
        upstream = TLSUpstream(session.sni, alpn, key.resume if key is not None else None, state.sessions)
        upstream.source = source
        if tcp is not None:
            d = state.handshake(tcp, upstream)
        elif request.connect is not None:
            d = request.connect().addCallback(state.handshake, upstream)
        else:
            return fail(InterceptionFailed("no connection to the server to intercept"))
        d.addCallback(self._upstream_ready, request, state)
        return d

    def _upstream_ready(self, upstream: TLSUpstream, request: InterceptRequest, state: _Interception) -> Any:
        session = request.context.session
        leaf = state.server_certificate(upstream)
        destination = session.destination
        name = session.sni or (destination.host if destination is not None else "")
        d = state.judge(upstream, leaf, name)
        d.addCallback(lambda problem: self._emulate(upstream, request, state, leaf, name, problem))
        return d

    def _emulate(
        self,
        upstream: TLSUpstream,
        request: InterceptRequest,
        state: _Interception,
        leaf: x509.Certificate,
        name: str,
        problem: str | None,
    ) -> Any:
        """The client side, with a leaf emulating C{leaf} (under the untrusted issuer when C{problem})."""
        if problem is None:
            return self._client_side(upstream, request, state, state.trusted(upstream, leaf), untrusted=False)
        session = request.context.session
        now = datetime.datetime.fromtimestamp(request.context.reactor.seconds(), datetime.timezone.utc)  # type: ignore[attr-defined]
        template = template_from_upstream(leaf, now=now)
        metrics.tls_handshake_failed("upstream", metrics.HandshakeFailure.UNTRUSTED_UPSTREAM)
        untrusted = bool(request.decision.properties.get("server.certificate.validate", True))
        if not untrusted:
            template = vouched_template(template, name, now)
        self._log.info(
            "session {session}: upstream certificate of {name} not trusted: {problem}; {outcome}",
            session=session.id,
            name=name,
            problem=problem,
            outcome="emulated under the untrusted issuer" if untrusted else "accepted (server.certificate.validate(no))",
        )
        return self._client_side(upstream, request, state, template, untrusted)

    def _client_side(
        self, upstream: TLSUpstream, request: InterceptRequest, state: _Interception, template: LeafTemplate, untrusted: bool
    ) -> Any:
        """The TLS layer towards the client, showing the leaf minted from C{template}."""
        try:
            hello = parse_client_hello(request.hello)
        except ValueError:
            hello = None
        key_type = choose_key_type(hello, state.ssl.leaf_keys)
        leaf = state.leaf_for(template, key_type, untrusted)
        request.context.session.intercepted = True
        decrypted = Decrypted(
            leaf,
            upstream.transport.negotiatedProtocol,  # type: ignore[union-attr]
            lambda owner: request.inner(owner, upstream),
            lambda reason: self._client_failed(request, upstream, reason),
        )
        return state.client_factory.protocol(state.client_factory, decrypted)

    def _client_failed(self, request: InterceptRequest, upstream: TLSUpstream, reason: str) -> None:
        self._log.info("session {session}: {reason}", session=request.context.session.id, reason=reason)
        upstream.transport.loseConnection()  # type: ignore[union-attr]
        request.context.finished(reason)
