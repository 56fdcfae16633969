# -*- test-case-name: tests.net.test_service -*-
"""
The forward proxy as a Twisted service: one listener per configured
C{[[service]]}, sharing the plugins, policy, upstream pool and access log.
"""

from __future__ import annotations

import collections
import datetime
import os
import signal
import sys
from typing import IO, TYPE_CHECKING, Any

import attrs

from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate import metrics
from txgate.accesslog import AccessLog, FileAccessObserver, format_json, format_text
from txgate.config import Config, ServiceConfig
from txgate.errors import ConfigError, ConfigErrors
from txgate.interfaces import IPolicy, PolicyEnvironment
from txgate.admin.source import LocalSource
from txgate.net.explicit import ExplicitProxyFactory
from txgate.net.intercept import close_idle_upstreams, interception_cache
from txgate.net.listeners import listen
from txgate.net.operations import Running, drain, start_admin
from txgate.net.pipeline import PipelineSettings
from txgate.net.pkiservice import authority_site
from txgate.net.streams import StreamProxyFactory
from txgate.net.upstream import Connector, UpstreamPool
from txgate.pki.authority import Authority, ca_directory
from txgate.pki.keyring import fingerprint, private_directory
from txgate.policy.live import LivePolicy
from txgate.plugins import Registry

if TYPE_CHECKING:  # pragma: no cover
    from txgate.tap import Prepared

__all__ = ["ForwardService", "load_policy"]


def load_policy(config: Config, registry: Registry, environment: PolicyEnvironment = PolicyEnvironment()) -> IPolicy:
    """
    The policy the configuration names, loaded by the policy plugin that
    accepts the file; C{default_policy} alone when none is named.

    @raise ConfigError: no policy plugin reads the file.
    @raise ConfigErrors: the file is invalid (each error names line:column).
    """
    from txgate.policy.default import DefaultPolicy

    allow = config.txgate.default_policy == "allow"
    path = config.txgate.policy
    if not path:
        return DefaultPolicy(allow)
    if not os.path.isfile(path):
        raise ConfigError(config.path, "txgate.policy", f"{path!r} is not a file")
    for plugin in registry.of_kind("policy"):
        provider: Any = plugin.provider
        if provider.accepts(path):
            return provider.load(path, allow, environment)  # type: ignore[no-any-return]
    names = ", ".join(p.name for p in registry.of_kind("policy")) or "none installed"
    raise ConfigError(
        config.path, "txgate.policy", f"no policy plugin reads {path!r} (policy plugins: {names})"
    )


