# -*- test-case-name: tests.policy.test_categories -*-
"""
Categories: named lists of hosts, domains and IP networks, for the policy
condition C{category=NAME} (bypass lists such as C{office365.skype}).

A category file holds one entry per line; C{#} starts a comment:

  - C{host.example.com}: that host only;
  - C{*.example.com}: C{example.com} itself and every name under it;
  - C{192.0.2.0/24}, C{2001:db8::/32}, C{192.0.2.7}: an IPv4 or IPv6 network
    (a bare address is a /32 or /128).

The category's name is the file name without its last suffix
(C{etc/categories/office365.skype.txt} is C{office365.skype}).

Pure: L{Categories} is a frozen value; L{load_categories} reads files but never
touches the network or a reactor. Lookups cost one dict probe per label of the
host, plus one per distinct prefix length of each address family.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import attrs

from txgate.acl import parse_address
from txgate.config._files import read_text
from txgate.errors import ConfigError, ConfigErrors

if TYPE_CHECKING:  # pragma: no cover
    from txgate.config import Config

__all__ = [
    "Categories",
    "HostEntry",
    "MAX_HOST_LENGTH",
    "category_name",
    "load_categories",
    "load_configured",
    "parse_entry",
]

MAX_HOST_LENGTH = 253
"""
The longest DNS name (RFC 1035, without the trailing dot). A longer host
matches no host entry, which also bounds the work one lookup can cost.
"""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_LOOKS_NUMERIC = re.compile(r"[0-9.]+(?:/[0-9]*)?")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class HostEntry:
    """
    A host entry, normalised: lower case, no trailing dot.

    @ivar host: the name (without C{*.} for a wildcard).
    @ivar wildcard: C{True} for C{*.host}: the host and all names under it.
    """

    host: str
    wildcard: bool

    def __str__(self) -> str:
        return f"*.{self.host}" if self.wildcard else self.host


def parse_entry(text: str) -> HostEntry | Network:
    """
    Parse one entry of a category list (already stripped of comments and
    blanks).

    @return: a L{HostEntry} or an IPv4/IPv6 network. IPv4-mapped IPv6 networks
        (C{::ffff:192.0.2.0/120}) come back as IPv4 networks.
    @raise ValueError: saying what was expected.
    """
    if ":" in text or _LOOKS_NUMERIC.fullmatch(text):
        return _parse_network(text)
    wildcard = text.startswith("*.")
    host = _normalise_host(text[2:] if wildcard else text)
    if "*" in host:
        raise ValueError(
            f"bad entry {text!r}: '*' is only allowed as the whole first label ('*.example.com')"
        )
    if not host:
        raise ValueError(f"bad entry {text!r}: expected a host name after '*.'" if wildcard else "empty entry")
    if len(host) > MAX_HOST_LENGTH:
        raise ValueError(f"bad entry {text[:40]!r}...: a host name has at most {MAX_HOST_LENGTH} characters")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"bad entry {text!r}: expected a host name ('host.example.com'), '*.domain' or an"
                f" IP network; {label!r} is not a DNS label (letters, digits, '-' and '_',"
                f" at most 63, no '-' at either end; write internationalised names in their"
                f" xn-- form)"
            )
    return HostEntry(host, wildcard)


def _parse_network(text: str) -> Network:
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        if "has host bits set" in str(e):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"bad entry {text!r}: host bits are set; did you mean {loose}?") from None
        raise ValueError(f"bad entry {text!r}: expected an IPv4 or IPv6 network (CIDR): {e}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _normalise_host(host: str) -> str:
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


@attrs.frozen
class _Ranges:
    """
    The networks of one address family: for each prefix length present, a dict
    from network number to the categories holding that network. A lookup masks
    the address once per prefix length (at most 33 or 129, in practice a few).
    """

    by_length: tuple[tuple[int, Mapping[int, frozenset[str]]], ...] = ()
    bits: int = 32

    def lookup(self, value: int) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        all_ones = (1 << self.bits) - 1
        for length, table in self.by_length:
            mask = all_ones ^ ((1 << (self.bits - length)) - 1)
            names = table.get(value & mask)
            if names:
                found |= names
        return found


@attrs.frozen
class Categories:
    """
    Named categories, compiled for lookup. Build one with
    L{Categories.from_lists} or L{load_categories}; C{Categories()} is empty.
    """

    _names: frozenset[str] = frozenset()
    _hosts: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    _domains: Mapping[str, frozenset[str]] = attrs.field(factory=dict)
    _v4: _Ranges = _Ranges(bits=32)
    _v6: _Ranges = _Ranges(bits=128)

    @classmethod
    def from_lists(cls, lists: Mapping[str, Iterable[str | HostEntry | Network]]) -> Categories:
        """
        Compile categories from entries in memory: C{{name: [entry, ...]}}.
        String entries are parsed with L{parse_entry}.

        @raise ValueError: for a bad category name or entry.
        """
        builder = _Builder()
        for name, entries in lists.items():
            _check_name(name)
            builder.names.add(name)
            for entry in entries:
                builder.add(name, parse_entry(entry) if isinstance(entry, str) else entry)
        return builder.build()

    def names(self) -> frozenset[str]:
        """Every category name, including those of empty lists."""
        return self._names

    def lookup(self, host: str | None, address: str | None) -> frozenset[str]:
        """
        The categories a destination belongs to.

        @param host: a host name as the client named it (no port, no
            brackets); case and one trailing dot are ignored. An IP literal
            here is looked up as an address too. Any text is accepted: what is
            not a host name matches nothing.
        @param address: an IPv4 or IPv6 literal (IPv4-mapped IPv6 counts as
            IPv4), e.g. the resolved or connected address; anything else
            matches nothing.
        @return: the names of every category with a matching entry.
        """
        found: frozenset[str] = frozenset()
        if host:
            found |= self._lookup_host(host)
        if address:
            found |= self._lookup_address(address)
        return found

    def _lookup_host(self, host: str) -> frozenset[str]:
        found = self._lookup_address(host) if ":" in host or host[:1].isdigit() else frozenset()
        host = _normalise_host(host)
        if not host or len(host) > MAX_HOST_LENGTH:
            return found
        exact = self._hosts.get(host)
        if exact:
            found |= exact
        if self._domains:
            suffix_start = 0
            while True:
                names = self._domains.get(host[suffix_start:])
                if names:
                    found |= names
                dot = host.find(".", suffix_start)
                if dot < 0:
                    break
                suffix_start = dot + 1
        return found

    def _lookup_address(self, text: str) -> frozenset[str]:
        address = parse_address(text)
        if address is None:
            return frozenset()
        if address.version == 4:
            return self._v4.lookup(int(address))
        return self._v6.lookup(int(address))


class _Builder:
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.hosts: dict[str, set[str]] = {}
        self.domains: dict[str, set[str]] = {}
        self.networks: dict[int, dict[int, dict[int, set[str]]]] = {4: {}, 6: {}}

    def add(self, name: str, entry: HostEntry | Network) -> None:
        if isinstance(entry, HostEntry):
            table = self.domains if entry.wildcard else self.hosts
            table.setdefault(entry.host, set()).add(name)
        else:
            by_length = self.networks[entry.version]
            by_length.setdefault(entry.prefixlen, {}).setdefault(int(entry.network_address), set()).add(name)

    def build(self) -> Categories:
        def freeze(table: dict[str, set[str]]) -> dict[str, frozenset[str]]:
            return {k: frozenset(v) for k, v in table.items()}

        def ranges(version: int, bits: int) -> _Ranges:
            return _Ranges(
                tuple(
                    (length, {k: frozenset(v) for k, v in table.items()})
                    for length, table in sorted(self.networks[version].items())
                ),
                bits,
            )

        return Categories(
            frozenset(self.names),
            freeze(self.hosts),
            freeze(self.domains),
            ranges(4, 32),
            ranges(6, 128),
        )


def category_name(path: str) -> str:
    """
    The category a file defines: its base name without the last suffix
    (C{etc/categories/office365.skype.txt} is C{office365.skype}).
    """
    base = os.path.basename(path)
    stem, dot, _ = base.rpartition(".")
    return stem if dot and stem else base


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"bad category name {name!r}: expected letters, digits, '_', '.', '-' (at most 64),"
            f" starting with a letter or digit"
        )


def load_categories(paths: Sequence[str], config_path: str) -> Categories:
    """
    Read and compile the category files at C{paths}.

    @param config_path: the configuration file that named them, for errors
        about the C{txgate.categories} key itself (unreadable file, clashing
        names).
    @raise ConfigErrors: every mistake found: bad entries as C{file:line}, a
        file that cannot be read, two files with the same category name.
    """
    builder = _Builder()
    errors: list[ConfigError] = []
    origin: dict[str, str] = {}
    for path in paths:
        name = category_name(path)
        try:
            _check_name(name)
        except ValueError as e:
            errors.append(ConfigError(config_path, "txgate.categories", f"{path}: {e}"))
            continue
        if name in origin:
            errors.append(
                ConfigError(
                    config_path,
                    "txgate.categories",
                    f"{path} defines category {name!r}, already defined by {origin[name]}",
                )
            )
            continue
        origin[name] = path
        try:
            text = read_text(path)
        except ConfigErrors as e:
            for error in e.errors:
                if error.line is None:  # the file as a whole: say which key named it
                    error = ConfigError(config_path, "txgate.categories", f"{path}: {error.message}")
                errors.append(error)
            continue
        builder.names.add(name)
        _parse_file(text, path, name, builder, errors)
    if errors:
        raise ConfigErrors(tuple(errors))
    return builder.build()


def _parse_file(text: str, path: str, name: str, builder: _Builder, errors: list[ConfigError]) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        words = content.split()
        if len(words) > 1:
            errors.append(ConfigError(path, "", f"expected one entry per line, got {len(words)}: {content!r}", number))
            continue
        try:
            builder.add(name, parse_entry(content))
        except ValueError as e:
            errors.append(ConfigError(path, "", str(e), number))


def load_configured(config: Config) -> Categories:
    """
    The categories C{[txgate] categories} names, for the policy engine.

    @raise ConfigErrors: as L{load_categories}.
    """
    return load_categories(config.txgate.categories, config.path)
