"""
Tests for L{txgate.http.framing}: where a request head ends, which heads
are refused and what the accepted ones say, which chunked bodies are
refused and what the accepted ones carry, and how responses are framed for
the client.
"""

from __future__ import annotations

import h11
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.http.framing import (
    MAX_CHUNK_SIZE,
    MAX_EMPTY_LINES,
    BadHead,
    ChunkedChecker,
    RequestBody,
    RequestHead,
    check_head,
    frame_response,
    head_end,
    head_start,
)

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


CHUNKED_HEAD = b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
NEXT_REQUEST = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"

# Valid chunked bodies, each with the data it carries.
CHUNKED = [
    (b"0\r\n\r\n", b""),
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n6\r\n world\r\n1\r\n!\r\n0\r\n\r\n", b"hello world!"),
    (b"A\r\n\r\n\n\r\r\n0\n\r\n\r\n0\r\n\r\n", b"\r\n\n\r\r\n0\n\r\n"),  # data is never scanned
    (b"a\r\n0123456789\r\nF\r\n0123456789abcde\r\n000\r\n\r\n", b"0123456789" * 2 + b"abcde"),
    (b"00000000000000000000005\r\nhello\r\n0\r\n\r\n", b"hello"),  # leading zeros are not significant
    (b"7fffffffffffffff\r\n", None),  # the largest size: valid, and the body goes on
    (b"5;name\r\nhello\r\n0;a=b;c=\"d;e\\\"f\"\r\n\r\n", b"hello"),
    (b"5 ;name = value\r\nhello\r\n0\t; a=\"\t\xff\"\r\n\r\n", b"hello"),
    (b"5;\r\nhello\r\n0;\xe9t\xe9\r\n\r\n", b"hello"),
    (b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Empty:\r\nX-Tab:\ta b\t\r\n\r\n", b"hello"),
    (b"0\r\nX-Obs: \xc3\xa9\r\n\r\n", b""),
]

# Each is a chunked body h11 reads leniently (or a server another way), with
# the reason it is refused.
BAD_CHUNKED = [
    (b"5\nhello\n0\n\n", "bare LF in chunked body (chunk-size line)"),
    (b"0\n\r\n", "bare LF in chunked body (chunk-size line)"),
    (b"5\r\nhello\n0\r\n\r\n", "bare LF in chunked body (after chunk data)"),
    (b"5\r\nhelloXX0\r\n\r\n", "chunk data not followed by CRLF"),
    (b"5\r\nhello0\r\n\r\n", "chunk data not followed by CRLF"),
    (b"5\r\nhello\rX", "bare CR in chunked body (after chunk data)"),
    (b"5\r\nhello\r\r\n", "bare CR in chunked body (after chunk data)"),
    (b"5\rhello", "bare CR in chunked body (chunk-size line)"),
    (b"5;a\rb\r\n", "bare CR in chunked body (chunk-size line)"),
    (b"5\r\r\n", "bare CR in chunked body (chunk-size line)"),
    (b"zz\r\n", "bad chunk size"),
    (b"5x\r\n", "bad chunk size"),
    (b"5 x\r\n", "bad chunk size"),
    (b"-5\r\n", "bad chunk size"),
    (b"+5\r\n", "bad chunk size"),
    (b"0x5\r\n", "bad chunk size"),
    (b" 5\r\n", "bad chunk size"),
    (b";a\r\n", "bad chunk size"),
    (b"5,5\r\n", "bad chunk size"),
    (b"\r\n", "empty chunk size"),
    (b"10000000000000005\r\n", "chunk size too large"),
    (b"ffffffffffffffffff\r\n", "chunk size too large"),
    (b"8000000000000000\r\n", "chunk size too large"),
    (b"ffffffffffffffff\r\n", "chunk size too large"),
    (b"5 \r\n", "whitespace after chunk size"),
    (b"5\t\r\n", "whitespace after chunk size"),
    (b"5;a\x00\r\n", "control character 0x00 in chunk extension"),
    (b"5;a=\"\x0b\"\r\n", "control character 0x0B in chunk extension"),
    (b"5;a\x7f\r\n", "control character 0x7F in chunk extension"),
    (b"1" * 5000, "chunk-size line too long"),
    (b"5;" + b"a" * 5000, "chunk-size line too long"),
    (b"0\r\nX-T: a\nb\r\n\r\n", "bare LF in chunked body (trailer line)"),
    (b"0\r\nX-T: a\r\n\n", "bare LF in chunked body (trailer line)"),
    (b"0\r\nX-T: a\rb\r\n\r\n", "bare CR in chunked body (trailer line)"),
    (b"0\r\n\r\r\n", "bare CR in chunked body (trailer line)"),
    (b"0\r\nno colon\r\n\r\n", "chunked trailer line without a colon"),
    (b"0\r\nX-T : a\r\n\r\n", "whitespace before colon in chunked trailer name"),
    (b"0\r\n: a\r\n\r\n", "empty chunked trailer name"),
    (b"0\r\nX(T): a\r\n\r\n", "chunked trailer name is not a token"),
    (b"0\r\nX: a\r\n folded\r\n\r\n", "obs-fold"),
    (b"0\r\nX: a\x01b\r\n\r\n", "control character 0x01 in chunked trailer"),
    (b"0\r\nContent-Length: 5\r\n\r\n", "framing field in chunked trailer"),
    (b"0\r\ntransfer-encoding: chunked\r\n\r\n", "framing field in chunked trailer"),
    (b"0\r\nX: " + b"a" * 5000, "trailer line too long"),
]


def _run_chunked(data: bytes, cuts: list[int] | tuple[int, ...] = (), max_line: int = 4096) -> tuple[object, ...]:
    """
    Feed C{data} to a new L{ChunkedChecker}, split at C{cuts}.

    @return: C{("end", index)} with the index in C{data} where the body
        ended, C{("bad", status, reason)}, or C{("more",)} when the body has
        not ended.
    """
    checker = ChunkedChecker(max_line)
    start = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        piece = data[start:cut]
        try:
            used = checker.feed(piece)
        except BadHead as e:
            return ("bad", e.status, e.reason)
        if used is not None:
            assert 0 < used <= len(piece), (used, piece)
            return ("end", start + used)
        start = cut
    return ("more",)


def _bytewise(data: bytes) -> list[int]:
    """Cuts that feed C{data} one byte at a time."""
    return list(range(1, len(data)))


_TRAILER_NAMES = st.from_regex(rb"\AX-[-!#$%&'*+.^_`|~0-9A-Za-z]{0,8}\Z")
_TRAILER_VALUES = st.binary(max_size=12).map(
    lambda raw: bytes(b if 0x20 <= b < 0x7F or b >= 0x80 else 0x61 for b in raw).strip(b" ")
)
_EXTENSIONS = st.sampled_from([
    b"", b";a", b";a=b", b";name=\"quoted ; \\\" value\"", b"; a = b", b";a=1;b=2", b";\xff", b";",
    b";a=\"\t\"\t",
])


@st.composite
def _chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """A valid chunked body h11 also reads, the data it carries and its trailers."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
    body = b""
    for chunk in chunks:
        size = b"%x" % len(chunk)
        if draw(st.booleans()):
            size = size.upper()
        body += b"0" * draw(st.integers(0, 3)) + size + draw(_EXTENSIONS) + b"\r\n" + chunk + b"\r\n"
    body += b"0" * draw(st.integers(1, 3)) + draw(_EXTENSIONS) + b"\r\n"
    trailers = draw(st.lists(st.tuples(_TRAILER_NAMES, _TRAILER_VALUES), max_size=3))
    for name, value in trailers:
        body += name + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + value + b"\r\n"
    return body + b"\r\n", b"".join(chunks), trailers


class RequestBodyTests(SynchronousTestCase):
    """L{RequestBody} finds where a request's body ends, in whatever pieces it comes."""

    def _feed(self, head: bytes, pieces: list[bytes]) -> tuple[list[bytes], int | None, RequestBody]:
        end = head_end(head, 65536)
        assert end is not None
        body = RequestBody(check_head(head[:end]))
        out: list[bytes] = []
        taken = None
        for piece in pieces:
            self.assertIsNone(taken, "fed after the end")
            taken = body.feed(piece, out)
        return out, taken, body

    def test_length(self) -> None:
        """A Content-Length body ends after its length; what follows is left."""
        out, taken, _ = self._feed(POST, [b"hel", b"loGET"])
        self.assertEqual((b"".join(out), taken), (b"hello", 2))

    def test_no_body(self) -> None:
        """A request without a body ends at once, taking nothing."""
        out, taken, _ = self._feed(GOOD, [b"GET / HTTP/1.1"])
        self.assertEqual((out, taken), ([], 0))

    def test_chunked(self) -> None:
        """A chunked body is decoded, waits for more on no bytes, and hands out its trailers."""
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        out, taken, body = self._feed(head, [b"", b"5\r\nhel", b"lo\r\n0\r\nX-T: 1\r\n\r\nnext"])
        self.assertEqual((b"".join(out), taken, body.trailers), (b"hello", 17, [(b"x-t", b"1")]))

    def test_chunked_malformed(self) -> None:
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        with self.assertRaises(BadHead):
            self._feed(head, [b"zz\r\n"])


class ChunkedCheckerTests(SynchronousTestCase):
    """
    L{ChunkedChecker} follows a chunked body over raw bytes, finds where it
    ends and refuses what h11 would read leniently.
    """

    def test_public(self) -> None:
        """The checker and its size limit are exported."""
        from txgate.http import framing

        self.assertIn("ChunkedChecker", framing.__all__)
        self.assertIn("MAX_CHUNK_SIZE", framing.__all__)
        self.assertEqual(MAX_CHUNK_SIZE, 2**63 - 1)

    def test_whole(self) -> None:
        """Fed at once, a valid body is accepted and its exact length returned."""
        for body, _ in CHUNKED:
            expected = ("more",) if body.startswith(b"7fff") else ("end", len(body))
            self.assertEqual(_run_chunked(body), expected, msg=f"input {body!r}")

    def test_byte_at_a_time(self) -> None:
        """Fed a byte at a time, every call but the one with the last byte returns C{None}."""
        for body, _ in CHUNKED:
            expected = ("more",) if body.startswith(b"7fff") else ("end", len(body))
            self.assertEqual(_run_chunked(body, _bytewise(body)), expected, msg=f"input {body!r}")

    def test_remainder(self) -> None:
        """What follows the body (the next request) is not counted, however the bytes arrive."""
        for body, _ in CHUNKED[:-1]:
            if body.startswith(b"7fff"):
                continue
            data = body + NEXT_REQUEST
            self.assertEqual(_run_chunked(data), ("end", len(body)), msg=f"input {body!r}")
            self.assertEqual(_run_chunked(data, _bytewise(data)), ("end", len(body)), msg=f"input {body!r}")
            self.assertEqual(_run_chunked(data, [len(body) - 1]), ("end", len(body)), msg=f"input {body!r}")
        checker = ChunkedChecker()
        self.assertIsNone(checker.feed(b"5\r\nhel"))
        self.assertEqual(checker.feed(b"lo\r\n0\r\n\r\nGET"), 9)

    def test_buffer_types(self) -> None:
        """C{bytes}, C{bytearray} and C{memoryview} (also a slice of one) are all accepted."""
        body = b"5\r\nhello\r\n0\r\n\r\n"
        for data in [body, bytearray(body), memoryview(body), memoryview(b"xx" + body + b"yy")[2:]]:
            checker = ChunkedChecker()
            self.assertIsNone(checker.feed(data[:4]), msg=f"input {data!r}")
            self.assertEqual(checker.feed(data[4:]), len(body) - 4, msg=f"input {data!r}")

    def test_empty_feed(self) -> None:
        """Feeding nothing changes nothing."""
        checker = ChunkedChecker()
        for piece in [b"", b"5\r", b"", b"\nhe", b"", b"llo\r", b"", b"\n0\r\n\r", b""]:
            self.assertIsNone(checker.feed(piece))
        self.assertEqual(checker.feed(b"\n"), 1)

    def test_big_chunk_skipped(self) -> None:
        """A large chunk is skipped by counting: its data may hold anything, CRLFs and NULs included."""
        data = bytes(range(256)) * 4096 + b"\r\n\n\r"
        body = b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
        self.assertEqual(_run_chunked(body, list(range(7, len(body), 65536))), ("end", len(body)))

    def test_bad(self) -> None:
        """Each bad body is a 400 with a precise reason, fed whole, a byte at a time, or after a chunk."""
        for body, reason in BAD_CHUNKED:
            for data in [body, b"3\r\nabc\r\n" + body]:
                for cuts in [[], _bytewise(data)]:
                    outcome = _run_chunked(data, cuts)
                    self.assertEqual(outcome[:2], ("bad", 400), msg=f"input {data!r} cuts {len(cuts)}")
                    self.assertIn(reason, outcome[2], msg=f"input {data!r} cuts {len(cuts)}")

    def test_bad_early(self) -> None:
        """
        A violation is reported with the byte that proves it: the checker
        does not wait for more, so a client cannot stall the proxy on it.
        """
        for data in [b"5\n", b"5\r\nhello\n", b"5\r\nhelloX", b"5\r\nhello\rX", b"5\rX", b"0\r\nX: a\n",
                     b"0\r\nX: a\rX"]:
            checker = ChunkedChecker()
            self.assertIsNone(checker.feed(data[:-1]), msg=f"input {data!r}")
            self.assertRaises(BadHead, checker.feed, data[-1:])

    def test_after_error(self) -> None:
        """Once it has refused a body, the checker refuses every later call the same way."""
        checker = ChunkedChecker()
        with self.assertRaises(BadHead) as first:
            checker.feed(b"zz\r\n")
        with self.assertRaises(BadHead) as second:
            checker.feed(b"5\r\nhello\r\n0\r\n\r\n")
        self.assertIs(second.exception, first.exception)
        self.assertEqual(str(first.exception), "bad chunk size")

    def test_after_end(self) -> None:
        """Feeding after the body ended is the caller's bug, not the peer's: C{RuntimeError}."""
        checker = ChunkedChecker()
        self.assertEqual(checker.feed(b"0\r\n\r\n"), 5)
        self.assertRaises(RuntimeError, checker.feed, b"GET")

    def test_size_limits(self) -> None:
        """Sizes up to L{MAX_CHUNK_SIZE} are accepted, in any case and with any leading zeros."""
        for size in [b"7fffffffffffffff", b"7FFFFFFFFFFFFFFF", b"0" * 30 + b"7fffffffffffffff", b"1" * 16]:
            checker = ChunkedChecker()
            self.assertIsNone(checker.feed(size + b"\r\n" + b"x" * 1000), msg=f"size {size!r}")
        for size in [b"8000000000000000", b"0" * 30 + b"8000000000000000", b"1" * 17]:
            checker = ChunkedChecker()
            with self.assertRaises(BadHead, msg=f"size {size!r}") as caught:
                checker.feed(size + b"\r\n")
            self.assertEqual(caught.exception.reason, "chunk size too large")

    def test_line_limit(self) -> None:
        """Size and trailer lines of C{max_line} bytes pass; one byte more is refused, however fed."""
        ok_size = b"5;" + b"x" * 14  # 16 bytes before the CRLF
        ok_trailer = b"X: " + b"y" * 13
        for line, reason, make in [
            (ok_size, "chunk-size line too long", lambda line: line + b"\r\nhello\r\n0\r\n\r\n"),
            (ok_trailer, "trailer line too long", lambda line: b"0\r\n" + line + b"\r\n\r\n"),
        ]:
            good, bad = make(line), make(line + b"z")
            for cuts in [[], _bytewise(good)]:
                self.assertEqual(_run_chunked(good, cuts, max_line=16), ("end", len(good)), msg=f"input {good!r}")
            for cuts in [[], _bytewise(bad)]:
                outcome = _run_chunked(bad, cuts, max_line=16)
                self.assertEqual(outcome[:2], ("bad", 400), msg=f"input {bad!r}")
                self.assertIn(reason, outcome[2], msg=f"input {bad!r}")
        # Endless, a line is refused once max_line + 2 bytes hold no LF.
        checker = ChunkedChecker(max_line=16)
        self.assertIsNone(checker.feed(b"1" * 17))
        self.assertRaises(BadHead, checker.feed, b"1")

    def test_trailer_section_limit(self) -> None:
        """The trailer section, its empty line included, takes at most 16 * C{max_line} bytes."""
        line = b"X: " + b"y" * 11 + b"\r\n"  # 16 bytes
        exact = b"0\r\n" + line * 15 + b"X: " + b"y" * 9 + b"\r\n" + b"\r\n"  # 256 bytes of trailers
        self.assertEqual(_run_chunked(exact, max_line=16), ("end", len(exact)))
        over = b"0\r\n" + line * 15 + b"X: " + b"y" * 10 + b"\r\n" + b"\r\n"
        for cuts in [[], _bytewise(over)]:
            self.assertEqual(
                _run_chunked(over, cuts, max_line=16),
                ("bad", 400, "chunked trailer section larger than 256 bytes"),
            )

    def test_bws_before_extension(self) -> None:
        """
        BWS before C{;} is accepted (RFC 9112 section 7.1.1), but whitespace
        that no extension follows is not. h11 0.16 refuses the former too
        ("illegal chunk header"), so such a request still ends in a 400.
        """
        body = b"5 \t;a\r\nhello\r\n0\r\n\r\n"
        self.assertEqual(_run_chunked(body), ("end", len(body)))
        self.assertEqual(_run_chunked(b"5 \t\r\n")[:2], ("bad", 400))

    @given(_chunked_bodies(), st.data())
    def test_random_splits(self, generated: tuple[bytes, bytes, list[tuple[bytes, bytes]]], data: st.DataObject) -> None:
        """A valid body, split anywhere, ends at its exact length and no further."""
        body, _, _ = generated
        stream = body + NEXT_REQUEST
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
        self.assertEqual(_run_chunked(stream, cuts), ("end", len(body)))
        self.assertEqual(_run_chunked(stream, _bytewise(stream)), ("end", len(body)))
        self.assertEqual(_run_chunked(body[:-1], cuts), ("more",))

    @given(_chunked_bodies())
    def test_h11_agrees(self, generated: tuple[bytes, bytes, list[tuple[bytes, bytes]]]) -> None:
        """
        h11 reads a body the checker accepts as the same data and trailers,
        and ends it at the same byte.
        """
        body, expected, trailers = generated
        self.assertEqual(_run_chunked(body + NEXT_REQUEST), ("end", len(body)))
        connection = h11.Connection(h11.SERVER)
        connection.receive_data(CHUNKED_HEAD + body + NEXT_REQUEST)
        self.assertIsInstance(connection.next_event(), h11.Request)
        received = b""
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Data):
                received += event.data
            else:
                break
        self.assertIsInstance(event, h11.EndOfMessage)
        self.assertEqual(received, expected)
        self.assertEqual(
            [(name, value) for name, value in event.headers],  # type: ignore[union-attr]
            [(name.lower(), value.strip(b" \t")) for name, value in trailers],
        )
        self.assertIs(connection.next_event(), h11.PAUSED)
        self.assertEqual(bytes(connection.trailing_data[0]), NEXT_REQUEST)

    @given(
        st.lists(
            st.sampled_from([b"5", b"0", b"f", b"\r", b"\n", b"\r\n", b"hello", b";a=b", b" ", b"X: y", b"zz",
                             b"ffffffffffffffffff", b":", b"\t", b"\x00", b"\xff", b"Content-Length: 1"]),
            max_size=12,
        ),
        st.data(),
    )
    def test_split_independent(self, fragments: list[bytes], data: st.DataObject) -> None:
        """
        Arbitrary input gets the same answer (the same end, or the same
        refusal) whether fed whole, a byte at a time or split anywhere.
        """
        stream = b"".join(fragments)
        whole = _run_chunked(stream, max_line=8)
        cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
        self.assertEqual(_run_chunked(stream, cuts, max_line=8), whole)
        self.assertEqual(_run_chunked(stream, _bytewise(stream), max_line=8), whole)
        if whole[0] == "bad":
            self.assertEqual(whole[1], 400)


