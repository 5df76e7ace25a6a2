"""The approval step: approvers asked in parallel or in sequence, the quorum, escalation and
expiry at the due time (through the tick's due scan), delegation, the requester rule,
refusals of people who are not (or no longer) approvers, the audit rows, the output, and
validation at publish (sql/steps/approval.sql, sql/approvals.sql, sql/approval_outcomes.sql)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.sql.approval_helpers import (
    approval_doc,
    ask,
    asked,
    audit,
    decide,
    delegate,
    listed,
    publish_problems,
    request_of,
    result,
    tick,
)
from tests.sql.interpreter_helpers import execution, install, start, step_runs, visited

Conn = psycopg.Connection[dict[str, Any]]

PAIR = {"approvers": ["ann", "bob"], "due": "2d", "title": "Refund {{trigger.entity_id}}"}


def output(conn: Conn, execution_id: int) -> dict[str, Any]:
    return execution(conn, execution_id)["step_outputs"]["ask"]["output"]  # type: ignore[no-any-return]


# --- parallel ----------------------------------------------------------------------------


def test_parallel_all_asks_everyone_at_once_and_continues_when_all_approve(conn: Conn, tenant: str) -> None:
    execution_id = ask(conn, tenant, PAIR)
    state = execution(conn, execution_id)
    assert (state["status"], state["wait_kind"], state["current_step"]) == ("waiting", "approval", "ask")
    request = request_of(conn, execution_id)
    assert state["resume_at"] == request["due_at"]
    assert request["due_at"] - request["created_at"] < timedelta(days=2, seconds=5)
    assert asked(conn, request["request_id"]) == ["ann", "bob"]
    note = conn.execute(
        "select title, type, category, action_url from conveyor.notifications order by notification_id limit 1"
    ).fetchone()
    assert note == {
        "title": "Refund c1",
        "type": "action_required",
        "category": "approvals",
        "action_url": f"/approvals/{request['request_id']}",
    }
    assert listed(conn, tenant, "ann") == [request["request_id"]]

    first = decide(conn, tenant, "ann", request["request_id"], "approve", "fine by me")
    assert first == {
        "request_id": request["request_id"],
        "decision": "approve",
        "user": "ann",
        "state": "pending",
        "outcome": None,
        "continued": False,
    }
    assert execution(conn, execution_id)["status"] == "waiting"
    assert listed(conn, tenant, "ann") == []
    second = decide(conn, tenant, "bob", request["request_id"], "approve")
    assert (second["state"], second["outcome"], second["continued"]) == ("closed", "approved", True)
    assert result(conn, execution_id) == ("completed", "approved")
    assert visited(conn, execution_id) == ["ask", "yes"]

    out = output(conn, execution_id)
    assert out["outcome"] == "approved" and out["request_id"] == request["request_id"]
    assert [(d["user"], d["decision"], d["note"], d["delegated_from"]) for d in out["decisions"]] == [
        ("ann", "approve", "fine by me", None),
        ("bob", "approve", None, None),
    ]
    assert all(d["at"] for d in out["decisions"]) and out["delegations"] == [] and out["escalated"] is False
    assert step_runs(conn, execution_id)[0]["status"] == "completed"
    assert audit(conn, request["request_id"]) == [
        ("ann", "approve", "fine by me", None, None),
        ("bob", "approve", None, None, None),
    ]
    assert request_of(conn, execution_id)["state"] == "closed"


def test_parallel_all_is_rejected_by_one_rejection(conn: Conn, tenant: str) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "approvers": ["ann", "bob", "cy"]})
    request_id = request_of(conn, execution_id)["request_id"]
    decide(conn, tenant, "ann", request_id, "approve")
    answer = decide(conn, tenant, "bob", request_id, "reject", "too expensive")
    assert (answer["outcome"], answer["continued"]) == ("rejected", True)
    assert result(conn, execution_id) == ("completed", "rejected")
    assert [d["decision"] for d in output(conn, execution_id)["decisions"]] == ["approve", "reject"]
    # cy was asked, but the request is decided: nothing left to decide
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is already rejected"):
        decide(conn, tenant, "cy", request_id, "approve")


@pytest.mark.parametrize(
    ("quorum", "votes", "expected"),
    [
        ("any", ["reject", "approve"], "approved"),
        ("any", ["reject", "reject", "reject"], "rejected"),
        ({"at_least": 2}, ["approve", "reject", "approve"], "approved"),
        ({"at_least": 2}, ["reject", "approve", "reject"], "rejected"),
    ],
)
def test_the_quorum_decides_parallel_requests(
    conn: Conn, tenant: str, quorum: Any, votes: list[str], expected: str
) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "approvers": ["ann", "bob", "cy"], "quorum": quorum})
    request_id = request_of(conn, execution_id)["request_id"]
    for user, vote in zip(["ann", "bob", "cy"], votes, strict=True):
        answer = decide(conn, tenant, user, request_id, vote)
        if answer["continued"]:
            break
    assert result(conn, execution_id) == ("completed", expected)
    assert output(conn, execution_id)["outcome"] == expected


def test_approvers_from_templates_are_flattened_and_counted_once(conn: Conn, tenant: str) -> None:
    spec = {**PAIR, "approvers": ["{{trigger.payload.team}}", "ann", "{{trigger.payload.lead}}"]}
    execution_id = ask(conn, tenant, spec, {"payload": {"team": ["bob", "ann"], "lead": "cy"}})
    request = request_of(conn, execution_id)
    assert request["approvers"] == ["bob", "ann", "cy"]
    assert request["needed"] == 3


# --- sequence ----------------------------------------------------------------------------


def test_sequence_asks_one_at_a_time_and_the_next_when_the_one_before_approves(
    conn: Conn, tenant: str
) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "approvers": ["ann", "bob", "cy"], "mode": "sequence"})
    request_id = request_of(conn, execution_id)["request_id"]
    assert asked(conn, request_id) == ["ann"]
    assert (listed(conn, tenant, "ann"), listed(conn, tenant, "bob")) == ([request_id], [])
    with pytest.raises(
        psycopg.errors.ObjectNotInPrerequisiteState,
        match=r"in sequence: it waits for 'ann' \(approver 1 of 3\), not 'bob'",
    ):
        decide(conn, tenant, "bob", request_id, "approve")
    decide(conn, tenant, "ann", request_id, "approve")
    assert asked(conn, request_id) == ["ann", "bob"]
    assert listed(conn, tenant, "bob") == [request_id]
    decide(conn, tenant, "bob", request_id, "approve")
    assert asked(conn, request_id) == ["ann", "bob", "cy"]
    assert execution(conn, execution_id)["status"] == "waiting"
    decide(conn, tenant, "cy", request_id, "approve")
    assert result(conn, execution_id) == ("completed", "approved")
    assert [d["user"] for d in output(conn, execution_id)["decisions"]] == ["ann", "bob", "cy"]


def test_in_sequence_a_rejection_ends_it_and_nobody_after_is_asked(conn: Conn, tenant: str) -> None:
    spec = {**PAIR, "approvers": ["ann", "bob", "cy"], "mode": "sequence", "quorum": "any"}
    execution_id = ask(conn, tenant, spec)
    request_id = request_of(conn, execution_id)["request_id"]
    decide(conn, tenant, "ann", request_id, "reject", "no budget")
    assert result(conn, execution_id) == ("completed", "rejected")
    assert asked(conn, request_id) == ["ann"]


# --- due time: escalation, expiry ---------------------------------------------------------


def test_at_the_due_time_the_tick_escalates_once_then_expires(conn: Conn, tenant: str) -> None:
    spec = {**PAIR, "escalate_to": "dee", "escalation_due": "1d"}
    execution_id = ask(conn, tenant, spec)
    request = request_of(conn, execution_id)
    request_id = request["request_id"]
    decide(conn, tenant, "ann", request_id, "approve")
    # the due time is the next work the tick reports; before it nothing happens
    assert tick(conn, request["due_at"] - timedelta(seconds=1))["next_due_at"] is not None
    assert request_of(conn, execution_id)["escalated_at"] is None

    done = tick(conn, request["due_at"])
    assert done["resumed"] >= 1
    escalated = request_of(conn, execution_id)
    assert (escalated["state"], escalated["approvers"], escalated["needed"]) == ("pending", ["dee"], 1)
    assert escalated["due_at"] == request["due_at"] + timedelta(days=1)
    assert execution(conn, execution_id)["resume_at"] == escalated["due_at"]
    assert asked(conn, request_id) == ["ann", "bob", "dee"]
    assert audit(conn, request_id)[-1][1:2] == ("escalated",) and audit(conn, request_id)[-1][4] == "dee"
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"no longer an approver .* escalated to 'dee'"
    ):
        decide(conn, tenant, "bob", request_id, "approve")

    tick(conn, escalated["due_at"])
    assert result(conn, execution_id) == ("completed", "expired")
    out = output(conn, execution_id)
    assert (out["outcome"], out["escalated"], out["escalated_to"]) == ("expired", True, "dee")
    assert [a[1] for a in audit(conn, request_id)] == ["approve", "escalated", "expired"]


def test_an_escalated_request_is_decided_by_the_escalation_approver(conn: Conn, tenant: str) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "escalate_to": "dee"})
    request = request_of(conn, execution_id)
    tick(conn, request["due_at"] + timedelta(minutes=1))
    decide(conn, tenant, "dee", request["request_id"], "reject", "not this quarter")
    assert result(conn, execution_id) == ("completed", "rejected")
    # the escalation approver has as long as the first due time gave (no escalation_due)
    assert request_of(conn, execution_id)["due_at"] == request["due_at"] + timedelta(days=2, minutes=1)


def test_without_escalation_it_expires_at_the_due_time(conn: Conn, tenant: str) -> None:
    execution_id = ask(conn, tenant, PAIR)
    request = request_of(conn, execution_id)
    tick(conn, request["due_at"])
    assert result(conn, execution_id) == ("completed", "expired")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is already expired"):
        decide(conn, tenant, "ann", request["request_id"], "approve")


# --- delegation --------------------------------------------------------------------------


def test_a_delegated_slot_is_decided_by_its_new_holder_and_the_output_says_from_whom(
    conn: Conn, tenant: str
) -> None:
    execution_id = ask(conn, tenant, PAIR)
    request_id = request_of(conn, execution_id)["request_id"]
    answer = delegate(conn, tenant, "ann", request_id, "eve", "on leave")
    assert answer == {"request_id": request_id, "user": "ann", "delegated_to": "eve", "state": "pending"}
    assert asked(conn, request_id) == ["ann", "bob", "eve"]
    assert request_of(conn, execution_id)["approvers"] == ["eve", "bob"]
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"no longer an approver .* \(delegated to 'eve'\)"
    ):
        decide(conn, tenant, "ann", request_id, "approve")
    decide(conn, tenant, "eve", request_id, "approve", "for ann")
    decide(conn, tenant, "bob", request_id, "approve")
    out = output(conn, execution_id)
    assert [(d["user"], d["delegated_from"]) for d in out["decisions"]] == [("eve", "ann"), ("bob", None)]
    assert [(d["from"], d["to"], d["reason"]) for d in out["delegations"]] == [("ann", "eve", "on leave")]
    assert audit(conn, request_id)[0] == ("ann", "delegate", "on leave", None, "eve")


def test_delegation_is_refused_to_oneself_to_another_approver_and_past_its_limit(
    conn: Conn, tenant: str
) -> None:
    execution_id = ask(conn, tenant, PAIR)
    request_id = request_of(conn, execution_id)["request_id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="to themselves"):
        delegate(conn, tenant, "ann", request_id, "ann")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="'bob' is already an approver"):
        delegate(conn, tenant, "ann", request_id, "bob")
    conn.execute("set conveyor.max_approval_delegations = 2")
    delegate(conn, tenant, "ann", request_id, "u2")
    delegate(conn, tenant, "u2", request_id, "u3")
    with pytest.raises(
        psycopg.errors.ProgramLimitExceeded,
        match=r"delegated 2 times, at most 2 \(setting conveyor.max_approval_delegations\)",
    ):
        delegate(conn, tenant, "u3", request_id, "u4")
    assert request_of(conn, execution_id)["approvers"] == ["u3", "bob"]


def test_in_sequence_a_later_approver_may_delegate_ahead_and_the_new_one_is_asked_in_turn(
    conn: Conn, tenant: str
) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "mode": "sequence"})
    request_id = request_of(conn, execution_id)["request_id"]
    delegate(conn, tenant, "bob", request_id, "eve")
    assert asked(conn, request_id) == ["ann"]
    decide(conn, tenant, "ann", request_id, "approve")
    assert asked(conn, request_id) == ["ann", "eve"]
    decide(conn, tenant, "eve", request_id, "approve")
    assert result(conn, execution_id) == ("completed", "approved")


# --- who may decide ----------------------------------------------------------------------


def test_someone_who_is_not_an_approver_is_refused_and_nothing_changes(conn: Conn, tenant: str) -> None:
    execution_id = ask(conn, tenant, PAIR)
    request_id = request_of(conn, execution_id)["request_id"]
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege,
        match=f"'mallory' is not an approver of approval request {request_id}",
    ):
        decide(conn, tenant, "mallory", request_id, "approve")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="'mallory' is not an approver"):
        delegate(conn, tenant, "mallory", request_id, "mallory2")
    decide(conn, tenant, "ann", request_id, "approve")
    with pytest.raises(
        psycopg.errors.ObjectNotInPrerequisiteState, match=r"'ann' has already decided .* \(approve\)"
    ):
        decide(conn, tenant, "ann", request_id, "reject")
    with pytest.raises(
        psycopg.errors.NoDataFound, match="approval request 999999 does not exist for tenant 'acme'"
    ):
        decide(conn, tenant, "ann", 999999, "approve")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="'maybe' is not a decision"):
        decide(conn, tenant, "bob", request_id, "maybe")
    assert [a[0] for a in audit(conn, request_id)] == ["ann"]
    assert request_of(conn, execution_id)["votes"] == ["approve", None]


def test_the_requester_is_left_out_and_may_not_approve_nor_be_delegated_to(conn: Conn, tenant: str) -> None:
    spec = {
        **PAIR,
        "approvers": ["ann", "{{trigger.payload.by}}", "bob"],
        "requester": "{{trigger.payload.by}}",
        "requester_may_approve": False,
    }
    execution_id = ask(conn, tenant, spec, {"payload": {"by": "rex"}})
    request = request_of(conn, execution_id)
    assert (request["approvers"], request["requester"], request["needed"]) == (["ann", "bob"], "rex", 2)
    assert execution(conn, execution_id)["step_outputs"] == {}
    assert step_runs(conn, execution_id)[0]["output"]["left_out"] == ["rex"]
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"'rex' requested approval request .* may not approve"
    ):
        decide(conn, tenant, "rex", request["request_id"], "approve")
    with pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"'rex' requested approval request .* may not approve"
    ):
        delegate(conn, tenant, "ann", request["request_id"], "rex")


def test_a_quorum_the_approvers_besides_the_requester_cannot_reach_fails_the_step(
    conn: Conn, tenant: str
) -> None:
    spec = {
        **PAIR,
        "quorum": {"at_least": 2},
        "requester": "ann",
        "requester_may_approve": False,
    }
    execution_id = ask(conn, tenant, spec)
    state = execution(conn, execution_id)
    assert state["status"] == "failed"
    assert state["error"]["message"] == (
        'step "ask".approval.quorum.at_least: 2 cannot be reached with 1 approver(s) besides the requester ann'
    )
    assert conn.execute("select count(*) as n from conveyor.approval_requests").fetchone() == {"n": 0}


def test_more_approvers_than_the_setting_allows_fail_the_step(conn: Conn, tenant: str) -> None:
    conn.execute("set conveyor.max_approvers = 2")
    execution_id = ask(
        conn, tenant, {**PAIR, "approvers": "{{trigger.payload.all}}"}, {"payload": {"all": ["a", "b", "c"]}}
    )
    assert execution(conn, execution_id)["error"]["message"] == (
        'step "ask".approval.approvers: 3 approvers, at most 2 may be asked by one step (setting conveyor.max_approvers)'
    )


# --- control -----------------------------------------------------------------------------


def test_cancelling_the_execution_closes_its_request(conn: Conn, tenant: str) -> None:
    execution_id = ask(conn, tenant, PAIR)
    request_id = request_of(conn, execution_id)["request_id"]
    decide(conn, tenant, "ann", request_id, "approve")
    conn.execute("select conveyor.cancel_execution(%s, %s, 'withdrawn')", (tenant, execution_id))
    request = request_of(conn, execution_id)
    assert (request["state"], request["outcome"]) == ("closed", "cancelled")
    assert audit(conn, request_id)[-1] == (
        None,
        "cancelled",
        f"execution {execution_id} cancelled",
        None,
        None,
    )
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="is already cancelled"):
        decide(conn, tenant, "bob", request_id, "approve")
    assert execution(conn, execution_id)["status"] == "cancelled"
    assert listed(conn, tenant, "bob") == []


def test_a_decision_on_a_paused_execution_is_kept_and_applied_after_its_resume(
    conn: Conn, tenant: str
) -> None:
    execution_id = ask(conn, tenant, {**PAIR, "quorum": "any"})
    request_id = request_of(conn, execution_id)["request_id"]
    conn.execute("select conveyor.pause_execution(%s, %s)", (tenant, execution_id))
    answer = decide(conn, tenant, "bob", request_id, "approve")
    assert (answer["state"], answer["outcome"], answer["continued"]) == ("decided", "approved", False)
    # a paused execution's decided request (and its due time) is no work for the tick
    assert tick(conn)["next_due_at"] is None
    assert execution(conn, execution_id)["status"] == "waiting"
    conn.execute("select conveyor.resume_execution(%s, %s)", (tenant, execution_id))
    assert tick(conn)["resumed"] == 1
    assert result(conn, execution_id) == ("completed", "approved")
    assert request_of(conn, execution_id)["state"] == "closed"


def test_a_dry_run_asks_nobody_and_follows_on_approved(conn: Conn, tenant: str) -> None:
    row = conn.execute(
        "select conveyor.dry_run(%s, %s, '{}') as r",
        (tenant, psycopg.types.json.Jsonb(approval_doc(PAIR))),
    ).fetchone()
    assert row is not None
    steps = row["r"]["steps"]
    assert [s["step"] for s in steps] == ["ask", "yes"]
    assert "would ask" in steps[0]["decision"] and "on_approved" in steps[0]["decision"]
    assert conn.execute("select count(*) as n from conveyor.approval_requests").fetchone() == {"n": 0}
    assert conn.execute("select count(*) as n from conveyor.notifications").fetchone() == {"n": 0}


def test_listing_all_shows_the_requests_a_user_acted_on(conn: Conn, tenant: str) -> None:
    first = request_of(conn, ask(conn, tenant, PAIR))["request_id"]
    second = request_of(conn, ask(conn, tenant, PAIR))["request_id"]
    delegate(conn, tenant, "ann", first, "eve")
    assert listed(conn, tenant, "ann") == [second]
    assert listed(conn, tenant, "ann", pending_only=False) == [second, first]
    rows = conn.execute("select * from conveyor.list_approvals(%s, 'eve', true)", (tenant,)).fetchall()
    assert [(r["request_id"], r["workflow"], r["step_id"], r["asked"], r["title"]) for r in rows] == [
        (first, "expense", "ask", True, "Refund c1")
    ]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="a user id is required"):
        listed(conn, tenant, " ")


# --- publish ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"due": "1d"}, ["steps[0].approval.approvers: required key is missing"]),
        ({"approvers": ["ann"]}, ["steps[0].approval.due: required key is missing"]),
        ({"approvers": [], "due": "1d"}, ["steps[0].approval.approvers: the list of approvers is empty"]),
        (
            {"approvers": ["ann", 3.5, {}], "due": "1d"},
            ["steps[0].approval.approvers[2]: expected a user id (got {})"],
        ),
        (
            {"approvers": ["ann"], "due": "1d", "mode": "round-robin"},
            ['steps[0].approval.mode: expected "sequence" or "parallel" (got "round-robin")'],
        ),
        (
            {"approvers": ["ann", "bob"], "due": "1d", "quorum": {"at_least": 3}},
            ["steps[0].approval.quorum.at_least: 3 cannot be reached with 2 approver(s)"],
        ),
        (
            {"approvers": ["ann"], "due": "1d", "quorum": "most"},
            ['steps[0].approval.quorum: expected "all", "any" or {"at_least": <n>} (got "most")'],
        ),
        (
            {"approvers": ["ann"], "due": "1d", "escalation_due": "1d"},
            [
                'steps[0].approval.escalation_due: only with "escalate_to" (the time the escalation approver has)'
            ],
        ),
        (
            {"approvers": ["ann"], "due": "1d", "requester_may_approve": False},
            [
                'steps[0].approval.requester_may_approve: false needs "requester" (the user who may not approve)'
            ],
        ),
        (
            {"approvers": ["ann"], "due": "1d", "colour": "red"},
            [
                "steps[0].approval.colour: unknown key (expected one of: approvers, due, mode, quorum, title, message,"
                " action_url, requester, requester_may_approve, escalate_to, escalation_due)"
            ],
        ),
        ({"approvers": ["ann"], "due": "{{x}}"}, ["steps[0].approval.due: ..."]),
        (
            {"approvers": ["{{nope.x}}"], "due": "1d"},
            ["steps[0].approval.approvers[0]: unknown template root ..."],
        ),
    ],
)
def test_publish_names_the_problem_and_its_path(
    conn: Conn, spec: dict[str, Any], expected: list[str]
) -> None:
    found = publish_problems(conn, spec)
    assert len(found) == len(expected), found
    for f, e in zip(found, expected, strict=True):
        assert f.startswith(e[:-3]) if e.endswith("...") else f == e


def test_publish_checks_the_approval_routes(conn: Conn) -> None:
    doc = approval_doc(PAIR)
    doc["steps"][0]["on_expired"] = "nowhere"
    rows = conn.execute(
        "select m from conveyor.validate_workflow(%s) as m", (psycopg.types.json.Jsonb(doc),)
    ).fetchall()
    assert [r["m"] for r in rows] == [
        'steps[0].on_expired: unknown step "nowhere"',
        'steps[3]: step "late" is unreachable from the first step "ask"',
    ]


def test_a_published_approval_workflow_runs_from_its_event(conn: Conn, tenant: str) -> None:
    workflow = install(conn, tenant, approval_doc({"approvers": "{{trigger.payload.boss}}", "due": "1h"}))
    execution_id = start(conn, tenant, workflow, {"payload": {"boss": "ann"}})
    request_id = request_of(conn, execution_id)["request_id"]
    decide(conn, tenant, "ann", request_id, "approve")
    assert result(conn, execution_id) == ("completed", "approved")


def test_an_approvals_due_time_is_found_by_the_due_scans_one_probe(conn: Conn, tenant: str) -> None:
    for _ in range(3):
        ask(conn, tenant, PAIR)
    conn.execute("analyze conveyor.executions")
    conn.execute("set enable_seqscan = off")  # a table this small is otherwise read whole
    plan = conn.execute(
        "explain select e.resume_at from conveyor.executions as e"
        " where e.status = 'waiting' and e.wait_kind in ('delay', 'event', 'approval') and e.paused_at is null"
        " and e.resume_at is not null order by e.resume_at, e.execution_id limit 1"
    ).fetchall()
    text = "\n".join(r["QUERY PLAN"] for r in plan)
    assert "executions_due_scan_idx" in text and "Sort" not in text, text
    due = min(
        request_of(conn, e["execution_id"])["due_at"]
        for e in conn.execute("select execution_id from conveyor.executions").fetchall()
    )
    assert datetime.fromisoformat(tick(conn)["next_due_at"]) == due
