"""
Tests for L{txgate.admin.views}: choosing, ordering and rendering sessions,
and the forward and reverse pages, without a reactor.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txgate.admin import views
from txgate.admin.views import (
    SESSION_FIELDS,
    PageContext,
    QueryError,
    SessionQuery,
    filter_sessions,
    human_bytes,
    human_duration,
    json_bytes,
    render_forward,
    render_reverse,
    render_sessions,
    select_sessions,
    sessions_document,
    shape_session,
    sort_sessions,
)

HOSTILE = '<script>alert("x")</script>'


def session(**fields: Any) -> dict[str, Any]:
    """A session dict with every contract field, overridden by C{fields}."""
    base: dict[str, Any] = {
        "id": "s0", "client": "10.0.0.1:40000", "service": "explicit",
        "destination": "example.com:443", "sni": None, "protocol": "tcp", "stack": ["tcp"],
        "tunneled": True, "intercepted": False, "user": None, "bytes_in": 0, "bytes_out": 0,
        "age": 1.0, "idle": 0.5, "worker": 0,
    }
    base.update(fields)
    return base


#: One session of each kind the issue names: SIP over TLS, HTTPS, a tunnel,
#: MS-TURN and plain SIP.
SESSIONS = [
    session(id="a-1", client="10.1.2.3:5061", service="sip-edge", destination="sip.example.org:5061",
            sni="sip.example.org", protocol="sips", stack=["ssl", "sips"], tunneled=False,
            intercepted=True, user="alice", bytes_in=2048, bytes_out=3 * 1024 * 1024,
            age=3723.0, idle=2.0, worker=1),
    session(id="a-2", client="10.1.2.30:44000", service="explicit", destination="www.Example.com:443",
            sni="www.example.com", protocol="https", stack=["http", "ssl", "https"], user="bob",
            bytes_in=100, bytes_out=5000, age=12.5, idle=0.1, worker=0),
    session(id="a-3", client="192.168.7.9:50000", service="transparent", destination="10.9.9.9:8443",
            sni=None, protocol="ssl", stack=["ssl"], tunneled=True, bytes_in=10, bytes_out=20,
            age=600.0, idle=300.0, worker=1),
    session(id="a-4", client="10.1.2.4:3478", service="edge", destination="turn.example.net:443",
            sni="turn.example.net", protocol="ms-turn", stack=["ms-turn"], age=59.0, idle=59.0,
            worker=0),
    session(id="a-5", client="[2001:db8::5]:5060", service="sip", destination=None, sni=None,
            protocol="sip", stack=["sip"], age=5.0, idle=5.0, worker=0),
]


def ids(sessions: list[Any]) -> list[str]:
    return [s["id"] for s in sessions]


def text(page: bytes) -> str:
    return page.decode("utf-8")


def rows(page: bytes) -> list[tuple[str, str]]:
    """(data-protocol, data-session) of every session row of a page."""
    return re.findall(r'<tr data-protocol="([^"]*)" data-session="([^"]*)">', text(page))


CTX = PageContext(now=0.0, refresh=5, token=None, workers=2)


class FilterTests(SynchronousTestCase):
    """
    L{filter_sessions} applies the C{protocol}, C{client} and C{host} filters.
    """

    def test_no_filter(self) -> None:
        """An empty query keeps every session, in order."""
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery())), ids(SESSIONS))

    def test_protocol_exact(self) -> None:
        """C{protocol=sips} is the SIP-over-TLS session only, not C{sip}."""
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(protocol="sips"))), ["a-1"])
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(protocol="sip"))), ["a-5"])
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(protocol="ms-turn"))), ["a-4"])
        self.assertEqual(filter_sessions(SESSIONS, SessionQuery(protocol="ss")), [])

    def test_client_prefix(self) -> None:
        """C{client} matches a prefix of the client's IP address."""
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(client="10.1.2."))),
                         ["a-1", "a-2", "a-4"])
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(client="10.1.2.3"))),
                         ["a-1", "a-2"])

    def test_client_substring_not_port(self) -> None:
        """
        C{client} matches a substring of the IP address, and C{ip:port} by its
        start, but not a port alone.
        """
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(client="168.7"))), ["a-3"])
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(client="10.1.2.3:5061"))), ["a-1"])
        self.assertEqual(filter_sessions(SESSIONS, SessionQuery(client="5061")), [])

    def test_client_ipv6(self) -> None:
        """An IPv6 client matches by its address, whatever the case."""
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(client="2001:DB8"))), ["a-5"])

    def test_host_destination_or_sni(self) -> None:
        """C{host} is a case-insensitive substring of the destination host or the SNI."""
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(host="EXAMPLE.COM"))), ["a-2"])
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(host="example"))),
                         ["a-1", "a-2", "a-4"])
        self.assertEqual(ids(filter_sessions(SESSIONS, SessionQuery(host="10.9.9"))), ["a-3"])
        self.assertEqual(filter_sessions(SESSIONS, SessionQuery(host="8443")), [])

    def test_host_sni_only(self) -> None:
        """A session whose destination is not known yet matches by its SNI."""
        only_sni = [session(id="x", destination=None, sni="hidden.example")]
        self.assertEqual(ids(filter_sessions(only_sni, SessionQuery(host="hidden"))), ["x"])

    def test_combined(self) -> None:
        """Filters combine with AND."""
        query = SessionQuery(protocol="https", client="10.1.", host="example")
        self.assertEqual(ids(filter_sessions(SESSIONS, query)), ["a-2"])


