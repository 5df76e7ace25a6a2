"""Bounds on tenant-controlled expressions: regular expressions, transforms, rendered
templates and HTML escaping (docs/limits.md, "Expressions")."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.sql.interpreter_helpers import (
    Conn,
    dry_run,
    execution,
    install,
    make_tenant,
    queued_messages,
    start,
    step_runs,
)
from tests.sql.workflow_documents import problems

BACKREF = r"^(\w+)(\w+)\1\2$"


def matches_doc(value: str) -> dict[str, Any]:
    return {
        "slug": "re",
        "name": "Regex",
        "trigger": {"event": "crm.contact.created"},
        "steps": [
            {"id": "check", "if": {"field": "trigger.payload.text", "op": "matches", "value": value}},
            {"id": "after", "set": {"done": True}},
        ],
    }


# -- regular expressions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (BACKREF, "back-references"),
        (r"(a)\\\1", "back-references"),  # an escaped backslash, then \1
        (r"x(?=.*(?=.*(?=.*b)))", "lookahead and lookbehind"),
        (r"(?<!a)b", "lookahead and lookbehind"),
        (
            "a" * 1001,
            "the pattern is 1001 characters, over the limit of 1000 (setting conveyor.max_regex_pattern)",
        ),
        (
            "[ab]*a" + "[ab]{255}" * 4 + "c",
            "the pattern expands to 1023 states with its repetition bounds ({n}), over the limit of 1000",
        ),
        (r"(?:(?:\d{11}){10}){10}", "expands to 1100 states"),
    ],
)
def test_an_unbounded_pattern_is_refused_at_publish_with_its_path(conn: Conn, pattern: str, why: str) -> None:
    [problem] = problems(conn, matches_doc(pattern))
    assert problem.startswith("steps[0].if.value: regular expression ")
    assert "refused" in problem and why in problem


def test_regex_size_counts_bounded_repetitions_expanded(conn: Conn) -> None:
    sizes = {
        r"^\d{3}-\d{4}$": 8,
        "abc": 3,
        "(?:ab){16}": 32,
        "((a{10}){10}){10}": 1000,
        "[[:alpha:]]{5}x": 6,
        "[]a]{3}": 3,
        "(a|bc){2}": 6,
        "a{2,}": 3,
        "a{2,5}": 5,
        r"a\{3}": 4,
    }
    rows = conn.execute(
        "select p, conveyor.regex_size(p) as n from unnest(%s::text[]) as p", (list(sizes),)
    ).fetchall()
    assert {r["p"]: r["n"] for r in rows} == sizes


def test_bounded_patterns_are_accepted(conn: Conn) -> None:
    for pattern in [
        r"^\d{3}-\d{4}$",
        r"a\\1",
        r"(?:ab)+c",
        r"^[^@]+@[^@]+$",
        "a" * 1000,
        "((a{10}){10}){10}",
    ]:
        assert problems(conn, matches_doc(pattern)) == [], pattern


@pytest.mark.parametrize(
    ("pattern", "why"),
    [(BACKREF, "back-references"), ("[ab]*a" + "[ab]{255}" * 4 + "c", "expands to 1023 states")],
)
def test_a_refused_pattern_from_a_template_fails_the_step_at_run_time(
    conn: Conn, tenant: str, pattern: str, why: str
) -> None:
    wf = install(conn, tenant, matches_doc("{{trigger.payload.re}}"))
    started = time.monotonic()
    e = execution(conn, start(conn, tenant, wf, {"payload": {"text": "ab" * 5000, "re": pattern}}))
    assert time.monotonic() - started < 5  # refused, not run (it took 36 s on 5,000 characters)
    assert e["status"] == "failed"
    assert e["error"]["step"] == "check"
    assert e["error"]["message"].startswith("condition.value: regular expression ")
    assert why in e["error"]["message"]


def test_a_text_over_the_subject_limit_fails_the_step_and_not_the_batch(conn: Conn, tenant: str) -> None:
    wf = install(conn, tenant, matches_doc("^a+$"))
    long_one = start(conn, tenant, wf, {"payload": {"text": "a" * 10_001}}, run=False)
    short_one = start(conn, tenant, wf, {"payload": {"text": "a" * 10_000}}, run=False)
    conn.execute("select conveyor.run_executions(array[%s, %s]::bigint[])", (long_one, short_one))
    failed, completed = execution(conn, long_one), execution(conn, short_one)
    assert failed["status"] == "failed"
    assert failed["error"]["step"] == "check"
    # a step's planned leaf (condition_compare, called by the interpreter) names its field too
    assert failed["error"]["message"] == (
        'condition.field "trigger.payload.text": operator "matches": the text is 10001 characters,'
        " over the limit of 10000 (setting conveyor.max_regex_subject)"
    )
    assert completed["status"] == "completed", completed["error"]
    assert completed["step_outputs"]["check"]["output"]["result"] is True


def test_the_subject_limit_names_the_field_and_follows_its_setting(conn: Conn) -> None:
    conn.execute("set conveyor.max_regex_subject = 5")
    context = Jsonb({"trigger": {"payload": {"text": "abcdef"}}})
    with pytest.raises(
        psycopg.errors.ProgramLimitExceeded, match=r'condition.field "\{\{trigger.payload.text\}\}"'
    ):
        conn.execute(
            "select conveyor.eval_condition(%s, %s)",
            (Jsonb({"field": "{{trigger.payload.text}}", "op": "matches", "value": "f$"}), context),
        )
    conn.execute("set conveyor.max_regex_subject = 6")
    row = conn.execute(
        "select conveyor.eval_condition(%s, %s) as r",
        (Jsonb({"field": "trigger.payload.text", "op": "matches", "value": "f$"}), context),
    ).fetchone()
    assert row is not None and row["r"] is True


def test_a_trigger_condition_over_the_limit_does_not_hold_up_dispatch(conn: Conn, tenant: str) -> None:
    make_tenant(conn, "other")
    for who, text in [("acme", "a" * 5000 + "!"), ("other", "ok")]:
        doc = matches_doc(".")
        doc["trigger"]["condition"] = {
            "field": "trigger.payload.text",
            "op": "matches",
            "value": "{{trigger.payload.re}}",
        }
        conn.execute("select * from conveyor.publish(%s, %s)", (who, Jsonb(doc)))
        conn.execute(
            "select conveyor.emit(%s, 'crm.contact.created', %s, 'contact', 'c1')",
            (who, Jsonb({"text": text, "re": BACKREF if who == "acme" else "^ok$"})),
        )
    started = time.monotonic()
    conn.execute("select conveyor.dispatch()")
    assert time.monotonic() - started < 5
    started_for = {
        r["tenant_id"] for r in conn.execute("select tenant_id from conveyor.executions").fetchall()
    }
    assert started_for == {"other"}


# -- transforms --------------------------------------------------------------------------


def map_doc(template: Any = "{{item.sku}}") -> dict[str, Any]:
    return {
        "slug": "tx",
        "steps": [
            {
                "id": "skus",
                "transform": {"op": "map", "source": "{{trigger.payload.items}}", "template": template},
            },
            {
                "id": "big",
                "transform": {
                    "op": "filter",
                    "source": "{{trigger.payload.items}}",
                    "where": {"field": "item.n", "op": "gte", "value": 9990},
                },
            },
        ],
    }


def items(n: int) -> list[dict[str, Any]]:
    return [{"sku": f"sku-{i}", "n": i} for i in range(n)]


def test_a_map_and_a_filter_of_ten_thousand_items_run_in_linear_time(conn: Conn, tenant: str) -> None:
    wf = install(
        conn, tenant, map_doc({"sku": "{{item.sku | upper}}", "n": "{{item.n}}", "of": "{{execution.id}}"})
    )
    started = time.monotonic()
    e = execution(conn, start(conn, tenant, wf, {"payload": {"items": items(10_000)}}))
    elapsed = time.monotonic() - started
    assert e["status"] == "completed", e["error"]
    mapped = e["step_outputs"]["skus"]["output"]["value"]
    assert len(mapped) == 10_000
    assert mapped[9_999] == {"sku": "SKU-9999", "n": 9_999, "of": e["execution_id"]}
    assert [x["n"] for x in e["step_outputs"]["big"]["output"]["value"]] == list(range(9990, 10_000))
    assert elapsed < 5  # a generous guard: both took 47-58 s when each item copied the context


def test_a_map_over_the_item_limit_fails_the_step(conn: Conn, tenant: str) -> None:
    wf = install(conn, tenant, map_doc())
    e = execution(conn, start(conn, tenant, wf, {"payload": {"items": items(10_001)}}))
    assert e["status"] == "failed"
    assert e["error"]["step"] == "skus"
    assert e["error"]["message"] == (
        'step "skus".transform.source: map has 10001 items, over the limit of 10000 '
        "(setting conveyor.max_transform_items)"
    )


def test_a_map_whose_output_grows_past_the_render_limit_fails(conn: Conn, tenant: str) -> None:
    conn.execute("set conveyor.max_rendered_bytes = 20000")
    wf = install(conn, tenant, map_doc("{{item.sku}}-{{trigger.payload.pad}}"))
    e = execution(conn, start(conn, tenant, wf, {"payload": {"items": items(100), "pad": "x" * 500}}))
    assert e["status"] == "failed"
    assert e["error"]["message"].startswith('step "skus".transform.template: the rendered map (after ')
    assert "over the limit of 20000 bytes (setting conveyor.max_rendered_bytes)" in e["error"]["message"]


# -- rendered templates ------------------------------------------------------------------


def test_a_template_that_doubles_a_string_fails_at_the_limit_and_is_not_retried(
    conn: Conn, tenant: str
) -> None:
    wf = install(
        conn,
        tenant,
        {"slug": "grow", "steps": [{"id": "double", "set": {"s": "{{vars.s}}{{vars.s}}"}, "next": "double"}]},
    )
    eid = start(conn, tenant, wf, run=False)
    conn.execute(
        "update conveyor.executions set vars = %s where execution_id = %s", (Jsonb({"s": "x" * 1000}), eid)
    )
    conn.execute("select conveyor.run_executions(array[%s]::bigint[])", (eid,))
    e = execution(conn, eid)
    assert e["status"] == "failed"
    assert e["error"]["step"] == "double"
    assert e["error"]["message"] == (
        'step "double".set.s: the rendered value is 2048000 bytes or more, over the limit of 1048576 bytes '
        "(setting conveyor.max_rendered_bytes)"
    )
    assert e["steps_run"] == 11  # ten doublings of 1,000 characters fit; the eleventh does not
    assert len(e["vars"]["s"]) == 1_024_000
    # final: running it again changes nothing
    conn.execute("select conveyor.run_executions(array[%s]::bigint[])", (eid,))
    assert execution(conn, eid)["steps_run"] == 11
    assert len(step_runs(conn, eid)) == 11


def test_a_step_input_that_repeats_a_value_fails_at_the_limit(conn: Conn, tenant: str) -> None:
    wf = install(
        conn,
        tenant,
        {"slug": "copies", "steps": [{"id": "two", "set": {"a": "{{vars.s}}", "b": "{{vars.s}}"}}]},
    )
    eid = start(conn, tenant, wf, run=False)
    conn.execute(
        "update conveyor.executions set vars = %s where execution_id = %s", (Jsonb({"s": "y" * 600_000}), eid)
    )
    conn.execute("select conveyor.run_executions(array[%s]::bigint[])", (eid,))
    e = execution(conn, eid)
    assert e["status"] == "failed"
    assert e["error"]["message"].startswith('step "two".set: the rendered input is ')
    assert e["error"]["message"].endswith(
        "over the limit of 1048576 bytes (setting conveyor.max_rendered_bytes)"
    )


def test_render_checks_each_string_and_the_whole_value(conn: Conn) -> None:
    conn.execute("set conveyor.max_rendered_bytes = 100")
    context = Jsonb({"vars": {"s": "z" * 60}})
    ok = conn.execute("select conveyor.render(%s, %s, 'w') as r", (Jsonb("{{vars.s}}!"), context)).fetchone()
    assert ok is not None and ok["r"] == "z" * 60 + "!"
    with pytest.raises(
        psycopg.errors.ProgramLimitExceeded, match=r"^w: the rendered value is 120 bytes or more"
    ):
        conn.execute("select conveyor.render(%s, %s, 'w')", (Jsonb("{{vars.s}}{{vars.s}}"), context))
    with pytest.raises(
        psycopg.errors.ProgramLimitExceeded, match=r"^w: the rendered value is \d+ bytes or more"
    ):
        conn.execute(
            "select conveyor.render(%s, %s, 'w')", (Jsonb({"a": "{{vars.s}}", "b": "{{vars.s}}"}), context)
        )


def test_a_string_with_many_expressions_renders_in_linear_time(conn: Conn) -> None:
    started = time.monotonic()
    row = conn.execute(
        "select conveyor.render(%s, %s) as r", (Jsonb("{{vars.a}}" * 30_000), Jsonb({"vars": {"a": "x"}}))
    ).fetchone()
    assert row is not None and row["r"] == "x" * 30_000
    assert time.monotonic() - started < 5  # it took 183 s when the rest of the text was re-sliced each time


def test_an_expression_may_hold_a_brace_pair_and_ends_at_the_first_closing_one(conn: Conn) -> None:
    context = Jsonb({"vars": {"a": "x"}})
    row = conn.execute(
        "select conveyor.render(%s, %s) as r", (Jsonb("}}a{{vars.a | default: '{{'}}}}b{{vars.a}}"), context)
    ).fetchone()
    assert row is not None and row["r"] == "}}ax}}bx"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r'^w: unclosed "\{\{"'):
        conn.execute("select conveyor.render(%s, %s, 'w')", (Jsonb("{{vars.a}} {{a {{b"), context))


# -- HTML escaping -----------------------------------------------------------------------

SCRIPT = "<script>alert(\"x\" & 'y')</script>"
ESCAPED = "&lt;script&gt;alert(&quot;x&quot; &amp; &#39;y&#39;)&lt;/script&gt;"


def test_the_escape_filter_escapes_html(conn: Conn) -> None:
    row = conn.execute(
        "select conveyor.render(%s, %s) as r",
        (
            Jsonb("<b>{{trigger.payload.name | escape}}</b>"),
            Jsonb({"trigger": {"payload": {"name": SCRIPT}}}),
        ),
    ).fetchone()
    assert row is not None and row["r"] == f"<b>{ESCAPED}</b>"


EMAIL_DOC: dict[str, Any] = {
    "slug": "mail",
    "name": "Mail",
    "trigger": {"event": "crm.contact.created"},
    "steps": [
        {
            "id": "mail",
            "action": "email.send",
            "with": {
                "to": "a@example.com",
                "subject": "Hi {{trigger.payload.name}}",
                "text": "{{trigger.payload.name}}",
                "html": "<p>Hi {{trigger.payload.name}}</p>{{trigger.payload.sig | raw}}{{trigger.payload.name | escape}}",
            },
        }
    ],
}
EMAIL_PAYLOAD = {"name": SCRIPT, "sig": "<i>Team</i>"}


def test_values_in_an_email_html_are_escaped_and_raw_opts_out(conn: Conn, tenant: str) -> None:
    wf = install(conn, tenant, EMAIL_DOC)
    e = execution(conn, start(conn, tenant, wf, {"payload": EMAIL_PAYLOAD}))
    assert (e["status"], e["wait_kind"]) == ("waiting", "action")
    [msg] = queued_messages(conn)
    assert msg["message"]["input"] == {
        "to": "a@example.com",
        "subject": f"Hi {SCRIPT}",
        "text": SCRIPT,
        "html": f"<p>Hi {ESCAPED}</p><i>Team</i>{ESCAPED}",
    }


def test_a_whole_string_html_value_is_escaped_too(conn: Conn, tenant: str) -> None:
    doc = {
        "slug": "m2",
        "steps": [
            {"id": "m", "action": "email.send", "with": {"to": "a@b.c", "html": "{{trigger.payload.name}}"}}
        ],
    }
    start(conn, tenant, install(conn, tenant, doc), {"payload": EMAIL_PAYLOAD})
    [msg] = queued_messages(conn)
    assert msg["message"]["input"]["html"] == ESCAPED


def test_the_dry_run_shows_the_escaped_html(conn: Conn, tenant: str) -> None:
    result = dry_run(conn, EMAIL_DOC, {"payload": EMAIL_PAYLOAD})
    [step] = result["steps"]
    assert step["would_send"]["input"]["html"] == f"<p>Hi {ESCAPED}</p><i>Team</i>{ESCAPED}"
