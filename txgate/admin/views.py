# -*- test-case-name: tests.admin.test_views -*-
"""
The admin console's pure half: choosing and ordering sessions from a query,
shaping the JSON documents and rendering the HTML pages to bytes.

Nothing here reads a clock, a socket or the reactor: the web glue
(L{txgate.admin.web}) passes the time, the refresh interval and the token the
pages must carry in a L{PageContext}. Every value that reaches a page goes
through L{html.escape}: session fields (SNI, user names, service names) come
from clients and configuration, so a hostile SNI must render as text, never
as markup.
"""

from __future__ import annotations

import html
import ipaddress
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import attrs

from txgate.session import ClientProtocol

__all__ = [
    "DEFAULT_SORT",
    "SESSION_FIELDS",
    "PageContext",
    "QueryError",
    "SessionQuery",
    "filter_sessions",
    "human_bytes",
    "human_duration",
    "json_bytes",
    "parse_sort",
    "render_forward",
    "render_reverse",
    "render_sessions",
    "select_sessions",
    "sessions_document",
    "shape_session",
    "sort_sessions",
]

#: The keys of one session in C{GET /api/sessions}, in the order the JSON
#: shows them. They are part of txgate's interface: scripts read them.
SESSION_FIELDS: tuple[str, ...] = (
    "id",
    "client",
    "service",
    "destination",
    "sni",
    "protocol",
    "stack",
    "tunneled",
    "intercepted",
    "user",
    "bytes_in",
    "bytes_out",
    "age",
    "idle",
    "worker",
)

#: Oldest sessions first: the ones an operator most often asks about.
DEFAULT_SORT = "-age"

_QUERY_FIELDS = ("protocol", "client", "host", "sort")


class QueryError(ValueError):
    """
    A query parameter the admin cannot honour (the client's fault: a 400). The
    message names the parameter, what arrived and what was expected.
    """


def parse_sort(sort: str) -> tuple[str, bool]:
    """
    Split a C{sort} parameter into a session field and a direction.

    @param sort: a field of L{SESSION_FIELDS}, prefixed with C{-} for
        descending order.
    @return: C{(field, descending)}
    @raise QueryError: for a field sessions do not have.
    """
    descending = sort.startswith("-")
    field = sort[1:] if descending else sort
    if field not in SESSION_FIELDS:
        raise QueryError(
            f"unknown sort field {field!r}: expected one of {', '.join(SESSION_FIELDS)},"
            " optionally prefixed with '-' for descending order"
        )
    return field, descending


@attrs.frozen
class SessionQuery:
    """
    What an operator asked to see of the sessions (C{?protocol=&client=&host=&sort=}).

    Empty strings mean "no filter".

    @ivar protocol: exact C{client.protocol} (C{sips}, C{ms-turn} ...).
    @ivar client: a prefix or substring of the client's IP address, or the
        start of C{ip:port}.
    @ivar host: a substring of the destination host or the SNI,
        case-insensitive.
    @ivar sort: a L{SESSION_FIELDS} name, C{-field} for descending.
    """

    protocol: str = ""
    client: str = ""
    host: str = ""
    sort: str = DEFAULT_SORT

    def __attrs_post_init__(self) -> None:
        parse_sort(self.sort)

    @classmethod
    def from_args(cls, args: Mapping[bytes, Sequence[bytes]]) -> SessionQuery:
        """
        Read a query from twisted.web's C{request.args} (first value of each
        name; surrounding blanks dropped, as a browser form may send them).

        @raise QueryError: for an unknown sort field.
        """

        def first(name: str) -> str:
            values = args.get(name.encode("ascii"))
            if not values:
                return ""
            return values[0].decode("utf-8", "replace").strip()

        return cls(
            protocol=first("protocol"),
            client=first("client"),
            host=first("host"),
            sort=first("sort") or DEFAULT_SORT,
        )

    def params(self, **changes: str) -> list[tuple[str, str]]:
        """
        The query as URL parameters, leaving out empty filters and the default
        sort, so links stay short.
        """
        query = attrs.evolve(self, **changes)
        pairs = []
        for name in _QUERY_FIELDS:
            value = getattr(query, name)
            if value and not (name == "sort" and value == DEFAULT_SORT):
                pairs.append((name, value))
        return pairs


