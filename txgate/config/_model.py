# -*- test-case-name: tests.config.test_load -*-
"""
The validated configuration values.
"""

from __future__ import annotations

import ipaddress
from typing import Mapping

import attrs

from txgate.pki.mint import KEY_TYPE_ECDSA, KEY_TYPE_RSA

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SERVICE_KINDS = ("explicit-http", "transparent", "tcp-tunnel", "socks5")
"""Service kinds this version can run; the docs list what each does."""

DEFAULT_CLIENTS = (
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
)
"""Loopback and private networks: txgate is never an open proxy by default."""


@attrs.frozen
class TxgateConfig:
    """The C{[txgate]} section."""

    state_dir: str = "var"
    plugin_path: tuple[str, ...] = ()
    access_log: str = "var/log/access.log"
    access_log_format: str = "text"
    policy: str = ""
    policy_trace: bool = False
    default_policy: str = "allow"
    required_plugins: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    drain_timeout: float = 30.0
    hosts_file: str = ""
    """A file of static name to address overrides for upstream connections (L{txgate.hosts}); C{""} for none."""


@attrs.frozen
class AdminConfig:
    """
    The C{[admin]} section: the admin console and its JSON API.

    @ivar listen: an endpoint string; C{""} turns the admin service off.
    @ivar token_file: a file holding the bearer token every request from a
        non-loopback address must carry; required when C{listen} is not
        loopback-only.
    @ivar refresh: seconds after which the HTML pages reload themselves.
    """

    listen: str = "tcp:8081:interface=127.0.0.1"
    token_file: str = ""
    refresh: float = 5.0


@attrs.frozen
class ServiceConfig:
    """One C{[[service]]} table."""

    name: str
    kind: str
    listen: str
    clients: tuple[Network, ...]
    idle_timeout: float = 1800.0
    connect_timeout: float = 10.0
    max_header_size: int = 65536
    detect_protocol: bool = True
    tunnel_on_protocol_error: bool = False
    destination: tuple[str, int] | None = None
    """C{tcp-tunnel}: the host (a name or an IP literal) and port every connection goes to."""
    realm: str | None = None
    """C{socks5}: the C{[realm.NAME]} whose users may log in (RFC 1929); C{None} for no authentication."""


@attrs.frozen
class RealmConfig:
    """
    One C{[realm.NAME]} table: an authentication realm policy can name in
    C{authenticate(NAME)}.

    @ivar name: the realm, sent to clients in C{Proxy-Authenticate}.
    @ivar htpasswd: the password file (bcrypt or salted SHA-1 entries).
    @ivar credentials_ttl: seconds a verified C{Proxy-Authorization} value is
        accepted again without hashing the password; 0 hashes every request.
    """

    name: str
    htpasswd: str
    credentials_ttl: float = 300.0


LEAF_KEY_TYPES = (KEY_TYPE_ECDSA, KEY_TYPE_RSA)
"""Leaf key types emulated certificates can carry."""


@attrs.frozen
class SSLConfig:
    """
    The C{[ssl]} section: txgate's issuer, emulated certificates, the CRL and
    OCSP it serves, and how upstream certificates are checked.

    @ivar crl_host: C{host[:port]} written into the CDP and AIA URLs; C{""}
        means derived (see L{crl_host_of}).
    """

    issuer_cert: str = ""
    issuer_key: str = ""
    untrusted_issuer: str = ""
    leaf_keys: tuple[str, ...] = LEAF_KEY_TYPES
    cert_cache_size: int = 1024
    crl_distribution_point: bool = True
    crl_host: str = ""
    crl_validity_days: int = 30
    ocsp: bool = True
    verify_upstream: str = "strict"
    upstream_ca_bundle: str = "system"
    upstream_revocation: str = "off"
    crl_listen: str = ""


@attrs.frozen
class Config:
    """
    A whole validated configuration.

    @ivar path: the file it came from (C{"<defaults>"} for the embedded one).
    @ivar realms: the C{[realm.NAME]} tables by name.
    @ivar ssl: the C{[ssl]} section.
    """

    path: str
    txgate: TxgateConfig
    services: tuple[ServiceConfig, ...]
    realms: Mapping[str, RealmConfig] = attrs.field(factory=dict)
    ssl: SSLConfig = SSLConfig()
    admin: AdminConfig = AdminConfig()


# -- reverse mode ----------------------------------------------------------------

SCHEDULERS = ("least-connection", "round-robin", "weighted")
PERSISTENCE_MODES = ("active-cookie", "source-ip", "none")


@attrs.frozen
class RealServerConfig:
    """
    One C{[[virtual_service.real_server]]}.

    @ivar server_name: the name sent as SNI and verified in the server's
        certificate; C{""} means the host of C{address}.
    """

    host: str
    port: int
    tls: bool = True
    ca_bundle: str = "system"
    server_name: str = ""
    weight: int = 1

    @property
    def key(self) -> str:
        """The server's identity in cookies, hashing and logs: C{host:port}."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def verified_name(self) -> str:
        return self.server_name or self.host


@attrs.frozen
class HealthCheckConfig:
    """C{[virtual_service.health_check]}; C{port = None} checks the real server's own port."""

    enabled: bool = True
    port: int | None = None
    path: str = "/healthcheck.html"
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3
    expect: int = 200


@attrs.frozen
class PersistenceConfig:
    """C{persistence = { mode = ..., cookie = ..., timeout = ... }}."""

    mode: str = "active-cookie"
    cookie: str = "MS-WSMAN"
    timeout: float = 1200.0


@attrs.frozen
class VirtualServiceConfig:
    """
    One C{[[virtual_service]]}: a listener, what it lets through and the
    real servers behind it.

    @ivar certificates: PEM files (key and full chain each); empty for a
        plain-HTTP service.
    """

    name: str
    listen: str
    allowed_hosts: tuple[str, ...]
    real_servers: tuple[RealServerConfig, ...]
    certificates: tuple[str, ...] = ()
    allowed_paths: tuple[str, ...] = ("/*",)
    scheduling: str = "least-connection"
    persistence: PersistenceConfig = PersistenceConfig()
    idle_timeout: float = 1800.0
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    max_header_size: int = 65536
    connect_timeout: float = 10.0
    pool_size: int = 64
    send_proxy: bool = False
    health_check: HealthCheckConfig = HealthCheckConfig()

    @property
    def kind(self) -> str:
        return "reverse-https" if self.certificates else "reverse-http"


@attrs.frozen
class LogsConfig:
    """C{[logs]}: the ESP log files; C{""} turns one off."""

    connection_log: str = "var/log/esp-connection.log"
    security_log: str = "var/log/esp-security.log"
    user_log: str = "var/log/esp-user.log"


@attrs.frozen
class ReverseConfig:
    """A whole validated reverse-mode configuration."""

    path: str
    txgate: TxgateConfig
    virtual_services: tuple[VirtualServiceConfig, ...]
    logs: LogsConfig = LogsConfig()
    admin: AdminConfig = AdminConfig()