def describe_address(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(getattr(address, "name", address))
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _raise(error: Exception) -> Any:
    def load() -> IPolicy:
        raise error

    return load


_SERVICE_OPTIONS = ("clients", "idle_timeout", "max_header_size", "detect_protocol", "tunnel_on_protocol_error", "destination", "realm")
"""Service options a reload puts in force for new connections."""


def _reconfigure(service: "ForwardService", new: Config) -> tuple[list[str], list[str]]:
    """
    Apply what can change without a restart to C{service}; return what was
    applied and what needs a restart.
    """
    old = service.config
    applied: list[str] = []
    restart: list[str] = []
    if new.realms != old.realms:
        applied.append("realms")
    if new.txgate.categories != old.txgate.categories:
        applied.append("categories")
    new_services = {s.name: s for s in new.services}
    kept = []
    for before in old.services:
        after = new_services.pop(before.name, None)
        if after is None or (before.kind, before.listen) != (after.kind, after.listen):
            restart.append(f"service {before.name}")
            kept.append(before)
            continue
        changed = [key for key in _SERVICE_OPTIONS if getattr(before, key) != getattr(after, key)]
        if changed:
            applied.append(f"service {before.name} ({', '.join(changed)})")
        kept.append(after)
    restart.extend(f"service {name}" for name in new_services)
    for name, factory in service.factories.items():
        config = next((s for s in kept if s.name == name), factory.service)
        factory.service = config
        factory.settings = attrs.evolve(
            factory.settings,
            detect_protocol=config.detect_protocol,
            tunnel_on_protocol_error=config.tunnel_on_protocol_error,
            idle_timeout=config.idle_timeout,
            realms=service.realms,
            categories=service.categories,
        )
    if new.ssl != old.ssl:
        restart.append("[ssl]")
    if new.admin != old.admin:
        restart.append("[admin]")
    for key in ("state_dir", "access_log", "access_log_format", "plugin_path", "required_plugins", "hosts_file"):
        if getattr(new.txgate, key) != getattr(old.txgate, key):
            restart.append(f"txgate.{key}")
    txgate = attrs.evolve(
        old.txgate,
        policy=new.txgate.policy,
        policy_trace=new.txgate.policy_trace,
        default_policy=new.txgate.default_policy,
        categories=new.txgate.categories,
        drain_timeout=new.txgate.drain_timeout,
    )
    service.config = attrs.evolve(old, txgate=txgate, services=tuple(kept), realms=new.realms)
    return applied, restart


class ForwardService(MultiService):
    """
    Listens on every configured service and writes the access log.
    """

    _log = Logger()

    def __init__(self, prepared: Prepared, reactor: Any, running: Running = Running()) -> None:
        """
        @param prepared: the configuration with everything it loaded
            (L{txgate.tap.prepare}).
        @param running: alone, or as one of C{--workers}.
        """
        super().__init__()
        self.run_as = running
        self.admin_token = prepared.admin_token
        self.transactions: collections.Counter[str] = collections.Counter()
        self.config = config = prepared.config
        self.registry = prepared.registry
        self.policy = LivePolicy(prepared.policy, trace=config.txgate.policy_trace)
        self.environment = prepared.environment
        self.categories = prepared.categories
        self.realms = prepared.realms
        self.hosts = prepared.hosts
        self.reactor = reactor
        self.authority: Authority | None = None
        if prepared.keyring is not None:
            self.authority = Authority(prepared.keyring, config.ssl, ca_directory(config), self._now)
        self._renewal: Any = None
        self.access = AccessLog()
        self.factories: dict[str, ExplicitProxyFactory] = {}
        self.ports: dict[str, Any] = {}
        self._access_file: IO[str] | None = None
        self._pools: list[UpstreamPool] = []

    def _count_transaction(self, event: dict[str, Any]) -> None:
        self.transactions[event.get("service", "")] += 1

    def _open_access_log(self) -> None:
        self.access.publisher.addObserver(self._count_transaction)
        settings = self.config.txgate
        formatter = format_json if settings.access_log_format == "json" else format_text
        if settings.access_log == "-":
            self.access.publisher.addObserver(
                FileAccessObserver(sys.stdout, formatter)  # type: ignore[arg-type]
            )
            return
        directory = os.path.dirname(os.path.abspath(settings.access_log))
        os.makedirs(directory, exist_ok=True)
        self._access_file = open(settings.access_log, "a", encoding="utf-8")
        self.access.publisher.addObserver(FileAccessObserver(self._access_file, formatter))

    def _factory(self, service: ServiceConfig) -> ExplicitProxyFactory:
        settings = PipelineSettings(
            registry=self.registry,
            policy=self.policy,
            reactor=self.reactor,
            detect_protocol=service.detect_protocol,
            tunnel_on_protocol_error=service.tunnel_on_protocol_error,
            idle_timeout=service.idle_timeout,
            realms=self.realms,
            categories=self.categories,
            ssl=self.config.ssl if self.authority is not None else None,
            authority=self.authority,
        )
        connector = Connector(self.reactor, service.connect_timeout, self.hosts)
        pool = UpstreamPool(connector, self.reactor)
        self._pools.append(pool)
        if service.kind in ("transparent", "tcp-tunnel", "socks5"):
            return StreamProxyFactory(service, settings, connector, pool, self.access)
        return ExplicitProxyFactory(service, settings, connector, pool, self.access)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), datetime.timezone.utc)

    def _renew_crl(self) -> None:
        """Sign today's CRL now, and again at the next UTC midnight."""
        authority = self.authority
        if authority is None:
            return
        try:
            authority.crl_der()
        except ConfigErrors as e:
            self._log.error("CRL not renewed: {errors}", errors=str(e))
        delay = max(1.0, (authority.next_renewal() - self._now()).total_seconds() + 1)
        self._renewal = self.reactor.callLater(delay, self._renew_crl)

    def _start_authority(self) -> None:
        authority = self.authority
        if authority is None:
            return
        self._renew_crl()
        self._log.info(
            "issuer {subject} (SHA-256 {fingerprint}); CRL and OCSP at http://{host}/ (CRL number {number})",
            subject=authority.keyring.issuer_cert.subject.rfc4514_string(),
            fingerprint=fingerprint(authority.keyring.issuer_cert),
            host=self.config.ssl.crl_host,
            number=authority.crl_number(),
        )
        listen = self.config.ssl.crl_listen
        if listen:
            crl_service = ServiceConfig(name="crl_listen", kind="crl", listen=listen, clients=())
            self._listen(crl_service, authority_site(authority))

    def reload(self) -> dict[str, Any]:
        """
        What SIGHUP and the admin console's reload do: read the configuration
        file again and, when it is good, put in force its policy, category
        lists, realms and the options of services whose name, kind and
        listener did not change. New connections get them; connections in
        flight keep what they started with. What only a restart can change
        (listeners, C{[ssl]}, C{[admin]}, files opened at start) is logged
        and left as it is. A bad file changes nothing.
        """
        from txgate.auth import load_realms
        from txgate.config import load_config, load_default_config
        from txgate.tap import environment_of

        path = self.config.path
        try:
            config = load_default_config() if path == "<defaults>" else load_config(path)
            environment, categories = environment_of(config)
            realms = load_realms(config)
            policy = load_policy(config, self.registry, environment)
        except (ConfigError, ConfigErrors) as e:
            self.policy.reload(_raise(e))  # logged and shown as the last reload's result
            return {"ok": False, "message": str(e)}
        self.policy.reload(lambda: policy)
        self.policy.trace = config.txgate.policy_trace
        self.environment, self.categories, self.realms = environment, categories, realms
        applied, restart = _reconfigure(self, config)
        message = "reloaded: policy" + "".join(f", {what}" for what in applied)
        if restart:
            message += "; needs a restart to change: " + ", ".join(restart)
            self._log.warn("reload: {message}", message=message)
        else:
            self._log.info("reload: {message}", message=message)
        return {"ok": True, "message": message}

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.reload)

    def status(self) -> dict[str, Any]:
        """The admin console's forward page (L{txgate.admin.source.IAdminSource.status})."""
        services = []
        for service in self.config.services:
            factory = self.factories.get(service.name)
            port = self.ports.get(service.name)
            services.append(
                {
                    "name": service.name,
                    "kind": service.kind,
                    "listen": service.listen,
                    "address": describe_address(port.getHost()) if port is not None else None,
                    "sessions": len(factory.sessions) if factory is not None else 0,
                    "transactions": self.transactions[service.name],
                }
            )
        policy = self.policy
        hits = getattr(policy, "hits", collections.Counter())
        status: dict[str, Any] = {
            "mode": "forward",
            "services": services,
            "protocols": dict(metrics.detected_protocols),
            "policy": {
                "file": self.config.txgate.policy,
                "default": self.config.txgate.default_policy,
                "last_reload": dict(getattr(policy, "last_reload", {"time": None, "ok": None, "message": ""})),
                "rule_hits": [{"rule": rule, "hits": n} for rule, n in hits.most_common()],
            },
            "certificates": None,
        }
        authority = self.authority
        if authority is not None:
            crl = authority.crl()
            cache = interception_cache(authority)
            status["certificates"] = {
                "issuer": authority.keyring.issuer_cert.subject.rfc4514_string(),
                "crl_number": authority.crl_number(),
                "crl_next_update": crl.next_update_utc.isoformat() if crl.next_update_utc else None,
                "cache_size": len(cache) if cache is not None else 0,
                "cache_capacity": self.config.ssl.cert_cache_size,
                "cache_hits": cache.hits if cache is not None else 0,
                "cache_misses": cache.misses if cache is not None else 0,
                "ocsp": dict(getattr(authority, "ocsp_answers", {})),
            }
        return status

    def startService(self) -> None:
        super().startService()
        if hasattr(signal, "SIGHUP"):
            self._previous_sighup = signal.signal(signal.SIGHUP, self._sighup)
        state_dir = self.config.txgate.state_dir
        private_directory(state_dir)
        self._open_access_log()
        # Connections still open at shutdown end after stopService, and their
        # records must still reach the file: close it after the reactor stops.
        self.reactor.addSystemEventTrigger("after", "shutdown", self.close_access_log)
        self._start_authority()
        for service in self.config.services:
            factory = self._factory(service)
            self.factories[service.name] = factory
            self._listen(service, factory)
        admin = self.config.admin
        source = LocalSource(self, self.run_as.worker, self.reactor, self.reload)
        admin_service = ServiceConfig(name="admin", kind="admin", listen=admin.listen, clients=())
        start_admin(
            self.reactor,
            self.run_as,
            admin.listen,
            source,
            self.admin_token,
            admin.refresh,
            lambda port: self._listening(port, admin_service),
            lambda failure: self._listen_failed(failure, admin_service),
        )

    def _listen(self, service: ServiceConfig, factory: Any) -> None:
        try:
            d = listen(self.reactor, service.listen, factory, self.run_as.adopted.get(service.name))
        except Exception as e:  # e.g. systemd: without the sockets systemd passes
            self._listen_failed(Failure(e), service)
            return
        d.addCallbacks(self._listening, self._listen_failed, (service,), None, (service,))

    def _listening(self, port: Any, service: ServiceConfig) -> None:
        self.ports[service.name] = port
        if self.run_as.worker:
            return  # the main process bound it, and said so
        self._log.info(
            "listening: service={service} kind={kind} address={address}",
            service=service.name,
            kind=service.kind,
            address=describe_address(port.getHost()),
        )

    def _listen_failed(self, failure: Failure, service: ServiceConfig) -> None:
        self._log.critical(
            "cannot listen for service {service} on {listen}: {error}; stopping",
            service=service.name,
            listen=service.listen,
            error=failure.getErrorMessage(),
        )
        self.reactor.callWhenRunning(self.reactor.stop)

    def close_access_log(self) -> None:
        """Close the access-log file, once every connection has ended."""
        if self._access_file is not None:
            self._access_file.close()
            self._access_file = None

    def stopService(self) -> Any:
        super().stopService()
        previous = getattr(self, "_previous_sighup", None)
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
            self._previous_sighup = None
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        waits = [port.stopListening() for port in self.ports.values()]
        self.ports.clear()

        def live() -> int:
            return sum(len(f.sessions) for f in self.factories.values())

        def end_all() -> None:
            for factory in self.factories.values():
                for session in list(factory.sessions.values()):
                    if session.terminate is not None:
                        session.terminate()

        d = gatherResults([w for w in waits if w is not None])
        d.addCallback(lambda _: drain(self.reactor, live, self.config.txgate.drain_timeout, end_all))
        d.addCallback(lambda _: [pool.close_all() for pool in self._pools])
        d.addCallback(lambda _: close_idle_upstreams(self.authority))
        return d

