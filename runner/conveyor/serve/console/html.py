"""The console's HTML: string templates where every value goes through `esc` (a workflow
name or a step output with `<script>` renders as text), and the inline SVG chart."""

from __future__ import annotations

import json
from datetime import datetime
from html import escape
from typing import Any
from urllib.parse import urlencode

MAX_SHOWN_CHARS = 2000  # a step's input/output/error, as displayed


def esc(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return escape(value.strftime("%Y-%m-%d %H:%M:%S"))
    return escape(str(value), quote=True)


def shown_json(value: Any) -> str:
    """A JSON value for display, cut at MAX_SHOWN_CHARS."""
    if value is None:
        return ""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + f"… ({len(text)} chars, cut)"
    return esc(text)


def url(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return path + ("?" + query if query else "")


def link(path: str, **params: Any) -> str:
    """`url` for an HTML attribute."""
    return esc(url(path, **params))


NAV = [
    ("/console", "Workflows"),
    ("/console/executions", "Executions"),
    ("/console/events", "Events"),
    ("/console/dead-letters", "Dead letters"),
    ("/console/approvals", "Approvals"),
    ("/console/campaigns", "Campaigns"),
]


def page(title: str, body: str, *, who: str = "", tenant: str = "", script: str = "") -> str:
    nav = "".join(f'<a href="{link(path, tenant=tenant)}">{esc(name)}</a>' for path, name in NAV)
    js = '<script src="/console/static/console.js"></script>' if script else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)} · Conveyor</title>
<link rel="stylesheet" href="/console/static/console.css"></head>
<body><header><b>Conveyor</b> <nav>{nav}</nav><span class="who">{esc(who)}</span></header>
<main><h1>{esc(title)}</h1>{body}</main>{js}</body></html>"""


def table(headers: list[str], rows: list[list[str]], *, row_ids: list[str] | None = None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    lines = []
    for i, cells in enumerate(rows):
        attr = f' data-id="{esc(row_ids[i])}"' if row_ids else ""
        lines.append(f"<tr{attr}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    empty = f'<tr><td colspan="{len(headers)}" class="empty">nothing here</td></tr>' if not rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}{empty}</tbody></table>"


def chart(buckets: list[tuple[datetime, int, int]], *, width: int = 160, height: int = 30) -> str:
    """Runs (grey) and failures (red) per bucket as bars in an inline SVG."""
    if not buckets:
        return '<svg class="chart" width="160" height="30"></svg>'
    top = max(runs for _, runs, _ in buckets) or 1
    bar = width / len(buckets)
    parts = []
    for i, (at, runs, failed) in enumerate(buckets):
        h_runs, h_failed = height * runs / top, height * failed / top
        x = i * bar
        parts.append(
            f'<rect x="{x:.1f}" y="{height - h_runs:.1f}" width="{bar * 0.8:.1f}" height="{h_runs:.1f}" '
            f'fill="#9aa"><title>{esc(at)}: {runs} runs, {failed} failed</title></rect>'
        )
        if failed:
            parts.append(
                f'<rect class="failed" x="{x:.1f}" y="{height - h_failed:.1f}" width="{bar * 0.8:.1f}" '
                f'height="{h_failed:.1f}" fill="#c33"></rect>'
            )
    return f'<svg class="chart" width="{width}" height="{height}">{"".join(parts)}</svg>'


def status(value: str | None) -> str:
    return f'<span class="status {esc(value)}">{esc(value)}</span>'


def execution_link(execution_id: Any, tenant: str) -> str:
    return f'<a href="{link(f"/console/executions/{execution_id}", tenant=tenant)}">#{esc(execution_id)}</a>'
