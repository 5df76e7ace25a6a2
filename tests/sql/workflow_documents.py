"""Workflow documents the SQL tests share, and validating or publishing one through the SQL
API: the documented example (docs/workflow-format.md), small canned documents, problems."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]


def problems(conn: Conn, document: Any) -> list[str]:
    rows = conn.execute("select m from conveyor.validate_workflow(%s) as m", (Jsonb(document),)).fetchall()
    return [str(r["m"]) for r in rows]


def matches(found: list[str], expected: list[str]) -> bool:
    """Exact messages, except that an expected message ending in "..." is a prefix: the
    wording after the path and the offending text belongs to the pure functions' owner
    (conveyor.template_errors, condition_errors, filter_errors), not to this file."""
    return len(found) == len(expected) and all(
        f.startswith(e[:-3]) if e.endswith("...") else f == e for f, e in zip(found, expected, strict=True)
    )


def publish(conn: Conn, tenant_id: str, document: dict[str, Any]) -> tuple[int, int]:
    row = conn.execute("select * from conveyor.publish(%s, %s)", (tenant_id, Jsonb(document))).fetchone()
    assert row is not None
    return int(row["workflow_id"]), int(row["version"])


def lead_document() -> dict[str, Any]:
    """The new-lead follow-up workflow of docs/workflow-format.md."""
    return {
        "slug": "new-lead-follow-up",
        "name": "New lead follow-up",
        "description": "Welcome new leads, then nudge sales if they have not replied.",
        "category": "sales",
        "tags": ["crm", "onboarding"],
        "trigger": {"event": "crm.contact.created", "filter": {"payload.new.type": "lead"}},
        "settings": {"run_once_per_entity": True, "max_executions_per_hour": 500, "timeout": "7d"},
        "steps": [
            {
                "id": "welcome",
                "action": "email.send",
                "connection": "smtp-main",
                "with": {
                    "to": "{{trigger.payload.new.email}}",
                    "subject": "Welcome, {{trigger.payload.new.first_name | default: 'there'}}",
                    "text": "Thanks for your interest in {{tenant.name}}.",
                },
                "retry": {"attempts": 5, "backoff": "exponential", "initial": "30s", "max": "1h"},
            },
            {
                "id": "wait",
                "delay": {
                    "for": "1d",
                    "window": {"days": ["mon", "tue", "wed", "thu", "fri"], "hours": "09:00-17:00"},
                },
            },
            {
                "id": "replied",
                "if": {"field": "trigger.payload.new.last_reply_at", "op": "is_null"},
                "then": "notify",
                "else": "done",
            },
            {
                "id": "notify",
                "action": "slack.send",
                "with": {
                    "text": "Call {{trigger.payload.new.first_name}} ({{steps.welcome.output.message_id}})"
                },
                "on_error": "continue",
            },
            {"id": "done", "stop": {"reason": "replied already"}},
        ],
    }


def with_steps(*steps: dict[str, Any]) -> dict[str, Any]:
    document = lead_document()
    document["steps"] = list(steps)
    return document


def slack(step_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "action": "slack.send", "with": {"text": "hello"}, **extra}


# A set step, a webhook (to a closed port) and a set step, triggered by hand.
NOTIFY = {
    "slug": "notify",
    "name": "Notify",
    "trigger": {"manual": True},
    "steps": [
        {"id": "prepare", "set": {"greeting": "hello {{trigger.payload.who}}"}},
        {"id": "call", "action": "webhook.send", "with": {"url": "http://127.0.0.1:9/hook", "body": {}}},
        {"id": "after", "set": {"done": True}},
    ],
}


# Steps that wait for the entity's reply (three days), then record it.
AWAIT_REPLY = [
    {
        "id": "wait",
        "wait_for_event": {
            "event": "email.reply.received",
            "match": {"entity_id": "{{trigger.entity_id}}"},
            "timeout": "3d",
        },
        "on_event": "replied",
        "on_timeout": None,
    },
    {"id": "replied", "set": {"replied": True}},
]
