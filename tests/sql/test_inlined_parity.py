"""Every hand-inlined copy on the hot path answers like its original.

The hot path inlines small functions (a SQL function called from plpgsql is planned again in
every transaction, and one with its own search_path is never inlined by the planner). Each
copy is tied here to the function it copies, by behaviour: a change to one that the other
does not follow fails a test below.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from tests.sql.dispatch_helpers import add_tenant, emit, publish

Conn = psycopg.Connection[dict[str, Any]]
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# text PostgreSQL stores (no NUL, no lone surrogates)
CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
# JSON scalars the engine meets in payloads: numbers, numeric strings (with spaces, signs,
# decimals), other strings, booleans, null
NUMERIC_TEXT = st.from_regex(r"\A\s?-?[0-9]{1,6}(\.[0-9]{1,4})?\s?\Z")
SCALARS = st.one_of(
    st.integers(-(10**9), 10**9),
    st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**6), max_value=10**6).map(
        float
    ),
    NUMERIC_TEXT,
    st.text(CHARS, max_size=12),
    st.booleans(),
    st.none(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(CHARS, max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
KEYS = st.sampled_from(["a", "b", "c", "d_1", "e-2"])
CONTEXTS = st.recursive(
    st.dictionaries(KEYS, SCALARS, max_size=3),
    lambda inner: st.dictionaries(KEYS, inner | SCALARS, max_size=3),
    max_leaves=8,
)


def one(conn: Conn, sql: str, *params: Any) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def outcome(conn: Conn, sql: str, *params: Any) -> tuple[str, Any]:
    """("ok", value) or ("error", SQLSTATE), the transaction left usable."""
    try:
        with conn.transaction():
            return ("ok", one(conn, sql, *params))
    except psycopg.Error as exc:
        return ("error", exc.sqlstate)


# --- conveyor.json_number, inlined in conveyor.json_compare ------------------------------


@SETTINGS
@given(left=SCALARS, right=SCALARS)
def test_json_compare_orders_numbers_as_json_number_reads_them(conn: Conn, left: Any, right: Any) -> None:
    numbers = conn.execute(
        "select conveyor.json_number(%s) as l, conveyor.json_number(%s) as r", (Jsonb(left), Jsonb(right))
    ).fetchone()
    assert numbers is not None
    compared = one(conn, "select conveyor.json_compare(%s, %s)", Jsonb(left), Jsonb(right))
    if numbers["l"] is not None and numbers["r"] is not None:
        expected = (numbers["l"] > numbers["r"]) - (numbers["l"] < numbers["r"])
        assert compared == expected


# --- conveyor.json_text, inlined in conveyor.render_string -------------------------------


@SETTINGS
@given(value=VALUES)
def test_a_value_inside_a_template_string_is_the_text_json_text_gives(conn: Conn, value: Any) -> None:
    rendered = one(
        conn, "select conveyor.render_string('<{{x}}>', jsonb_build_object('x', %s::jsonb))", Jsonb(value)
    )
    text = one(conn, "select conveyor.json_text(%s)", Jsonb(value))
    assert rendered == f"<{text if text is not None else ''}>"


# --- template_eval's fast path, inlined in conveyor.render_string -------------------------


@SETTINGS
@given(context=CONTEXTS, path=st.lists(KEYS, min_size=1, max_size=3))
def test_a_plain_path_renders_what_template_eval_finds(
    conn: Conn, context: dict[str, Any], path: list[str]
) -> None:
    expression = ".".join(path)
    inlined = outcome(
        conn, "select conveyor.render_string(%s, %s)::text", "{{" + expression + "}}", Jsonb(context)
    )
    original = outcome(
        conn, "select coalesce(conveyor.template_eval(%s, %s)::text, 'no value')", expression, Jsonb(context)
    )
    if original == ("ok", "no value"):
        # no value at the path (SQL null; a JSON null is a value): render_string names it
        assert inlined == ("error", "22023")
    else:
        assert inlined == original


# --- conveyor.condition_operators(), inlined in conveyor.condition_compare -----------------


def test_condition_compare_knows_exactly_the_operators_condition_operators_lists(conn: Conn) -> None:
    def refusal(op: str) -> str | None:
        condition = Jsonb({"field": "x", "op": op, "value": 1})
        return str(one(conn, "select (conveyor.try_eval_condition(%s, '{\"x\": 1}')).error", condition))

    for op in one(conn, "select conveyor.condition_operators()"):
        # an operator may refuse the value (a duration, a pattern), never as unknown
        assert "unknown operator" not in refusal(op), op
    for op in ["equal", "greater", "regex", "exists", ""]:
        assert "unknown operator" in refusal(op), op


# --- limit settings read inline ----------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "original", "fits", "too_long"),
    [
        (
            "conveyor.max_regex_subject",
            "conveyor.max_regex_subject()",
            "select conveyor.eval_condition_leaf(jsonb_build_object('field', 'x', 'op', 'matches', 'value', 'a'),"
            " jsonb_build_object('x', repeat('a', %s)))",
            "select conveyor.eval_condition_leaf(jsonb_build_object('field', 'x', 'op', 'matches', 'value', 'a'),"
            " jsonb_build_object('x', repeat('a', %s + 1)))",
        ),
        (
            "conveyor.max_rendered_bytes",
            "conveyor.max_rendered_bytes()",
            "select conveyor.render_string('{{x}}.', jsonb_build_object('x', repeat('a', %s - 1)))",
            "select conveyor.render_string('{{x}}.', jsonb_build_object('x', repeat('a', %s)))",
        ),
        (
            "conveyor.max_regex_pattern",
            "conveyor.max_regex_pattern()",
            "select conveyor.regex_refusal(repeat('a', %s), false) is null",
            "select conveyor.regex_refusal(repeat('a', %s + 1), false) is null",
        ),
    ],
)
@pytest.mark.parametrize("limit", [None, 300, 2000])
def test_a_limit_read_inline_is_the_limit_its_function_reads(
    conn: Conn, setting: str, original: str, fits: str, too_long: str, limit: int | None
) -> None:
    if limit is not None:
        conn.execute(f"set {setting} = {limit}")
    value = one(conn, f"select {original}")
    assert limit is None or value == limit
    assert outcome(conn, fits, value)[0] == "ok"
    assert outcome(conn, fits, value) != ("ok", False)
    refused = outcome(conn, too_long, value)
    assert refused in (("error", "54000"), ("ok", False)), refused


# --- conveyor.event_trigger_object and event_match_keys, inlined in dispatch and waits ----


PAYLOADS = st.dictionaries(st.sampled_from(["id", "amount", "name", "tags"]), SCALARS, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=PAYLOADS, entity_id=st.none() | st.text(CHARS, min_size=1, max_size=8))
def test_an_execution_sees_its_event_as_event_trigger_object_builds_it(
    conn: Conn, payload: dict[str, Any], entity_id: str | None
) -> None:
    t = add_tenant(conn, "acme")
    conn.execute("delete from conveyor.executions; delete from conveyor.events")
    if not one(conn, "select count(*) from conveyor.workflows"):
        publish(conn, t, "seen", {"event": "crm.deal.won"})
    event_id = emit(conn, t, "crm.deal.won", payload, entity_type="deal", entity_id=entity_id)
    conn.execute("select conveyor.dispatch(10)")
    row = conn.execute(
        "select x.trigger = conveyor.event_trigger_object(e) as same from conveyor.executions as x"
        " join conveyor.events as e on e.event_id = x.event_id where e.event_id = %s",
        (event_id,),
    ).fetchone()
    assert row == {"same": True}


@pytest.mark.parametrize("event_type", ["crm.deal.won", "crm.deal_stage.changed_to_won", "a.b.c"])
def test_dispatch_matches_an_event_by_exactly_the_keys_event_match_keys_lists(
    conn: Conn, event_type: str
) -> None:
    t = add_tenant(conn, "acme")
    keys = one(conn, "select conveyor.event_match_keys(%s)", event_type)
    module, entity, _ = event_type.split(".")
    candidates = [event_type, f"{module}.{entity}.*", f"{module}.*", "*", f"{module}.other.*", "other.*"]
    for n, pattern in enumerate(candidates):
        publish(conn, t, f"w{n}", {"event": pattern})
    emit(conn, t, event_type)
    conn.execute("select conveyor.dispatch(10)")
    started = {
        r["pattern"]
        for r in conn.execute(
            "select w.definition -> 'trigger' ->> 'event' as pattern from conveyor.executions as x"
            " join conveyor.workflow_versions as w on w.workflow_id = x.workflow_id and w.version = x.version"
        )
    }
    assert started == {p for p in candidates if p in keys}


def test_a_wait_takes_its_event_as_event_trigger_object_builds_it(conn: Conn) -> None:
    t = add_tenant(conn, "acme")
    publish(
        conn,
        t,
        "ask",
        {"event": "chat.question.asked"},
        steps=[
            {
                "id": "w",
                "wait_for_event": {
                    "event": "chat.answer.given",
                    "match": {"payload.q": "{{trigger.payload.q}}"},
                    "timeout": "1 hour",
                },
            },
            {"id": "done", "set": {"r": "event"}},
        ],
    )
    emit(conn, t, "chat.question.asked", {"q": "q1"})
    conn.execute("select conveyor.dispatch(10)")
    answer = emit(
        conn, t, "chat.answer.given", {"q": "q1", "a": [1, {"b": None}]}, entity_type="chat", entity_id="7"
    )
    conn.execute("select conveyor.dispatch(10)")
    row = conn.execute(
        "select r.output -> 'event' = conveyor.event_trigger_object(e) as same"
        " from conveyor.step_runs as r, conveyor.events as e"
        " where r.step_id = 'w' and r.output ? 'event' and e.event_id = %s",
        (answer,),
    ).fetchone()
    assert row == {"same": True}
