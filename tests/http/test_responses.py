"""
Tests for L{txgate.http.responses}: response heads from real servers,
and where their bodies end.
"""

from __future__ import annotations

import h11
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txgate.http.responses import (
    MAX_RESPONSE_HEAD,
    BadResponse,
    BodyReader,
    ResponseHead,
    parse_response_head,
    response_head_end,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length:  5 \r\n\r\n"


def _head(raw: bytes) -> ResponseHead:
    end = response_head_end(raw)
    assert end is not None
    return parse_response_head(raw[:end])


def _read(method: bytes, raw: bytes, cuts: int = 0) -> tuple[BodyReader, bytes, bytes | None]:
    """Read C{raw} (a head and what follows) in reads of C{cuts} bytes (0: at once): reader, body, rest."""
    end = response_head_end(raw)
    assert end is not None
    reader = BodyReader(method, parse_response_head(raw[:end]))
    data = raw[end:]
    out: list[bytes] = []
    step = cuts or len(data) or 1
    at = 0
    while True:
        piece = data[at : at + step]
        taken = reader.feed(piece, out)
        if taken is not None:
            return reader, b"".join(out), data[at + taken :]
        at += step
        if at >= len(data):
            return reader, b"".join(out), None


class HeadTests(SynchronousTestCase):
    def test_read(self) -> None:
        self.assertEqual(
            _head(OK),
            ResponseHead(200, b"OK", b"1.1", [(b"content-type", b"text/plain"), (b"content-length", b"5")], True),
        )

    def test_incomplete(self) -> None:
        self.assertIsNone(response_head_end(OK[:-1]))

    def test_too_large(self) -> None:
        with self.assertRaises(BadResponse) as e:
            response_head_end(b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_RESPONSE_HEAD)
        self.assertIn("larger than", str(e.exception))

    def test_keep_alive(self) -> None:
        self.assertFalse(_head(b"HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n").keep_alive)
        self.assertFalse(_head(b"HTTP/1.0 200 OK\r\n\r\n").keep_alive)
        self.assertTrue(_head(b"HTTP/1.1 204 \r\n\r\n").keep_alive)

    def test_reason_optional(self) -> None:
        """h11 and real servers allow a status line without a reason phrase."""
        self.assertEqual(_head(b"HTTP/1.1 204\r\n\r\n").reason, b"")

    def test_refused(self) -> None:
        """What could be read two ways, or not at all, is refused with a reason."""
        for raw, reason in [
            (b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", "bare CR or LF"),
            (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "bare CR or LF"),
            (b"HTTP/2 200 OK\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "malformed status line"),
            (b"HTTP/1.1 099 OK\r\n\r\n", "out of range"),
            (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "obs-fold"),
            (b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n", "malformed response header line"),
            (b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n", "malformed response header line"),
        ]:
            with self.assertRaises(BadResponse, msg=raw) as e:
                _head(raw)
            self.assertIn(reason, str(e.exception), raw)

    def test_unterminated(self) -> None:
        """A head without its blank line (not one response_head_end delimits) is refused, not guessed at."""
        for raw in (b"HTTP/1.1 200 OK\r\nX: y\r\n", b"HTTP/1.1 200 OK"):
            with self.assertRaises(BadResponse) as e:
                parse_response_head(raw)
            self.assertIn("does not end with an empty line", str(e.exception))


class LenientHeadTests(SynchronousTestCase):
    """
    The forward proxy reads origin servers' heads as browsers do: bare LF
    line ends and obs-fold are taken (and normalized), nothing else is.
    """

    def _lenient(self, raw: bytes) -> tuple[int, ResponseHead]:
        end = response_head_end(raw, lenient=True)
        assert end is not None
        return end, parse_response_head(raw[:end], lenient=True)

    def test_crlf_as_strict(self) -> None:
        raw = OK + b"hello"
        self.assertEqual(self._lenient(raw), (len(OK), _head(raw)))

    def test_bare_lf(self) -> None:
        raw = b"HTTP/1.1 200 OK\nContent-Length: 2\r\nX: y\n\nhi"
        end, head = self._lenient(raw)
        self.assertEqual(raw[end:], b"hi")
        self.assertEqual(head.headers, [(b"content-length", b"2"), (b"x", b"y")])

    def test_obs_fold(self) -> None:
        """A folded line joins the field it continues with one space (RFC 9112 section 5.2)."""
        _, head = self._lenient(b"HTTP/1.1 200 OK\r\nX: one \r\n\t two\r\nY: z\r\n\r\n")
        self.assertEqual(head.headers, [(b"x", b"one two"), (b"y", b"z")])

    def test_incomplete(self) -> None:
        self.assertIsNone(response_head_end(b"HTTP/1.1 200 OK\nX: y\n", lenient=True))
        with self.assertRaises(BadResponse):
            response_head_end(b"HTTP/1.1 200 OK\nX: " + b"a" * MAX_RESPONSE_HEAD, lenient=True)

    def test_still_refused(self) -> None:
        """A bare CR, a fold before any field, or a bad status line is refused all the same."""
        for raw, reason in [
            (b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", "bare CR or LF"),
            (b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "obs-fold"),
            (b"ICY 200 OK\n\n", "malformed status line"),
        ]:
            with self.assertRaises(BadResponse, msg=raw) as e:
                self._lenient(raw)
            self.assertIn(reason, str(e.exception), raw)


class BodyTests(SynchronousTestCase):
    def test_length(self) -> None:
        reader, body, rest = _read(b"GET", OK + b"helloNEXT")
        self.assertEqual((body, rest, reader.reusable), (b"hello", b"NEXT", True))

    def test_length_in_pieces(self) -> None:
        reader, body, rest = _read(b"GET", OK + b"hello", cuts=2)
        self.assertEqual((body, rest), (b"hello", b""))

    def test_no_body(self) -> None:
        """HEAD, 204 and 304 end with their head, whatever their headers say."""
        for method, status in [(b"HEAD", 200), (b"GET", 204), (b"GET", 304)]:
            raw = b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\nNEXT" % status
            reader, body, rest = _read(method, raw)
            self.assertEqual((body, rest, reader.reusable), (b"", b"NEXT", True))

    def test_empty_length(self) -> None:
        reader, body, rest = _read(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((body, rest), (b"", b""))

    def test_chunked(self) -> None:
        raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
        reader, body, rest = _read(b"GET", raw, cuts=3)
        self.assertEqual((body, rest, reader.trailers, reader.reusable), (b"hello", b"", [(b"x-t", b"1")], True))

    def test_chunked_and_length(self) -> None:
        """Chunked wins over a Content-Length, and the connection is not kept (RFC 9112 section 6.3)."""
        raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        reader, body, _ = _read(b"GET", raw)
        self.assertEqual((body, reader.reusable), (b"hello", False))

    def test_until_close(self) -> None:
        """Without a length the body ends when the connection does; that connection is not kept."""
        reader, body, rest = _read(b"GET", b"HTTP/1.1 200 OK\r\n\r\nall of it", cuts=4)
        self.assertEqual((body, rest, reader.reusable), (b"all of it", None, False))
        self.assertTrue(reader.eof())

    def test_cut_short(self) -> None:
        reader, body, rest = _read(b"GET", OK + b"hel")
        self.assertEqual((body, rest), (b"hel", None))
        self.assertFalse(reader.eof())

    def test_connection_close(self) -> None:
        reader, _, _ = _read(b"GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.assertFalse(reader.reusable)

    def test_lengths(self) -> None:
        """Repeated equal Content-Length values are one length; different ones, or not a number, are refused."""
        reader, body, _ = _read(b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(body, b"hi")
        for raw, reason in [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", "conflicting"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
        ]:
            with self.assertRaises(BadResponse, msg=raw) as e:
                _read(b"GET", raw)
            self.assertIn(reason, str(e.exception))

    def test_bad_chunk(self) -> None:
        with self.assertRaises(BadResponse) as e:
            _read(b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertIn("malformed chunked body", str(e.exception))

    @given(st.binary(max_size=200), st.integers(min_value=1, max_value=50), st.booleans(), st.booleans())
    def test_as_h11(self, payload: bytes, cut: int, chunked: bool, head: bool) -> None:
        """The body and where it ends are what h11, reading the same bytes, finds."""
        method = b"HEAD" if head else b"GET"
        server = h11.Connection(h11.SERVER)
        server.receive_data(b"%s / HTTP/1.1\r\nHost: h\r\n\r\n" % method)
        server.next_event()
        framing = [(b"Transfer-Encoding", b"chunked")] if chunked else [(b"Content-Length", b"%d" % len(payload))]
        raw = server.send(h11.Response(status_code=200, headers=framing))
        if not head:
            raw += server.send(h11.Data(data=payload)) if payload else b""
        raw += server.send(h11.EndOfMessage())

        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method=method, target="/", headers=[("Host", "h")]))
        client.send(h11.EndOfMessage())
        client.receive_data(raw + b"NEXT")
        expected = b""
        while True:
            event = client.next_event()
            if type(event) is h11.Data:
                expected += event.data
            if type(event) is h11.EndOfMessage:
                break

        reader, body, rest = _read(method, raw + b"NEXT", cuts=cut)
        self.assertEqual((body, rest), (expected, client.trailing_data[0]))
