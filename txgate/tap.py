# -*- test-case-name: tests.test_tap -*-
"""
C{twistd txgate}: options and the service they make. Only L{makeService}
touches the global reactor.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import attrs

from twisted.python import usage

from txgate.config import Config, load_config, load_default_config
from txgate.errors import ConfigError, ConfigErrors
from txgate.hosts import Hosts
from txgate.interfaces import PolicyEnvironment

__all__ = ["Options", "Prepared", "makeService", "prepare"]


class ForwardOptions(usage.Options):
    """C{twistd txgate forward}: the egress proxy."""

    synopsis = "[--config PATH]"
    longdesc = (
        "Run the forward proxy. Without --config, the embedded defaults: an explicit"
        " HTTP proxy on 127.0.0.1:8080 serving loopback and private networks."
    )
    optParameters = [
        ["config", "c", None, "The forward configuration file (TOML), e.g. etc/forward.toml."],
        ["workers", "w", None, "Worker processes (default: one per core; 0: everything in this process)."],
    ]

    def postOptions(self) -> None:
        self["workers"] = _workers(self["workers"])


class ReverseOptions(usage.Options):
    """C{twistd txgate reverse}: publishes web services (Lync external web services)."""

    synopsis = "--config PATH"
    longdesc = (
        "Run the reverse proxy: each [[virtual_service]] of the configuration listens,"
        " lets through its allowed hosts and paths, and sends requests to its real servers."
        " See etc/reverse.toml and docs/reverse.md."
    )
    optParameters = [
        ["config", "c", None, "The reverse configuration file (TOML), e.g. etc/reverse.toml."],
        ["workers", "w", None, "Worker processes (default: one per core; 0: everything in this process)."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("reverse mode needs --config (start from etc/reverse.toml)")
        self["workers"] = _workers(self["workers"])


def _workers(value: str | None) -> int:
    if value is None:
        return os.cpu_count() or 1
    if not value.isdigit() or int(value) > 256:
        raise usage.UsageError(f"--workers takes a number from 0 to 256, not {value!r}")
    return int(value)


class Options(usage.Options):
    synopsis = "forward|reverse [options]"
    subCommands = [
        ["forward", None, ForwardOptions, "Run the forward (egress) proxy."],
        ["reverse", None, ReverseOptions, "Run the reverse proxy (publishing web services)."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a mode: forward or reverse")


@attrs.frozen
class Prepared:
    """
    Everything a configuration loads before anything listens.

    @ivar categories: the category lists of C{[txgate] categories}.
    @ivar realms: the authentication realms, by name.
    @ivar keyring: the issuer keyring (generated on first start).
    @ivar hosts: the name overrides of C{[txgate] hosts_file} (L{txgate.hosts}),
        for upstream connections.
    """

    config: Config
    registry: Any
    policy: Any
    environment: PolicyEnvironment
    categories: Any
    realms: Mapping[str, Any]
    keyring: Any = None
    admin_token: str | None = None
    hosts: Hosts = attrs.field(factory=Hosts)


def environment_of(config: Config) -> tuple[PolicyEnvironment, Any]:
    """
    The names a policy may use under C{config} (categories, realms), and the
    loaded categories.

    @raise ConfigErrors: a category file is broken.
    """
    from txgate.policy.categories import load_configured

    categories = load_configured(config)
    environment = PolicyEnvironment(categories=frozenset(categories.names()), realms=frozenset(config.realms))
    return environment, categories


def prepare(config: Config, create_keyring: bool = True) -> Prepared:
    """
    Everything that can refuse a configuration before anything listens:
    plugin discovery, required plugins, category lists, the hosts file,
    realms, the policy file, the issuer keyring (generated into the state
    directory on first start, unless C{create_keyring} is false; a key
    readable by others is refused).

    @raise ConfigErrors: naming the file and key (or line) of each problem.
    """
    from txgate.auth import load_realms
    from txgate.hosts import load_configured as load_hosts
    from txgate.net.operations import load_admin_token
    from txgate.net.service import load_policy
    from txgate.plugins import discover

    try:
        registry = discover(config.txgate.plugin_path, config.path)
        missing = [n for n in config.txgate.required_plugins if n not in registry.names()]
        errors = []
        for name in missing:
            failed = [f for f in registry.failures if f.module == name]
            why = f": {failed[0].error}" if failed else ""
            errors.append(ConfigError(config.path, "txgate.required_plugins", f"plugin {name!r} is not available{why}"))
        if errors:
            raise ConfigErrors(tuple(errors))
        environment, categories = environment_of(config)
        hosts = load_hosts(config)
        realms = load_realms(config)
        policy = load_policy(config, registry, environment)
        keyring = _keyring(config, create_keyring)
    except ConfigError as e:
        raise ConfigErrors((e,)) from None
    admin_token = load_admin_token(config.admin.token_file) if config.admin.listen else None
    return Prepared(config, registry, policy, environment, categories, realms, keyring, admin_token, hosts)


def _keyring(config: Config, create: bool) -> Any:
    import datetime

    from txgate.pki.authority import ca_directory, keyring_for
    from txgate.pki.keyring import private_directory

    if not create and not os.path.isdir(ca_directory(config)):
        return None
    private_directory(config.txgate.state_dir)
    return keyring_for(config, datetime.datetime.now(datetime.timezone.utc))


def build_service(mode: str, path: str | None, reactor: Any, running: Any = None) -> Any:
    """
    The service of C{mode} for the configuration at C{path} (the embedded
    defaults for forward mode without one), run alone or as a worker.

    @raise ConfigErrors: the configuration is refused.
    """
    from txgate.net.operations import Running

    running = running or Running()
    if mode == "reverse":
        from txgate.config import load_reverse_config
        from txgate.net.reverseservice import ReverseService, prepare_reverse

        assert path is not None
        return ReverseService(prepare_reverse(load_reverse_config(path)), reactor, running)
    from twisted.logger import Logger

    from txgate.net.service import ForwardService

    config = load_config(path) if path else load_default_config()
    prepared = prepare(config)
    log = Logger(namespace="txgate")
    for failure in prepared.registry.failures:
        log.error(
            "plugin {module} ({origin}) could not be loaded: {error}",
            module=failure.module,
            origin=failure.origin,
            error=failure.error,
        )
    return ForwardService(prepared, reactor, running)


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from txgate.net.operations import raise_open_files_limit

    raise_open_files_limit()

    mode = options.subCommand
    sub = options.subOptions
    path = sub["config"]
    try:
        if sub["workers"] == 0:
            return build_service(mode, path, reactor)
        return _supervisor(mode, path, sub["workers"], reactor)
    except ConfigErrors as e:
        sys.stderr.write(f"txgate: refusing to start:\n{e}\n")
        raise SystemExit(1) from None


def _check_control_sockets(state_dir: str, workers: int, config_path: str) -> None:
    """
    Each worker's control socket lives in C{<state_dir>/run}; a UNIX socket
    path is limited to 107 bytes, and a longer one would fail only in the
    worker, late and quietly.
    """
    from txgate.net.operations import control_socket

    longest = os.path.abspath(control_socket(state_dir, workers))
    if len(longest.encode()) > 107:
        raise ConfigErrors(
            (
                ConfigError(
                    config_path,
                    "txgate.state_dir",
                    f"too long for --workers: the workers' control sockets ({longest}) would exceed the"
                    " 107-byte limit of UNIX socket paths; use a shorter state_dir, or --workers 0",
                ),
            )
        )


def _supervisor(mode: str, path: str | None, workers: int, reactor: Any) -> Any:
    """
    The main process of C{--workers N}: everything is validated (and the
    keyring and persistence key created) here first, so workers start on
    a configuration known to be good.
    """
    from txgate.net.workers import Listener, Supervisor, worker_argv


    if mode == "reverse":
        from txgate.config import load_reverse_config
        from txgate.net.operations import load_admin_token
        from txgate.net.reverseservice import prepare_reverse

        assert path is not None
        reverse = load_reverse_config(path)
        _check_control_sockets(reverse.txgate.state_dir, workers, reverse.path)
        prepare_reverse(reverse)
        listeners = [Listener(v.name, v.kind, v.listen) for v in reverse.virtual_services]
        token = load_admin_token(reverse.admin.token_file) if reverse.admin.listen else None

        def check_reverse() -> dict[str, Any]:
            return {"ok": True, "message": "reverse mode has no policy to reload; restart to apply configuration changes"}

        return Supervisor(
            reactor, workers, worker_argv(mode, path), listeners, reverse.txgate.state_dir,
            reverse.txgate.drain_timeout, reverse.admin, token, check_reverse,
        )
    config = load_config(path) if path else load_default_config()
    _check_control_sockets(config.txgate.state_dir, workers, config.path)
    prepared = prepare(config)
    listeners = [Listener(s.name, s.kind, s.listen) for s in config.services]
    if config.ssl.crl_listen and prepared.keyring is not None:
        listeners.append(Listener("crl_listen", "crl", config.ssl.crl_listen))

    def check_forward() -> dict[str, Any]:
        from txgate.net.service import load_policy

        try:
            fresh = load_config(path) if path else load_default_config()
            load_policy(fresh, prepared.registry, environment_of(fresh)[0])
        except (ConfigError, ConfigErrors) as e:
            return {"ok": False, "message": str(e)}
        return {"ok": True, "message": "policy checked; workers reloading"}

    return Supervisor(
        reactor, workers, worker_argv(mode, path), listeners, config.txgate.state_dir,
        config.txgate.drain_timeout, config.admin, prepared.admin_token, check_forward,
    )
