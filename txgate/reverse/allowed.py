# -*- test-case-name: tests.reverse.test_allowed -*-
"""
What a virtual service lets through: which virtual hosts (the C{Host}
header) and which virtual directories (the request path).

A path is matched only after it has been normalized, and the normalized form
is what the real server receives, so the proxy and the real server can never
disagree about which directory a request names. Anything two servers could
read two ways (an encoded slash, a backslash, an overlong UTF-8 dot, a C{..}
above the root) is refused as L{AmbiguousPath} instead of being guessed at.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Iterable
from urllib.parse import unquote

import attrs

__all__ = [
    "AmbiguousPath",
    "HostRules",
    "PathRules",
    "host_of",
    "normalize_target",
]


class AmbiguousPath(Exception):
    """
    A request target that servers could read in more than one way; C{str()}
    is the reason, for the security log.
    """


# Raw bytes a request target may hold: visible ASCII only. Space, controls,
# DEL and anything above 0x7e are refused (h11 lets obs-text through).
_RAW_BAD = re.compile(rb"[^\x21-\x7e]")
# A "%" not followed by two hex digits.
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Escapes that decode to a separator or a control character: "/" and "\"
# would split or join segments differently after decoding; controls (NUL
# first of all) end strings early in C code behind the proxy. %25 followed by
# hex digits is double encoding, which a server that decodes twice reads as
# a second, different path.
_FORBIDDEN_ESCAPE = re.compile(rb"%(?:2[Ff]|5[Cc]|[01][0-9A-Fa-f]|7[Ff]|25(?=[0-9A-Fa-f]{2}))")
# Any escape, to decode the unreserved ones and upper-case the rest.
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DOTS = frozenset({b".", b".."})


def _recode_escape(match: re.Match[bytes]) -> bytes:
    byte = int(match.group(1), 16)
    if byte in _UNRESERVED:
        return bytes((byte,))
    return b"%" + match.group(1).upper()


def _forbidden_reason(escape: bytes) -> str:
    code = escape[1:3].upper()
    if code == b"2F":
        return "encoded slash %2F in path"
    if code == b"5C":
        return "encoded backslash %5C in path"
    if code == b"25":
        return "double percent-encoding %25 in path"
    if code == b"00":
        return "encoded NUL %00 in path"
    return f"encoded control character %{code.decode()} in path"


_CACHED_TARGET = 512
"""Targets up to this long have their normalization cached (a client asks for the same few again and again)."""


def normalize_target(target: bytes) -> tuple[str, bytes]:
    """
    Normalize an origin-form request target (C{/p?q}) for matching and for
    forwarding.

    The path is split from the query; unreserved characters are decoded and
    other escapes upper-cased; dot-segments are removed (RFC 3986 5.2.4) and
    runs of C{/} collapsed. A segment's C{;params} are kept for the real
    server but are not part of the path that is matched. The query is kept
    byte for byte.

    @return: C{(path, upstream_target)}: the fully decoded path that allow
        rules are matched against, and the target to send the real server.
        C{normalize_target(upstream_target)} gives the same pair again.
    @raise AmbiguousPath: anything that is not a plain origin-form path or
        that servers could read in more than one way.
    """
    if len(target) <= _CACHED_TARGET:
        return _normalize_cached(target)
    return _normalize(target)


def _normalize(target: bytes) -> tuple[str, bytes]:
    if target[:1] != b"/":
        raise AmbiguousPath("request target is not origin-form (must start with /)")
    bad = _RAW_BAD.search(target)
    if bad is not None:
        byte = bad.group()[0]
        if byte == 0:
            raise AmbiguousPath("NUL in request target")
        if byte > 0x7F:
            raise AmbiguousPath("non-ASCII byte in request target")
        raise AmbiguousPath(f"control character or space 0x{byte:02X} in request target")
    if b"#" in target:
        raise AmbiguousPath("fragment (#) in request target")
    raw, question, query = target.partition(b"?")
    if b"\\" in raw:
        raise AmbiguousPath("backslash in path")
    if b"%" in raw:
        if _BAD_ESCAPE.search(raw) is not None:
            raise AmbiguousPath("bad percent-escape in path")
        forbidden = _FORBIDDEN_ESCAPE.search(raw)
        if forbidden is not None:
            raise AmbiguousPath(_forbidden_reason(forbidden.group()))
        raw = _ESCAPE.sub(_recode_escape, raw)
        escaped = b"%" in raw
    else:
        escaped = False

    kept: list[bytes] = []
    keys: list[bytes] = []
    segments = raw.split(b"/")
    last = len(segments) - 1
    trailing = False
    for index in range(1, last + 1):
        segment = segments[index]
        key, semicolon, _ = segment.partition(b";")
        if key in _DOTS or not segment:
            if semicolon:
                raise AmbiguousPath("dot-segment with ;parameters in path")
            if key == b"..":
                if not kept:
                    raise AmbiguousPath(".. above the root in path")
                kept.pop()
                keys.pop()
            trailing = index == last
            continue
        if not key:
            raise AmbiguousPath("empty path segment with ;parameters")
        kept.append(segment)
        keys.append(key)
        trailing = False

    tail = b"/" if trailing and kept else b""
    upstream_path = b"/" + b"/".join(kept) + tail
    match_path = b"/" + b"/".join(keys) + tail
    if escaped:
        try:
            # The whole path is decoded once so that a multi-byte sequence
            # cut in two by a ";" is caught too.
            unquote(upstream_path.decode("ascii"), errors="strict")
            path = unquote(match_path.decode("ascii"), errors="strict")
        except UnicodeDecodeError:
            raise AmbiguousPath("invalid or overlong UTF-8 in path") from None
    else:
        path = match_path.decode("ascii")
    return path, upstream_path + question + query


# Bounded, so that a client sending ever new targets costs a miss each, not memory.
# Refusals raise, and are never cached.
_normalize_cached = functools.lru_cache(maxsize=1024)(_normalize)


_GLOB_BAD = re.compile(r"[\x00-\x20\x7f\\]|//|/\.\.?(?:/|$)")


def _glob_pattern(glob: str) -> str:
    prefix, whole_directory = glob, glob.endswith("/*")
    if whole_directory:
        prefix = glob[:-2]
    out = []
    for char in prefix:
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        else:
            out.append(re.escape(char))
    if whole_directory:
        out.append("(?:/.*)?")
    return "".join(out)


@attrs.frozen
class PathRules:
    """
    The virtual directories of a virtual service: globs over the normalized
    path (see L{normalize_target}), case-insensitive as IIS is.

    C{*} matches any run of characters, C{/} included; C{?} matches one. A
    glob ending in C{/*} also matches the bare directory, so C{/meet/*}
    allows C{/meet}, C{/meet/} and C{/meet/a/b}.

    @ivar globs: the globs, in configuration order.
    """

    globs: tuple[str, ...]
    _regex: re.Pattern[str] = attrs.field(eq=False, repr=False)

    @classmethod
    def of(cls, globs: Iterable[str]) -> PathRules:
        """
        Compile globs into one regular expression.

        @raise ValueError: a glob that does not start with C{/} or that no
            normalized path could match.
        """
        globs = tuple(globs)
        patterns = []
        for glob in globs:
            if not isinstance(glob, str) or not glob.startswith("/"):
                raise ValueError(f"path glob must start with '/', got {glob!r}")
            if _GLOB_BAD.search(glob) is not None:
                raise ValueError(
                    f"path glob {glob!r} can never match a normalized path "
                    "(whitespace, control character, backslash, '//' or a dot-segment)"
                )
            patterns.append(_glob_pattern(glob))
        # re.ASCII: only ASCII letters fold, so "\u212a" (KELVIN SIGN) does not
        # match a glob's "k".
        regex = re.compile("|".join(patterns) or "(?!)", re.IGNORECASE | re.ASCII | re.DOTALL)
        return cls(globs, regex)

    def allows(self, path: str) -> bool:
        """
        Whether a normalized path is in one of the virtual directories.
        """
        return self._regex.fullmatch(path) is not None


_HOST_HEADER = re.compile(
    rb"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\.?)(?::([0-9]{0,5}))?"
)
_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
_IPV4ISH = re.compile(r"[0-9.]+")
_MAX_NAME = 253


@functools.lru_cache(maxsize=256)
def host_of(host_header: bytes) -> str | None:
    """
    The host a C{Host} header names: lower-case, without port, one trailing
    dot or IPv6 brackets (an IPv6 address in its compressed form). Cached
    (bounded): a virtual service answers to a few names.

    @return: C{None} when the header is not a host (empty, bad port,
        whitespace, userinfo, path, zone index, ...).
    """
    match = _HOST_HEADER.fullmatch(host_header)
    if match is None:
        return None
    v6, name, port = match.groups()
    if port and int(port) > 65535:
        return None
    if v6 is not None:
        try:
            return ipaddress.IPv6Address(v6.decode("ascii")).compressed
        except ValueError:
            return None
    if len(name) > _MAX_NAME:
        return None
    return name.decode("ascii").lower()


@attrs.frozen
class HostRules:
    """
    The virtual hosts of a virtual service: exact names (or addresses) and
    C{*.suffix} wildcards that, as in TLS certificates, stand for exactly one
    more label.

    @ivar exact: normalized exact names.
    @ivar suffixes: the suffixes of the wildcards, without C{*.}.
    """

    exact: frozenset[str]
    suffixes: frozenset[str]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> HostRules:
        """
        @raise ValueError: a pattern that is neither a host name, an IP
            address nor C{*.} followed by a host name.
        """
        exact = set()
        suffixes = set()
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.isascii():
                raise ValueError(f"allowed host must be an ASCII host name, got {pattern!r}")
            text = pattern.lower()
            if text.endswith(".") and not text.endswith(".."):
                text = text[:-1]
            if text.startswith("*."):
                suffix = text[2:]
                if _NAME.fullmatch(suffix) is None or _IPV4ISH.fullmatch(suffix) is not None:
                    raise ValueError(
                        f"allowed host wildcard must be '*.' followed by a domain name, got {pattern!r}"
                    )
                suffixes.add(suffix)
                continue
            bracketed = text.startswith("[") and text.endswith("]")
            if bracketed:
                text = text[1:-1]
            if bracketed or ":" in text:
                try:
                    exact.add(ipaddress.IPv6Address(text).compressed)
                except ValueError:
                    raise ValueError(
                        f"allowed host must be a name or address without port, got {pattern!r}"
                    ) from None
                continue
            if _NAME.fullmatch(text) is None or len(text) > _MAX_NAME:
                raise ValueError(
                    f"allowed host must be a host name, an IP address or '*.domain', got {pattern!r}"
                )
            exact.add(text)
        return cls(frozenset(exact), frozenset(suffixes))

    def match(self, host_header: bytes | None) -> str | None:
        """
        The normalized host when a request's C{Host} header names an allowed
        virtual host, else C{None} (also for a missing or malformed header).
        """
        if host_header is None:
            return None
        host = host_of(host_header)
        if host is None:
            return None
        if host in self.exact:
            return host
        label, dot, suffix = host.partition(".")
        if dot and label and suffix in self.suffixes and ":" not in host:
            return host
        return None