class SortTests(SynchronousTestCase):
    """
    L{sort_sessions} orders by any session field, C{-field} descending.
    """

    def test_default_oldest_first(self) -> None:
        """The default order is C{-age}: oldest first."""
        self.assertEqual(views.DEFAULT_SORT, "-age")
        self.assertEqual(ids(sort_sessions(SESSIONS)), ["a-1", "a-3", "a-4", "a-2", "a-5"])

    def test_ascending_descending(self) -> None:
        """C{field} sorts ascending, C{-field} descending."""
        self.assertEqual(ids(sort_sessions(SESSIONS, "bytes_out")), ["a-4", "a-5", "a-3", "a-2", "a-1"])
        self.assertEqual(ids(sort_sessions(SESSIONS, "-bytes_out")), ["a-1", "a-2", "a-3", "a-4", "a-5"])
        self.assertEqual(ids(sort_sessions(SESSIONS, "protocol")), ["a-2", "a-4", "a-5", "a-1", "a-3"])

    def test_nulls_last(self) -> None:
        """Sessions without the field's value come last in both directions."""
        self.assertEqual(ids(sort_sessions(SESSIONS, "user")), ["a-1", "a-2", "a-3", "a-4", "a-5"])
        self.assertEqual(ids(sort_sessions(SESSIONS, "-user")), ["a-2", "a-1", "a-3", "a-4", "a-5"])

    def test_client_numeric(self) -> None:
        """Client addresses sort as addresses: C{.9} before C{.10}."""
        sessions = [session(id="b", client="10.0.0.10:1"), session(id="a", client="10.0.0.9:2")]
        self.assertEqual(ids(sort_sessions(sessions, "client")), ["a", "b"])

    def test_ties_by_id(self) -> None:
        """Equal values keep id order, so a refresh does not reshuffle rows."""
        sessions = [session(id="c", worker=1), session(id="a", worker=1), session(id="b", worker=0)]
        self.assertEqual(ids(sort_sessions(sessions, "worker")), ["b", "a", "c"])

    def test_every_field(self) -> None:
        """Every contract field is a sort key."""
        for field in SESSION_FIELDS:
            for sort in (field, "-" + field):
                self.assertEqual(sorted(ids(sort_sessions(SESSIONS, sort))), sorted(ids(SESSIONS)),
                                 msg=f"sort {sort}")

    def test_unknown_field(self) -> None:
        """An unknown field is a L{QueryError} naming it and the known ones."""
        error = self.assertRaises(QueryError, sort_sessions, SESSIONS, "-colour")
        self.assertIn("'colour'", str(error))
        self.assertIn("bytes_in", str(error))
        self.assertRaises(QueryError, SessionQuery, sort="nope")


class QueryTests(SynchronousTestCase):
    """
    L{SessionQuery} reads twisted.web arguments and writes them back as links.
    """

    def test_from_args(self) -> None:
        """The first value of each name is used, stripped; the default sort fills in."""
        query = SessionQuery.from_args({b"protocol": [b"sips", b"tcp"], b"client": [b" 10.1 "],
                                        b"host": [b""], b"other": [b"x"]})
        self.assertEqual(query, SessionQuery(protocol="sips", client="10.1", host="", sort="-age"))

    def test_from_args_bad_sort(self) -> None:
        """A bad sort parameter is a L{QueryError}."""
        self.assertRaises(QueryError, SessionQuery.from_args, {b"sort": [b"-x"]})

    def test_params(self) -> None:
        """Links leave out empty filters and the default sort."""
        self.assertEqual(SessionQuery().params(), [])
        self.assertEqual(SessionQuery(protocol="sips", sort="age").params(host="x"),
                         [("protocol", "sips"), ("host", "x"), ("sort", "age")])

    def test_select(self) -> None:
        """L{select_sessions} filters, then sorts."""
        query = SessionQuery(client="10.1.2.", sort="age")
        self.assertEqual(ids(select_sessions(SESSIONS, query)), ["a-2", "a-4", "a-1"])


