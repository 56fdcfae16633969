# -*- test-case-name: tests.config.test_load -*-
"""
Reading and validating TOML configuration.

Every mistake in a file is collected, each naming the file, the key path and
what was expected, so an operator fixes them all in one round.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from importlib import resources
from typing import Any, Callable

import attrs
from twisted.internet.endpoints import serverFromString

from txgate.config._files import read_text
from txgate.config._model import (
    AdminConfig,
    DEFAULT_CLIENTS,
    SERVICE_KINDS,
    Config,
    LEAF_KEY_TYPES,
    RealmConfig,
    ServiceConfig,
    SSLConfig,
    TxgateConfig,
)
from txgate.errors import ConfigError, ConfigErrors

__all__ = ["load_config", "load_default_config", "parse_config"]


class _Bad(Exception):
    """A value is wrong; the message says what was expected."""


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {_kind(value)}")
    return value


def _name(value: Any) -> str:
    value = _string(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise _Bad(
            f"expected a name of letters, digits, '_', '.', '-' (at most 64), got {value!r}"
        )
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad(f"expected a list of strings, got {_kind(value)}")
    return tuple(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {_kind(value)}")
    return value


def _toml(value: Any) -> str:
    """A value as the operator wrote it in TOML (C{true}, not C{True})."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return json.dumps(value)
    return _kind(value)


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise _Bad(f"expected a positive number of seconds, got {_toml(value)}")
    return float(value)


