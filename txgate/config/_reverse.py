# -*- test-case-name: tests.config.test_reverse -*-
"""
The reverse-mode configuration (C{twistd txgate reverse --config FILE}):
C{[txgate]}, C{[logs]} and the C{[[virtual_service]]} tables, validated the
same way as the forward configuration, every mistake named by file and key.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Callable

from txgate.config._files import read_text
from txgate.config._load import (
    _admin,
    _Bad,
    _boolean,
    _ca_bundle,
    _check_overlaps,
    _check_unique_names,
    _choice,
    _Collector,
    _destination,
    _endpoint,
    _header_size,
    _name,
    _position,
    _seconds,
    _string,
    _strings,
    _whole,
)
from txgate.config._model import (
    PERSISTENCE_MODES,
    SCHEDULERS,
    HealthCheckConfig,
    LogsConfig,
    PersistenceConfig,
    RealServerConfig,
    ReverseConfig,
    TxgateConfig,
    VirtualServiceConfig,
)
from txgate.errors import ConfigError, ConfigErrors
from txgate.reverse.allowed import HostRules, PathRules

__all__ = ["parse_reverse_config", "load_reverse_config"]

_SECTIONS = ("txgate", "logs", "virtual_service", "admin")

_TXGATE_KEYS: dict[str, Callable[[Any], Any]] = {
    "state_dir": _string,
    "plugin_path": _strings,
    "drain_timeout": _seconds,
}

_LOGS_KEYS: dict[str, Callable[[Any], Any]] = {
    "connection_log": _string,
    "security_log": _string,
    "user_log": _string,
}


def _files(value: Any) -> tuple[str, ...]:
    files = _strings(value)
    for path in files:
        if not os.path.isfile(path):
            raise _Bad(f"{path!r} is not a file (expected PEM files with a key and its certificate chain)")
    return files


def _rules(rules: Any, expected: str) -> Callable[[Any], tuple[str, ...]]:
    """A list of patterns that C{rules.of} accepts (its ValueError is the message)."""

    def check(value: Any) -> tuple[str, ...]:
        patterns = _strings(value)
        if not patterns:
            raise _Bad(f"expected at least one {expected}")
        try:
            rules.of(patterns)
        except ValueError as e:
            raise _Bad(str(e)) from None
        return patterns

    return check


def _positive_seconds(value: Any) -> float:
    seconds = _seconds(value)
    if seconds <= 0:
        raise _Bad(f"expected a number of seconds above 0, got {value!r}")
    return seconds


_PERSISTENCE_KEYS: dict[str, Callable[[Any], Any]] = {
    "mode": _choice(*PERSISTENCE_MODES),
    "cookie": _string,
    "timeout": _positive_seconds,
}

_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

_HEALTH_KEYS: dict[str, Callable[[Any], Any]] = {
    "enabled": _boolean,
    "port": _whole(1, 65535),
    "path": _string,
    "interval": _positive_seconds,
    "timeout": _positive_seconds,
    "rise": _whole(1, 100),
    "fall": _whole(1, 100),
    "expect": _whole(100, 599),
}

_REAL_SERVER_KEYS: dict[str, Callable[[Any], Any]] = {
    "address": _destination,
    "tls": _boolean,
    "ca_bundle": _ca_bundle,
    "server_name": _string,
    "weight": _whole(0, 1000),
}

_VS_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "listen": _endpoint,
    "certificates": _files,
    "allowed_hosts": _rules(HostRules, "host name (exact, or *.domain)"),
    "allowed_paths": _rules(PathRules, 'path glob, e.g. "/*" or "/meet/*"'),
    "scheduling": _choice(*SCHEDULERS),
    "persistence": lambda value: value,  # a table, checked below
    "idle_timeout": _positive_seconds,
    "header_timeout": _positive_seconds,
    "body_timeout": _positive_seconds,
    "max_header_size": _header_size,
    "connect_timeout": _positive_seconds,
    "pool_size": _whole(0, 10_000),
    "send_proxy": _boolean,
    "real_server": lambda value: value,  # an array of tables, checked below
    "health_check": lambda value: value,  # a table, checked below
}
_VS_REQUIRED = ("name", "listen", "allowed_hosts", "real_server")


def _persistence(errors: _Collector, prefix: str, raw: Any) -> PersistenceConfig:
    values = errors.table(prefix, raw, _PERSISTENCE_KEYS)
    cookie = values.get("cookie")
    if cookie is not None and not _COOKIE_NAME.fullmatch(cookie):
        errors.add(f"{prefix}.cookie", f"expected a cookie name (an RFC 6265 token), got {cookie!r}")
    if isinstance(raw, dict) and "mode" not in raw:
        errors.add(f"{prefix}.mode", f"required key is missing (one of {', '.join(PERSISTENCE_MODES)})")
    mode = values.get("mode")
    if mode != "active-cookie" and "cookie" in values:
        errors.add(f"{prefix}.cookie", "only persistence mode \"active-cookie\" takes a cookie name")
    if mode != "source-ip" and "timeout" in values:
        errors.add(f"{prefix}.timeout", "only persistence mode \"source-ip\" takes a timeout")
    return PersistenceConfig(**values)


def _real_servers(errors: _Collector, prefix: str, raw: Any) -> tuple[RealServerConfig, ...]:
    if not isinstance(raw, list) or not raw:
        errors.add(prefix, "expected at least one [[virtual_service.real_server]]")
        return ()
    servers = []
    for index, table in enumerate(raw):
        where = f"{prefix}[{index}]"
        values = errors.table(where, table, _REAL_SERVER_KEYS)
        if isinstance(table, dict) and "address" not in table:
            errors.add(f"{where}.address", "required key is missing")
        if "address" not in values:
            continue
        host, port = values.pop("address")
        servers.append(RealServerConfig(host=host, port=port, **values))
    keys = [s.key for s in servers]
    for key in sorted({k for k in keys if keys.count(k) > 1}):
        errors.add(prefix, f"real server {key} is listed twice")
    if servers and not any(s.weight for s in servers):
        errors.add(prefix, "every real server has weight 0: none could get a request")
    return tuple(servers)


def _health(errors: _Collector, prefix: str, raw: Any) -> HealthCheckConfig:
    values = errors.table(prefix, raw, _HEALTH_KEYS)
    path = values.get("path")
    if path is not None and not path.startswith("/"):
        errors.add(f"{prefix}.path", f"expected a path starting with /, got {path!r}")
    health = HealthCheckConfig(**values)
    if health.timeout > health.interval:
        errors.add(f"{prefix}.timeout", f"must not be longer than interval ({health.interval:g} s)")
    return health


def _virtual_service(errors: _Collector, prefix: str, raw: Any) -> VirtualServiceConfig | None:
    values = errors.table(prefix, raw, _VS_KEYS)
    if not isinstance(raw, dict):
        return None
    for key in _VS_REQUIRED:
        if key not in raw:
            errors.add(f"{prefix}.{key}", "required key is missing")
    if "persistence" in values:
        values["persistence"] = _persistence(errors, f"{prefix}.persistence", values["persistence"])
    if "health_check" in values:
        values["health_check"] = _health(errors, f"{prefix}.health_check", values["health_check"])
    real = values.pop("real_server", None)
    servers = _real_servers(errors, f"{prefix}.real_server", real) if "real_server" in raw else ()
    if not all(k in values for k in _VS_REQUIRED if k != "real_server") or not servers:
        return None
    return VirtualServiceConfig(real_servers=servers, **values)


def parse_reverse_config(text: str, path: str) -> ReverseConfig:
    """
    Validate the reverse-mode TOML C{text} read from C{path}.

    @raise ConfigErrors: with every mistake found.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, column = _position(str(e))
        message = re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(e))
        raise ConfigErrors((ConfigError(path, "", f"TOML syntax: {message}", line, column),)) from None
    errors = _Collector(path)
    for key in document:
        if key not in _SECTIONS:
            errors.add(key, f"unknown section (known: {', '.join(_SECTIONS)})")
    txgate = TxgateConfig(**errors.table("txgate", document.get("txgate", {}), _TXGATE_KEYS))
    logs = LogsConfig(**errors.table("logs", document.get("logs", {}), _LOGS_KEYS))

    services: list[tuple[str, VirtualServiceConfig]] = []
    raw_services = document.get("virtual_service", [])
    if not isinstance(raw_services, list):
        errors.add("virtual_service", "expected an array of tables ([[virtual_service]])")
        raw_services = []
    elif not raw_services:
        errors.add("virtual_service", "at least one [[virtual_service]] is needed")
    for index, raw in enumerate(raw_services):
        prefix = f"virtual_service[{index}]"
        service = _virtual_service(errors, prefix, raw)
        if service is not None:
            services.append((prefix, service))
    _check_unique_names(errors, services)  # type: ignore[arg-type]
    listeners = [(f"{prefix}.listen", s.listen) for prefix, s in services]
    admin = _admin(errors, document.get("admin", {}))
    if admin.listen:
        listeners.append(("admin.listen", admin.listen))
    _check_overlaps(errors, listeners)
    if errors.errors:
        raise ConfigErrors(tuple(errors.errors))
    return ReverseConfig(
        path=path, txgate=txgate, virtual_services=tuple(s for _, s in services), logs=logs, admin=admin
    )


def load_reverse_config(path: str) -> ReverseConfig:
    """
    Read and validate the reverse-mode configuration file at C{path}.

    @raise ConfigErrors: naming the file and each bad key.
    """
    return parse_reverse_config(read_text(path), path)