class JSONTests(SynchronousTestCase):
    """
    The JSON documents have exactly the contract's keys.
    """

    def test_shape(self) -> None:
        """Extra keys are dropped, missing ones are null, the stack is a list."""
        shaped = shape_session({"id": "x", "stack": ("ssl", "sips"), "secret": 1})
        self.assertEqual(list(shaped), list(SESSION_FIELDS))
        self.assertEqual(shaped["stack"], ["ssl", "sips"])
        self.assertIsNone(shaped["user"])

    def test_document(self) -> None:
        """The sessions document applies the query."""
        document = json.loads(json_bytes(sessions_document(SESSIONS, SessionQuery(protocol="sips"))))
        self.assertEqual(document, {"sessions": [shape_session(SESSIONS[0])]})

    def test_json_bytes_odd_values(self) -> None:
        """Values JSON has no type for become strings."""
        when = datetime.datetime(2025, 1, 2, 3, 4, 5)
        self.assertEqual(json.loads(json_bytes({"when": when})), {"when": "2025-01-02 03:04:05"})


class FormatTests(SynchronousTestCase):
    """
    Numbers on the pages are for people.
    """

    def test_bytes(self) -> None:
        """Bytes in binary units."""
        cases = [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                 (3 * 1024 * 1024, "3.0 MiB"), (5 * 1024 ** 3, "5.0 GiB"), (None, "\N{EM DASH}")]
        for value, expected in cases:
            self.assertEqual(human_bytes(value), expected, msg=f"value {value!r}")

    def test_duration(self) -> None:
        """Durations with two units at most."""
        cases = [(0.4, "0s"), (59.9, "59s"), (60, "1m00s"), (125, "2m05s"), (3723, "1h02m"),
                 (90000, "1d01h"), (None, "\N{EM DASH}"), (-1, "\N{EM DASH}")]
        for value, expected in cases:
            self.assertEqual(human_duration(value), expected, msg=f"value {value!r}")