def _host_of(address: str) -> str:
    """
    The host part of C{host:port}, C{[v6]:port} or a bare host.
    """
    if address.startswith("["):
        return address[1:].partition("]")[0]
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host
    return address


def _matches(session: Mapping[str, Any], query: SessionQuery) -> bool:
    if query.protocol and session.get("protocol") != query.protocol:
        return False
    if query.client:
        needle = query.client.casefold()
        client = str(session.get("client") or "").casefold()
        if needle not in _host_of(client) and not client.startswith(needle):
            return False
    if query.host:
        needle = query.host.casefold()
        destination = _host_of(str(session.get("destination") or "")).casefold()
        sni = str(session.get("sni") or "").casefold()
        if needle not in destination and needle not in sni:
            return False
    return True


def filter_sessions(
    sessions: Iterable[Mapping[str, Any]], query: SessionQuery
) -> list[Mapping[str, Any]]:
    """
    The sessions that pass every filter of C{query}, in their original order.
    """
    return [session for session in sessions if _matches(session, query)]


def _address_key(value: str) -> tuple[Any, ...]:
    """
    Order C{ip:port} numerically (C{10.0.0.9} before C{10.0.0.10}); anything
    unparseable after every address, by text.
    """
    host = _host_of(value)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return (1, value)
    port = value.rpartition(":")[2]
    return (0, ip.version, int(ip), int(port) if port.isdigit() else 0)


def _sort_value(field: str, value: Any) -> Any:
    if field == "client" and isinstance(value, str):
        return _address_key(value)
    if isinstance(value, str):
        return value.casefold()
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    return value


def sort_sessions(
    sessions: Iterable[Mapping[str, Any]], sort: str = DEFAULT_SORT
) -> list[Mapping[str, Any]]:
    """
    Order sessions by one field. Sessions without a value for it (a C{null}
    SNI or user) come last in either direction; ties keep id order, so a
    page does not reshuffle on every refresh.

    @raise QueryError: for an unknown field.
    """
    field, descending = parse_sort(sort)
    present = [s for s in sessions if s.get(field) is not None]
    missing = [s for s in sessions if s.get(field) is None]
    present.sort(key=lambda s: str(s.get("id")))
    missing.sort(key=lambda s: str(s.get("id")))
    present.sort(key=lambda s: _sort_value(field, s[field]), reverse=descending)
    return present + missing


def select_sessions(
    sessions: Iterable[Mapping[str, Any]], query: SessionQuery
) -> list[Mapping[str, Any]]:
    """L{filter_sessions}, then L{sort_sessions}."""
    return sort_sessions(filter_sessions(sessions, query), query.sort)


def shape_session(session: Mapping[str, Any]) -> dict[str, Any]:
    """
    Exactly the L{SESSION_FIELDS} of a session (missing ones C{null}), so
    nothing the source keeps for itself leaks into the API.
    """
    shaped = {name: session.get(name) for name in SESSION_FIELDS}
    shaped["stack"] = list(session.get("stack") or [])
    return shaped


def sessions_document(
    sessions: Iterable[Mapping[str, Any]], query: SessionQuery
) -> dict[str, Any]:
    """The C{GET /api/sessions} document."""
    return {"sessions": [shape_session(s) for s in select_sessions(sessions, query)]}


def json_bytes(document: Any) -> bytes:
    """
    UTF-8 JSON. Values JSON has no type for (a datetime a source forgot to
    format) become strings rather than a 500.
    """
    return json.dumps(document, default=str, ensure_ascii=False).encode("utf-8")


