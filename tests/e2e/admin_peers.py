# -*- test-case-name: tests.e2e.test_admin -*-
"""
Clients of the admin console and of the workers, for the end-to-end tests of
issue 7 (L{tests.e2e.test_admin}, L{tests.e2e.test_workers}):

    dom = await chromium_dump_dom(url)                 # headless Chromium, the DOM after load
    await chromium_screenshot(url, path)               # a PNG, 1280x900
    page = parse_sessions_page(dom)                    # rows with data-protocol, the count line
    reply = await admin_request(proxy.addresses["admin"], "/api/sessions?protocol=sips")
    reply = await admin_request(unix_path, "/api/status")   # a worker's UNIX socket
    families = parse_metrics(reply.body)               # prometheus_client's text parser
    uas = await start_loopback_sips_uas(self, pki.valid)     # socat TLS in front of sipp
    uac = await start_sips_uac_via_proxy(self, proxy, uas.address, cafile)

Chromium runs as C{chromium --headless --no-sandbox ...} with a fresh
profile each time, no proxy, no background traffic; a run is bounded by a
timeout and fails with Chromium's output when it does not finish.

The SIP-over-TLS pair works on loopback, through the explicit service:
sipp (UAC, plain TCP) -> socat (TLS client, verifying against C{cafile})
-> socat (C{PROXY:} CONNECT through txgate) -> txgate intercepting ->
socat (TLS server) -> sipp (UAS). The call pauses in the middle (C{-d}) so
the session stays live while a test looks at it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
import unittest
from html.parser import HTMLParser
from typing import Any, Sequence

import attrs
from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import FailTest

from tests.e2e.harness import (
    LOOPBACK,
    Pki,
    TxgateProcess,
    _Child,
    _child_env,
    _new_dir,
    _stop_child,
    _tail,
    require_tool,
)
from tests.e2e.tls_origins import Listener, free_port, start_listener

__all__ = [
    "AdminReply",
    "CHROMIUM_TIMEOUT",
    "SessionRow",
    "SessionsPage",
    "SipsCall",
    "SipsServer",
    "admin_request",
    "chromium_dump_dom",
    "chromium_screenshot",
    "parse_metrics",
    "parse_sessions_page",
    "start_loopback_sips_uas",
    "start_sips_uac_via_proxy",
]

CHROMIUM_TIMEOUT = 60.0
"""Seconds one headless Chromium run may take (a cold start takes about one)."""

_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


# ---------------------------------------------------------------- Chromium


async def _chromium(url: str, extra: Sequence[str], timeout: float) -> bytes:
    """Run headless Chromium on C{url} with C{extra} flags and a fresh profile; its stdout."""
    chromium = require_tool("chromium")
    profile = tempfile.mkdtemp(prefix="txgate-chromium-")
    argv = [chromium, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, url]
    out = bytearray()

    class _Collect(_Child):
        def childDataReceived(self, childFD: int, data: bytes) -> None:
            if childFD == 1:
                out.extend(data)
            else:
                super().childDataReceived(childFD, data)

    child = _Collect()
    transport = reactor.spawnProcess(child, chromium, argv, env=_child_env(), path=profile)
    try:
        if not await child.wait_ended(timeout):
            await _stop_child(child, transport, "chromium")
            raise FailTest(f"chromium did not finish within {timeout}s: {' '.join(argv)}\n{_tail(child.lines)}")
        code = getattr(child.ended.value, "exitCode", None) if child.ended is not None else None
        if code != 0:
            raise FailTest(f"chromium exited {child.describe_end()}: {' '.join(argv)}\n{_tail(child.lines)}")
    finally:
        await threads.deferToThread(_remove_tree, profile)
    return bytes(out)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def chromium_dump_dom(url: str, *, timeout: float = CHROMIUM_TIMEOUT) -> defer.Deferred[str]:
    """
    Load C{url} in headless Chromium and fire with the DOM it serialises
    after the load (C{--dump-dom}): what a browser built from the page,
    not the bytes the server sent.
    """
    d = defer.Deferred.fromCoroutine(_chromium(url, ["--dump-dom"], timeout))
    return d.addCallback(lambda data: data.decode("utf-8", "replace"))


def chromium_screenshot(url: str, path: str, *, timeout: float = CHROMIUM_TIMEOUT) -> defer.Deferred[str]:
    """
    Load C{url} in headless Chromium and write a 1280x900 PNG of it to
    C{path}; fires with C{path}.

    @raise FailTest: (as the failure) when no PNG was written.
    """

    async def run() -> str:
        await _chromium(url, [f"--screenshot={path}", "--window-size=1280,900"], timeout)
        try:
            with open(path, "rb") as f:
                magic = f.read(8)
        except FileNotFoundError:
            raise FailTest(f"chromium wrote no screenshot to {path}") from None
        if magic != b"\x89PNG\r\n\x1a\n":
            raise FailTest(f"{path} is not a PNG: {magic!r}")
        return path

    return defer.Deferred.fromCoroutine(run())


# ---------------------------------------------------------------- the sessions page


@attrs.frozen
class SessionRow:
    """
    One C{<tr data-protocol=...>} of the sessions page.

    @ivar cells: the text of each C{<td>}, whitespace collapsed.
    @ivar forms: the C{action} of every C{<form>} in the row.
    """

    protocol: str
    session: str | None
    cells: tuple[str, ...]
    forms: tuple[str, ...]

    @property
    def text(self) -> str:
        return " | ".join(self.cells)


@attrs.frozen
class SessionsPage:
    """
    What a test reads from the sessions page's DOM.

    @ivar count: the text of C{<p id="count">}, or C{None} when absent.
    @ivar refresh: the C{content} of C{<meta http-equiv="refresh">}, or C{None}.
    @ivar external: URLs of scripts, stylesheets and images the page loads
        (the contract says none).
    """

    rows: tuple[SessionRow, ...]
    count: str | None
    refresh: str | None
    scripts: int
    external: tuple[str, ...]
    links: tuple[str, ...]


class _SessionsParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[SessionRow] = []
        self.count: str | None = None
        self.refresh: str | None = None
        self.scripts = 0
        self.external: list[str] = []
        self.links: list[str] = []
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self._count: list[str] | None = None

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs_}
        if tag == "tr" and "data-protocol" in a:
            self._row = {"protocol": a["data-protocol"], "session": a.get("data-session"), "cells": [], "forms": []}
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "form" and self._row is not None:
            self._row["forms"].append(a.get("action", ""))
        elif tag == "p" and a.get("id") == "count":
            self._count = []
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.refresh = a.get("content")
        elif tag == "script":
            self.scripts += 1
            if a.get("src"):
                self.external.append(a["src"])
        elif tag in ("img", "iframe") and a.get("src"):
            self.external.append(a["src"])
        elif tag == "link" and a.get("href") and "stylesheet" in a.get("rel", ""):
            self.external.append(a["href"])
        elif tag == "a" and a.get("href") is not None:
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            r = self._row
            self.rows.append(SessionRow(r["protocol"], r["session"], tuple(r["cells"]), tuple(r["forms"])))
            self._row = None
        elif tag == "p" and self._count is not None:
            self.count = " ".join("".join(self._count).split())
            self._count = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._count is not None:
            self._count.append(data)


def parse_sessions_page(html: str) -> SessionsPage:
    """The rows, count line, refresh and outside references of a sessions page (html.parser)."""
    parser = _SessionsParser()
    parser.feed(html)
    parser.close()
    return SessionsPage(
        tuple(parser.rows), parser.count, parser.refresh, parser.scripts, tuple(parser.external), tuple(parser.links)
    )


# ---------------------------------------------------------------- HTTP to the admin


@attrs.frozen
class AdminReply:
    """One answer of the admin service: status, lower-case headers, body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return f"{self.status} {self.headers} {self.body[:2000]!r}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _admin_request(
    where: tuple[str, int] | str, path: str, method: str, headers: dict[str, str], body: bytes | None, timeout: float
) -> AdminReply:
    if isinstance(where, str):
        conn: http.client.HTTPConnection = _UnixConnection(where, timeout)
    else:
        conn = http.client.HTTPConnection(where[0], where[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return AdminReply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def admin_request(
    where: tuple[str, int] | str,
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 15.0,
) -> defer.Deferred[AdminReply]:
    """
    In a thread: one HTTP request to the admin service at C{where}, a
    (host, port) or the path of a worker's UNIX socket; with C{token}, as
    C{Authorization: Bearer TOKEN}. Never proxied; fires with an L{AdminReply}.
    """
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    return threads.deferToThread(_admin_request, where, path, method, all_headers, body, timeout)


def parse_metrics(text: bytes) -> dict[str, Any]:
    """
    The Prometheus text exposition C{text} as family name -> family, parsed
    by C{prometheus_client.parser.text_string_to_metric_families} (a counter
    C{x_total} is family C{x} with samples named C{x_total}).

    @raise ValueError: when the parser refuses it.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name: family for family in text_string_to_metric_families(text.decode("utf-8"))}


# ---------------------------------------------------------------- SIP over TLS on loopback


SIPS_CALL_PAUSE_MS = 120_000
"""How long the UAC holds the call between ACK and BYE: longer than any test looks at it."""


@attrs.frozen
class SipsServer:
    """socat terminating TLS on 127.0.0.1:C{port} in front of a sipp UAS on C{sip_port}."""

    port: int
    sip_port: int
    tls: Listener
    uas: Listener

    @property
    def address(self) -> tuple[str, int]:
        return LOOPBACK, self.port

    def output(self) -> str:
        return f"socat tls server:\n{self.tls.output()}\nsipp uas:\n{self.uas.output()}"


def start_loopback_sips_uas(testcase: unittest.TestCase, pki: Pki) -> defer.Deferred[SipsServer]:
    """
    socat terminating TLS with C{pki} on 127.0.0.1 (one connection) in front
    of a sipp UAS answering one call. A cleanup stops both.
    """
    socat, sipp = require_tool("socat"), require_tool("sipp")

    async def start() -> SipsServer:
        port, sip_port = free_port(), free_port()
        uas = await start_listener(
            testcase,
            [sipp, "-sn", "uas", "-t", "t1", "-i", LOOPBACK, "-p", str(sip_port), "-m", "1", "-nostdin"],
            sip_port, "sipp uas",
        )
        tls = await start_listener(
            testcase,
            [socat, f"OPENSSL-LISTEN:{port},bind={LOOPBACK},reuseaddr,cert={pki.cert_path},key={pki.key_path},verify=0",
             f"TCP:{LOOPBACK}:{sip_port}"],
            port, "socat tls server",
        )
        return SipsServer(port, sip_port, tls, uas)

    return defer.Deferred.fromCoroutine(start())


@attrs.frozen
class SipsCall:
    """
    A sipp UAC call over TLS through txgate's explicit service, in progress.

    @ivar uac: sipp's collected output and end.
    """

    uac: _Child
    relay: Listener
    tls: Listener

    def output(self) -> str:
        return (
            f"sipp uac ({self.uac.describe_end()}):\n{_tail(self.uac.lines)}\n"
            f"socat CONNECT relay:\n{self.relay.output()}\nsocat tls client:\n{self.tls.output()}"
        )


def start_sips_uac_via_proxy(
    testcase: unittest.TestCase, proxy: TxgateProcess, server: tuple[str, int], cafile: str, *, service: str = "explicit"
) -> defer.Deferred[SipsCall]:
    """
    Start one sipp UAC call to C{server} over TLS through C{proxy}'s
    C{service} (CONNECT), the TLS client verifying the server against
    C{cafile} by its address; fires once sipp runs (the call itself goes on
    for L{SIPS_CALL_PAUSE_MS} after its ACK). A cleanup stops all three.
    """
    socat, sipp = require_tool("socat"), require_tool("sipp")
    proxy_host, proxy_port = proxy.addresses[service]
    host, port = server

    async def start() -> SipsCall:
        relay_port, sip_port = free_port(), free_port()
        relay = await start_listener(
            testcase,
            [socat, f"TCP-LISTEN:{relay_port},bind={LOOPBACK},reuseaddr",
             f"PROXY:{proxy_host}:{host}:{port},proxyport={proxy_port}"],
            relay_port, "socat CONNECT relay",
        )
        tls = await start_listener(
            testcase,
            [socat, f"TCP-LISTEN:{sip_port},bind={LOOPBACK},reuseaddr",
             f"OPENSSL:{LOOPBACK}:{relay_port},cafile={cafile},commonname={host}"],
            sip_port, "socat tls client",
        )
        directory = _new_dir(testcase)
        argv = [sipp, "-sn", "uac", f"{LOOPBACK}:{sip_port}", "-t", "t1", "-i", LOOPBACK, "-m", "1",
                "-d", str(SIPS_CALL_PAUSE_MS), "-nostdin", "-timeout", "300s"]
        child = _Child()
        transport = reactor.spawnProcess(child, sipp, argv, env=_child_env(), path=directory)
        testcase.addCleanup(_stop_child, child, transport, "sipp uac")
        return SipsCall(child, relay, tls)

    return defer.Deferred.fromCoroutine(start())


def free_ports(n: int) -> list[int]:
    """C{n} distinct free ports on 127.0.0.1."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def os_path_in_trial_temp(testcase: unittest.TestCase, name: str) -> str:
    """An absolute path named C{name} in a fresh directory of the test's C{_trial_temp} tree."""
    directory = _new_dir(testcase)
    return os.path.join(directory, name)
