# -*- test-case-name: tests.test_hosts -*-
"""
Static name to address overrides for upstream connections (C{[txgate]
hosts_file}), like squid's C{hosts_file}.

The file has C{/etc/hosts} syntax: C{ADDRESS NAME [NAME...]} per line, an
IPv4 or IPv6 address then one or more names; C{#} starts a comment, blank
lines are skipped. Two differences from C{/etc/hosts}, both so that a
mistake stops the start with C{file:line} instead of surprising later:

  - a name listed twice (on one line or two) is refused, where glibc would
    silently use the first; this includes the usual C{127.0.0.1 localhost} /
    C{::1 localhost} pair, so write a file of its own rather than pointing
    txgate at the system's C{/etc/hosts};
  - an address with no name, or a name or address that is not one, is
    refused rather than skipped.

One extension: a name whose first label is C{*} (C{*.bench.test}) matches
every name under that domain (C{www.bench.test}, C{a.b.bench.test}), but not
C{bench.test} itself, as with a DNS wildcard record. An exact name wins over
any wildcard, and a longer wildcard over a shorter one.

Names are matched ignoring case and one trailing dot. IP literals are never
looked up. Only where txgate connects changes: policy, the access log and
TLS (SNI, certificate checks) still see the name.

Pure: L{Hosts} is a frozen value; L{load_hosts} reads one file but never
touches the network or a reactor.
"""

from __future__ import annotations

import ipaddress
import re
from typing import TYPE_CHECKING, Iterator, Mapping

import attrs

from txgate.acl import parse_address
from txgate.config._files import read_text
from txgate.errors import ConfigError, ConfigErrors

if TYPE_CHECKING:  # pragma: no cover
    from txgate.config import Config

__all__ = ["Hosts", "MAX_NAME_LENGTH", "load_configured", "load_hosts", "parse_hosts"]

MAX_NAME_LENGTH = 253
"""
The longest DNS name (RFC 1035, without the trailing dot). A longer name is
refused in the file and never matches a lookup, which also bounds the work
one lookup can cost (one dict probe per label).
"""

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def _normalise(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def _parse_name(text: str) -> str:
    """
    One name of a hosts line, normalised (lower case, no trailing dot; a
    wildcard keeps its C{*.}).

    @raise ValueError: saying what was expected.
    """
    wildcard = text.startswith("*.")
    name = _normalise(text[2:] if wildcard else text)
    if "*" in name:
        raise ValueError(f"bad name {text!r}: '*' is only allowed as the whole first label ('*.example.com')")
    if not name:
        raise ValueError(f"bad name {text!r}: expected a domain after '*.'")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"bad name {text[:40]!r}...: a host name has at most {MAX_NAME_LENGTH} characters")
    if not wildcard and parse_address(name) is not None:
        raise ValueError(f"bad name {text!r}: an IP address cannot be overridden (IP literals are never looked up)")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(
                f"bad name {text!r}: expected a host name ('host.example.com') or '*.domain';"
                f" {label!r} is not a DNS label (letters, digits, '-' and '_', at most 63, no '-'"
                f" at either end; write internationalised names in their xn-- form)"
            )
    return f"*.{name}" if wildcard else name


def _parse_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"bad address {text!r}: expected an IPv4 or IPv6 address, then one or more names") from None