# -- formatting ---------------------------------------------------------------

def human_bytes(count: Any) -> str:
    """C{512 B}, C{1.5 KiB}, C{3.2 MiB} ... (binary units, as C{ls -h})."""
    if not isinstance(count, (int, float)) or isinstance(count, bool):
        return "\N{EM DASH}"
    if count < 1024:
        return f"{int(count)} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def human_duration(seconds: Any) -> str:
    """C{42s}, C{2m05s}, C{1h02m}, C{3d04h}: two units at most, like C{ps}."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return "\N{EM DASH}"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _e(value: Any) -> str:
    """Escape any value for HTML text or a double-quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _cell(value: Any) -> str:
    """A table cell's escaped text for a value of any JSON type."""
    if value is None or value == "":
        return '<span class="muted">\N{EM DASH}</span>'
    if isinstance(value, bool):
        return "yes" if value else '<span class="muted">no</span>'
    if isinstance(value, Mapping):
        return _e(", ".join(f"{k}: {v}" for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return _e(", ".join(str(item) for item in value))
    return _e(value)


_PROTOCOL_CLASSES = {
    "http": "web",
    "https": "web",
    "ssl": "tls",
    "tls": "tls",
    "sip": "sip",
    "sips": "sip",
    "ms-turn": "turn",
    "stun": "turn",
    "turn": "turn",
    "tcp": "tcp",
}


def _protocol_badge(protocol: Any) -> str:
    if protocol is None or protocol == "":
        return '<span class="muted">\N{EM DASH}</span>'
    css = _PROTOCOL_CLASSES.get(str(protocol), "other")
    return f'<span class="badge p-{css}">{_e(protocol)}</span>'


def _state_badge(state: Any) -> str:
    css = {"up": "up", "down": "down"}.get(str(state).lower(), "unknown")
    return f'<span class="badge {css}">{_e(state)}</span>'


def _ok_badge(ok: Any) -> str:
    if ok is None:
        return '<span class="muted">\N{EM DASH}</span>'
    return '<span class="badge up">OK</span>' if ok else '<span class="badge down">Failed</span>'


# -- pages --------------------------------------------------------------------

@attrs.frozen
class PageContext:
    """
    What every page needs besides its data.

    @ivar now: POSIX time the page is rendered at (shown in UTC).
    @ivar refresh: seconds between the page's own reloads; 0 turns them off.
    @ivar token: the C{token} the request carried as a parameter, which the
        page's links and forms carry on (a browser cannot add a Bearer
        header); C{None} when it came another way or not at all.
    @ivar workers: the number of worker processes, when known.
    """

    now: float
    refresh: float = 5
    token: str | None = None
    workers: int | None = None

    def href(self, path: str, params: Sequence[tuple[str, str]] = ()) -> str:
        """A link to C{path} with C{params} and the token (not yet escaped)."""
        pairs = list(params)
        if self.token is not None:
            pairs.append(("token", self.token))
        return path + ("?" + urlencode(pairs) if pairs else "")

    def token_field(self) -> str:
        """A hidden form field carrying the token, or nothing."""
        if self.token is None:
            return ""
        return f'<input type="hidden" name="token" value="{_e(self.token)}">'


_STYLE = """
:root { --fg:#1d2330; --muted:#6b7385; --line:#e3e6ed; --bg:#f6f7fa; --accent:#2f5fd0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
       color:var(--fg); background:var(--bg); }
header { background:#1d2330; color:#fff; padding:.6rem 1.2rem; display:flex;
         align-items:baseline; gap:1.5rem; flex-wrap:wrap; }
header .brand { font-weight:700; letter-spacing:.02em; }
header nav a { color:#c9d3ea; text-decoration:none; margin-right:1rem; }
header nav a.active { color:#fff; border-bottom:2px solid #7ea2ff; }
header .meta { margin-left:auto; color:#9aa6c0; font-size:12px; }
main { padding:1rem 1.2rem; }
h1 { font-size:1.3rem; margin:.2rem 0 .8rem; }
h2 { font-size:1.05rem; margin:1.4rem 0 .5rem; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line);
        width:100%; margin-bottom:1rem; }
th, td { padding:.35rem .6rem; border-bottom:1px solid var(--line); text-align:left;
         vertical-align:top; }
th { background:#eef1f6; font-weight:600; white-space:nowrap; }
th a { color:inherit; text-decoration:none; }
th a:hover { text-decoration:underline; }
tr:hover td { background:#f9fbff; }
td.num, th.num { text-align:right; font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
                 white-space:nowrap; }
.mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
.muted { color:var(--muted); }
.stack { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; color:var(--muted);
         white-space:nowrap; }
.badge { display:inline-block; padding:0 .45em; border-radius:.6em; font-size:12px;
         font-weight:600; color:#fff; background:#7b8294; }
.badge.up { background:#1f9d55; } .badge.down { background:#d64545; }
.badge.p-web { background:#2f6fd0; } .badge.p-tls { background:#7a3fc4; }
.badge.p-sip { background:#d9822b; } .badge.p-turn { background:#12898a; }
.badge.p-tcp { background:#5c6475; }
form.filters { display:flex; gap:.6rem; align-items:end; flex-wrap:wrap; margin-bottom:.8rem; }
form.filters label { display:flex; flex-direction:column; font-size:12px; color:var(--muted); }
input, select, button { font:inherit; padding:.2rem .4rem; }
button.danger { background:#fff; color:#d64545; border:1px solid #d64545; border-radius:4px;
                cursor:pointer; }
button.danger:hover { background:#d64545; color:#fff; }
dl.facts { display:grid; grid-template-columns:max-content auto; gap:.2rem 1rem; background:#fff;
           border:1px solid var(--line); padding:.6rem .9rem; }
dl.facts dt { color:var(--muted); } dl.facts dd { margin:0; }
#count, #summary { display:inline-block; color:var(--muted); margin:.2rem 1.2rem .6rem 0; }
#count { color:var(--fg); font-weight:600; }
"""

_NAV = (("sessions", "Sessions", "/sessions"), ("forward", "Forward", "/forward"),
        ("reverse", "Reverse", "/reverse"), ("metrics", "Metrics", "/metrics"))


def _page(title: str, active: str, ctx: PageContext, body: str) -> bytes:
    links = " ".join(
        f'<a href="{_e(ctx.href(path))}"{" class=active" if key == active else ""}>{label}</a>'
        for key, label, path in _NAV
    )
    meta = [f"rendered {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ctx.now))} UTC"]
    if ctx.workers is not None:
        meta.append(f"{ctx.workers} worker{'' if ctx.workers == 1 else 's'}")
    refresh = ""
    if ctx.refresh > 0:
        seconds = max(1, round(ctx.refresh))
        refresh = f'<meta http-equiv="refresh" content="{seconds}">'
        meta.append(f"refresh {seconds}s")
    document = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{refresh}<title>txgate \N{EM DASH} {_e(title)}</title>"
        f"<style>{_STYLE}</style></head>\n<body>"
        f'<header><span class="brand">txgate</span><nav>{links}</nav>'
        f'<span class="meta" id="meta">{_e(" · ".join(meta))}</span></header>\n'
        f"<main>{body}</main></body></html>\n"
    )
    return document.encode("utf-8")


# (label, sort field, numeric column)
_SESSION_COLUMNS = (
    ("Client", "client", False),
    ("Service", "service", False),
    ("Destination / SNI", "destination", False),
    ("Protocol", "protocol", False),
    ("Tunneled", "tunneled", False),
    ("Intercepted", "intercepted", False),
    ("User", "user", False),
    ("In", "bytes_in", True),
    ("Out", "bytes_out", True),
    ("Age", "age", True),
    ("Idle", "idle", True),
    ("Worker", "worker", True),
)


def _sort_header(label: str, field: str, numeric: bool, query: SessionQuery, ctx: PageContext) -> str:
    current, descending = parse_sort(query.sort)
    arrow = ""
    target = field
    if field == current:
        arrow = " \N{BLACK DOWN-POINTING TRIANGLE}" if descending else " \N{BLACK UP-POINTING TRIANGLE}"
        target = field if descending else f"-{field}"
    # Always explicit, even for the default order: the link says what it does.
    params = [pair for pair in query.params() if pair[0] != "sort"] + [("sort", target)]
    href = ctx.href("/sessions", params)
    css = ' class="num"' if numeric else ""
    return f'<th{css}><a href="{_e(href)}">{_e(label)}{arrow}</a></th>'


def _destination_cell(session: Mapping[str, Any]) -> str:
    destination = session.get("destination")
    sni = session.get("sni")
    parts = []
    if destination:
        parts.append(f'<span class="mono">{_e(destination)}</span>')
    if sni and (not destination or _host_of(str(destination)) != sni):
        parts.append(f'<span class="muted">SNI</span> {_e(sni)}')
    return "<br>".join(parts) or _cell(None)


def _session_row(session: Mapping[str, Any], query: SessionQuery, ctx: PageContext) -> str:
    session_id = str(session.get("id", ""))
    protocol = session.get("protocol")
    stack = " &gt; ".join(_e(layer) for layer in session.get("stack") or [])
    action = "/sessions/" + quote(session_id, safe="") + "/terminate"
    # The filters travel as fields, not in the action's query, so the action
    # is the session's terminate URL and nothing else.
    keep = "".join(f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">'
                   for name, value in query.params())
    age, idle = session.get("age"), session.get("idle")
    bytes_in, bytes_out = session.get("bytes_in"), session.get("bytes_out")
    return (
        f'<tr data-protocol="{_e(protocol)}" data-session="{_e(session_id)}">'
        f'<td class="mono">{_cell(session.get("client"))}</td>'
        f"<td>{_cell(session.get('service'))}</td>"
        f"<td>{_destination_cell(session)}</td>"
        f'<td>{_protocol_badge(protocol)} <span class="stack">{stack}</span></td>'
        f"<td>{_cell(bool(session.get('tunneled')))}</td>"
        f"<td>{_cell(bool(session.get('intercepted')))}</td>"
        f"<td>{_cell(session.get('user'))}</td>"
        f'<td class="num" title="{_e(bytes_in)} bytes">{human_bytes(bytes_in)}</td>'
        f'<td class="num" title="{_e(bytes_out)} bytes">{human_bytes(bytes_out)}</td>'
        f'<td class="num" title="{_e(age)} s">{human_duration(age)}</td>'
        f'<td class="num" title="{_e(idle)} s">{human_duration(idle)}</td>'
        f'<td class="num">{_cell(session.get("worker"))}</td>'
        f'<td><form method="post" action="{_e(action)}">{keep}{ctx.token_field()}'
        f'<button class="danger" type="submit" title="close this session">Terminate</button>'
        "</form></td></tr>"
    )


def _filter_form(query: SessionQuery, protocols: Iterable[str], ctx: PageContext) -> str:
    options = ['<option value="">any</option>'] + [
        f'<option value="{_e(p)}"{" selected" if p == query.protocol else ""}>{_e(p)}</option>'
        for p in protocols
    ]
    sort = ""
    if query.sort != DEFAULT_SORT:
        sort = f'<input type="hidden" name="sort" value="{_e(query.sort)}">'
    return (
        '<form class="filters" method="get" action="/sessions">'
        f'<label>Protocol<select name="protocol">{"".join(options)}</select></label>'
        f'<label>Client address<input name="client" value="{_e(query.client)}" '
        'placeholder="10.1.2." size="16"></label>'
        f'<label>Host or SNI<input name="host" value="{_e(query.host)}" '
        'placeholder="example.com" size="22"></label>'
        f"{sort}{ctx.token_field()}"
        '<button type="submit">Filter</button>'
        f'<a href="{_e(ctx.href("/sessions"))}">clear</a></form>'
    )


def render_sessions(
    sessions: Sequence[Mapping[str, Any]], query: SessionQuery, ctx: PageContext
) -> bytes:
    """
    The Active sessions page: a filter form (plain GET, no script), the
    C{<p id="count">N sessions</p>} line and one C{<tr data-protocol=...
    data-session=...>} per session that passes C{query}, in its order.

    @param sessions: every live session (the page filters and sorts).
    """
    shown = select_sessions(sessions, query)
    seen = {str(s["protocol"]) for s in sessions if s.get("protocol")}
    known = [str(p) for p in ClientProtocol]
    protocols = known + sorted((seen | {query.protocol}) - set(known) - {""})
    workers = sorted({s.get("worker") for s in sessions if s.get("worker") is not None})
    headers = "".join(_sort_header(label, field, numeric, query, ctx)
                      for label, field, numeric in _SESSION_COLUMNS)
    rows = "\n".join(_session_row(s, query, ctx) for s in shown)
    if not shown:
        rows = f'<tr><td colspan="{len(_SESSION_COLUMNS) + 1}" class="muted">No session matches.</td></tr>'
    hidden = len(sessions) - len(shown)
    summary = f"{len(sessions)} live on {len(workers)} worker{'' if len(workers) == 1 else 's'}"
    if hidden:
        summary += f"; {hidden} hidden by the filter"
    body = (
        "<h1>Active sessions</h1>"
        f"{_filter_form(query, protocols, ctx)}"
        f'<p id="count">{len(shown)} sessions</p>'
        f'<p class="muted" id="summary">{_e(summary)}</p>'
        f"<table id=\"sessions\"><thead><tr>{headers}<th></th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody></table>"
    )
    return _page("sessions", "sessions", ctx, body)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[int] = (),
           empty: str = "None.", table_id: str = "") -> str:
    """A table from already-escaped cells; columns in C{numeric} right-aligned."""
    head = "".join(f'<th{" class=num" if i in numeric else ""}>{_e(h)}</th>'
                   for i, h in enumerate(headers))
    body = "\n".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{cell}</td>'
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{_e(empty)}</td></tr>'
    ident = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f'<dl class="facts">{items}</dl>'


