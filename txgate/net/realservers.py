# -*- test-case-name: tests.net.test_reverse -*-
"""
Connections to a virtual service's real servers: TLS verified against the
configured CA and name, an optional PROXY v2 header first, and a bounded
keep-alive pool per real server.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust, trustRootFromCertificates
from twisted.python.failure import Failure
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from txgate.config import RealServerConfig
from txgate.errors import ConfigError
from txgate.net.tlslayer import TLSLayer
from txgate.net.upstream import IdlePool, Upstream, _UpstreamFactory
from txgate.reverse.balancing import RealServer

__all__ = ["Backend", "RealServerConnector", "client_tls"]


def client_tls(config: RealServerConfig) -> IOpenSSLClientConnectionCreator:
    """
    TLS towards a real server: its certificate must chain to C{ca_bundle}
    and name C{server_name} (or the address), HTTP/1.1 offered in ALPN.

    @raise ConfigError: the CA bundle holds no certificate.
    """
    if config.ca_bundle == "system":
        trust: Any = platformTrust()
    else:
        try:
            with open(config.ca_bundle, "rb") as f:
                anchors = x509.load_pem_x509_certificates(f.read())
        except (OSError, ValueError) as e:
            raise ConfigError(config.ca_bundle, "real_server.ca_bundle", f"no CA certificates could be read: {e}") from None
        trust = trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(a)) for a in anchors])
    return optionsForClientTLS(config.verified_name, trustRoot=trust, acceptableProtocols=[b"http/1.1"])


class _HeaderFirst(ProtocolWrapper):
    """Writes the PROXY header before anything else, TLS included."""

    def connectionMade(self) -> None:
        self.transport.write(self.factory.header)
        super().connectionMade()


class _HeaderFactory(WrappingFactory):
    protocol = _HeaderFirst
    noisy = False

    def __init__(self, wrapped: Any, header: bytes) -> None:
        super().__init__(wrapped)
        self.header = header


@implementer(IStreamClientEndpoint)
class _Wrapping:
    """
    An endpoint whose connections run under a protocol wrapper (the PROXY
    header, TLS): C{wrap(factory)} is the wrapping factory, and the caller
    gets its own protocol back, as from C{wrapClientTLS}.
    """

    def __init__(self, inner: Any, wrap: Any) -> None:
        self._inner = inner
        self._wrap = wrap

    def connect(self, factory: Any) -> Deferred[Any]:
        d = self._inner.connect(self._wrap(factory))
        return d.addCallback(lambda wrapper: wrapper.wrappedProtocol)


class _TLSFactory(TLSMemoryBIOFactory):
    """TLS over txgate's own layer (L{TLSLayer})."""

    protocol = TLSLayer


class _Counted(Upstream):
    """An upstream connection counted in its real server's C{connections}."""

    def connectionMade(self) -> None:
        self.factory.state.connections += 1
        super().connectionMade()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.factory.state.connections -= 1
        super().connectionLost(reason)


class _CountingFactory(_UpstreamFactory):
    protocol = _Counted

    def __init__(self, state: RealServer) -> None:
        self.state = state


class RealServerConnector:
    """
    Opens connections to one real server; the C{connect(host, port, tls)}
    signature is L{txgate.net.upstream.Connector}'s, so L{UpstreamPool} uses
    it as is.
    """

    def __init__(self, reactor: Any, config: RealServerConfig, connect_timeout: float, state: RealServer) -> None:
        self._reactor = reactor
        self._state = state
        self._config = config
        self._timeout = connect_timeout
        self._tls = client_tls(config) if config.tls else None

    def connect(self, host: str, port: int, tls: bool = False, header: bytes = b"") -> Deferred[Upstream]:
        endpoint: Any = HostnameEndpoint(self._reactor, self._config.host, self._config.port, timeout=self._timeout)
        if header:
            endpoint = _Wrapping(endpoint, lambda factory: _HeaderFactory(factory, header))
        if self._tls is not None:
            tls = self._tls
            endpoint = _Wrapping(endpoint, lambda factory: _TLSFactory(tls, True, factory))
        return endpoint.connect(_CountingFactory(self._state))


class Backend:
    """
    One real server of a virtual service: its live state (what scheduling,
    persistence and the admin console read), its connector and its pool.
    """

    def __init__(self, reactor: Any, config: RealServerConfig, connect_timeout: float, pool_size: int) -> None:
        self.config = config
        self.state = RealServer(key=config.key, weight=config.weight)
        self.connector = RealServerConnector(reactor, config, connect_timeout, self.state)
        self.pool = IdlePool(reactor, pool_size)

    def idle(self) -> Upstream | None:
        """A pooled connection, taken at once (no Deferred on the keep-alive path), or C{None}."""
        return self.pool.take()

    def connect(self) -> Deferred[tuple[Upstream, bool]]:
        """A new connection, for the pool once its first exchange is over."""
        d = self.connector.connect(self.config.host, self.config.port, self.config.tls)
        return d.addCallback(lambda upstream: (upstream, False))

    def put(self, upstream: Upstream) -> None:
        self.pool.put(upstream)

    def connect_own(self, header: bytes) -> Deferred[tuple[Upstream, bool]]:
        """A new connection no one else will share (PROXY header, NTLM)."""
        d = self.connector.connect(self.config.host, self.config.port, self.config.tls, header)
        return d.addCallback(lambda upstream: (upstream, False))