def _header_size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (
        1024 <= value <= 1 << 24
    ):
        raise _Bad(f"expected a whole number of bytes from 1024 to 16777216, got {_toml(value)}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise _Bad(f"expected one of {', '.join(map(json.dumps, choices))}, got {_toml(value)}")
        return value

    return check


def _networks(value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    out = []
    for item in _strings(value):
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _Bad(f"expected IP addresses or CIDR networks, got {item!r}") from None
    return tuple(out)


def _endpoint(value: Any) -> str:
    value = _string(value)
    if _unwrapped(value).startswith("systemd:"):
        # Parsing a systemd: string looks up the sockets systemd passed in,
        # which exist only when systemd starts txgate: checked at start.
        return value
    try:
        _describe_listener(value)
    except Exception as e:
        hint = ""
        if "interface=" in value and "::" in value and "\\:" not in value:
            hint = " (escape colons in IPv6 addresses: interface=\\:\\:1)"
        raise _Bad(f"bad endpoint string {value!r}: {e}{hint}") from None
    return value


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?")


def _destination(value: Any) -> tuple[str, int]:
    """C{host:port}, C{[v6]:port} or C{v4:port}: where a C{tcp-tunnel} sends every connection."""
    text = _string(value)
    expected = f"expected \"host:port\" (IPv6 as \"[addr]:port\"), got {text!r}"
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise _Bad(expected)
        port_text = rest[1:]
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError(host)
        except ValueError:
            raise _Bad(f"{expected}: {host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host or ":" in host:
            raise _Bad(expected)
        if not _HOSTNAME.fullmatch(host):
            raise _Bad(f"{expected}: {host!r} is not a host name or IPv4 address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise _Bad(f"{expected}: the port must be a number from 1 to 65535")
    return host.lower().rstrip("."), int(port_text)


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


_TXGATE_KEYS: dict[str, Callable[[Any], Any]] = {
    "state_dir": _string,
    "plugin_path": _strings,
    "access_log": _string,
    "access_log_format": _choice("text", "json"),
    "policy": _string,
    "policy_trace": _boolean,
    "default_policy": _choice("allow", "deny"),
    "required_plugins": _strings,
    "categories": _strings,
    "drain_timeout": _seconds,
    "hosts_file": _string,
}

_SERVICE_KEYS: dict[str, Callable[[Any], Any]] = {
    "name": _name,
    "kind": _choice(*SERVICE_KINDS),
    "listen": _endpoint,
    "clients": _networks,
    "idle_timeout": _seconds,
    "connect_timeout": _seconds,
    "max_header_size": _header_size,
    "detect_protocol": _boolean,
    "tunnel_on_protocol_error": _boolean,
    "destination": _destination,
    "realm": _name,
}
_SERVICE_REQUIRED = ("name", "kind", "listen")


def _leaf_keys(value: Any) -> tuple[str, ...]:
    keys = _strings(value)
    if not keys:
        raise _Bad(f"expected at least one of {', '.join(map(json.dumps, LEAF_KEY_TYPES))}")
    for key in keys:
        if key not in LEAF_KEY_TYPES:
            raise _Bad(f"expected key types among {', '.join(map(json.dumps, LEAF_KEY_TYPES))}, got {key!r}")
    return tuple(dict.fromkeys(keys))


def _whole(low: int, high: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Bad(f"expected a whole number from {low} to {high}, got {_toml(value)}")
        return value

    return check


def _host_port(value: Any) -> str:
    """C{host}, C{host:port} or C{[v6]:port}, as written into CRL and OCSP URLs."""
    text = _string(value)
    if not text:
        return text
    host, port = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _Bad(f"expected host[:port] (IPv6 as [addr]:port), got {text!r}")
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Bad(f"{host!r} is not an IPv6 address") from None
    elif ":" in text:
        host, _, port = text.rpartition(":")
        if not _HOSTNAME.fullmatch(host):
            raise _Bad(f"expected host[:port] (IPv6 as [addr]:port), got {text!r}")
    elif not _HOSTNAME.fullmatch(host):
        raise _Bad(f"expected host[:port], got {text!r}")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise _Bad(f"the port of {text!r} must be a number from 1 to 65535")
    return text.lower()


def _ca_bundle(value: Any) -> str:
    text = _string(value)
    if text != "system" and not os.path.isfile(text):
        raise _Bad(f"expected \"system\" or a PEM file of CA certificates; {text!r} is not a file")
    return text


def _optional_endpoint(value: Any) -> str:
    return _endpoint(value) if _string(value) else ""


_SSL_KEYS: dict[str, Callable[[Any], Any]] = {
    "issuer_cert": _string,
    "issuer_key": _string,
    "untrusted_issuer": _string,
    "leaf_keys": _leaf_keys,
    "cert_cache_size": _whole(1, 10_000_000),
    "crl_distribution_point": _boolean,
    "crl_host": _host_port,
    "crl_validity_days": _whole(1, 3650),
    "ocsp": _boolean,
    "verify_upstream": _choice("strict", "no"),
    "upstream_ca_bundle": _ca_bundle,
    "upstream_revocation": _choice("off", "soft-fail", "hard-fail"),
    "crl_listen": _optional_endpoint,
}


_ADMIN_KEYS: dict[str, Callable[[Any], Any]] = {
    "listen": _optional_endpoint,
    "token_file": _string,
    "refresh": _seconds,
}

_LOOPBACK = ("127.", "::1", "localhost")


def _admin(errors: "_Collector", raw: Any) -> AdminConfig:
    """
    The C{[admin]} section. A listener others can reach needs a token file:
    the admin console can end sessions and reload policy.
    """
    admin = AdminConfig(**errors.table("admin", raw, _ADMIN_KEYS))
    if admin.listen and not admin.token_file:
        try:
            found = _describe_listener(admin.listen)
        except Exception:
            return admin  # the bad endpoint string is reported on its own
        if found is not None and found[0] == "tcp" and not str(found[1]).startswith(_LOOPBACK):
            errors.add(
                "admin.token_file",
                f"required when the admin service listens beyond loopback ({admin.listen!r}):"
                " a file holding the bearer token",
            )
    if admin.refresh < 1:
        errors.add("admin.refresh", f"expected at least 1 second, got {admin.refresh:g}")
    return admin


def _ssl(errors: "_Collector", raw: Any, services: list[tuple[str, ServiceConfig]]) -> SSLConfig:
    """The C{[ssl]} section, with C{crl_host} derived when it is not given."""
    values = errors.table("ssl", raw, _SSL_KEYS)
    if bool(values.get("issuer_cert")) != bool(values.get("issuer_key")):
        missing = "issuer_key" if values.get("issuer_cert") else "issuer_cert"
        errors.add(f"ssl.{missing}", "issuer_cert and issuer_key go together: set both, or neither to use the generated issuer")
    config = SSLConfig(**values)
    if not config.crl_host:
        config = attrs.evolve(config, crl_host=_derived_crl_host(config, services))
    return config


def _derived_crl_host(config: SSLConfig, services: list[tuple[str, ServiceConfig]]) -> str:
    """
    Where clients reach txgate's CRL and OCSP responder when C{crl_host} is
    not set: the interface and port of C{crl_listen}, else of the first
    explicit-http service; a wildcard interface gives this machine's name
    with that port, and no such listener the machine's name alone (port 80,
    a transparent service).
    """
    name = socket.getfqdn().lower()
    explicit = [s.listen for _, s in services if s.kind == "explicit-http"]
    listen = config.crl_listen or (explicit[0] if explicit else None)
    try:
        found = _describe_listener(listen) if listen else None
    except Exception:
        found = None  # a bad endpoint string is reported on its own key
    if found is None or found[0] != "tcp" or not found[2]:
        return name  # no TCP listener with a known port (port 0 is chosen at start)
    _, host, port = found
    if host in _WILDCARDS:
        host = name
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ttl(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise _Bad(f"expected a number of seconds, 0 or more, got {_toml(value)}")
    return float(value)


_REALM_KEYS: dict[str, Callable[[Any], Any]] = {
    "htpasswd": _string,
    "credentials_ttl": _ttl,
}

_REALM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""
Realm names: an HTTP token (it is sent in C{Proxy-Authenticate: Basic
realm="NAME"}) that is also a CPL word (C{authenticate(NAME)}).
"""


def _realms(errors: "_Collector", raw: Any) -> dict[str, RealmConfig]:
    """The C{[realm.NAME]} tables, each checked like a section."""
    if not isinstance(raw, dict):
        errors.add("realm", "expected tables of realms ([realm.NAME])")
        return {}
    realms = {}
    for name, table in raw.items():
        prefix = f"realm.{name}"
        if not _REALM_NAME.fullmatch(name):
            errors.add(
                prefix,
                f"expected a realm name of letters, digits, '_', '.', '-' (at most 64), got {name!r}",
            )
            continue
        if name.lower() == "no":
            errors.add(prefix, "'no' cannot name a realm: authenticate(no) turns authentication off")
            continue
        values = errors.table(prefix, table, _REALM_KEYS)
        if isinstance(table, dict) and "htpasswd" not in table:
            errors.add(f"{prefix}.htpasswd", "required key is missing")
        if "htpasswd" in values:
            realms[name] = RealmConfig(name=name, **values)
    return realms


class _Collector:
    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[ConfigError] = []

    def add(self, key: str, message: str) -> None:
        self.errors.append(ConfigError(self.path, key, message))

    def table(
        self,
        prefix: str,
        table: Any,
        keys: dict[str, Callable[[Any], Any]],
    ) -> dict[str, Any]:
        """Check every key of C{table}; return the converted values."""
        if not isinstance(table, dict):
            self.add(prefix, f"expected a table, got {_kind(table)}")
            return {}
        out = {}
        for key, value in table.items():
            where = f"{prefix}.{key}"
            check = keys.get(key)
            if check is None:
                self.add(where, f"unknown key (known: {', '.join(sorted(keys))})")
                continue
            try:
                out[key] = check(value)
            except _Bad as e:
                self.add(where, str(e))
        return out


def parse_config(text: str, path: str) -> Config:
    """
    Validate the TOML C{text} read from C{path}.

    @raise ConfigErrors: with every mistake found.
    """
    try:
        document = tomllib.loads(text)
    except RecursionError:
        raise ConfigErrors(
            (ConfigError(path, "", "TOML syntax: arrays or inline tables nested too deeply"),)
        ) from None
    except tomllib.TOMLDecodeError as e:
        line, column = _position(str(e))
        message = re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(e))
        raise ConfigErrors(
            (ConfigError(path, "", f"TOML syntax: {message}", line, column),)
        ) from None
    errors = _Collector(path)
    for key in document:
        if key not in ("txgate", "service", "realm", "ssl", "admin"):
            errors.add(key, "unknown section (known: txgate, service, realm, ssl, admin)")
    txgate = TxgateConfig(**errors.table("txgate", document.get("txgate", {}), _TXGATE_KEYS))

    services = []
    raw_services = document.get("service", [])
    if not isinstance(raw_services, list):
        errors.add("service", "expected an array of tables ([[service]])")
        raw_services = []
    elif not raw_services:
        errors.add("service", "at least one [[service]] is needed")
    for index, raw in enumerate(raw_services):
        prefix = f"service[{index}]"
        values = errors.table(prefix, raw, _SERVICE_KEYS)
        missing = [k for k in _SERVICE_REQUIRED if k not in values and isinstance(raw, dict) and k not in raw]
        for key in missing:
            errors.add(f"{prefix}.{key}", "required key is missing")
        if isinstance(raw, dict):
            _check_kind_keys(errors, prefix, raw, values)
        if all(k in values for k in _SERVICE_REQUIRED):
            values.setdefault("clients", _networks(list(DEFAULT_CLIENTS)))
            services.append((prefix, ServiceConfig(**values)))

    _check_unique_names(errors, services)
    ssl = _ssl(errors, document.get("ssl", {}), services)
    listeners = [(f"{prefix}.listen", service.listen) for prefix, service in services]
    if ssl.crl_listen:
        listeners.append(("ssl.crl_listen", ssl.crl_listen))
    admin = _admin(errors, document.get("admin", {}))
    if admin.listen:
        listeners.append(("admin.listen", admin.listen))
    _check_overlaps(errors, listeners)
    realms = _realms(errors, document.get("realm", {}))
    _check_service_realms(errors, services, realms, document.get("realm", {}))
    if errors.errors:
        raise ConfigErrors(tuple(errors.errors))
    return Config(
        path=path, txgate=txgate, services=tuple(s for _, s in services), realms=realms, ssl=ssl, admin=admin
    )


def load_config(path: str) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @raise ConfigErrors: naming the file and each bad key.
    """
    return parse_config(read_text(path), path)


def load_default_config() -> Config:
    """
    The embedded defaults C{make run} starts with: one explicit HTTP proxy on
    127.0.0.1:8080 serving loopback and private networks.
    """
    text = resources.files("txgate").joinpath("defaults/forward.toml").read_text("utf-8")
    return parse_config(text, "<defaults>")


def _position(message: str) -> tuple[int | None, int | None]:
    match = re.search(r"at line (\d+), column (\d+)", message)
    if match is None:
        return None, None
    return int(match.group(1)), int(match.group(2))


_KIND_ONLY_KEYS = {"destination": "tcp-tunnel", "realm": "socks5"}
"""Keys that only one service kind takes, and that kind."""

_KIND_REQUIRED = {"tcp-tunnel": ("destination",)}
"""Keys a kind cannot run without."""


def _check_kind_keys(errors: _Collector, prefix: str, raw: dict[str, Any], values: dict[str, Any]) -> None:
    """Refuse keys the service's kind does not take, and ask for the ones it needs."""
    kind = values.get("kind")
    if kind is None:
        return
    for key, only in _KIND_ONLY_KEYS.items():
        if key in raw and kind != only:
            errors.add(f"{prefix}.{key}", f"only a \"{only}\" service takes {key} (this one is \"{kind}\")")
    for key in _KIND_REQUIRED.get(kind, ()):
        if key not in raw:
            errors.add(f"{prefix}.{key}", f"required key is missing (a \"{kind}\" service needs it)")


def _check_service_realms(
    errors: _Collector,
    services: list[tuple[str, ServiceConfig]],
    realms: dict[str, RealmConfig],
    raw_realms: Any,
) -> None:
    """Every C{realm} a service names is a configured C{[realm.NAME]}."""
    declared = set(raw_realms) if isinstance(raw_realms, dict) else set()
    for prefix, service in services:
        name = service.realm
        if name is None or service.kind != "socks5" or name in realms or name in declared:
            continue  # a declared realm with its own errors is reported there
        known = ", ".join(sorted(declared)) or "none configured"
        errors.add(f"{prefix}.realm", f"no [realm.{name}] table (realms: {known})")


def _check_unique_names(errors: _Collector, services: list[tuple[str, ServiceConfig]]) -> None:
    seen: dict[str, str] = {}
    for prefix, service in services:
        if service.name in seen:
            errors.add(f"{prefix}.name", f"{service.name!r} is already the name of {seen[service.name]}")
        else:
            seen[service.name] = prefix


def _check_overlaps(errors: _Collector, listeners: list[tuple[str, str]]) -> None:
    """No two listeners (C{(key, endpoint string)}) bind the same socket."""
    seen: list[tuple[str, tuple[str, str, object]]] = []
    for key, listen in listeners:
        mine = _describe_listener(listen)
        if mine is None:
            continue
        for other_key, other in seen:
            if _overlap(mine, other):
                owner = other_key.removesuffix(".listen")
                errors.add(key, f"{listen!r} overlaps the listener of {owner}")
        seen.append((key, mine))


_WILDCARDS = {"", "0.0.0.0", "::"}


def _overlap(a: tuple[str, str, object], b: tuple[str, str, object]) -> bool:
    family_a, host_a, port_a = a
    family_b, host_b, port_b = b
    if family_a == "unix" or family_b == "unix":
        return family_a == family_b and port_a == port_b
    if port_a != port_b or port_a == 0:
        return False
    return host_a == host_b or host_a in _WILDCARDS or host_b in _WILDCARDS


class _NoReactor:
    """
    Stands in for a reactor while parsing endpoint strings: parsing needs one
    as an argument but never calls it, and config validation must not install
    the global reactor.
    """


def _unwrapped(description: str) -> str:
    while description.startswith("haproxy:"):
        description = description[len("haproxy:"):]
    return description


def _describe_listener(description: str) -> tuple[str, str, object] | None:
    """
    Parse an endpoint string the way twistd will, and say which socket it
    binds: C{(family, interface, port)}, or C{None} when unknowable (systemd).

    @raise Exception: whatever Twisted's parser raises for a bad string.
    """
    if _unwrapped(description).startswith("systemd:"):
        return None
    endpoint = serverFromString(_NoReactor(), description)  # type: ignore[arg-type]
    while hasattr(endpoint, "_wrappedEndpoint"):
        endpoint = endpoint._wrappedEndpoint
    if hasattr(endpoint, "_port") and hasattr(endpoint, "_interface"):
        return ("tcp", endpoint._interface, endpoint._port)
    if hasattr(endpoint, "_address") and isinstance(endpoint._address, str):
        return ("unix", "", endpoint._address)
    return None