def _services_table(services: Sequence[Mapping[str, Any]]) -> str:
    return _table(
        ("Service", "Kind", "Listen", "Address", "Sessions", "Transactions"),
        ([_cell(s.get("name")), _cell(s.get("kind")), f'<span class="mono">{_cell(s.get("listen"))}</span>',
          f'<span class="mono">{_cell(s.get("address"))}</span>', _cell(s.get("sessions")),
          _cell(s.get("transactions"))] for s in services),
        numeric=(4, 5), empty="No services.", table_id="services",
    )


def _hit_rate(hits: Any, misses: Any) -> str:
    if not isinstance(hits, int) or not isinstance(misses, int) or hits + misses == 0:
        return _cell(None)
    return f"{100 * hits / (hits + misses):.1f}% ({hits} hits, {misses} misses)"


def render_forward(status: Mapping[str, Any], ctx: PageContext) -> bytes:
    """
    The Forward page: services and their counters, detected-protocol counts,
    the policy (file, last reload, rule hits) and the certificate authority.
    """
    services = status.get("services") or []
    parts = ["<h1>Forward proxy</h1>", "<h2>Services</h2>", _services_table(services)]
    if status.get("mode") not in (None, "forward"):
        parts.append(f'<p class="muted">This txgate runs in {_e(status.get("mode"))} mode: '
                     f'see <a href="{_e(ctx.href("/reverse"))}">Reverse</a>.</p>')
        return _page("forward", "forward", ctx, "".join(parts))

    protocols = status.get("protocols") or {}
    counts = sorted(protocols.items(), key=lambda item: (-item[1], str(item[0])))
    parts += [
        "<h2>Detected protocols</h2>",
        _table(("Protocol", "Connections"), ([_protocol_badge(p), _cell(n)] for p, n in counts),
               numeric=(1,), empty="Nothing detected yet.", table_id="protocols"),
    ]

    policy = status.get("policy") or {}
    reload = policy.get("last_reload") or {}
    parts += [
        "<h2>Policy</h2>",
        _facts([
            ("File", f'<span class="mono">{_cell(policy.get("file"))}</span>'),
            ("Last reload", f"{_cell(reload.get('time'))} {_ok_badge(reload.get('ok'))}"),
            ("Message", _cell(reload.get("message"))),
        ]),
        "<h2>Rule hits</h2>",
        _table(("Rule", "Hits"),
               ([f'<span class="mono">{_cell(r.get("rule"))}</span>', _cell(r.get("hits"))]
                for r in policy.get("rule_hits") or []),
               numeric=(1,), empty="No rule has matched yet.", table_id="rule-hits"),
    ]

    certs = status.get("certificates") or {}
    ocsp = certs.get("ocsp") or {}
    size, capacity = certs.get("cache_size"), certs.get("cache_capacity")
    parts += [
        "<h2>Certificates</h2>",
        _facts([
            ("Issuer", _cell(certs.get("issuer"))),
            ("CRL number", _cell(certs.get("crl_number"))),
            ("CRL next update", _cell(certs.get("crl_next_update"))),
            ("Minted-cert cache", f"{_cell(size)} / {_cell(capacity)}"),
            ("Cache hit rate", _hit_rate(certs.get("cache_hits"), certs.get("cache_misses"))),
            ("OCSP answers", " · ".join(f"{_e(k)} {_cell(ocsp.get(k))}"
                                        for k in ("good", "revoked", "unknown"))),
        ]),
    ]
    return _page("forward", "forward", ctx, "".join(parts))


