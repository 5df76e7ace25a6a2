"""The enroll step (sql/steps/enroll.sql): a workflow enrolls a row in a campaign; the
enrollment's first steps run in the same batch; a second enroll of an active contact says
so and enrolls nothing; an unknown campaign is refused at publish (a literal slug) or fails
the step (a template); a missing row or a paused campaign fails the step; a dry run
changes nothing."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.fanout_helpers import doc, execution
from tests.sql.interpreter_helpers import step_runs as step_runs_of
from tests.sql.test_campaigns import CAMPAIGN, apply, setup
from tests.sql.workflow_documents import publish

Conn = psycopg.Connection[dict[str, Any]]


def start(conn: Conn, document: dict[str, Any], contact: str, payload: dict[str, Any] | None = None) -> int:
    workflow_id, _ = publish(conn, "acme", document)
    row = conn.execute(
        "select conveyor.start_workflow(%s, %s, 'contact', %s) as id",
        (
            workflow_id,
            Jsonb({"payload": payload or {}, "entity_type": "contact", "entity_id": contact}),
            contact,
        ),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def enrollments(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select ce.*, x.current_step, x.status as execution_status from conveyor.campaign_enrollments ce"
        " left join conveyor.executions x using (execution_id) order by enrollment_id"
    ).fetchall()


def test_a_workflow_enrolls_its_contact_and_the_campaign_starts_in_the_same_batch(conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    flow = doc("signup", {"id": "join", "enroll": {"campaign": "welcome"}}, {"id": "after", "set": {"x": 1}})
    first = start(conn, flow, "3")
    assert execution(conn, first)["status"] == "completed"
    (join, _after) = step_runs_of(conn, first)
    (enrolled,) = enrollments(conn)
    assert join["output"] == {
        "campaign": "welcome", "entity_id": "3", "result": "enrolled",
        "enrollment_id": enrolled["enrollment_id"], "execution_id": enrolled["execution_id"],
    }  # fmt: skip
    assert enrolled["entity_id"] == "3" and enrolled["status"] == "active"
    # its first steps ran: the send slot is reserved (inside the window: waiting, or past it)
    slot = conn.execute(
        "select status from conveyor.step_runs where execution_id = %s and step_id = 'hello-slot'",
        (enrolled["execution_id"],),
    ).fetchone()
    assert slot is not None
    assert enrolled["current_step"] in ("hello-slot", "hello-send", "hello-wait")
    # the enrollment's contact is the row as it is in the audience table
    contact = execution(conn, enrolled["execution_id"])["trigger"]["payload"]["contact"]
    assert contact["email"] == "c3@example.com"

    # enrolling again while active: said, nothing new
    second = start(conn, flow, "3")
    assert execution(conn, second)["status"] == "completed"
    assert step_runs_of(conn, second)[0]["output"] == {
        "campaign": "welcome", "entity_id": "3", "result": "already enrolled",
    }  # fmt: skip
    assert len(enrollments(conn)) == 1


def test_an_explicit_id_and_a_templated_campaign(conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    flow = doc(
        "refer",
        {
            "id": "join",
            "enroll": {"campaign": "{{trigger.payload.campaign}}", "id": "{{trigger.payload.friend}}"},
        },
    )
    run = start(conn, flow, "1", {"campaign": "welcome", "friend": 7})
    assert execution(conn, run)["status"] == "completed"
    assert [e["entity_id"] for e in enrollments(conn)] == ["7"]

    # a templated slug the tenant has no campaign for fails the step, with where
    failed = start(conn, flow, "1", {"campaign": "nope", "friend": 8})
    row = execution(conn, failed)
    assert row["status"] == "failed"
    assert 'step "join".enroll.campaign: tenant "acme" has no campaign "nope"' in row["error"]["message"]


def test_a_literal_unknown_campaign_is_refused_at_publish(conn: Conn) -> None:
    setup(conn)
    flow = doc("signup", {"id": "join", "enroll": {"campaign": "welcome"}})
    with pytest.raises(psycopg.errors.InvalidParameterValue) as failure:
        publish(conn, "acme", flow)
    assert 'steps[0].enroll.campaign: tenant "acme" has no campaign "welcome"' in str(failure.value)
    conn.rollback()
    assert conn.execute("select count(*) as n from conveyor.workflows").fetchone() == {"n": 0}


def test_bad_enroll_specs_are_named_by_path(conn: Conn) -> None:
    setup(conn)
    flow = doc("signup", {"id": "join", "enroll": {"campaign": "Bad Slug", "id": [], "list": 1}})
    with pytest.raises(psycopg.errors.InvalidParameterValue) as failure:
        publish(conn, "acme", flow)
    detail = failure.value.diag.message_detail or str(failure.value)
    assert 'steps[0].enroll.campaign: invalid slug "Bad Slug"' in detail
    assert "steps[0].enroll.id: expected the id of the row to enroll" in detail
    assert "steps[0].enroll.list" in detail


def test_a_missing_row_or_a_paused_campaign_fails_the_step(conn: Conn) -> None:
    setup(conn, contacts=3)
    apply(conn, CAMPAIGN)
    flow = doc("signup", {"id": "join", "enroll": {"campaign": "welcome"}})
    missing = execution(conn, start(conn, flow, "42"))
    assert missing["status"] == "failed"
    assert 'tenant "acme" has no contact 42' in missing["error"]["message"]
    conn.execute("select conveyor.control_campaign('acme', 'welcome', 'pause')")
    paused = execution(conn, start(conn, flow, "1"))
    assert paused["status"] == "failed"
    assert 'step "join".enroll.campaign: campaign "welcome" is paused' in paused["error"]["message"]
    assert enrollments(conn) == []


def test_a_dry_run_says_what_it_would_do_and_enrolls_nobody(conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    flow = doc("signup", {"id": "join", "enroll": {"campaign": "welcome"}})
    row = conn.execute(
        "select conveyor.dry_run('acme', %s, %s) as r",
        (Jsonb(flow), Jsonb({"entity_type": "contact", "entity_id": "2"})),
    ).fetchone()
    assert row is not None
    (join,) = [s for s in row["r"]["steps"] if s["step"] == "join"]
    assert join["decision"] == "would enroll in welcome"
    assert enrollments(conn) == []


def test_another_tenant_can_neither_enroll_in_the_campaign_nor_enroll_its_rows(conn: Conn) -> None:
    setup(conn)
    apply(conn, CAMPAIGN)
    conn.execute("select conveyor.create_tenant('globex', 'Globex')")
    conn.execute(
        "insert into public.contacts values (100, 'globex', 'g100', 'g100@example.com', 'UTC', false)"
    )
    # acme cannot enroll globex's row, by an id it learnt
    flow = doc("refer", {"id": "join", "enroll": {"campaign": "welcome", "id": "{{trigger.payload.friend}}"}})
    failed = execution(conn, start(conn, flow, "1", {"friend": 100}))
    assert failed["status"] == "failed"
    assert 'tenant "acme" has no contact 100' in failed["error"]["message"]
    assert enrollments(conn) == []
    conn.commit()
    # globex cannot name acme's campaign
    with pytest.raises(psycopg.errors.InvalidParameterValue) as failure:
        publish(conn, "globex", doc("steal", {"id": "join", "enroll": {"campaign": "welcome"}}))
    assert 'tenant "globex" has no campaign "welcome"' in str(failure.value)
