# -*- test-case-name: tests.net.test_reverse -*-
"""
C{twistd txgate reverse}: every C{[[virtual_service]]} listening, its real
servers health-checked, the ESP logs open.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import gatherResults
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from txgate import metrics
from txgate.admin.source import LocalSource
from txgate.config import ReverseConfig, VirtualServiceConfig
from txgate.errors import ConfigError, ConfigErrors
from txgate.net.healthcheck import HealthChecker
from txgate.net.listeners import listen
from txgate.net.operations import Running, drain, load_admin_token, start_admin
from txgate.net.realservers import client_tls
from txgate.net.reverse import EspLogs, ReverseProxyFactory, VirtualService
from txgate.net.service import describe_address
from txgate.net.sni import SNIServerTLS, load_server_tls
from txgate.net.tlslayer import TLSLayer
from txgate.reverse.balancing import RealServer
from txgate.reverse.health import HealthTracker
from txgate.reverse.persistence import CookieSigner, load_or_create_key

__all__ = ["PreparedReverse", "prepare_reverse", "ReverseService", "persistence_key_path"]


def persistence_key_path(config: ReverseConfig) -> str:
    """Where the key that signs persistence cookies lives; nodes that share it route alike."""
    return os.path.join(config.txgate.state_dir, "reverse", "persistence.key")


@attrs.frozen
class PreparedReverse:
    """What a reverse configuration loads before anything listens."""

    config: ReverseConfig
    signer: CookieSigner | None
    server_tls: dict[str, SNIServerTLS]
    admin_token: str | None = None


def prepare_reverse(config: ReverseConfig, create_key: bool = True) -> PreparedReverse:
    """
    Load the certificates, check the real servers' CA bundles, and read (or
    create, unless C{create_key} is false) the persistence key.

    @raise ConfigErrors: naming the file and key of each problem.
    """
    errors: list[ConfigError] = []
    server_tls = {}
    for index, service in enumerate(config.virtual_services):
        prefix = f"virtual_service[{index}]"
        if service.certificates:
            try:
                server_tls[service.name] = load_server_tls(service.certificates, f"{prefix}.certificates")
            except ConfigErrors as e:
                errors.extend(e.errors)
        for rs in service.real_servers:
            if rs.tls:
                try:
                    client_tls(rs)
                except ConfigError as e:
                    errors.append(e)
    signer = None
    key = persistence_key_path(config)
    cookies = any(s.persistence.mode == "active-cookie" for s in config.virtual_services)
    if cookies and (create_key or os.path.lexists(key)):
        try:
            signer = CookieSigner(load_or_create_key(key))
        except ConfigError as e:
            errors.append(e)
    token = None
    if config.admin.listen:
        try:
            token = load_admin_token(config.admin.token_file)
        except ConfigErrors as e:
            errors.extend(e.errors)
    if errors:
        raise ConfigErrors(tuple(errors))
    return PreparedReverse(config, signer, server_tls, token)


class ReverseService(MultiService):
    """The reverse proxy: listeners, health checks, ESP logs."""

    _log = Logger()

    def __init__(self, prepared: PreparedReverse, reactor: Any, running: Running = Running()) -> None:
        super().__init__()
        self.reactor = reactor
        self.run_as = running
        self.prepared = prepared
        logs = prepared.config.logs
        self.logs = EspLogs(logs.connection_log, logs.security_log, logs.user_log)
        self.virtual_services = [
            VirtualService(config, reactor, prepared.signer, self.logs) for config in prepared.config.virtual_services
        ]
        self.ports: dict[str, Any] = {}
        self.checkers: list[HealthChecker] = []
        for service in self.virtual_services:
            self.checkers.extend(self._checkers(service))

    def _checkers(self, service: VirtualService) -> list[HealthChecker]:
        check = service.config.health_check
        if not check.enabled:
            return []
        checkers = []
        for backend in service.backends:
            rs = backend.config

            def changed(state: RealServer, up: bool, detail: str, name: str = service.config.name) -> None:
                self._health_changed(name, state, up, detail)

            checkers.append(
                HealthChecker(
                    self.reactor,
                    backend.state,
                    rs.host,
                    check.port or rs.port,
                    client_tls(rs) if rs.tls else None,
                    check.path,
                    rs.verified_name,
                    check.interval,
                    check.timeout,
                    HealthTracker(rise=check.rise, fall=check.fall),
                    check.expect,
                    changed,
                )
            )
        return checkers

    def _health_changed(self, name: str, state: RealServer, up: bool, detail: str) -> None:
        metrics.set_realserver_up(name, state.key, up)
        if up:
            self._log.info("real server {key} of {service} is Up: {detail}", key=state.key, service=name, detail=detail)
        else:
            self._log.warn("real server {key} of {service} is Down: {detail}", key=state.key, service=name, detail=detail)

    def snapshot(self) -> list[dict[str, Any]]:
        """The virtual services and their real servers, for the admin console."""
        return [s.snapshot() for s in self.virtual_services]

    def _factory(self, service: VirtualService) -> Any:
        factory: Any = ReverseProxyFactory(service)
        tls = self.prepared.server_tls.get(service.config.name)
        if tls is not None:
            factory = TLSMemoryBIOFactory(tls, False, factory)
            factory.protocol = TLSLayer
            factory.server_side = True  # type: ignore[attr-defined]  # see TLSLayer._checkHandshakeStatus
            factory.noisy = False
        return factory

    def startService(self) -> None:
        super().startService()
        # Connections still open at shutdown end after stopService, and their
        # lines must still reach the files: close them after the reactor stops.
        self.reactor.addSystemEventTrigger("after", "shutdown", self.logs.close)
        for service in self.virtual_services:
            config = service.config
            try:
                d = listen(self.reactor, config.listen, self._factory(service), self.run_as.adopted.get(config.name))
            except Exception as e:
                self._listen_failed(Failure(e), config)
                continue
            d.addCallbacks(self._listening, self._listen_failed, (config,), None, (config,))
        for checker in self.checkers:
            checker.start()
        admin = self.prepared.config.admin
        admin_config = VirtualServiceConfig(name="admin", listen=admin.listen, allowed_hosts=(), real_servers=())
        start_admin(
            self.reactor,
            self.run_as,
            admin.listen,
            LocalSource(self, self.run_as.worker, self.reactor, self.reload),
            self.prepared.admin_token,
            admin.refresh,
            lambda port: self._admin_listening(port),
            lambda failure: self._listen_failed(failure, admin_config),
        )

    def _admin_listening(self, port: Any) -> None:
        self._log.info("listening: service=admin kind=admin address={address}", address=describe_address(port.getHost()))

    def reload(self) -> dict[str, Any]:
        return {"ok": True, "message": "reverse mode has no policy to reload; restart to apply configuration changes"}

    def _listening(self, port: Any, config: VirtualServiceConfig) -> None:
        self.ports[config.name] = port
        if self.run_as.worker:
            return  # the main process bound it, and said so
        address = describe_address(port.getHost())
        self._log.info(
            "listening: service={service} kind={kind} address={address}",
            service=config.name,
            kind=config.kind,
            address=address,
        )

    def _listen_failed(self, failure: Failure, config: VirtualServiceConfig) -> None:
        self._log.critical(
            "cannot listen for virtual service {service} on {listen}: {error}; stopping",
            service=config.name,
            listen=config.listen,
            error=failure.getErrorMessage(),
        )
        self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Any:
        super().stopService()
        for checker in self.checkers:
            checker.stop()
        waits = [port.stopListening() for port in self.ports.values()]
        self.ports.clear()

        def live() -> int:
            return sum(len(s.clients) for s in self.virtual_services)

        def end_all() -> None:
            for service in self.virtual_services:
                for client in list(service.clients):
                    client.transport.abortConnection()

        timeout = self.prepared.config.txgate.drain_timeout
        d = gatherResults([w for w in waits if w is not None])
        d.addCallback(lambda _: drain(self.reactor, live, timeout, end_all))
        d.addCallback(lambda _: [b.pool.close_all() for s in self.virtual_services for b in s.backends])
        return d
