"""
Tests for L{txgate.admin.web}: a real L{admin_site} on 127.0.0.1:0 answering
real HTTP requests (treq), and, for peers that are not on loopback,
L{DummyRequest}s with a remote client address.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.test.requesthelper import DummyRequest

import treq
from tests.admin.test_views import REALSERVERS, SESSIONS, STATUS
from txgate.admin.web import AdminResource, _RedactedRequest, admin_site, is_loopback_peer

TOKEN = "t0ken-s3cret"
METRICS = b"# HELP txgate_sessions Live sessions.\n# TYPE txgate_sessions gauge\ntxgate_sessions 5.0\n"
REMOTE = IPv4Address("TCP", "192.0.2.5", 1234)


class FakeSource:
    """
    An admin source with canned answers that records what it was asked.

    @ivar broken: method names that fail (asynchronously) with
        L{RuntimeError}; C{"raise:NAME"} raises synchronously instead.
    """

    def __init__(self) -> None:
        self.sessions_list = [dict(s) for s in SESSIONS]
        self.terminated: list[str] = []
        self.reloads = 0
        self.reload_result = {"ok": True, "message": "policy reloaded: 3 rules"}
        self.broken: set[str] = set()

    def _answer(self, name: str, value: Any) -> Deferred[Any]:
        if "raise:" + name in self.broken:
            raise RuntimeError(f"{name} exploded <b>synchronously</b>")
        if name in self.broken:
            return fail(RuntimeError(f"{name} exploded"))
        return succeed(value)

    def sessions(self) -> Deferred[list[dict[str, Any]]]:
        return self._answer("sessions", self.sessions_list)

    def terminate(self, session_id: str) -> Deferred[bool]:
        self.terminated.append(session_id)
        return self._answer("terminate", any(s["id"] == session_id for s in self.sessions_list))

    def realservers(self) -> Deferred[list[dict[str, Any]]]:
        return self._answer("realservers", REALSERVERS)

    def status(self) -> Deferred[dict[str, Any]]:
        return self._answer("status", STATUS)

    def reload(self) -> Deferred[dict[str, Any]]:
        self.reloads += 1
        return self._answer("reload", self.reload_result)

    def metrics(self) -> Deferred[bytes]:
        return self._answer("metrics", METRICS)


class _SiteTestCase(TestCase):
    """
    A real admin site on 127.0.0.1:0 and a connection pool for treq.
    """

    token: str | None = TOKEN
    site_options: dict[str, Any] = {}

    def setUp(self) -> None:
        self.source = FakeSource()
        self.clock = Clock()
        self.clock.advance(86400 + 3723)
        site = admin_site(self.source, self.token, 5, self.clock, **self.site_options)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes]:
        kwargs.setdefault("allow_redirects", False)
        response = await treq.request(method, self.base + path, pool=self.pool, **kwargs)
        body = await response.content()
        return response, body

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None


class APITests(_SiteTestCase):
    """
    The JSON API over real HTTP from loopback.
    """

    async def test_sessions(self) -> None:
        """C{GET /api/sessions}: every session, oldest first, with the contract's keys."""
        response, body = await self.request("GET", "/api/sessions")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "application/json")
        document = json.loads(body)
        self.assertEqual([s["id"] for s in document["sessions"]], ["a-1", "a-3", "a-4", "a-2", "a-5"])
        self.assertEqual(document["sessions"][0], SESSIONS[0])

    async def test_sessions_filtered(self) -> None:
        """The query filters and sorts."""
        _, body = await self.request("GET", "/api/sessions?protocol=sips")
        self.assertEqual([s["id"] for s in json.loads(body)["sessions"]], ["a-1"])
        _, body = await self.request("GET", "/api/sessions?client=10.1.2.&host=EXAMPLE&sort=idle")
        self.assertEqual([s["id"] for s in json.loads(body)["sessions"]], ["a-2", "a-1", "a-4"])
        _, body = await self.request("GET", "/api/sessions?protocol=stun")
        self.assertEqual(json.loads(body), {"sessions": []})

    async def test_sessions_bad_sort(self) -> None:
        """An unknown sort field is a 400 naming it."""
        response, body = await self.request("GET", "/api/sessions?sort=-colour")
        self.assertEqual(response.code, 400)
        self.assertIn("'colour'", json.loads(body)["error"])

    async def test_delete_session(self) -> None:
        """C{DELETE /api/sessions/ID} ends that session: 200 C{{"terminated": ID}}."""
        response, body = await self.request("DELETE", "/api/sessions/a-2")
        self.assertEqual((response.code, json.loads(body)), (200, {"terminated": "a-2"}))
        self.assertEqual(self.source.terminated, ["a-2"])

    async def test_delete_unknown_session(self) -> None:
        """An id no worker knows is a JSON 404."""
        response, body = await self.request("DELETE", "/api/sessions/nope%2F1")
        self.assertEqual(response.code, 404)
        self.assertEqual(json.loads(body), {"error": "no live session 'nope/1'"})
        self.assertEqual(self.source.terminated, ["nope/1"])

    async def test_realservers(self) -> None:
        """C{GET /api/realservers}: C{{"virtual_services": [...]}}."""
        response, body = await self.request("GET", "/api/realservers")
        self.assertEqual((response.code, json.loads(body)), (200, {"virtual_services": REALSERVERS}))

    async def test_status(self) -> None:
        """C{GET /api/status}: the source's status document."""
        response, body = await self.request("GET", "/api/status")
        self.assertEqual((response.code, json.loads(body)), (200, STATUS))

    async def test_reload_ok(self) -> None:
        """C{POST /api/reload}: 200 with the reload result."""
        response, body = await self.request("POST", "/api/reload")
        self.assertEqual((response.code, json.loads(body)), (200, self.source.reload_result))
        self.assertEqual(self.source.reloads, 1)

    async def test_reload_failed(self) -> None:
        """A failed reload is a 500 with the result, saying why."""
        self.source.reload_result = {"ok": False, "message": "local.cpl:3:1: unknown property"}
        response, body = await self.request("POST", "/api/reload")
        self.assertEqual((response.code, json.loads(body)), (500, self.source.reload_result))

    async def test_metrics(self) -> None:
        """C{GET /metrics}: the exposition, in Prometheus' text content type."""
        response, body = await self.request("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, METRICS)
        self.assertEqual(self.header(response, "content-type"), "text/plain; version=0.0.4; charset=utf-8")

    async def test_unknown(self) -> None:
        """An unknown path is a JSON 404."""
        for path in ("/api/nosuch", "/nosuch", "/api", "/sessions/a-1", "/api/sessions/a-1/x"):
            response, body = await self.request("GET", path)
            self.assertEqual(response.code, 404, msg=path)
            self.assertIn("no such resource", json.loads(body)["error"], msg=path)

    async def test_wrong_method(self) -> None:
        """A known path with the wrong method is a JSON 405 with C{Allow}."""
        cases = [("PUT", "/api/sessions", "GET, HEAD"), ("POST", "/api/sessions", "GET, HEAD"),
                 ("GET", "/api/reload", "POST"), ("GET", "/api/sessions/a-1", "DELETE"),
                 ("GET", "/sessions/a-1/terminate", "POST"), ("DELETE", "/metrics", "GET, HEAD")]
        for method, path, allow in cases:
            response, body = await self.request(method, path)
            self.assertEqual(response.code, 405, msg=f"{method} {path}")
            self.assertEqual(self.header(response, "allow"), allow, msg=f"{method} {path}")
            self.assertIn("not allowed", json.loads(body)["error"])
        self.assertEqual(self.source.terminated, [])
        self.assertEqual(self.source.reloads, 0)

    async def test_source_failure(self) -> None:
        """
        A source that fails gives a JSON 500 without a traceback, and the
        failure is logged.
        """
        self.source.broken = {"sessions", "raise:status"}
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for path in ("/api/sessions", "/sessions", "/api/status", "/forward"):
            response, body = await self.request("GET", path)
            self.assertEqual(response.code, 500, msg=path)
            self.assertEqual(json.loads(body), {"error": "internal error: the admin log has the details"})
            self.assertNotIn(b"Traceback", body)
            self.assertNotIn(b"exploded", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 4)
        failures = [e for e in events if "log_failure" in e]
        self.assertEqual([e["path"] for e in failures], ["/api/sessions", "/sessions", "/api/status", "/forward"])

    async def test_security_headers(self) -> None:
        """Nothing is cached, sniffed, framed or loaded from elsewhere."""
        response, _ = await self.request("GET", "/api/sessions")
        self.assertEqual(self.header(response, "cache-control"), "no-store")
        self.assertEqual(self.header(response, "x-content-type-options"), "nosniff")
        self.assertIn("default-src 'none'", self.header(response, "content-security-policy") or "")


class PageTests(_SiteTestCase):
    """
    The HTML pages over real HTTP from loopback.
    """

    async def test_root_redirects(self) -> None:
        """C{/} redirects to C{/sessions}."""
        response, _ = await self.request("GET", "/")
        self.assertEqual((response.code, self.header(response, "location")), (302, "/sessions"))

    async def test_sessions_page(self) -> None:
        """The sessions page: HTML with every session, the time and the refresh."""
        response, body = await self.request("GET", "/sessions")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.header(response, "content-type"), "text/html; charset=utf-8")
        page = body.decode("utf-8")
        self.assertIn('<p id="count">5 sessions</p>', page)
        self.assertIn('<tr data-protocol="sips" data-session="a-1">', page)
        self.assertIn("ssl &gt; sips", page)
        self.assertIn("rendered 1970-01-02 01:02:03 UTC", page)
        self.assertIn('<meta http-equiv="refresh" content="5">', page)

    async def test_sessions_page_filtered(self) -> None:
        """A plain GET of the filter form filters the page."""
        _, body = await self.request("GET", "/sessions?protocol=sips&client=&host=")
        page = body.decode("utf-8")
        self.assertIn('<p id="count">1 sessions</p>', page)
        self.assertEqual(page.count("<tr data-protocol="), 1)

    async def test_trailing_slash(self) -> None:
        """C{/sessions/} is C{/sessions}."""
        response, _ = await self.request("GET", "/sessions/")
        self.assertEqual(response.code, 200)

    async def test_head(self) -> None:
        """HEAD answers like GET, without a body."""
        response, body = await self.request("HEAD", "/sessions")
        self.assertEqual((response.code, body), (200, b""))

    async def test_forward_page(self) -> None:
        """The forward page renders the status."""
        response, body = await self.request("GET", "/forward")
        self.assertEqual(response.code, 200)
        self.assertIn(b"CN=txgate CA", body)
        self.assertIn("txgate \N{EM DASH} forward".encode(), body)

    async def test_reverse_page(self) -> None:
        """The reverse page renders the real servers."""
        response, body = await self.request("GET", "/reverse")
        self.assertEqual(response.code, 200)
        self.assertIn(b'<span class="badge down">Down</span>', body)

    async def test_terminate_form(self) -> None:
        """
        The terminate form's POST ends the session and answers 303 to
        C{/sessions} with the filters it carried.
        """
        response, body = await self.request(
            "POST", "/sessions/a-1/terminate", data={"protocol": "sips", "sort": "idle"})
        self.assertEqual(response.code, 303)
        self.assertEqual(self.header(response, "location"), "/sessions?protocol=sips&sort=idle")
        self.assertEqual(self.source.terminated, ["a-1"])

    async def test_terminate_form_empty(self) -> None:
        """A bare POST (as scripts send it) redirects to the plain page."""
        response, _ = await self.request("POST", "/sessions/a-9/terminate", data=b"")
        self.assertEqual((response.code, self.header(response, "location")), (303, "/sessions"))
        self.assertEqual(self.source.terminated, ["a-9"])

    async def test_terminate_same_origin(self) -> None:
        """A browser's same-origin form post passes the cross-origin check."""
        host = f"127.0.0.1:{self.port.getHost().port}"
        for headers in ({"Origin": f"http://{host}"}, {"Sec-Fetch-Site": "same-origin"}):
            response, _ = await self.request("POST", "/sessions/a-1/terminate", headers=headers)
            self.assertEqual(response.code, 303, msg=headers)
        self.assertEqual(self.source.terminated, ["a-1", "a-1"])

    async def test_cross_origin_refused(self) -> None:
        """
        A POST or DELETE from another site's page (through the operator's
        browser) is refused, and the source is not asked.
        """
        cases = [
            ("POST", "/sessions/a-1/terminate", {"Origin": "http://evil.example"}),
            ("POST", "/sessions/a-1/terminate", {"Origin": "null"}),
            ("DELETE", "/api/sessions/a-1", {"Sec-Fetch-Site": "cross-site"}),
            ("POST", "/api/reload", {"Sec-Fetch-Site": "same-site"}),
        ]
        for method, path, headers in cases:
            response, body = await self.request(method, path, headers=headers)
            self.assertEqual(response.code, 403, msg=f"{method} {path} {headers}")
            self.assertEqual(json.loads(body), {"error": "cross-origin request refused"})
        self.assertEqual((self.source.terminated, self.source.reloads), ([], 0))

    async def test_dns_rebinding(self) -> None:
        """
        A loopback request naming a DNS host other than localhost needs the
        token: a rebinding page in the operator's browser cannot read.
        """
        response, _ = await self.request("GET", "/api/sessions", headers={"Host": "attacker.example"})
        self.assertEqual(response.code, 401)
        response, _ = await self.request(
            "GET", "/api/sessions", headers={"Host": "attacker.example", "Authorization": f"Bearer {TOKEN}"})
        self.assertEqual(response.code, 200)
        for host in ("localhost:8081", "LOCALHOST", "[::1]:8081", "127.0.0.1"):
            response, _ = await self.request("GET", "/api/sessions", headers={"Host": host})
            self.assertEqual(response.code, 200, msg=host)


