# -*- test-case-name: tests.net.test_service -*-
"""
The forward proxy as a Twisted service: one listener per configured
C{[[service]]}, sharing the plugins, policy, upstream pool and access log.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgate.accesslog import AccessLog, FileAccessObserver, format_json, format_text
from txgate.config import Config, ServiceConfig
from txgate.errors import ConfigError
from txgate.interfaces import IPolicy
from txgate.net.explicit import ExplicitProxyFactory
from txgate.net.pipeline import PipelineSettings
from txgate.net.upstream import Connector, UpstreamPool
from txgate.plugins import Registry

__all__ = ["ForwardService", "load_policy"]


def load_policy(config: Config, registry: Registry) -> IPolicy:
    """
    The policy the configuration names, loaded by the policy plugin that
    accepts the file; C{default_policy} alone when none is named.

    @raise ConfigError: no policy plugin reads the file, or it is invalid.
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
            return provider.load(path, allow)  # type: ignore[no-any-return]
    names = ", ".join(p.name for p in registry.of_kind("policy")) or "none installed"
    raise ConfigError(
        config.path, "txgate.policy", f"no policy plugin reads {path!r} (policy plugins: {names})"
    )


def _describe(address: Any) -> str:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None:
        return str(getattr(address, "name", address))
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class ForwardService(MultiService):
    """
    Listens on every configured service and writes the access log.
    """

    _log = Logger()

    def __init__(self, config: Config, registry: Registry, policy: IPolicy, reactor: Any) -> None:
        super().__init__()
        self.config = config
        self.registry = registry
        self.policy = policy
        self.reactor = reactor
        self.access = AccessLog()
        self.factories: dict[str, ExplicitProxyFactory] = {}
        self.ports: dict[str, Any] = {}
        self._access_file: IO[str] | None = None
        self._pools: list[UpstreamPool] = []

    def _open_access_log(self) -> None:
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
        )
        connector = Connector(self.reactor, service.connect_timeout)
        pool = UpstreamPool(connector, self.reactor)
        self._pools.append(pool)
        return ExplicitProxyFactory(service, settings, connector, pool, self.access)

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.config.txgate.state_dir, mode=0o700, exist_ok=True)
        self._open_access_log()
        for service in self.config.services:
            factory = self._factory(service)
            self.factories[service.name] = factory
            try:
                endpoint = serverFromString(self.reactor, service.listen)
            except Exception as e:  # e.g. systemd: without the sockets systemd passes
                self._listen_failed(Failure(e), service)
                continue
            d = endpoint.listen(factory)
            d.addCallbacks(self._listening, self._listen_failed, (service,), None, (service,))

    def _listening(self, port: Any, service: ServiceConfig) -> None:
        self.ports[service.name] = port
        self._log.info(
            "listening: service={service} kind={kind} address={address}",
            service=service.name,
            kind=service.kind,
            address=_describe(port.getHost()),
        )

    def _listen_failed(self, failure: Failure, service: ServiceConfig) -> None:
        self._log.critical(
            "cannot listen for service {service} on {listen}: {error}; stopping",
            service=service.name,
            listen=service.listen,
            error=failure.getErrorMessage(),
        )
        self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Any:
        super().stopService()
        for pool in self._pools:
            pool.close_all()
        waits = [port.stopListening() for port in self.ports.values()]
        self.ports.clear()
        if self._access_file is not None:
            self._access_file.close()
            self._access_file = None
        from twisted.internet.defer import gatherResults

        return gatherResults([w for w in waits if w is not None])