class SessionsPageTests(SynchronousTestCase):
    """
    L{render_sessions} renders the Active sessions page.
    """

    def test_rows_and_count(self) -> None:
        """One row per session, each with its protocol and id, and the count line."""
        page = render_sessions(SESSIONS, SessionQuery(), CTX)
        self.assertEqual(rows(page), [("sips", "a-1"), ("ssl", "a-3"), ("ms-turn", "a-4"),
                                      ("https", "a-2"), ("sip", "a-5")])
        self.assertIn('<p id="count">5 sessions</p>', text(page))

    def test_filtered(self) -> None:
        """Filtering by C{sips} shows exactly the SIP-over-TLS session."""
        page = render_sessions(SESSIONS, SessionQuery(protocol="sips"), CTX)
        self.assertEqual(rows(page), [("sips", "a-1")])
        self.assertIn('<p id="count">1 sessions</p>', text(page))
        self.assertIn('<option value="sips" selected>sips</option>', text(page))
        self.assertIn("4 hidden by the filter", text(page))

    def test_no_match(self) -> None:
        """No match: zero sessions and a note, no session rows."""
        page = render_sessions(SESSIONS, SessionQuery(host="nowhere"), CTX)
        self.assertEqual(rows(page), [])
        self.assertIn('<p id="count">0 sessions</p>', text(page))
        self.assertIn("No session matches.", text(page))

    def test_stack_and_badges(self) -> None:
        """The stack renders as C{ssl > sips}, beside a protocol badge."""
        page = text(render_sessions(SESSIONS, SessionQuery(), CTX))
        self.assertIn('<span class="stack">ssl &gt; sips</span>', page)
        self.assertIn('<span class="stack">http &gt; ssl &gt; https</span>', page)
        self.assertIn('<span class="badge p-sip">sips</span>', page)
        self.assertIn('<span class="badge p-turn">ms-turn</span>', page)
        self.assertIn('<span class="badge p-web">https</span>', page)

    def test_human_numbers(self) -> None:
        """Bytes and ages are human-readable, with the exact value as a title."""
        page = text(render_sessions(SESSIONS, SessionQuery(protocol="sips"), CTX))
        self.assertIn('title="2048 bytes">2.0 KiB<', page)
        self.assertIn(">3.0 MiB<", page)
        self.assertIn('title="3723.0 s">1h02m<', page)
        for cell in ("10.1.2.3:5061", "sip-edge", "sip.example.org:5061", "alice"):
            self.assertIn(cell, page)

    def test_filter_form(self) -> None:
        """The filter form is a plain GET form with the current values."""
        page = text(render_sessions(SESSIONS, SessionQuery(client="10.1", host="ex", sort="idle"), CTX))
        self.assertIn('<form class="filters" method="get" action="/sessions">', page)
        self.assertIn('name="client" value="10.1"', page)
        self.assertIn('name="host" value="ex"', page)
        self.assertIn('<input type="hidden" name="sort" value="idle">', page)
        for protocol in ("http", "https", "ssl", "sip", "sips", "ms-turn", "stun", "tcp"):
            self.assertIn(f'<option value="{protocol}"', page)
        self.assertNotIn("<script", page)

    def test_sort_links_toggle(self) -> None:
        """A column header links to C{?sort=field}, and to C{-field} when sorted by it."""
        page = text(render_sessions(SESSIONS, SessionQuery(protocol="sips", sort="age"), CTX))
        self.assertIn('href="/sessions?protocol=sips&amp;sort=-age"', page)
        self.assertIn('href="/sessions?protocol=sips&amp;sort=idle"', page)
        page = text(render_sessions(SESSIONS, SessionQuery(), CTX))
        # sorted by -age (the default): its header toggles to "age"
        self.assertIn('href="/sessions?sort=age">Age \N{BLACK DOWN-POINTING TRIANGLE}</a>', page)

    def test_terminate_form(self) -> None:
        """
        Each row has a POST form to its terminate URL, carrying the filters
        as hidden fields.
        """
        page = text(render_sessions([session(id="a/b c")], SessionQuery(protocol="tcp", sort="idle"), CTX))
        self.assertIn('<form method="post" action="/sessions/a%2Fb%20c/terminate">'
                      '<input type="hidden" name="protocol" value="tcp">'
                      '<input type="hidden" name="sort" value="idle">', page)

    def test_token_carried(self) -> None:
        """A token given as a parameter is in every link and form."""
        ctx = PageContext(now=0.0, refresh=5, token="s3&cret")
        page = text(render_sessions(SESSIONS, SessionQuery(), ctx))
        self.assertIn('href="/forward?token=s3%26cret"', page)
        self.assertIn('href="/sessions?sort=age&amp;token=s3%26cret"', page)
        self.assertIn('<input type="hidden" name="token" value="s3&amp;cret">', page)
        self.assertEqual(page.count('name="token"'), len(SESSIONS) + 1)

    def test_no_token_no_field(self) -> None:
        """Without a token, pages carry none."""
        page = text(render_sessions(SESSIONS, SessionQuery(), CTX))
        self.assertNotIn("token", page)

    def test_escaping(self) -> None:
        """A hostile SNI, user, service or id renders as text, never markup."""
        evil = session(id='"><b>', client=HOSTILE, service=HOSTILE, destination=None, sni=HOSTILE,
                       protocol='x"y', stack=[HOSTILE, "tcp"], user=HOSTILE)
        page = text(render_sessions([evil], SessionQuery(host="<script"), CTX))
        self.assertNotIn("<script>", page)
        self.assertNotIn('"><b>', page)
        self.assertIn("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;", page)
        self.assertIn('data-protocol="x&quot;y" data-session="&quot;&gt;&lt;b&gt;"', page)
        self.assertIn('value="&lt;script"', page)

    def test_page_frame(self) -> None:
        """Title, nav, refresh, rendering time and workers."""
        page = text(render_sessions(SESSIONS, SessionQuery(),
                                    PageContext(now=86400.0 + 3723, refresh=5, workers=2)))
        self.assertIn("<title>txgate \N{EM DASH} sessions</title>", page)
        self.assertIn('<meta http-equiv="refresh" content="5">', page)
        self.assertIn("rendered 1970-01-02 01:02:03 UTC", page)
        self.assertIn("2 workers", page)
        for link in ("/sessions", "/forward", "/reverse", "/metrics"):
            self.assertIn(f'href="{link}"', page)
        self.assertIn("<style>", page)
        self.assertNotIn("<script", page)
        self.assertNotIn("http://", page)  # no external assets

    def test_no_refresh(self) -> None:
        """A refresh of 0 turns the page's reloads off."""
        page = text(render_sessions(SESSIONS, SessionQuery(), PageContext(now=0.0, refresh=0)))
        self.assertNotIn("http-equiv", page)


