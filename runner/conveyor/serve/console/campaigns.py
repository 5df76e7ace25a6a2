"""The console's campaign pages (docs/console.md#campaigns): the tenant's campaigns with
their counters, and one campaign's counters per step and variant, its A/B decisions with
their figures, and its latest enrollments linked to their executions. Read through the
campaign functions (sql/campaigns.sql), each of which checks the tenant."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from conveyor.serve.console import queries as q
from conveyor.serve.console.html import esc, execution_link, link, page, status, table
from conveyor.serve.console.pages import MAX_BIGINT, pool_of, who
from conveyor.serve.tokens import Principal

COUNTERS = ["sent", "delivered", "opened", "clicked", "replied", "bounced", "unsubscribed"]

CAMPAIGNS = """
select c.*, s.sent, s.delivered, s.opened, s.clicked, s.replied, s.bounced, s.unsubscribed, s.completed, s.stopped
from conveyor.list_campaigns(%(tenant)s) as c
left join lateral conveyor.campaign_stats(%(tenant)s, c.slug) as s on s.step_key = '' and s.variant = ''
order by c.slug
limit %(limit)s
"""

ENROLLMENTS = """
select e.enrollment_id, e.entity_id, e.status, e.stop_reason, e.version, e.execution_id, e.enrolled_at,
  e.finished_at, e.sent, e.opened, e.clicked, e.replied
from conveyor.campaign_enrollments as e
join conveyor.campaigns as c on c.campaign_id = e.campaign_id
where e.tenant_id = %(tenant)s and c.tenant_id = %(tenant)s and c.slug = %(slug)s
  and e.enrollment_id < %(before)s
order by e.enrollment_id desc
limit %(limit)s
"""


def _rate(part: Any, whole: Any) -> str:
    """A count with its share of what was sent."""
    if part is None:
        return ""
    if not whole:
        return esc(part)
    return f"{esc(part)} <small>({100 * part / whole:.0f} %)</small>"


def _campaign_link(slug: str, name: str, tenant: str) -> str:
    href = link(f"/console/campaigns/{slug}", tenant=tenant)
    return f'<a href="{href}">{esc(name)}</a> <code>{esc(slug)}</code>'


def _counters(row: dict[str, Any]) -> list[str]:
    sent = row.get("sent") or 0
    return [esc(sent)] + [_rate(row.get(name) or 0, sent) for name in COUNTERS[1:]]


async def campaigns(request: Request, principal: Principal, tenant: str) -> Response:
    found = await q.rows(pool_of(request), CAMPAIGNS, {"tenant": tenant, "limit": q.MAX_PAGE_SIZE})
    body = table(
        [
            "Campaign",
            "Version",
            "State",
            "Active",
            "Enrolled",
            *[c.title() for c in COUNTERS],
            "Completed",
            "Stopped",
        ],
        [
            [
                _campaign_link(c["slug"], c["name"], tenant),
                esc(c["version"]),
                status("paused" if c["paused"] else "active"),
                esc(c["active"]),
                esc(c["enrolled"]),
                *_counters(c),
                esc(c["completed"] or 0),
                esc(c["stopped"] or 0),
            ]
            for c in found
        ],
        row_ids=[c["slug"] for c in found],
    )
    return HTMLResponse(page("Campaigns", body, who=who(principal, tenant), tenant=tenant))


async def campaign(request: Request, principal: Principal, tenant: str) -> Response:
    slug = request.path_params["slug"]
    pool = pool_of(request)
    detail = await q.rows(
        pool,
        "select conveyor.campaign_detail(%(tenant)s, c.slug) as d from conveyor.campaigns as c"
        " where c.tenant_id = %(tenant)s and c.slug = %(slug)s",
        {"tenant": tenant, "slug": slug},
    )
    if not detail:
        return HTMLResponse(
            page("Not found", f"<p>No campaign {esc(slug)} in tenant {esc(tenant)}.</p>"), 404
        )
    d = detail[0]["d"]
    stats = await q.rows(
        pool, "select * from conveyor.campaign_stats(%(tenant)s, %(slug)s)", {"tenant": tenant, "slug": slug}
    )
    before = request.query_params.get("before")
    if before is not None and (not before.isdigit() or int(before) > MAX_BIGINT):
        raise ValueError(f"before: {before!r} is not an id")
    enrollments = await q.rows(
        pool,
        ENROLLMENTS,
        {
            "tenant": tenant,
            "slug": slug,
            "before": int(before) if before else MAX_BIGINT,
            "limit": q.PAGE_SIZE,
        },
    )
    states = ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted(d["enrollments"].items())) or "none yet"
    body = (
        f"<p>{esc(d['name'])} · version {esc(d['version'])} · {status('paused' if d['paused'] else 'active')}"
        f" · audience <code>{esc(d['audience'])}</code> · workflow "
        f'<a href="{link("/console/executions", tenant=tenant, workflow=d["workflow"])}">{esc(d["workflow"])}</a></p>'
        f"<p>Enrollments: {states}</p><h2>Counters</h2>"
    )
    body += table(
        ["Step", "Variant", "Enrolled", *[c.title() for c in COUNTERS], "Completed", "Stopped"],
        [
            [
                esc(s["step_key"] or "whole campaign"),
                esc(s["variant"]),
                esc(s["enrolled"] if not s["step_key"] else ""),
                *_counters(s),
                esc(s["completed"] if not s["step_key"] else ""),
                esc(s["stopped"] if not s["step_key"] else ""),
            ]
            for s in stats
        ],
    )
    body += "<h2>A/B decisions</h2>" + table(
        ["Step", "Metric", "Winner", "Figures", "Decided"],
        [
            [
                esc(w["step_key"]),
                esc(w["metric"]),
                f"<b>{esc(w['winner'])}</b>",
                esc(
                    "; ".join(
                        f"{v['variant']}: {v['hits']}/{v['sent']} ({100 * float(v['rate']):.1f} %)"
                        for v in w["figures"].get("variants", [])
                    )
                    + f"; z = {w['figures'].get('z')} (threshold {w['figures'].get('threshold')},"
                    f" {w['figures'].get('test')})"
                ),
                esc(w.get("decided_at", "")),
            ]
            for w in d["winners"]
        ],
    )
    body += "<h2>Latest enrollments</h2>" + table(
        [
            "#",
            "Contact",
            "Status",
            "Version",
            "Execution",
            "Sent",
            "Opened",
            "Clicked",
            "Replied",
            "Enrolled",
        ],
        [
            [
                esc(e["enrollment_id"]),
                esc(e["entity_id"]),
                status(e["status"])
                + (f" <small>{esc(e['stop_reason'])}</small>" if e["stop_reason"] else ""),
                esc(e["version"]),
                execution_link(e["execution_id"], tenant) if e["execution_id"] else "",
                esc(e["sent"]),
                esc(e["opened"]),
                esc(e["clicked"]),
                esc(e["replied"]),
                esc(e["enrolled_at"]),
            ]
            for e in enrollments
        ],
        row_ids=[str(e["enrollment_id"]) for e in enrollments],
    )
    if len(enrollments) == q.PAGE_SIZE:
        older = link(f"/console/campaigns/{slug}", tenant=tenant, before=enrollments[-1]["enrollment_id"])
        body += f'<p><a href="{older}">Older enrollments</a></p>'
    return HTMLResponse(page(f"Campaign {slug}", body, who=who(principal, tenant), tenant=tenant))