class RequestHeadTests(SynchronousTestCase):
    """What L{check_head} reads from a head it accepts."""

    def test_read(self) -> None:
        head = check_head(
            b"\r\nPOST /up?x=1 HTTP/1.1\r\nHost: meet.example.com\r\nContent-Length:  5 \r\nX-A: a\tb\r\n\r\n"
        )
        self.assertEqual(
            head,
            RequestHead(
                method=b"POST",
                target=b"/up?x=1",
                http_version=b"1.1",
                headers=[(b"host", b"meet.example.com"), (b"content-length", b"5"), (b"x-a", b"a\tb")],
                length=5,
                chunked=False,
                keep_alive=True,
            ),
        )
        self.assertTrue(head.has_body)

    def test_chunked(self) -> None:
        head = check_head(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n")
        self.assertEqual((head.length, head.chunked, head.has_body), (None, True, True))

    def test_no_body(self) -> None:
        self.assertFalse(check_head(GOOD).has_body)
        self.assertFalse(check_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n").has_body)

    def test_keep_alive(self) -> None:
        """HTTP/1.1 keeps the connection unless a Connection token says close; HTTP/1.0 never does."""
        cases = [
            (GOOD, True),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", False),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", True),
            (b"GET / HTTP/1.0\r\n\r\n", False),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
        ]
        for raw, keep in cases:
            self.assertEqual(check_head(raw).keep_alive, keep, raw)


class ChunkedDecodingTests(SynchronousTestCase):
    """L{ChunkedChecker} hands out the chunk data and the trailer fields of what it accepts."""

    @given(
        st.lists(st.binary(min_size=1, max_size=40), max_size=8),
        st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=12),
    )
    def test_decoded(self, chunks: list[bytes], cuts: list[int]) -> None:
        """However the body is cut into reads, the pieces join into the data sent."""
        wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-T: v\r\n\r\nNEXT"
        checker = ChunkedChecker()
        out: list[bytes] = []
        at = 0
        end = None
        for cut in cuts * (len(wire) // sum(cuts) + 1):
            piece = wire[at : at + cut]
            end = checker.feed(piece, out)
            if end is not None:
                at += end
                break
            at += cut
        self.assertEqual(wire[at:], b"NEXT")
        self.assertEqual(b"".join(out), b"".join(chunks))
        self.assertEqual(checker.trailers, [(b"x-t", b"v")])

    def test_no_out(self) -> None:
        """Without a list, only the framing is followed."""
        self.assertEqual(ChunkedChecker().feed(b"3\r\nabc\r\n0\r\n\r\nGET"), 13)


def _request(raw: bytes = GOOD) -> RequestHead:
    return check_head(raw)


def _lines(head: bytes) -> list[bytes]:
    """The head's lines, lower-cased: field names are case-insensitive."""
    return head.lower().split(b"\r\n")


class FrameResponseTests(SynchronousTestCase):
    """L{frame_response} frames a response for the client as h11 would, and says when to close."""

    def test_known_length(self) -> None:
        framing = frame_response(_request(), 200, b"OK", [(b"content-type", b"text/plain"), (b"content-length", b"5")])
        self.assertEqual(framing.head, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n")
        self.assertEqual((framing.body, framing.chunked, framing.close), (True, False, False))
        self.assertEqual(framing.data(b"hello"), [b"hello"])
        self.assertEqual(framing.end([(b"x", b"y")]), b"")

    def test_unknown_length_http11(self) -> None:
        """No Content-Length (the real server chunked or closed): chunked, trailers included."""
        framing = frame_response(_request(), 200, b"OK", [(b"content-type", b"text/plain")])
        self.assertIn(b"transfer-encoding: chunked", _lines(framing.head))
        self.assertEqual((framing.chunked, framing.close), (True, False))
        self.assertEqual(b"".join(framing.data(b"hello")), b"5\r\nhello\r\n")
        self.assertEqual(framing.data(b""), [])  # an empty chunk would end the body
        self.assertEqual(framing.end([(b"x-t", b"v")]), b"0\r\nx-t: v\r\n\r\n")

    def test_unknown_length_http10(self) -> None:
        """An HTTP/1.0 client cannot read chunks: the body ends with the connection."""
        framing = frame_response(_request(b"GET / HTTP/1.0\r\n\r\n"), 200, b"OK", [(b"transfer-encoding", b"chunked")])
        self.assertNotIn(b"transfer-encoding: chunked", _lines(framing.head))
        self.assertIn(b"connection: close", _lines(framing.head))
        self.assertEqual((framing.chunked, framing.close), (False, True))
        self.assertEqual(framing.data(b"hello"), [b"hello"])

    def test_no_body(self) -> None:
        """HEAD, 204 and 304 responses carry no body; HEAD's head is a GET's."""
        head = _request(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        framing = frame_response(head, 200, b"OK", [(b"content-length", b"27")])
        self.assertIn(b"content-length: 27", _lines(framing.head))
        self.assertEqual((framing.body, framing.close), (False, False))
        self.assertEqual(framing.data(b"x"), [])
        framing = frame_response(head, 200, b"OK", [])
        self.assertIn(b"transfer-encoding: chunked", _lines(framing.head))
        self.assertEqual((framing.body, framing.close), (False, False))
        self.assertEqual(framing.end([]), b"")
        for status in (204, 304):
            framing = frame_response(_request(), status, b"", [(b"etag", b'"x"')])
            self.assertEqual(framing.head, b'HTTP/1.1 %d \r\netag: "x"\r\n\r\n' % status)
            self.assertEqual((framing.body, framing.close), (False, False))

    def test_close_asked(self) -> None:
        """A request that asked to close gets Connection: close, once."""
        request = _request(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        framing = frame_response(request, 200, b"OK", [(b"content-length", b"0"), (b"connection", b"x")])
        self.assertEqual([line for line in _lines(framing.head) if line.startswith(b"connection")], [b"connection: close"])
        self.assertTrue(framing.close)

    def test_same_as_h11(self) -> None:
        """The bytes h11's server side would send for the same exchange."""
        for raw, headers, body in [
            (GOOD, [(b"content-length", b"5")], b"hello"),
            (GOOD, [(b"server", b"x")], b"hello"),
            (b"GET / HTTP/1.0\r\n\r\n", [(b"server", b"x")], b"hello"),
        ]:
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(raw)
            conn.next_event()
            expected = conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            expected += conn.send(h11.Data(data=body))
            expected += conn.send(h11.EndOfMessage())
            framing = frame_response(_request(raw), 200, b"OK", headers)
            got = framing.head + b"".join(framing.data(body)) + framing.end([])
            self.assertEqual(got, expected, raw)
