# -*- test-case-name: tests.policy.test_o365 -*-
"""
Converting Microsoft's Office 365 / Microsoft 365 endpoints JSON into a
category list (see L{txgate.policy.categories}).

Microsoft publishes its endpoints at
C{https://endpoints.office.com/endpoints/worldwide?clientrequestid=GUID}: a
JSON array of I{endpoint sets}, each an object such as::

    {"id": 12, "serviceArea": "Skype",
     "serviceAreaDisplayName": "Microsoft Teams",
     "urls": ["*.lync.com", "teams.microsoft.com"],
     "ips": ["52.112.0.0/14", "2603:1063::/38"],
     "tcpPorts": "80,443", "udpPorts": "443",
     "expressRoute": true, "category": "Allow", "required": true}

Pure: L{convert} takes the parsed JSON and L{render} takes the date; the
C{txgate o365 import} command reads the file and the clock.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, Iterable, Sequence

import attrs

from txgate.policy.categories import HostEntry, parse_entry

__all__ = [
    "DEFAULT_CATEGORIES",
    "DEFAULT_SERVICE_AREA",
    "Conversion",
    "EndpointsFormatError",
    "Skipped",
    "convert",
    "render",
]

DEFAULT_SERVICE_AREA = "Skype"
"""The service area of Skype for Business Online / Lync Online and Teams."""

DEFAULT_CATEGORIES = ("Optimize", "Allow")
"""
Microsoft's own advice: route these directly, bypassing proxies and TLS
inspection. C{Default} endpoints are ordinary internet destinations.
"""

_SOURCE_URL = "https://endpoints.office.com/endpoints/worldwide?clientrequestid=GUID"


class EndpointsFormatError(ValueError):
    """
    The JSON is not in the shape of Microsoft's endpoints data; the message
    says what was expected and where.
    """


@attrs.frozen
class Skipped:
    """
    A URL that a category list cannot express (C{*cdn.onenote.net},
    C{autodiscover.<tenant>.onmicrosoft.com}), with the reason.
    """

    url: str
    endpoint_id: object
    reason: str


@attrs.frozen
class Conversion:
    """
    The entries selected from an endpoints file, de-duplicated and sorted.

    @ivar hosts: host and C{*.domain} entries, sorted by name.
    @ivar ipv4: IPv4 networks, in address order.
    @ivar ipv6: IPv6 networks, in address order.
    @ivar skipped: URLs left out, and why.
    @ivar display_names: the C{serviceAreaDisplayName}s of the chosen sets.
    """

    hosts: tuple[str, ...]
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    skipped: tuple[Skipped, ...]
    display_names: tuple[str, ...]

    def entries(self) -> tuple[str, ...]:
        """Every entry, in file order: hosts, then IPv4, then IPv6."""
        return self.hosts + self.ipv4 + self.ipv6


def convert(
    data: Any,
    service_area: str = DEFAULT_SERVICE_AREA,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
) -> Conversion:
    """
    Select the endpoint sets of C{service_area} whose C{category} is one of
    C{categories} (both compared case-insensitively) and collect their URLs
    and IP networks.

    @param data: the parsed JSON.
    @raise EndpointsFormatError: if C{data} is not shaped like Microsoft's
        endpoints data, holds an invalid IP network, or has no endpoint set
        that matches.
    """
    if not isinstance(data, list):
        raise EndpointsFormatError(
            f"expected a JSON array of endpoint sets (as served by {_SOURCE_URL}), got {_kind(data)}"
        )
    wanted_area = service_area.casefold()
    wanted = {c.casefold() for c in categories}
    hosts: dict[str, None] = {}
    networks: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, None] = {}
    skipped: list[Skipped] = []
    display: dict[str, None] = {}
    areas: dict[str, None] = {}
    for index, item in enumerate(data):
        where = f"item {index}"
        if not isinstance(item, dict):
            raise EndpointsFormatError(f"{where}: expected an endpoint set (a JSON object), got {_kind(item)}")
        if "id" in item:
            where += f" (id {item['id']!r})"
        area = _field(item, "serviceArea", str, where, required=True)
        category = _field(item, "category", str, where, required=True)
        urls = _strings(item, "urls", where)
        ips = _strings(item, "ips", where)
        areas[area] = None
        if area.casefold() != wanted_area or category.casefold() not in wanted:
            continue
        name = item.get("serviceAreaDisplayName")
        if isinstance(name, str):
            display[name] = None
        for url in urls:
            if "<" in url:
                skipped.append(Skipped(url, item.get("id"), "a per-tenant placeholder; list your own names by hand"))
                continue
            try:
                entry = parse_entry(url)
            except ValueError as e:
                skipped.append(Skipped(url, item.get("id"), _reason(str(e), url)))
                continue
            if isinstance(entry, HostEntry):
                hosts[str(entry)] = None
            else:
                networks[entry] = None
        for ip in ips:
            try:
                networks[ipaddress.ip_network(ip, strict=True)] = None
            except ValueError as e:
                raise EndpointsFormatError(f"{where}: 'ips' holds {ip!r}, which is not an IP network: {e}") from None
    if not hosts and not networks:
        raise EndpointsFormatError(
            f"no endpoint set has serviceArea {service_area!r} and category"
            f" {' or '.join(categories)} (service areas present: {', '.join(sorted(areas)) or 'none'})"
        )
    v4 = sorted((n for n in networks if n.version == 4), key=_network_key)
    v6 = sorted((n for n in networks if n.version == 6), key=_network_key)
    return Conversion(
        tuple(sorted(hosts, key=_host_key)),
        tuple(str(n) for n in v4),
        tuple(str(n) for n in v6),
        tuple(skipped),
        tuple(display),
    )


def render(
    conversion: Conversion,
    *,
    source: str,
    today: datetime.date,
    service_area: str = DEFAULT_SERVICE_AREA,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
) -> str:
    """
    The category list file: a dated header, then one entry per line.

    @param source: the JSON file's name, as the operator gave it.
    @param today: the date to record as the generation date.
    """
    described = f" ({', '.join(conversion.display_names)})" if conversion.display_names else ""
    command = f"txgate o365 import endpoints.json --service-area {service_area}"
    if tuple(c.casefold() for c in categories) != tuple(c.casefold() for c in DEFAULT_CATEGORIES):
        command += "".join(f" --category {c}" for c in categories)
    lines = [
        f"# Microsoft 365 endpoints: service area {service_area}{described},",
        f"# categories {', '.join(categories)}.",
        f"# Generated from {source} by txgate o365 import on {today.isoformat()}.",
        "#",
        "# Source format: Microsoft's endpoints JSON, from",
        f"#   {_SOURCE_URL}",
        "# To refresh, download it again and run:",
        f"#   {command} --output THIS-FILE",
        "#",
        f"# Entries: {len(conversion.hosts)} host, {len(conversion.ipv4)} IPv4, {len(conversion.ipv6)} IPv6.",
    ]
    if conversion.skipped:
        lines.append("# Left out (a category list cannot express them):")
        for skip in conversion.skipped:
            lines.append(f"#   {skip.url} (id {skip.endpoint_id}): {skip.reason}")
    lines.append("")
    lines.extend(conversion.entries())
    return "\n".join(lines) + "\n"


def _reason(message: str, url: str) -> str:
    """A L{parse_entry} message without its C{bad entry 'url': } prefix."""
    prefix = f"bad entry {url!r}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _host_key(entry: str) -> tuple[str, bool]:
    """Sort by the name a wildcard covers, then the wildcard after the host."""
    wildcard = entry.startswith("*.")
    return (entry[2:] if wildcard else entry, wildcard)


def _network_key(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    return (int(network.network_address), network.prefixlen)


def _field(item: dict[str, Any], key: str, kind: type, where: str, required: bool = False) -> Any:
    if key not in item:
        if required:
            raise EndpointsFormatError(f"{where}: the endpoint set has no {key!r}")
        return None
    value = item[key]
    if not isinstance(value, kind):
        raise EndpointsFormatError(f"{where}: {key!r} must be {_kind(kind())}, got {_kind(value)}")
    return value


def _strings(item: dict[str, Any], key: str, where: str) -> Iterable[str]:
    value = item.get(key, [])
    if not isinstance(value, list):
        raise EndpointsFormatError(f"{where}: {key!r} must be an array of strings, got {_kind(value)}")
    for element in value:
        if not isinstance(element, str):
            raise EndpointsFormatError(
                f"{where}: {key!r} must be an array of strings, but it holds {_kind(element)}"
            )
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)