class RemoteHTTPTests(_SiteTestCase):
    """
    Over real HTTP, with a site that trusts no peer: what a non-loopback
    client sees.
    """

    site_options = {"trusted_peer": lambda address: False}

    async def test_no_token(self) -> None:
        """Every route, known or not, is a 401 with C{WWW-Authenticate: Bearer}."""
        for method, path in (("GET", "/api/sessions"), ("GET", "/sessions"), ("GET", "/metrics"),
                             ("DELETE", "/api/sessions/a-1"), ("POST", "/api/reload"), ("GET", "/nosuch")):
            response, body = await self.request(method, path)
            self.assertEqual(response.code, 401, msg=path)
            self.assertEqual(self.header(response, "www-authenticate"), 'Bearer realm="txgate admin"')
            self.assertIn("token", json.loads(body)["error"])
        self.assertEqual((self.source.terminated, self.source.reloads), ([], 0))

    async def test_wrong_token(self) -> None:
        """A wrong token is a 401."""
        for headers, query in (({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong"),
                               ({"Authorization": f"Basic {TOKEN}"}, "")):
            response, _ = await self.request("GET", "/api/sessions" + query, headers=headers)
            self.assertEqual(response.code, 401, msg=headers)

    async def test_bearer(self) -> None:
        """C{Authorization: Bearer TOKEN} opens every route."""
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for method, path, code in (("GET", "/api/sessions", 200), ("GET", "/metrics", 200),
                                   ("DELETE", "/api/sessions/a-1", 200), ("POST", "/api/reload", 200),
                                   ("GET", "/forward", 200), ("GET", "/nosuch", 404)):
            response, _ = await self.request(method, path, headers=auth)
            self.assertEqual(response.code, code, msg=path)

    async def test_query_token(self) -> None:
        """
        C{?token=} opens the pages, and the page carries the token on in its
        links and forms.
        """
        response, body = await self.request("GET", f"/sessions?token={TOKEN}")
        self.assertEqual(response.code, 200)
        page = body.decode("utf-8")
        self.assertIn(f'href="/forward?token={TOKEN}"', page)
        self.assertIn(f'<input type="hidden" name="token" value="{TOKEN}">', page)
        response, _ = await self.request("GET", f"/?token={TOKEN}")
        self.assertEqual(self.header(response, "location"), f"/sessions?token={TOKEN}")

    async def test_terminate_form_token(self) -> None:
        """
        The terminate form with its hidden token field ends the session, and
        the redirect keeps the token, so the browser can load the page.
        """
        response, _ = await self.request(
            "POST", "/sessions/a-1/terminate", data={"protocol": "sips", "token": TOKEN})
        self.assertEqual(response.code, 303)
        location = urlsplit(self.header(response, "location") or "")
        self.assertEqual(location.path, "/sessions")
        self.assertEqual(parse_qs(location.query), {"protocol": ["sips"], "token": [TOKEN]})
        self.assertEqual(self.source.terminated, ["a-1"])


class NoTokenTests(_SiteTestCase):
    """
    Without a token, a non-loopback peer can never get in.
    """

    token = None
    site_options = {"trusted_peer": lambda address: False}

    async def test_always_401(self) -> None:
        """Whatever it presents, the answer is 401."""
        for headers, query in (({}, ""), ({"Authorization": "Bearer "}, ""), ({}, "?token=")):
            response, _ = await self.request("GET", "/api/sessions" + query, headers=headers)
            self.assertEqual(response.code, 401, msg=headers)


class TrustLocalTests(_SiteTestCase):
    """
    C{trust_local=True}: a worker's control socket, where every peer is the
    main process.
    """

    token = None
    site_options = {"trusted_peer": lambda address: False, "trust_local": True}

    async def test_trusted(self) -> None:
        """No token and any Host: served."""
        response, _ = await self.request("GET", "/api/sessions", headers={"Host": "worker"})
        self.assertEqual(response.code, 200)


def _render(resource: AdminResource, path: str, *, client: Any = REMOTE, method: bytes = b"GET",
            headers: dict[bytes, bytes] | None = None, args: dict[bytes, list[bytes]] | None = None,
            ) -> DummyRequest:
    request = DummyRequest([segment.encode() for segment in path.lstrip("/").split("/")])
    request.client = client  # DummyRequest's constructor ignores its client argument
    request.method = method
    request.args = args or {}
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    request.render(resource)
    return request


class DummyRequestAuthTests(SynchronousTestCase):
    """
    The authentication check with the default L{is_loopback_peer}, with a
    remote client address (192.0.2.5).
    """

    def setUp(self) -> None:
        self.source = FakeSource()
        self.resource = AdminResource(self.source, TOKEN, 5, Clock())

    def test_remote_without_token(self) -> None:
        """A non-loopback peer without the token gets 401."""
        request = _render(self.resource, "/api/sessions")
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"www-authenticate"),
                         [b'Bearer realm="txgate admin"'])
        self.assertIn(b"token", b"".join(request.written))

    def test_remote_bearer(self) -> None:
        """A non-loopback peer with the bearer token is served."""
        request = _render(self.resource, "/api/sessions",
                          headers={b"authorization": f"Bearer {TOKEN}".encode()})
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(len(json.loads(b"".join(request.written))["sessions"]), 5)

    def test_remote_query_token(self) -> None:
        """A non-loopback peer with C{?token=} is served."""
        request = _render(self.resource, "/sessions", args={b"token": [TOKEN.encode()]})
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.finished, 1)

    def test_remote_ipv6(self) -> None:
        """A non-loopback IPv6 peer needs the token too."""
        request = _render(self.resource, "/api/status", client=IPv6Address("TCP", "2001:db8::1", 1))
        self.assertEqual(request.responseCode, 401)

    def test_loopback(self) -> None:
        """A loopback peer needs no token."""
        request = _render(self.resource, "/api/status", client=IPv4Address("TCP", "127.0.0.1", 1))
        self.assertEqual(request.responseCode, 200)

    def test_client_gone(self) -> None:
        """
        A client that leaves before the source answers gets nothing written,
        and nothing fails.
        """
        pending: Deferred[list[dict[str, Any]]] = Deferred()
        self.source.sessions = lambda: pending  # type: ignore[method-assign]
        request = _render(self.resource, "/api/sessions", client=IPv4Address("TCP", "127.0.0.1", 1))
        request.processingFailed(Exception("connection lost"))
        pending.callback([])
        self.assertEqual((request.written, request.finished), ([], 0))