def render_reverse(virtual_services: Sequence[Mapping[str, Any]], ctx: PageContext) -> bytes:
    """
    The Reverse page: each virtual service with its counters and its real
    servers (Up/Down, connections, requests, persistence hits, last health).
    """
    parts = ["<h1>Reverse proxy</h1>"]
    if not virtual_services:
        parts.append('<p class="muted" id="no-vservices">No virtual services '
                     "(this txgate is a forward proxy, or none is configured).</p>")
        return _page("reverse", "reverse", ctx, "".join(parts))
    servers = [r for v in virtual_services for r in v.get("real_servers") or []]
    up = sum(1 for r in servers if str(r.get("state")).lower() == "up")
    many = "" if len(virtual_services) == 1 else "s"
    parts.append(f'<p class="muted" id="summary">{len(virtual_services)} virtual service{many}, '
                 f"{up} of {len(servers)} real servers up</p>")
    for vservice in virtual_services:
        parts += [
            f"<h2>{_e(vservice.get('name'))}</h2>",
            _facts([
                ("Listen", f'<span class="mono">{_cell(vservice.get("listen"))}</span>'),
                ("Connections", _cell(vservice.get("connections"))),
                ("Requests", _cell(vservice.get("requests"))),
            ]),
            _table(
                ("Real server", "Weight", "State", "Active", "Connections", "Requests",
                 "Persistence hits", "Last health"),
                ([f'<span class="mono">{_cell(r.get("key"))}</span>', _cell(r.get("weight")),
                  _state_badge(r.get("state")), _cell(r.get("active")), _cell(r.get("connections")),
                  _cell(r.get("requests")), _cell(r.get("persistence_hits")),
                  _cell(r.get("last_health"))]
                 for r in vservice.get("real_servers") or []),
                numeric=(1, 4, 5, 6), empty="No real servers.",
            ),
        ]
    return _page("reverse", "reverse", ctx, "".join(parts))
