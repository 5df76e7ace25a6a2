"""Conditions: conveyor.eval_condition and conveyor.condition_errors (sql/conditions.sql)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

NOW = "2026-06-15T12:00:00Z"
CONTEXT: dict[str, Any] = {
    "trigger": {
        "event_type": "crm.deal.updated",
        "payload": {
            "old": {"status": "open", "amount": 100, "meta": {"stage": "a"}},
            "new": {"status": "won", "amount": 100, "meta": {"stage": "b"}},
            "amount": 150,
            "amount_text": "150",
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "tags": ["vip", "new", 7],
            "attrs": {"color": "red"},
            "empty_text": "",
            "empty_list": [],
            "empty_obj": {},
            "nothing": None,
            "created_at": "2026-06-10T09:00:00Z",
            "due_on": "2026-06-20",
        },
    },
    "vars": {"threshold": 120, "statuses": ["won", "lost"], "since": "2026-06-01"},
    "now": NOW,
}


def evaluate(conn: Conn, condition: Any, context: Any = CONTEXT) -> bool:
    row = conn.execute(
        "select conveyor.eval_condition(%s, %s) as r", (Jsonb(condition), Jsonb(context))
    ).fetchone()
    assert row is not None
    return bool(row["r"])


def errors(conn: Conn, condition: Any, roots: list[str] | None = None) -> list[str]:
    rows = conn.execute(
        "select e from conveyor.condition_errors(%s, 'steps[1].if', %s) as e", (Jsonb(condition), roots)
    ).fetchall()
    return [r["e"] for r in rows]


def leaf(field: str, op: str, value: Any = ..., /) -> dict[str, Any]:
    node: dict[str, Any] = {"field": field, "op": op}
    if value is not ...:
        node["value"] = value
    return node


P = "trigger.payload."

CASES: list[tuple[dict[str, Any], bool]] = [
    (leaf(P + "amount", "equals", 150), True),
    (leaf(P + "amount", "equals", "150"), True),
    (leaf(P + "amount_text", "equals", 150.0), True),
    (leaf(P + "name", "equals", "ada lovelace"), False),
    (leaf(P + "amount", "not_equals", 151), True),
    (leaf(P + "missing", "equals", None), True),
    (leaf(P + "attrs", "equals", {"color": "red"}), True),
    (leaf(P + "amount", "gt", 100), True),
    (leaf(P + "amount_text", "gt", 99), True),
    (leaf(P + "amount", "gt", 150), False),
    (leaf(P + "amount", "gte", 150), True),
    (leaf(P + "amount", "lt", "{{vars.threshold}}"), False),
    (leaf(P + "amount", "lte", 150), True),
    (leaf(P + "name", "gt", "Ada"), True),
    (leaf(P + "missing", "gt", 1), False),
    (leaf(P + "created_at", "lt", "2026-06-10T10:00:00+00:00"), True),
    (leaf(P + "created_at", "equals", "2026-06-10 11:00:00+02:00"), True),
    (leaf(P + "name", "contains", "Love"), True),
    (leaf(P + "name", "contains", "love"), False),
    (leaf(P + "tags", "contains", "vip"), True),
    (leaf(P + "tags", "contains", "7"), True),
    (leaf(P + "tags", "contains", "vi"), False),
    (leaf(P + "attrs", "contains", "color"), True),
    (leaf(P + "tags", "not_contains", "old"), True),
    (leaf(P + "missing", "not_contains", "x"), True),
    (leaf(P + "email", "starts_with", "ada@"), True),
    (leaf(P + "email", "ends_with", "@example.com"), True),
    (leaf(P + "email", "ends_with", "@example.org"), False),
    (leaf(P + "amount", "starts_with", "15"), True),
    (leaf(P + "email", "matches", "^[a-z]+@example\\.(com|org)$"), True),
    (leaf(P + "name", "matches", "^[a-z]+$"), False),
    (leaf(P + "new.status", "in", ["won", "lost"]), True),
    (leaf(P + "new.status", "in", "{{vars.statuses}}"), True),
    (leaf(P + "amount", "in", [1, "150"]), True),
    (leaf(P + "new.status", "not_in", ["open"]), True),
    (leaf(P + "empty_text", "is_empty"), True),
    (leaf(P + "empty_list", "is_empty"), True),
    (leaf(P + "empty_obj", "is_empty"), True),
    (leaf(P + "nothing", "is_empty"), True),
    (leaf(P + "missing", "is_empty"), True),
    (leaf(P + "name", "is_empty"), False),
    (leaf(P + "tags", "is_not_empty"), True),
    (leaf(P + "nothing", "is_null"), True),
    (leaf(P + "missing", "is_null"), True),
    (leaf(P + "empty_text", "is_null"), False),
    (leaf(P + "name", "is_not_null"), True),
    (leaf("status", "changed"), True),
    (leaf("amount", "changed"), False),
    (leaf("meta.stage", "changed"), True),
    (leaf("status", "changed_to", "won"), True),
    (leaf("status", "changed_to", "lost"), False),
    (leaf("status", "changed_from", "open"), True),
    (leaf("status", "changed_from", "won"), False),
    (leaf("amount", "changed_to", 100), False),
    (leaf(P + "created_at", "before", "2026-06-11"), True),
    (leaf(P + "created_at", "after", "{{vars.since}}"), True),
    (leaf(P + "name", "before", "2026-06-11"), False),
    (leaf(P + "created_at", "within_last", "7 days"), True),
    (leaf(P + "created_at", "within_last", "2d"), False),
    (leaf(P + "due_on", "within_next", "1w"), True),
    (leaf(P + "due_on", "within_last", "30 days"), False),
    (leaf("{{trigger.payload.email | upper}}", "equals", "ADA@EXAMPLE.COM"), True),
    (leaf("{{trigger.payload.missing}}", "is_null"), True),
    (leaf("trigger.payload.tags.0", "equals", "vip"), True),
    ({"all": [leaf(P + "amount", "gt", 100), leaf("status", "changed_to", "won")]}, True),
    ({"all": [leaf(P + "amount", "gt", 100), leaf("status", "changed_to", "lost")]}, False),
    ({"any": [leaf(P + "amount", "gt", 1000), leaf("status", "changed_to", "won")]}, True),
    ({"any": [leaf(P + "amount", "gt", 1000), {"not": leaf(P + "name", "is_not_null")}]}, False),
    ({"not": {"all": []}}, False),
    ({"any": []}, False),
]


@pytest.mark.parametrize(("condition", "expected"), CASES, ids=[f"{c}" for c, _ in CASES])
def test_operator_semantics(conn: Conn, condition: dict[str, Any], expected: bool) -> None:
    assert evaluate(conn, condition) is expected


def test_changed_is_false_for_events_without_old_and_new(conn: Conn) -> None:
    created = {"trigger": {"payload": {"new": {"status": "won"}}}}
    assert evaluate(conn, leaf("status", "changed"), created) is False
    assert evaluate(conn, leaf("status", "changed_to", "won"), created) is False


def test_within_last_uses_now_when_the_context_has_none(conn: Conn) -> None:
    row = conn.execute("select (now() - interval '1 hour')::text as t").fetchone()
    assert row is not None
    context = {"trigger": {"payload": {"at": row["t"]}}}
    assert evaluate(conn, leaf(P + "at", "within_last", "2h"), context) is True
    assert evaluate(conn, leaf(P + "at", "within_last", "30m"), context) is False


def test_now_field_is_the_context_time_or_the_transaction_time(conn: Conn) -> None:
    assert evaluate(conn, leaf("now", "equals", "2026-06-15 14:00:00+02:00")) is True
    assert evaluate(conn, leaf("now", "within_last", "1m"), {}) is True
    assert evaluate(conn, leaf("now", "before", "2000-01-01"), {}) is False


def test_missing_template_in_value_is_an_error(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape('no value at "vars.nope"')):
        evaluate(conn, leaf(P + "amount", "gt", "{{vars.nope}}"))


def test_malformed_conditions_raise_at_run_time(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='unknown operator "eq"'):
        evaluate(conn, leaf(P + "amount", "eq", 1))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="needs an array"):
        evaluate(conn, leaf(P + "amount", "in", 1))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="expected an object"):
        evaluate(conn, {"all": [5]})


def test_condition_errors_accepts_a_valid_tree(conn: Conn) -> None:
    tree = {
        "any": [
            {"all": [leaf(P + "amount", "gte", "{{vars.threshold}}"), leaf("status", "changed_to", "won")]},
            {"not": leaf("{{trigger.payload.email | lower}}", "ends_with", "@example.com")},
            leaf(P + "created_at", "within_last", "7 days"),
            leaf(P + "name", "matches", "^A"),
            leaf(P + "tags", "is_empty"),
            leaf(P + "created_at", "before", "2026-01-01T00:00:00Z"),
        ]
    }
    assert errors(conn, tree) == []


def test_condition_errors_report_each_problem_with_its_path(conn: Conn) -> None:
    ops = (
        "equals, not_equals, gt, gte, lt, lte, contains, not_contains, starts_with, ends_with, matches, "
        "in, not_in, is_empty, is_not_empty, is_null, is_not_null, changed, changed_to, changed_from, "
        "before, after, within_last, within_next"
    )
    tree = {
        "all": [
            leaf(P + "amount", "eq", 1),
            leaf("trigr.payload.amount", "gt", 1),
            {"op": "gt", "value": 1},
            leaf(P + "amount", "gt"),
            leaf(P + "amount", "in", "won"),
            leaf(P + "created_at", "within_last", "7 dayz"),
            leaf(P + "name", "matches", "(("),
            leaf(P + "created_at", "before", "yesterday"),
            leaf("{{trigger.payload.email | shout}}", "is_null"),
            leaf(P + "amount", "equals", "{{vars.x | default}}"),
            {"not": 5},
            {"any": {"field": "x"}},
            {"field": P + "amount", "op": "is_null", "extra": 1},
        ]
    }
    assert errors(conn, tree) == [
        f'steps[1].if.all[0].op: unknown operator "eq" (expected one of {ops})',
        'steps[1].if.all[1].field: unknown root "trigr" (expected one of trigger, steps, vars, execution, '
        "tenant, now, item)",
        'steps[1].if.all[2].field: required (a dotted path such as "trigger.payload.amount" or one {{template}})',
        'steps[1].if.all[3].value: required for operator "gt"',
        'steps[1].if.all[4].value: operator "in" needs an array, got "won"',
        'steps[1].if.all[5].value: operator "within_last" needs a duration such as "7 days", got "7 dayz"',
        'steps[1].if.all[6].value: invalid regular expression "((" '
        "(invalid regular expression: parentheses () not balanced)",
        'steps[1].if.all[7].value: operator "before" needs an ISO 8601 timestamp or a {{template}}, got "yesterday"',
        'steps[1].if.all[8].field: unknown filter "shout" (expected one of default, upper, lower, date, '
        "currency, json, length, add, escape, raw)",
        'steps[1].if.all[9].value: filter "default" takes exactly one argument',
        'steps[1].if.all[10].not: a condition must be an object with "all", "any", "not" or "field" and "op"',
        "steps[1].if.all[11].any: must be an array of conditions",
        "steps[1].if.all[12].extra: unknown key (expected field, op, value)",
    ]


def test_condition_errors_respects_the_allowed_roots(conn: Conn) -> None:
    assert errors(conn, leaf("item.price", "gt", 1), ["item"]) == []
    assert errors(conn, leaf("vars.x", "gt", "{{item.y}}"), ["item"]) == [
        'steps[1].if.field: unknown root "vars" (expected one of item)'
    ]


def test_condition_step_refs_finds_paths_and_templates(conn: Conn) -> None:
    tree = {
        "any": [
            leaf("steps.fetch.output.ok", "is_null"),
            {"not": leaf("{{steps.lookup.output.id}}", "equals", "{{steps.other.output.id}}")},
            leaf("status", "changed"),
            leaf(P + "amount", "gt", 1),
        ]
    }
    rows = conn.execute(
        "select r from conveyor.condition_step_refs(%s) as r order by 1", (Jsonb(tree),)
    ).fetchall()
    assert [r["r"] for r in rows] == ["fetch", "lookup", "other"]


# ---------------------------------------------------------------------------
# Property test: eval_condition against a small Python reference evaluator.

NUMERIC = re.compile(r"\s*-?[0-9]+(\.[0-9]+)?\s*")
ISO = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.[0-9]{1,6})?)?"
    r"(Z|z|[+-]([0-9]{2})(?::?([0-9]{2}))?)?)?"
)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)


def ref_number(v: Any) -> Decimal | None:
    if is_number(v):
        return Decimal(str(v))
    if isinstance(v, str) and NUMERIC.fullmatch(v):
        return Decimal(v.strip())
    return None


def ref_timestamp(v: Any) -> datetime | None:
    if not isinstance(v, str) or not ISO.fullmatch(v):
        return None
    try:
        parsed = datetime.fromisoformat(v.replace("z", "Z"))
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def ref_compare(a: Any, b: Any) -> int | None:
    na, nb = ref_number(a), ref_number(b)
    if na is not None and nb is not None:
        return (na > nb) - (na < nb)
    ta, tb = ref_timestamp(a), ref_timestamp(b)
    if ta is not None and tb is not None:
        return (ta > tb) - (ta < tb)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


def json_eq(a: Any, b: Any) -> bool:
    if is_number(a) and is_number(b):
        return Decimal(str(a)) == Decimal(str(b))
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_eq(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_eq(a[k], b[k]) for k in a)
    return bool(a == b)


def ref_equals(a: Any, b: Any) -> bool:
    c = ref_compare(a, b)
    return c == 0 if c is not None else json_eq(a, b)


def scalar_text(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if is_number(v):
        text = str(Decimal(str(v)))
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(v, str):
        return v
    return None


def ref_leaf(op: str, a: Any, b: Any) -> bool:
    if op == "equals":
        return ref_equals(a, b)
    if op == "not_equals":
        return not ref_equals(a, b)
    if op in ("gt", "gte", "lt", "lte"):
        c = ref_compare(a, b)
        if c is None:
            return False
        return {"gt": c > 0, "gte": c >= 0, "lt": c < 0, "lte": c <= 0}[op]
    if op in ("contains", "not_contains"):
        if isinstance(a, str):
            tb = scalar_text(b)
            found = tb is not None and tb in a
        elif isinstance(a, list):
            found = any(ref_equals(e, b) for e in a)
        elif isinstance(a, dict):
            found = isinstance(b, str) and b in a
        else:
            found = False
        return found != (op == "not_contains")
    if op in ("starts_with", "ends_with"):
        ta, tb = scalar_text(a), scalar_text(b)
        if ta is None or tb is None:
            return False
        return ta.startswith(tb) if op == "starts_with" else ta.endswith(tb)
    if op in ("in", "not_in"):
        return any(ref_equals(a, e) for e in b) != (op == "not_in")
    if op in ("is_empty", "is_not_empty"):
        return (a is None or a == "" or a == [] or a == {}) != (op == "is_not_empty")
    if op == "is_null":
        return a is None
    if op == "is_not_null":
        return a is not None
    if op in ("before", "after"):
        ta, tb = ref_timestamp(a), ref_timestamp(b)
        if ta is None or tb is None:
            return False
        return ta < tb if op == "before" else ta > tb
    if op == "matches":
        ta = scalar_text(a)
        return ta is not None and re.search(b, ta) is not None
    if op in ("within_last", "within_next"):
        ta = ref_timestamp(a)
        now = ref_timestamp(NOW)
        assert now is not None
        if ta is None:
            return False
        if op == "within_last":
            return now - DURATIONS[b] <= ta <= now
        return now <= ta <= now + DURATIONS[b]
    raise AssertionError(op)


def ref_eval(node: dict[str, Any], payload: dict[str, Any]) -> bool:
    if "all" in node:
        return all(ref_eval(n, payload) for n in node["all"])
    if "any" in node:
        return any(ref_eval(n, payload) for n in node["any"])
    if "not" in node:
        return not ref_eval(node["not"], payload)
    field, value = node["field"], node.get("value")
    if field.startswith("{{"):
        field = field.strip("{}").strip()
    key = field.removeprefix(P)
    if isinstance(value, str) and value.startswith("{{"):
        value = payload[value.strip("{}").strip().removeprefix(P)]
    return ref_leaf(node["op"], payload.get(key), value)


SCALAR_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-20, 20),
    st.sampled_from([1.5, -0.25, 10.0, 100]),
    st.sampled_from(["", "a", "ab", "b", "B", "10", " 7 ", "2.50", "-3", "abc", "xa", "vip"]),
    st.sampled_from(
        [
            "2026-06-01",
            "2026-06-01T00:00:00Z",
            "2026-06-01 02:00:00+02:00",
            "2026-06-15T12:00",
            "2026-02-30",
            "2026-13-01",
            "2026-06-14T12:00:00Z",
            "2026-06-15T11:00:00+00:00",
            "2026-06-15T12:20:00Z",
            "2026-06-20",
        ]
    ),
)
VALUES = st.one_of(
    SCALAR_VALUES,
    st.lists(SCALAR_VALUES, max_size=3),
    st.dictionaries(st.sampled_from(["a", "vip"]), SCALAR_VALUES, max_size=2),
)
FIELDS = st.sampled_from(["k1", "k2", "k3", "missing"])
PATTERNS = ["^a", "b$", "a.b", "[0-9]+", "^$", "^-?[0-9]+$", "B|vip"]
DURATIONS = {
    "1 day": timedelta(days=1),
    "7 days": timedelta(days=7),
    "2h": timedelta(hours=2),
    "30m": timedelta(minutes=30),
}
UNARY = ["is_empty", "is_not_empty", "is_null", "is_not_null"]
BINARY = [
    "equals",
    "not_equals",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "not_contains",
    "starts_with",
    "ends_with",
    "before",
    "after",
]


@st.composite
def leaves(draw: st.DrawFn) -> dict[str, Any]:
    field = P + draw(FIELDS)
    kind = draw(st.sampled_from(["unary", "binary", "in", "matches", "within", "template"]))
    if kind == "unary":
        return {"field": field, "op": draw(st.sampled_from(UNARY))}
    if kind == "in":
        return {
            "field": field,
            "op": draw(st.sampled_from(["in", "not_in"])),
            "value": draw(st.lists(SCALAR_VALUES, max_size=3)),
        }
    if kind == "matches":
        return {"field": field, "op": "matches", "value": draw(st.sampled_from(PATTERNS))}
    if kind == "within":
        op = draw(st.sampled_from(["within_last", "within_next"]))
        return {"field": field, "op": op, "value": draw(st.sampled_from(sorted(DURATIONS)))}
    if kind == "template":
        # templates on either side: the field as one {{template}}, the value from a present key
        other = draw(st.sampled_from(["k1", "k2", "k3"]))
        return {
            "field": "{{" + field + "}}",
            "op": draw(st.sampled_from(BINARY)),
            "value": "{{" + P + other + "}}",
        }
    return {"field": field, "op": draw(st.sampled_from(BINARY)), "value": draw(SCALAR_VALUES)}


TREES = st.recursive(
    leaves(),
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=TREES, payload=st.fixed_dictionaries({"k1": VALUES, "k2": VALUES, "k3": VALUES}))
def test_eval_condition_matches_the_reference_evaluator(
    conn: Conn, tree: dict[str, Any], payload: dict[str, Any]
) -> None:
    context = {"trigger": {"payload": payload}, "now": NOW}
    assert evaluate(conn, tree, context) is ref_eval(tree, payload)


@pytest.mark.parametrize(
    ("condition", "plan"),
    [
        (
            {"field": "steps.notify.output.status", "op": "equals", "value": 200},
            {"root": "steps", "rest": "{notify,output,status}", "op": "equals", "value": 200},
        ),
        (
            {"field": "trigger.payload.amount", "op": "gt", "value": 5},
            {"root": "trigger", "rest": "{payload,amount}", "op": "gt", "value": 5},
        ),
        (
            {"field": "vars.n", "op": "is_null"},
            {"root": "vars", "rest": "{n}", "op": "is_null", "value": None},
        ),
        ({"field": "execution.id", "op": "equals", "value": 1}, None),
        ({"field": "now", "op": "after", "value": "2026-01-01"}, None),
        ({"field": "{{vars.n}}", "op": "equals", "value": 1}, None),
        ({"field": "vars.n", "op": "equals", "value": "{{vars.m}}"}, None),
        ({"field": "amount", "op": "changed"}, None),
        ({"field": "trigger.payload.at", "op": "within_last", "value": "1 day"}, None),
        ({"field": "vars.n", "op": "resembles", "value": 1}, None),
        ({"all": [{"field": "vars.n", "op": "is_null"}]}, None),
        ({"op": "equals", "value": 1}, None),
    ],
)
def test_condition_plan_covers_leaves_that_read_only_their_field(
    conn: Conn, condition: dict[str, Any], plan: dict[str, Any] | None
) -> None:
    row = conn.execute("select conveyor.condition_plan(%s) as r", (Jsonb(condition),)).fetchone()
    assert row is not None and row["r"] == plan


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(condition=leaves(), payload=st.fixed_dictionaries({"k1": VALUES, "k2": VALUES, "k3": VALUES}))
def test_a_planned_leaf_evaluates_as_the_leaf_does(
    conn: Conn, condition: dict[str, Any], payload: dict[str, Any]
) -> None:
    """What the interpreter relies on when it applies a planned leaf's operator itself."""
    context = {"trigger": {"payload": payload}, "now": NOW}
    row = conn.execute(
        "select p.plan,"
        " conveyor.eval_condition_leaf(%(c)s, %(ctx)s) as whole,"
        " case when p.plan is not null then conveyor.condition_compare(p.plan ->> 'op',"
        "   coalesce(%(ctx)s -> 'trigger' #> (p.plan ->> 'rest')::text[], 'null'), p.plan -> 'value') end as planned"
        " from (select conveyor.condition_plan(%(c)s) as plan) as p",
        {"c": Jsonb(condition), "ctx": Jsonb(context)},
    ).fetchone()
    assert row is not None
    if row["plan"] is not None:
        assert row["plan"]["root"] == "trigger"
        assert row["planned"] is row["whole"]


def test_condition_compare_names_an_operator_it_does_not_know(conn: Conn) -> None:
    with pytest.raises(
        psycopg.errors.InvalidParameterValue, match=r'condition\.op: unknown operator "resembles"'
    ):
        conn.execute("select conveyor.condition_compare('resembles', '1', '1')")