class FakeSourceTests(SynchronousTestCase):
    """
    The fake these tests use is a faithful admin source.
    """

    def test_provides(self) -> None:
        """L{FakeSource} has every method of L{IAdminSource}."""
        from zope.interface.verify import verifyObject

        from txgate.admin.source import IAdminSource

        self.assertTrue(verifyObject(IAdminSource, FakeSource(), tentative=True))


class LoopbackTests(SynchronousTestCase):
    """
    L{is_loopback_peer} decides which peers need no token.
    """

    def test_cases(self) -> None:
        """127.0.0.0/8, ::1, IPv4-mapped loopback and UNIX sockets are local."""
        cases = [
            (IPv4Address("TCP", "127.0.0.1", 1), True),
            (IPv4Address("TCP", "127.4.5.6", 1), True),
            (IPv6Address("TCP", "::1", 1), True),
            (IPv6Address("TCP", "::ffff:127.0.0.1", 1), True),
            (UNIXAddress(b"/run/txgate/worker-1.sock"), True),
            (IPv4Address("TCP", "192.0.2.5", 1), False),
            (IPv4Address("TCP", "10.0.0.1", 1), False),
            (IPv6Address("TCP", "::ffff:10.0.0.1", 1), False),
            (IPv6Address("TCP", "fe80::1%eth0", 1), False),
            (IPv4Address("TCP", "not-an-ip", 1), False),
        ]
        for address, expected in cases:
            self.assertEqual(is_loopback_peer(address), expected, msg=repr(address))


class AccessLogTests(SynchronousTestCase):
    """
    A token given as C{?token=} never reaches the access log.
    """

    def test_redacted(self) -> None:
        """The C{token} parameter reads C{REDACTED}; the rest stays."""
        request = DummyRequest([b"sessions"])
        request.uri = b"/sessions?protocol=sips&token=s3cret&sort=age"
        self.assertEqual(_RedactedRequest(request).uri, b"/sessions?protocol=sips&token=REDACTED&sort=age")
        request.uri = b"/sessions?protocol=sips"
        self.assertEqual(_RedactedRequest(request).uri, b"/sessions?protocol=sips")
        self.assertEqual(_RedactedRequest(request).method, b"GET")