@attrs.frozen
class Hosts(Mapping[str, str]):
    """
    Name overrides, compiled for lookup. Build one with L{parse_hosts},
    L{load_hosts} or L{Hosts.from_mapping}; C{Hosts()} is empty.

    As a mapping, its keys are the entries as normalised (C{www.example.com},
    C{*.bench.test}) and its values the addresses; C{hosts[name]},
    C{hosts.get(name)} and C{name in hosts} look C{name} up as L{address_of}
    does (ignoring case and a trailing dot, trying wildcards).
    """

    _exact: Mapping[str, str] = attrs.field(factory=dict)
    _wildcards: Mapping[str, str] = attrs.field(factory=dict)
    """By the domain after C{*.}."""

    @classmethod
    def from_mapping(cls, entries: Mapping[str, str]) -> Hosts:
        """
        Compile C{{name: address}} entries held in memory (names as in a
        file, C{*.domain} included).

        @raise ValueError: for a bad name or address, or two spellings of
            one name.
        """
        exact: dict[str, str] = {}
        wildcards: dict[str, str] = {}
        for text, address in entries.items():
            name = _parse_name(text)
            table, key = (wildcards, name[2:]) if name.startswith("*.") else (exact, name)
            if key in table:
                raise ValueError(f"{text!r} is listed twice")
            table[key] = _parse_address(address)
        return cls(exact, wildcards)

    def address_of(self, host: str) -> str | None:
        """
        The address to connect to instead of resolving C{host}.

        @param host: a host name (no port, no brackets); case and one
            trailing dot are ignored. Any text is accepted: an IP literal, or
            what is not a host name, matches nothing.
        @return: the overriding IPv4 or IPv6 address, or C{None} when C{host}
            is to be resolved as usual.
        """
        if not (self._exact or self._wildcards):
            return None
        name = _normalise(host)
        if not name or len(name) > MAX_NAME_LENGTH or parse_address(name) is not None:
            return None
        found = self._exact.get(name)
        if found is not None or not self._wildcards:
            return found
        dot = name.find(".")
        while dot >= 0:  # longest domain first: the most specific wildcard wins
            found = self._wildcards.get(name[dot + 1:])
            if found is not None:
                return found
            dot = name.find(".", dot + 1)
        return None

    def __getitem__(self, host: str) -> str:
        found = self.address_of(host) if isinstance(host, str) else None
        if found is None:
            raise KeyError(host)
        return found

    def __iter__(self) -> Iterator[str]:
        yield from self._exact
        for domain in self._wildcards:
            yield f"*.{domain}"

    def __len__(self) -> int:
        return len(self._exact) + len(self._wildcards)


def parse_hosts(text: str, path: str) -> Hosts:
    """
    Parse the text of a hosts file read from C{path}.

    @raise ConfigErrors: every mistake found, each as C{path:line}.
    """
    exact: dict[str, str] = {}
    wildcards: dict[str, str] = {}
    first_line: dict[str, int] = {}
    errors: list[ConfigError] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            address = _parse_address(words[0])
        except ValueError as e:
            errors.append(ConfigError(path, "", str(e), number))
            continue
        if len(words) == 1:
            errors.append(ConfigError(path, "", f"expected one or more names after the address {words[0]!r}", number))
            continue
        for word in words[1:]:
            try:
                name = _parse_name(word)
            except ValueError as e:
                errors.append(ConfigError(path, "", str(e), number))
                continue
            if name in first_line:
                table = wildcards if name.startswith("*.") else exact
                previous = table[name[2:] if name.startswith("*.") else name]
                where = "this line" if first_line[name] == number else f"line {first_line[name]}"
                errors.append(
                    ConfigError(
                        path,
                        "",
                        f"{word!r} is already mapped to {previous} on {where}; list each name once"
                        f" (txgate refuses duplicates where /etc/hosts would use the first)",
                        number,
                    )
                )
                continue
            first_line[name] = number
            if name.startswith("*."):
                wildcards[name[2:]] = address
            else:
                exact[name] = address
    if errors:
        raise ConfigErrors(tuple(errors))
    return Hosts(exact, wildcards)


def load_hosts(path: str, config_path: str) -> Hosts:
    """
    Read and parse the hosts file at C{path}.

    @param config_path: the configuration file that named it, for an error
        about the file as a whole (it cannot be read).
    @raise ConfigErrors: bad lines as C{path:line}; an unreadable file under
        the C{txgate.hosts_file} key of C{config_path}.
    """
    try:
        text = read_text(path)
    except ConfigErrors as e:
        raise ConfigErrors(
            tuple(
                ConfigError(config_path, "txgate.hosts_file", f"{path}: {error.message}")
                if error.line is None
                else error
                for error in e.errors
            )
        ) from None
    return parse_hosts(text, path)


def load_configured(config: Config) -> Hosts:
    """
    The overrides C{[txgate] hosts_file} names; empty when it is C{""}.

    @raise ConfigErrors: as L{load_hosts}.
    """
    path = config.txgate.hosts_file
    return load_hosts(path, config.path) if path else Hosts()
