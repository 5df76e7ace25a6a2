"""Email delivery tracking (sql/email_tracking.sql): the row a successful email.send step's
write-back records, conveyor.record_email_event (status, counters, idempotency, the engine
event), suppressions, and the publish-time checks of `with.tags` / `with.list_unsubscribe`."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import Conn, execution, install, start, step_runs, write_back
from tests.sql.workflow_documents import problems, with_steps

MAIL = {
    "id": "welcome",
    "action": "email.send",
    "connection": "mail",
    "with": {
        "to": ["{{trigger.payload.email}}", "boss@acme.test"],
        "subject": "Hi {{trigger.payload.name}}",
        "text": "Welcome",
        "tags": {"campaign_id": "{{trigger.payload.campaign}}", "enrollment_id": "e-{{trigger.entity_id}}"},
    },
}


def mail_flow(conn: Conn, tenant: str, step: dict[str, Any] | None = None) -> tuple[int, int]:
    return install(conn, tenant, {"slug": "mail", "steps": [step or MAIL, {"id": "after", "set": {"x": 1}}]})


def sent(conn: Conn, tenant: str, message_id: str = "<m1@acme.test>", **more: Any) -> int:
    eid = start(
        conn,
        tenant,
        mail_flow(conn, tenant),
        {"payload": {"email": "Ann@x.test", "name": "Ann", "campaign": "c7"}},
    )
    [run] = step_runs(conn, eid)
    output = {"message_id": message_id, "accepted": ["Ann@x.test", "boss@acme.test"], "refused": {}, **more}
    assert (
        write_back(
            conn, {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": output}
        )[0]["outcome"]
        == "applied"
    )
    return eid


def messages(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.email_messages order by id").fetchall()


def record(
    conn: Conn, tenant: str, ref: str, kind: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    row = conn.execute(
        "select conveyor.record_email_event(%s, %s, %s, now(), %s) as r",
        (tenant, ref, kind, Jsonb(details or {})),
    ).fetchone()
    assert row is not None
    return dict(row["r"])


def events(conn: Conn, kind: str) -> list[dict[str, Any]]:
    return conn.execute(
        "select * from conveyor.events where event_type = %s order by event_id", (f"email.message.{kind}",)
    ).fetchall()


def test_a_successful_send_records_one_row_with_its_rendered_tags_in_the_write_back(
    conn: Conn, tenant: str
) -> None:
    eid = sent(conn, tenant)
    assert execution(conn, eid)["status"] == "completed"
    [row] = messages(conn)
    assert row["tenant_id"] == tenant and row["execution_id"] == eid
    assert (row["step_key"], row["connection_slug"], row["to_address"]) == ("welcome", "mail", "Ann@x.test")
    assert (row["subject"], row["message_id"], row["status"]) == ("Hi Ann", "<m1@acme.test>", "sent")
    assert row["tags"] == {"campaign_id": "c7", "enrollment_id": "e-c1"}
    assert row["sent_at"] is not None and row["provider_message_id"] is None


def test_the_providers_id_from_the_smtp_answer_is_recorded_and_its_events_find_the_message(
    conn: Conn, tenant: str
) -> None:
    sent(conn, tenant, provider_message_id="4XkQ2b1Zz9", smtp_reply="250 2.0.0 Ok: queued as 4XkQ2b1Zz9")
    [row] = messages(conn)
    assert row["provider_message_id"] == "4XkQ2b1Zz9"
    # a provider's webhook names only its own id
    assert record(conn, tenant, "4XkQ2b1Zz9", "opened", {"event_id": "ev-1"})["outcome"] == "recorded"
    [row] = messages(conn)
    assert row["opened_count"] == 1


def test_a_failed_send_and_other_actions_record_nothing(conn: Conn, tenant: str) -> None:
    eid = start(
        conn,
        tenant,
        mail_flow(conn, tenant),
        {"payload": {"email": "a@x.test", "name": "A", "campaign": "c"}},
    )
    [run] = step_runs(conn, eid)
    assert run["status"] == "queued"
    write_back(conn, {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": False, "error": "no"})
    assert execution(conn, eid)["status"] == "failed"
    hook = {"id": "welcome", "action": "webhook.send", "with": {"url": "https://example.test/"}}
    eid = start(conn, tenant, install(conn, tenant, {"slug": "hook", "steps": [hook]}))
    [run] = step_runs(conn, eid)
    write_back(
        conn,
        {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": {"status": 200}},
    )
    assert execution(conn, eid)["status"] == "completed"
    assert messages(conn) == []


def test_events_update_the_row_and_emit_one_engine_event_each(conn: Conn, tenant: str) -> None:
    eid = sent(conn, tenant)
    assert (
        record(conn, tenant, "<m1@acme.test>", "delivered", {"provider_message_id": "re_1"})["outcome"]
        == "recorded"
    )
    assert record(conn, tenant, "re_1", "opened", {"event_id": "o1"})["outcome"] == "recorded"
    assert record(conn, tenant, "re_1", "opened", {"event_id": "o2"})["outcome"] == "recorded"
    assert record(conn, tenant, "m1@acme.test", "clicked", {"event_id": "c1", "url": "https://x.test"})[
        "outcome"
    ] == ("recorded")
    [row] = messages(conn)
    assert (row["status"], row["provider_message_id"]) == ("delivered", "re_1")
    assert (row["opened_count"], row["clicked_count"]) == (2, 1)
    assert row["first_opened_at"] is not None and row["first_clicked_at"] is not None
    [delivered] = events(conn, "delivered")
    assert delivered["payload"]["tags"] == {"campaign_id": "c7", "enrollment_id": "e-c1"}
    assert delivered["payload"]["message_id"] == "<m1@acme.test>"
    assert delivered["payload"]["provider_message_id"] == "re_1"
    assert (delivered["payload"]["to"], delivered["payload"]["execution_id"]) == ("Ann@x.test", eid)
    assert (delivered["entity_type"], delivered["source"]) == ("email_message", "email")
    assert len(events(conn, "opened")) == 2
    assert events(conn, "clicked")[0]["payload"]["details"]["url"] == "https://x.test"


def test_a_duplicate_event_changes_nothing_and_emits_nothing(conn: Conn, tenant: str) -> None:
    sent(conn, tenant)
    assert record(conn, tenant, "<m1@acme.test>", "opened", {"event_id": "o1"})["outcome"] == "recorded"
    before = messages(conn)
    assert record(conn, tenant, "<m1@acme.test>", "opened", {"event_id": "o1"})["outcome"] == "duplicate"
    assert messages(conn) == before and before[0]["opened_count"] == 1
    assert len(events(conn, "opened")) == 1


def test_an_unknown_message_is_reported_unmatched_and_a_bad_kind_refused(conn: Conn, tenant: str) -> None:
    result = record(conn, tenant, "<nobody@x.test>", "delivered")
    assert result["outcome"] == "unmatched" and "<nobody@x.test>" in result["message"]
    assert events(conn, "delivered") == []
    sent(conn, tenant)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown kind 'sent'"):
        record(conn, tenant, "<m1@acme.test>", "sent")


def test_another_tenants_message_is_not_matched(conn: Conn, tenant: str) -> None:
    sent(conn, tenant)
    conn.execute("select conveyor.create_tenant('globex', 'Globex', 'UTC')")
    assert record(conn, "globex", "<m1@acme.test>", "delivered")["outcome"] == "unmatched"
    assert messages(conn)[0]["status"] == "sent"


@pytest.mark.parametrize(
    ("kind", "details", "status", "suppressed"),
    [
        ("bounced", {"reason": "550 no such user"}, "bounced", "bounced"),
        ("bounced", {"reason": "mailbox full", "bounce_type": "soft"}, "bounced", None),
        ("complained", {}, "complained", "complained"),
        ("unsubscribed", {}, "sent", "unsubscribed"),
        ("replied", {}, "delivered", None),
    ],
)
def test_bounces_complaints_and_unsubscribes_suppress_the_address(
    conn: Conn, tenant: str, kind: str, details: dict[str, Any], status: str, suppressed: str | None
) -> None:
    sent(conn, tenant)
    record(conn, tenant, "<m1@acme.test>", kind, details)
    [row] = messages(conn)
    assert row["status"] == status
    assert row["bounce_reason"] == details.get("reason")
    assert (row["unsubscribed_at"] is not None) == (kind == "unsubscribed")
    assert (row["replied_at"] is not None) == (kind == "replied")
    found = conn.execute("select conveyor.email_suppressed(%s, 'ann@X.test') as r", (tenant,)).fetchone()
    assert found is not None and found["r"] == suppressed


def test_tags_and_list_unsubscribe_are_checked_at_publish_with_their_path(conn: Conn) -> None:
    def step(**with_: Any) -> dict[str, Any]:
        return {
            "id": "m",
            "action": "email.send",
            "with": {"to": "a@b.c", "subject": "s", "text": "t"} | with_,
        }

    assert (
        problems(conn, with_steps(step(tags={"campaign_id": "{{trigger.payload.c}}"}, list_unsubscribe=True)))
        == []
    )
    assert problems(conn, with_steps(step(tags={f"k{i}": "v" for i in range(21)}))) == [
        "steps[0].with.tags: 21 tags, at most 20 allowed"
    ]
    assert problems(
        conn, with_steps(step(tags={"a": "x" * 201, "b": 3, "9x": "v"}, list_unsubscribe="yes"))
    ) == [
        'steps[0].with.list_unsubscribe: expected true or false (got "yes")',
        "steps[0].with.tags.9x: a tag name is letters, digits and _ (at most 64, not starting with a digit)",
        "steps[0].with.tags.a: longer than 200 characters",
        "steps[0].with.tags.b: expected text or a template (got 3)",
    ]
    assert problems(conn, with_steps(step(tags=["a"]))) == [
        'steps[0].with.tags: expected an object of tag names and text values (got ["a"])'
    ]


def test_tags_and_list_unsubscribe_may_be_given_on_the_step_itself(conn: Conn, tenant: str) -> None:
    step = {
        "id": "welcome",
        "action": "email.send",
        "connection": "mail",
        "tags": {"campaign_id": "{{trigger.payload.campaign}}"},
        "list_unsubscribe": True,
        "with": {"to": "{{trigger.payload.email}}", "subject": "s", "text": "t"},
    }
    assert problems(conn, with_steps(step)) == []
    eid = start(
        conn, tenant, mail_flow(conn, tenant, step), {"payload": {"email": "a@x.test", "campaign": "c9"}}
    )
    [run] = step_runs(conn, eid)
    assert run["input"]["tags"] == {"campaign_id": "c9"} and run["input"]["list_unsubscribe"] is True
    output = {"message_id": "<s@x.test>", "accepted": ["a@x.test"], "refused": {}}
    write_back(
        conn, {"msg_id": run["msg_id"], "step_run_id": run["step_run_id"], "ok": True, "output": output}
    )
    assert messages(conn)[0]["tags"] == {"campaign_id": "c9"}

    both = step | {"with": step["with"] | {"tags": {"a": "b"}}}
    assert problems(conn, with_steps(both)) == [
        "steps[0].tags: given both on the step and in its with; give it once"
    ]
    hook = {"id": "h", "action": "webhook.send", "tags": {"a": "b"}, "with": {"url": "https://x.test/"}}
    assert problems(conn, with_steps(hook)) == ["steps[0].tags: only email.send steps take tags"]
    bad = step | {"tags": {"a": "{{nowhere.x}}"}, "list_unsubscribe": "yes"}
    found = problems(conn, with_steps(bad))
    assert 'steps[0].list_unsubscribe: expected true or false (got "yes")' in found
    assert any(p.startswith("steps[0].tags.a:") for p in found), found


def test_a_suppressed_recipient_skips_a_list_unsubscribe_step_with_a_logged_reason(
    conn: Conn, tenant: str
) -> None:
    conn.execute(
        "insert into conveyor.email_suppressions (tenant_id, address, reason) values (%s, 'ann@x.test', 'bounced')",
        (tenant,),
    )
    step = MAIL | {"with": MAIL["with"] | {"list_unsubscribe": True}}
    eid = start(
        conn,
        tenant,
        mail_flow(conn, tenant, step),
        {"payload": {"email": "Ann@X.test", "name": "Ann", "campaign": "c1"}},
    )
    assert execution(conn, eid)["status"] == "completed", execution(conn, eid)["error"]
    [run, after] = step_runs(conn, eid)
    assert (run["status"], run["msg_id"], after["step_id"]) == ("completed", None, "after")
    assert run["output"]["suppressed"] == {"ann@x.test": "bounced"}
    [log] = conn.execute(
        "select message from conveyor.execution_logs where execution_id = %s", (eid,)
    ).fetchall()
    assert log["message"] == 'step "welcome" skipped: suppressed recipient(s) ann@x.test (bounced)'
    # without list_unsubscribe (transactional mail) it is sent
    eid = start(
        conn,
        tenant,
        mail_flow(conn, tenant),
        {"payload": {"email": "ann@x.test", "name": "Ann", "campaign": "c1"}},
    )
    assert execution(conn, eid)["status"] == "waiting"


def test_a_reply_the_platform_emits_itself_is_correlated_to_our_message(conn: Conn, tenant: str) -> None:
    sent(conn, tenant)
    row = conn.execute(
        "select conveyor.emit(%s, 'email.message.replied', %s) as id",
        (tenant, Jsonb({"in_reply_to": "<m1@acme.test>", "from": "ann@x.test"})),
    ).fetchone()
    assert row is not None
    event = conn.execute("select * from conveyor.events where event_id = %s", (row["id"],)).fetchone()
    assert event is not None
    # the engine's event of our message stands for it: its entity, tags and source
    assert (event["entity_type"], event["source"]) == ("email_message", "email")
    assert event["payload"]["tags"]["campaign_id"] == "c7"
    [message] = messages(conn)
    assert message["replied_at"] is not None
    assert len(events(conn, "replied")) == 1
    # a reply to nothing we sent is kept as the platform gave it
    other = conn.execute(
        "select conveyor.emit(%s, 'email.message.replied', %s) as id",
        (tenant, Jsonb({"in_reply_to": "<never@x.test>"})),
    ).fetchone()
    assert other is not None
    kept = conn.execute(
        "select payload, source from conveyor.events where event_id = %s", (other["id"],)
    ).fetchone()
    assert kept == {"payload": {"in_reply_to": "<never@x.test>"}, "source": None}
