"""Campaign content from a notification template (sql/campaign_content.sql): a step or a
variant names a template and its variables; applying checks the template exists, has the
channel and is given its required variables; the send renders it when due (html escaped
once); a template deleted later fails the send's step with its name."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.test_campaigns import apply, enroll, setup

Conn = psycopg.Connection[dict[str, Any]]

NOTE = {
    "variables": {"first_name": {}, "company": {"required": False, "default": "Acme"}},
    "in_app": {"title": "Hello {{data.first_name}}"},
    "email": {
        "subject": "Welcome to {{data.company}}, {{data.first_name}}",
        "html": "<p>Hi <b>{{data.first_name}}</b></p>",
        "text": "Hi {{data.first_name}}",
    },
}


def save_template(conn: Conn, slug: str, doc: dict[str, Any]) -> None:
    conn.execute("select conveyor.save_notification_template('acme', %s, %s)", (slug, Jsonb(doc)))


def campaign(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"slug": "welcome", "name": "Welcome", "audience": "contact", "steps": list(steps)}


def sends(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select sr.step_id, sr.status, sr.input, sr.error, x.entity_id from conveyor.step_runs sr"
        " join conveyor.executions x using (execution_id) where sr.step_id like '%%-send%%'"
        " order by x.entity_id, sr.step_run_id"
    ).fetchall()


def test_a_template_step_sends_the_rendered_template(conn: Conn) -> None:
    setup(conn, contacts=2)
    conn.execute("update public.contacts set name = '<i>Ada</i>' where id = 1")
    save_template(conn, "welcome_note", NOTE)
    apply(conn, campaign({"id": "hello", "channel": "email", "template": "welcome_note",
                          "data": {"first_name": "{{contact.name}}"}}))  # fmt: skip
    assert [r["result"] for r in enroll(conn, ["1", "2"])] == ["enrolled", "enrolled"]
    first, second = sends(conn)
    assert first["step_id"] == "hello-send" and first["status"] == "queued"
    assert first["input"]["subject"] == "Welcome to Acme, <i>Ada</i>"
    assert first["input"]["text"] == "Hi <i>Ada</i>"
    # escaped once, by the template's html rendering (not again by the send's)
    assert first["input"]["html"] == "<p>Hi <b>&lt;i&gt;Ada&lt;/i&gt;</b></p>"
    assert second["input"]["subject"] == "Welcome to Acme, c2"
    assert first["input"]["to"] == "c1@example.com"


def test_a_variant_may_use_a_template_and_another_inline_content(conn: Conn) -> None:
    setup(conn, contacts=40)
    save_template(conn, "welcome_note", NOTE)
    apply(conn, campaign({
        "id": "hello", "channel": "email", "subject": "Plain", "text": "Plain text",
        "variants": [
            {"name": "templated", "weight": 1, "template": "welcome_note", "data": {"first_name": "{{contact.name}}"}},
            {"name": "plain", "weight": 1, "subject": "Plain subject"},
        ],
    }))  # fmt: skip
    enroll(conn, [str(i) for i in range(1, 41)])
    rows = sends(conn)
    templated = [r for r in rows if r["step_id"] == "hello-send-templated"]
    plain = [r for r in rows if r["step_id"] == "hello-send-plain"]
    assert templated and plain and len(templated) + len(plain) == 40
    assert all(r["input"]["subject"].startswith("Welcome to Acme, c") for r in templated)
    # the plain variant overrides the subject and keeps the step's text
    assert {(r["input"]["subject"], r["input"]["text"]) for r in plain} == {("Plain subject", "Plain text")}


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ({"template": "nope"}, 'steps[0].template: no notification template "nope"'),
        ({"template": "sms_only"}, 'steps[0].template: template "sms_only" has no email part'),
        ({"template": "welcome_note"}, 'steps[0].data: template "welcome_note" requires the variable(s) first_name'),
        ({"template": "welcome_note", "data": {"first_name": "x"}, "subject": "S"},
         'steps[0]: give either "template" or the content (subject), not both'),
        ({"subject": "S", "text": "T", "data": {"a": 1}}, 'steps[0].data: template variables without a "template"'),
        ({"template": "Bad Slug"}, "steps[0].template: expected a notification template slug"),
    ],
)  # fmt: skip
def test_template_problems_are_refused_at_apply_with_their_path(
    conn: Conn, step: dict[str, Any], problem: str
) -> None:
    setup(conn)
    save_template(conn, "welcome_note", NOTE)
    save_template(conn, "sms_only", {"in_app": {"title": "t"}, "sms": {"body": "b"}})
    conn.commit()
    with pytest.raises(psycopg.errors.InvalidParameterValue) as failure:
        apply(conn, campaign({"id": "hello", "channel": "email", **step}))
    assert problem in (failure.value.diag.message_detail or "")
    conn.rollback()
    assert conn.execute("select count(*) as n from conveyor.campaigns").fetchone() == {"n": 0}


def test_a_template_deleted_after_apply_fails_the_send_with_its_name(conn: Conn) -> None:
    setup(conn, contacts=1)
    save_template(conn, "welcome_note", NOTE)
    apply(conn, campaign({"id": "hello", "channel": "email", "template": "welcome_note",
                          "data": {"first_name": "{{contact.name}}"}}))  # fmt: skip
    conn.execute("select conveyor.delete_notification_template('acme', 'welcome_note')")
    (row,) = enroll(conn, ["1"])
    failed = conn.execute(
        "select status, error from conveyor.executions where execution_id = %s", (row["execution_id"],)
    ).fetchone()
    assert failed is not None and failed["status"] == "failed"
    assert 'template "welcome_note" does not exist or has no email part' in failed["error"]["message"]
