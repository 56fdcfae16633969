"""
Tests for L{txgate.reverse.allowed}: path normalization, virtual directories
and virtual hosts.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse.allowed import (
    AmbiguousPath,
    HostRules,
    PathRules,
    host_of,
    normalize_target,
)

MEET = PathRules.of(["/meet/*"])

TRAVERSALS = [
    b"/%2e%2e/",
    b"/meet/../admin",
    b"/meet/%2e%2e/admin",
    b"//admin",
    b"/meet\\..\\admin",
    b"/meet/..%2fadmin",
    b"/meet/%c0%ae%c0%ae/admin",
    b"/meet;/../admin",
    b"/meet/..;/admin",
    b"/meet/%2E%2E;x/admin",
    b"/meet/.%2e/admin",
    b"/meet/%252e%252e/admin",
    b"/meet/%u002e%u002e/admin",
    b"/meet/%e0%80%ae%e0%80%ae/admin",
    b"/meet/..%5cadmin",
    b"/meet/..%5Cadmin",
    b"/meet/%00/../../admin",
    b"/meet/../../admin",
    b"/meet/./../admin",
    b"/meet//../../admin",
]

# Paths, and bytes within them, that make up hostile targets.
_PIECES = st.sampled_from(
    [b"/", b"//", b".", b"..", b"%2e", b"%2E", b"%2f", b"%5c", b"\\", b";", b";x",
     b"%c0%ae", b"%e0%80%ae", b"%41", b"%7e", b"%3b", b"%25", b"%00", b"%", b"%4",
     b"meet", b"MEET", b"admin", b"a", b"?", b"?q=/../", b"#", b" ", b"\x00", b"\xc3\xa9",
     b"%c3%a9", b"~", b"-_"]
)
_TARGETS = st.lists(_PIECES, max_size=12).map(lambda parts: b"/" + b"".join(parts))


class NormalizeTargetTests(SynchronousTestCase):
    """
    L{normalize_target} gives the path to match and the target to forward,
    or refuses what could be read two ways.
    """

    def test_normal(self) -> None:
        """Dot-segments are removed, runs of C{/} collapsed, unreserved escapes decoded."""
        cases = [
            (b"/", "/", b"/"),
            (b"/meet/x?a=b/../c", "/meet/x", b"/meet/x?a=b/../c"),
            (b"/meet/./x", "/meet/x", b"/meet/x"),
            (b"/meet/a/../x", "/meet/x", b"/meet/x"),
            (b"/meet//x///y", "/meet/x/y", b"/meet/x/y"),
            (b"/meet/", "/meet/", b"/meet/"),
            (b"/meet/.", "/meet/", b"/meet/"),
            (b"/meet/a/..", "/meet/", b"/meet/"),
            (b"/meet/..", "/", b"/"),
            (b"/%6d%65%65%74/%7E", "/meet/~", b"/meet/~"),
            (b"/a%20b/%3b", "/a b/;", b"/a%20b/%3B"),
            (b"/caf%c3%a9", "/caf\u00e9", b"/caf%C3%A9"),
            (b"/meet;jsessionid=1/x;v=2", "/meet/x", b"/meet;jsessionid=1/x;v=2"),
            (b"/a?", "/a", b"/a?"),
            (b"/a%25b", "/a%b", b"/a%25b"),
        ]
        for target, path, upstream in cases:
            self.assertEqual(normalize_target(target), (path, upstream), msg=f"input {target!r}")

    def test_ambiguous(self) -> None:
        """Each kind of ambiguity is refused with its own reason."""
        cases = [
            (b"*", "not origin-form"),
            (b"http://example.com/", "not origin-form"),
            (b"", "not origin-form"),
            (b"/a%2fb", "encoded slash"),
            (b"/a%2Fb", "encoded slash"),
            (b"/a%5cb", "encoded backslash"),
            (b"/a\\b", "backslash"),
            (b"/a%00", "NUL"),
            (b"/a\x00", "NUL"),
            (b"/a b", "space"),
            (b"/a\tb", "control"),
            (b"/a\x7f", "control"),
            (b"/a%0d%0a", "control"),
            (b"/a%zz", "bad percent-escape"),
            (b"/a%4", "bad percent-escape"),
            (b"/a%", "bad percent-escape"),
            (b"/%c0%ae", "UTF-8"),
            (b"/%e0%80%ae", "UTF-8"),
            (b"/%c0%af", "UTF-8"),
            (b"/%ff", "UTF-8"),
            (b"/%ed%a0%80", "UTF-8"),
            (b"/%c3;%a9", "UTF-8"),
            (b"/..", "above the root"),
            (b"/../x", "above the root"),
            (b"/meet/../../x", "above the root"),
            (b"/caf\xc3\xa9", "non-ASCII"),
            (b"/a#b", "fragment"),
            (b"/a/..;/b", "parameters"),
            (b"/a/.;x/b", "parameters"),
            (b"/a/;x/b", "parameters"),
            (b"/a/%252e", "double percent-encoding"),
        ]
        for target, reason in cases:
            with self.assertRaises(AmbiguousPath, msg=f"input {target!r}") as caught:
                normalize_target(target)
            self.assertIn(reason, str(caught.exception), msg=f"input {target!r}")

    def test_traversals_never_allowed(self) -> None:
        """No traversal trick gets out of C{/meet/*}."""
        for target in TRAVERSALS:
            try:
                path, upstream = normalize_target(target)
            except AmbiguousPath:
                continue
            self.assertFalse(MEET.allows(path), msg=f"input {target!r} -> {path!r}")
            self.assertFalse(upstream.startswith(b"/meet/"), msg=f"input {target!r}")

    def test_cached_and_long(self) -> None:
        """
        Asked again, a target gets the same answer: a refusal is refused
        again (never cached), and a target too long to be cached is
        normalized all the same.
        """
        for _ in range(2):
            self.assertEqual(normalize_target(b"/meet/a/../x"), ("/meet/x", b"/meet/x"))
            self.assertRaises(AmbiguousPath, normalize_target, b"/a%2fb")
        long = b"/meet/" + b"a" * 600 + b"/../x"
        self.assertEqual(normalize_target(long), ("/meet/x", b"/meet/x"))
        self.assertRaises(AmbiguousPath, normalize_target, b"/meet/" + b"a" * 600 + b"%2f")

    def test_query_unchanged(self) -> None:
        """The query is forwarded byte for byte, escapes and dots included."""
        self.assertEqual(
            normalize_target(b"/x?%2f=..&a=%zz\\")[1],
            b"/x?%2f=..&a=%zz\\",
        )

    @given(st.binary(max_size=40).map(lambda b: b"/" + b) | st.binary(max_size=20) | _TARGETS)
    def test_only_ambiguous_path(self, target: bytes) -> None:
        """Arbitrary bytes give a result or L{AmbiguousPath}, never another exception."""
        try:
            path, upstream = normalize_target(target)
        except AmbiguousPath:
            return
        self.assertIsInstance(path, str)
        self.assertIsInstance(upstream, bytes)

    @given(_TARGETS | st.binary(max_size=40).map(lambda b: b"/" + b))
    def test_fixed_point(self, target: bytes) -> None:
        """Normalizing the forwarded target again changes nothing."""
        try:
            result = normalize_target(target)
        except AmbiguousPath:
            return
        self.assertEqual(normalize_target(result[1]), result)

    @given(_TARGETS.map(lambda t: b"/meet" + t))
    def test_allowed_has_no_dot_dot(self, target: bytes) -> None:
        """A path C{/meet/*} allows has no C{..} segment, neither matched nor forwarded."""
        try:
            path, upstream = normalize_target(target)
        except AmbiguousPath:
            return
        if MEET.allows(path):
            self.assertNotIn("..", path.split("/"))
            self.assertNotIn(".", path.split("/"))
            forwarded = upstream.partition(b"?")[0].split(b"/")
            self.assertNotIn(b"..", [s.partition(b";")[0] for s in forwarded])
            self.assertTrue(upstream.lower().startswith(b"/meet"), msg=f"{upstream!r}")


class PathRulesTests(SynchronousTestCase):
    """
    L{PathRules} matches normalized paths against globs.
    """

    def test_directory(self) -> None:
        """A glob ending in C{/*} allows the directory itself and all below it."""
        for path in ["/meet", "/meet/", "/meet/a/b", "/MEET/x", "/Meet"]:
            self.assertTrue(MEET.allows(path), msg=path)
        for path in ["/", "/meeting", "/admin", "/admin/meet/", "/mee", "/x/meet"]:
            self.assertFalse(MEET.allows(path), msg=path)

    def test_globs(self) -> None:
        """C{*} spans C{/}, C{?} is one character, other characters are literal."""
        rules = PathRules.of(["/a*z", "/b?", "/c.d", "/lyncdiscover/*", "/x+(y)"])
        self.assertEqual(rules.globs, ("/a*z", "/b?", "/c.d", "/lyncdiscover/*", "/x+(y)"))
        for path in ["/az", "/a/b/z", "/bx", "/c.d", "/LyncDiscover", "/x+(y)"]:
            self.assertTrue(rules.allows(path), msg=path)
        for path in ["/a", "/b", "/bxy", "/cxd", "/lyncdiscoverx", "/x+y", "/xx(y)"]:
            self.assertFalse(rules.allows(path), msg=path)

    def test_everything(self) -> None:
        """C{/*} allows every path; no glob allows none."""
        self.assertTrue(PathRules.of(["/*"]).allows("/"))
        self.assertTrue(PathRules.of(["/*"]).allows("/a/b"))
        self.assertFalse(PathRules.of([]).allows("/"))

    def test_ascii_case_only(self) -> None:
        """Only ASCII letters fold: U+212A KELVIN SIGN is not C{k}."""
        self.assertFalse(PathRules.of(["/k/*"]).allows("/\u212a/x"))

    def test_bad_globs(self) -> None:
        """A glob not starting with C{/}, or one no normalized path matches, is a C{ValueError}."""
        for glob in ["meet/*", "", "*", "/a b", "/a\\b", "/a//b", "/a/../b", "/./a", "/a/.."]:
            with self.assertRaises(ValueError, msg=glob) as caught:
                PathRules.of([glob])
            self.assertIn(repr(glob), str(caught.exception))


class HostTests(SynchronousTestCase):
    """
    L{host_of} normalizes a C{Host} header; L{HostRules} matches it.
    """

    def test_host_of(self) -> None:
        """Lower-case, port, one trailing dot and brackets removed."""
        cases = [
            (b"Meet.Example.COM", "meet.example.com"),
            (b"meet.example.com:443", "meet.example.com"),
            (b"meet.example.com.", "meet.example.com"),
            (b"meet.example.com.:8443", "meet.example.com"),
            (b"meet.example.com:", "meet.example.com"),
            (b"10.0.0.1:80", "10.0.0.1"),
            (b"[2001:DB8::1]:443", "2001:db8::1"),
            (b"[::1]", "::1"),
            (b"localhost", "localhost"),
        ]
        for header, host in cases:
            self.assertEqual(host_of(header), host, msg=f"input {header!r}")

    def test_host_of_malformed(self) -> None:
        """Anything that is not a host gives C{None}."""
        for header in [
            b"", b":443", b"a b", b"a\tb", b"user@host", b"host/path", b"host:99999", b"host:44a",
            b"host:443:1", b"a..b", b".a", b"a..", b"::1", b"[::1", b"[zz::1]", b"[fe80::1%25eth0]",
            b"h\xc3\xa9", b"host\x00", b"a" * 300, b"host?", b"host#",
        ]:
            self.assertIsNone(host_of(header), msg=f"input {header!r}")

    def test_match(self) -> None:
        """Exact names and one-label wildcards, case-insensitively."""
        rules = HostRules.of(["LyncWeb.example.com", "*.Meet.Example.com.", "10.0.0.1", "[::1]"])
        cases = [
            (b"lyncweb.example.com", "lyncweb.example.com"),
            (b"LYNCWEB.EXAMPLE.COM:443", "lyncweb.example.com"),
            (b"a.meet.example.com", "a.meet.example.com"),
            (b"A.Meet.Example.Com.:4443", "a.meet.example.com"),
            (b"10.0.0.1:443", "10.0.0.1"),
            (b"[::1]:443", "::1"),
            (b"meet.example.com", None),
            (b"a.b.meet.example.com", None),
            (b"evil.example", None),
            (b"lyncweb.example.com.evil", None),
            (b"lyncweb.example.com@evil", None),
            (b"", None),
            (None, None),
        ]
        for header, expected in cases:
            self.assertEqual(rules.match(header), expected, msg=f"input {header!r}")

    def test_bad_patterns(self) -> None:
        """A pattern that is not a name, an address or C{*.domain} is a C{ValueError}."""
        for pattern in ["*", "*.", "a.*.com", "ex ample.com", "example.com:443", "*.1.2.3",
                        "b\u00fccher.de", "", "a..b", "[zz]", "**.a"]:
            with self.assertRaises(ValueError, msg=pattern) as caught:
                HostRules.of([pattern])
            self.assertIn(repr(pattern), str(caught.exception))
