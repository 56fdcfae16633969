"""
Tests for L{txgate.reverse.framing}: where a request head ends, and which
heads are refused before h11 reads them.
"""

from __future__ import annotations

import h11
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.reverse.framing import MAX_EMPTY_LINES, BadHead, check_head, head_end, head_start

GOOD = b"GET /meet/x HTTP/1.1\r\nHost: meet.example.com\r\nUser-Agent: t\tx\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"

# Each is a head h11 would read one way and some server another.
SMUGGLING = [
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "both"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", "more than one Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "more than one Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n", "list in Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", "1-19 digits"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", "1-19 digits"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x5\r\n\r\n", "1-19 digits"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", "1-19 digits"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\n", "1-19 digits"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 12345678901234567890\r\n\r\n", "1-19 digits"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
     "more than one Transfer-Encoding"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "other than chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n", "other than chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n", "other than chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", "other than chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", "other than chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\x0bchunked\r\n\r\n", "control character"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n", "whitespace before colon"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length\t: 5\r\n\r\n", "whitespace before colon"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n", "obs-fold"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: y\r\n\tContent-Length: 5\r\n\r\n", "obs-fold"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\nTransfer-Encoding: chunked\r\n\r\n", "bare LF"),
    (b"POST / HTTP/1.1\nHost: h\r\n\r\n", "bare LF"),
    (b"POST / HTTP/1.1\r\nHost: h\r\n\n\r\n", "bare LF"),
    (b"POST / HTTP/1.1\r\nHost: h\rContent-Length: 5\r\n\r\n", "bare CR"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", "bare CR"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", "NUL"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n", "more than one Host"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nHOST: h\r\n\r\n", "more than one Host"),
    (b"GET / HTTP/1.1\r\n\r\n", "without Host"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-\x7f: y\r\n\r\n", "control character"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n: y\r\n\r\n", "empty header name"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX(y): z\r\n\r\n", "not a token"),
    (b"GET / HTTP/1.1\r\nHost: h\r\nno colon\r\n\r\n", "without a colon"),
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", "request line"),
    (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", "request line"),
    (b"GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", "request line"),
    (b"GET /\x80 HTTP/1.1\r\nHost: h\r\n\r\n", "request line"),
    (b"GET / http/1.1\r\nHost: h\r\n\r\n", "request line"),
    (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", "request line"),
    (b"GET /\r\n\r\n", "request line"),
    (b" GET / HTTP/1.1\r\nHost: h\r\n\r\n", "request line"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n", "empty line"),
    (b"\r\n" * (MAX_EMPTY_LINES + 1) + GOOD, "request line"),
]


class HeadEndTests(SynchronousTestCase):
    """
    L{head_end} finds the blank line ending a head, or says it needs more.
    """

    def test_whole(self) -> None:
        """The index is just past the blank line; what follows is the body."""
        self.assertEqual(head_end(GOOD, 65536), len(GOOD))
        end = head_end(POST, 65536)
        self.assertEqual(POST[end:], b"hello")

    def test_trickle(self) -> None:
        """Fed a byte at a time with the previous length as hint, it finds the same end once complete."""
        for data in [GOOD, POST, b"\r\n\r\n" + GOOD]:
            expected = head_end(data, 65536)
            previous = 0
            found = None
            for i in range(1, len(data) + 1):
                found = head_end(data[:i], 65536, previous)
                previous = i
                if found is not None:
                    break
            self.assertEqual(found, expected, msg=f"input {data!r}")
            self.assertEqual(i, expected, msg=f"input {data!r}")

    def test_leading_empty_lines(self) -> None:
        """Empty lines before the request line are skipped, not taken for the end of the head."""
        data = b"\r\n\r\n" + GOOD
        self.assertEqual(head_start(data), 4)
        self.assertEqual(head_end(data, 65536), len(data))
        self.assertIsNone(head_end(b"\r\n\r\n", 65536))
        self.assertIsNone(head_end(b"\r\n\r\nGET", 65536))
        check_head(data)

    def test_incomplete(self) -> None:
        """No blank line yet: C{None}."""
        for data in [b"", b"GET", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n\r"]:
            self.assertIsNone(head_end(data, 65536), msg=f"input {data!r}")

    def test_too_large(self) -> None:
        """A head that does not end within the limit is a 431."""
        head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * 100 + b"\r\n\r\n"
        self.assertEqual(head_end(head, len(head)), len(head))
        for buffer in [head, head[:-1], head + b"body"]:
            with self.assertRaises(BadHead, msg=f"input {buffer!r}") as caught:
                head_end(buffer, len(head) - 1)
            self.assertEqual(caught.exception.status, 431)
        self.assertIsNone(head_end(head[:-2], len(head) - 1))


class CheckHeadTests(SynchronousTestCase):
    """
    L{check_head} refuses heads h11 would read leniently.
    """

    def test_good(self) -> None:
        """Ordinary heads pass."""
        for head in [
            GOOD,
            POST[:-5],
            b"GET / HTTP/1.0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n",
            b"GET * HTTP/1.1\r\nHost: h\r\nX: \xc3\xa9 obs-text\r\nY:\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1234567890123456789\r\n\r\n",
        ]:
            check_head(head)

    def test_smuggling(self) -> None:
        """Each smuggling vector is a 400 with a precise reason."""
        for head, reason in SMUGGLING:
            with self.assertRaises(BadHead, msg=f"input {head!r}") as caught:
                check_head(head)
            self.assertEqual(caught.exception.status, 400, msg=f"input {head!r}")
            self.assertIn(reason, caught.exception.reason, msg=f"input {head!r}")
            self.assertEqual(str(caught.exception), caught.exception.reason)

    def test_version(self) -> None:
        """A version other than HTTP/1.0 and HTTP/1.1 is a 505."""
        for version in [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.2", b"HTTP/11.1", b"HTTP/3.0"]:
            head = b"GET / " + version + b"\r\nHost: h\r\n\r\n"
            with self.assertRaises(BadHead, msg=f"input {head!r}") as caught:
                check_head(head)
            self.assertEqual(caught.exception.status, 505)
            self.assertEqual(str(caught.exception), "HTTP version not supported")

    def test_h11_agrees(self) -> None:
        """
        A head that passes is one h11 reads, once leading empty lines are
        dropped, with the same framing headers.
        """
        for head in [GOOD, POST[:-5], b"\r\n" + GOOD]:
            check_head(head)
            connection = h11.Connection(h11.SERVER)
            connection.receive_data(head[head_start(head):])
            self.assertIsInstance(connection.next_event(), h11.Request)

    @given(st.lists(
        st.sampled_from([b"GET / HTTP/1.1", b"Host: h", b"Content-Length: 5", b"Transfer-Encoding: chunked",
                         b" x", b"X: a\rb", b"X: a\nb", b"\x00", b"X : y", b"", b"Content-Length: 5, 5",
                         b"\r", b"\n", b"\t", b"GET / HTTP/1.0"]),
        max_size=6,
    ))
    def test_only_bad_head(self, lines: list[bytes]) -> None:
        """Arbitrary lines give C{None} or L{BadHead}; a passing head has unambiguous framing."""
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        try:
            check_head(head)
        except BadHead as e:
            self.assertIn(e.status, (400, 505))
            return
        lower = head.lower()
        self.assertLessEqual(lower.count(b"content-length") + lower.count(b"transfer-encoding"), 1)
        self.assertNotIn(b"\r\n ", head)