STATUS = {
    "mode": "forward",
    "services": [{"name": "explicit", "kind": "explicit", "listen": "tcp:3128",
                  "address": "127.0.0.1:3128", "sessions": 4, "transactions": 17}],
    "protocols": {"sips": 3, "https": 10, "ms-turn": 1},
    "policy": {"file": "etc/policy/local.cpl",
               "last_reload": {"time": "2025-01-01T00:00:00Z", "ok": False,
                               "message": "local.cpl:3:1: unknown property"},
               "rule_hits": [{"rule": "local.cpl:12", "hits": 42}]},
    "certificates": {"issuer": "CN=txgate CA", "crl_number": 7,
                     "crl_next_update": "2025-01-02T00:00:00Z", "cache_size": 10,
                     "cache_capacity": 1000, "cache_hits": 3, "cache_misses": 1,
                     "ocsp": {"good": 5, "revoked": 1, "unknown": 0}},
}

REALSERVERS = [
    {"name": "web", "listen": "tcp:8443", "connections": 9, "requests": 120, "real_servers": [
        {"key": "10.0.0.1:80", "weight": 1, "state": "Up", "active": True, "connections": 5,
         "requests": 80, "persistence_hits": 12, "last_health": "200 OK in 3 ms"},
        {"key": "10.0.0.2:80", "weight": 2, "state": "Down", "active": False, "connections": 0,
         "requests": 40, "persistence_hits": 0, "last_health": "connection refused"},
    ]},
]


class ForwardPageTests(SynchronousTestCase):
    """
    L{render_forward} shows services, protocol counts, policy and certificates.
    """

    def test_contents(self) -> None:
        """Every part of the status document is on the page."""
        page = text(render_forward(STATUS, CTX))
        self.assertIn("<title>txgate \N{EM DASH} forward</title>", page)
        for fact in ("explicit", "127.0.0.1:3128", ">17<", "etc/policy/local.cpl",
                     "local.cpl:3:1: unknown property", "local.cpl:12", ">42<", "CN=txgate CA",
                     ">7<", "2025-01-02T00:00:00Z", "75.0% (3 hits, 1 misses)",
                     "revoked 1", '<span class="badge down">Failed</span>'):
            self.assertIn(fact, page)
        self.assertLess(page.index(">https<"), page.index(">sips<"))  # busiest first
        self.assertIn('<span class="badge p-sip">sips</span>', page)

    def test_sparse(self) -> None:
        """A status with nothing in it yet still renders."""
        page = text(render_forward({"mode": "forward", "services": []}, CTX))
        self.assertIn("No services.", page)
        self.assertIn("Nothing detected yet.", page)

    def test_reverse_mode(self) -> None:
        """In reverse mode the page lists services and points to Reverse."""
        page = text(render_forward({"mode": "reverse", "services": STATUS["services"]}, CTX))
        self.assertIn("reverse mode", page)
        self.assertNotIn("Certificates", page)

    def test_escaping(self) -> None:
        """Names from configuration and certificates are escaped."""
        status = dict(STATUS, services=[{"name": HOSTILE}],
                      certificates={"issuer": HOSTILE}, protocols={HOSTILE: 1})
        page = text(render_forward(status, CTX))
        self.assertNotIn("<script>", page)


class ReversePageTests(SynchronousTestCase):
    """
    L{render_reverse} shows virtual services and their real servers.
    """

    def test_contents(self) -> None:
        """Real servers with Up/Down badges and their counters."""
        page = text(render_reverse(REALSERVERS, CTX))
        self.assertIn("<title>txgate \N{EM DASH} reverse</title>", page)
        self.assertIn('<span class="badge up">Up</span>', page)
        self.assertIn('<span class="badge down">Down</span>', page)
        self.assertIn("1 of 2 real servers up", page)
        for fact in ("10.0.0.1:80", "200 OK in 3 ms", "connection refused", ">12<", ">120<"):
            self.assertIn(fact, page)

    def test_forward_mode(self) -> None:
        """No virtual services: a note, not an empty table."""
        self.assertIn('id="no-vservices"', text(render_reverse([], CTX)))

    def test_escaping(self) -> None:
        """Real-server keys, states and health results are escaped."""
        vservices = [{"name": HOSTILE, "real_servers": [
            {"key": HOSTILE, "state": HOSTILE, "last_health": {"error": HOSTILE}}]}]
        self.assertNotIn("<script>", text(render_reverse(vservices, CTX)))


class PurityTests(SynchronousTestCase):
    """
    The views are a pure core.
    """

    def test_no_reactor(self) -> None:
        """Importing the views installs no reactor."""
        code = ("import sys, txgate.admin.views; "
                "print('twisted.internet.reactor' in sys.modules)")
        output = subprocess.check_output([sys.executable, "-c", code])
        self.assertEqual(output.strip(), b"False")
