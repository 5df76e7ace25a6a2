"""Event filters: compile_filter, match_filter, filter_errors (sql/filters.sql)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

TRIGGER = {
    "event_type": "crm.deal.updated",
    "source": "crm",
    "payload": {
        "amount": 150,
        "stage": "won",
        "owner": {"id": 7, "name": "Ada"},
        "tags": ["vip", "new"],
        "items": [{"sku": "x-1", "qty": 2}, {"sku": "y-2", "qty": 1}],
        "note": 'say "hi" \\ bye',
        "closed_at": None,
    },
}


def match(conn: Conn, flt: Any, trigger: Any = TRIGGER) -> bool:
    row = conn.execute("select conveyor.match_filter(%s, %s) as r", (Jsonb(flt), Jsonb(trigger))).fetchone()
    assert row is not None
    return bool(row["r"])


def compiled_match(conn: Conn, flt: Any, trigger: Any = TRIGGER) -> bool:
    row = conn.execute(
        "select jsonb_path_match(%s, conveyor.compile_filter(%s)) as r", (Jsonb(trigger), Jsonb(flt))
    ).fetchone()
    assert row is not None
    return bool(row["r"])


CASES: list[tuple[dict[str, Any], bool]] = [
    ({"payload.amount": {"$gte": 100}, "payload.stage": "won"}, True),
    ({"payload.amount": {"$gte": 100}, "payload.stage": "lost"}, False),
    ({"payload.amount": {"$gt": 100, "$lt": 200}}, True),
    ({"payload.amount": {"$lte": 149}}, False),
    ({"payload.amount": 150}, True),
    ({"payload.amount": "150"}, False),
    ({"payload.amount": {"$ne": 150}}, False),
    ({"payload.missing": {"$ne": 1}}, True),
    ({"payload.stage": {"$in": ["won", "lost"]}}, True),
    ({"payload.stage": {"$in": []}}, False),
    ({"payload.stage": {"$nin": ["won"]}}, False),
    ({"payload.missing": {"$nin": ["won"]}}, True),
    ({"payload.tags": "vip"}, True),
    ({"payload.tags": {"$contains": "new"}}, True),
    ({"payload.owner.name": {"$contains": "d"}}, True),
    ({"payload.owner.name": {"$contains": "."}}, False),
    ({"payload.owner.id": 7}, True),
    ({"payload.items.1.sku": "y-2"}, True),
    ({"payload.items.sku": "x-1"}, True),
    ({"payload.items.qty": {"$gt": 1}}, True),
    ({"payload.closed_at": None}, True),
    ({"payload.closed_at": {"$exists": True}}, True),
    ({"payload.missing": {"$exists": True}}, False),
    ({"payload.missing": {"$exists": False}}, True),
    ({"payload.note": 'say "hi" \\ bye'}, True),
    ({"payload.note": {"$contains": '"hi" \\'}}, True),
    ({"source": "crm", "event_type": {"$in": ["crm.deal.updated"]}}, True),
    ({"payload.stage": {"$gt": "a"}}, True),
    ({}, True),
]


@pytest.mark.parametrize(("flt", "expected"), CASES, ids=[str(c) for c, _ in CASES])
def test_filter_semantics(conn: Conn, flt: dict[str, Any], expected: bool) -> None:
    assert match(conn, flt) is expected
    assert compiled_match(conn, flt) is expected


def test_null_filter_matches_everything_and_compiles_to_null(conn: Conn) -> None:
    row = conn.execute(
        "select conveyor.compile_filter(null) as c, conveyor.match_filter(null, '{}') as m"
    ).fetchone()
    assert row == {"c": None, "m": True}


def test_odd_keys_and_strings_are_quoted_in_the_jsonpath(conn: Conn) -> None:
    trigger = {"payload": {'we"ird key\\': {"a b": "x'y\"z\n"}, "$": 1}}
    flt = {'payload.we"ird key\\.a b': "x'y\"z\n", "payload.$": 1}
    assert match(conn, flt, trigger) is True
    assert match(conn, {'payload.we"ird key\\.a b': "x"}, trigger) is False
    row = conn.execute(
        "select conveyor.compile_filter(%s)::text as c", (Jsonb({"payload.a b": 1}),)
    ).fetchone()
    assert row == {"c": 'exists ($."payload"."a b"?(@ == 1))'}


def test_filter_errors_name_each_problem(conn: Conn) -> None:
    flt = {
        "": 1,
        "a..b": 1,
        "tags": ["a"],
        "obj": {"a": 1},
        "none": {},
        "ops": {"$foo": 1, "$in": 3, "$gt": True, "$exists": 1, "$eq": {"x": 1}},
    }
    rows = conn.execute(
        "select e from conveyor.filter_errors(%s, 'trigger.filter') as e order by 1", (Jsonb(flt),)
    ).fetchall()
    ops = "$eq, $ne, $gt, $gte, $lt, $lte, $contains, $in, $nin, $exists"
    assert [r["e"] for r in rows] == sorted(
        [
            'trigger.filter[""]: invalid field path (empty segment)',
            'trigger.filter["a..b"]: invalid field path (empty segment)',
            'trigger.filter["tags"]: a list is not a value (use {"$in": [...]} to match any of several values)',
            'trigger.filter["obj"]: an object value must use operators only ({"$gte": 100}); objects cannot be compared',
            'trigger.filter["none"]: an operator object needs at least one operator',
            f'trigger.filter["ops"].$foo: unknown filter operator "$foo" (expected one of {ops})',
            'trigger.filter["ops"].$in: operator "$in" needs an array of strings, numbers, booleans or nulls',
            'trigger.filter["ops"].$gt: operator "$gt" needs a number or a string',
            'trigger.filter["ops"].$exists: operator "$exists" needs true or false',
            'trigger.filter["ops"].$eq: operator "$eq" needs a string, number, boolean or null',
        ]
    )
    rows = conn.execute("select e from conveyor.filter_errors('[1]', 'f') as e").fetchall()
    assert [r["e"] for r in rows] == [
        'f: a filter must be an object of "field.path": value or {"$op": value}'
    ]


def test_invalid_filter_raises_on_compile(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r'invalid filter: filter\["x"\]\.\$foo'):
        match(conn, {"x": {"$foo": 1}})


# ---------------------------------------------------------------------------
# Property test: match_filter against a Python reference of the documented semantics
# (jsonpath lax mode: member access and filters look one level into arrays, comparisons
# one more level; values of different types never match).

KEYS = ["a", "b", "0", "x y", 'q"']
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([1.5, -0.5]),
    st.sampled_from(["", "a", "ab", "b", "B", "1", 'q"\\', "é"]),
)
DOCS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(KEYS), children, max_size=3)
    ),
    max_leaves=10,
)


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "container"


def cmp(x: Any, op: str, lit: Any) -> bool:
    if kind(x) != kind(lit) or kind(x) == "container":
        return False
    if kind(x) == "null":
        return op == "=="
    a, b = (Decimal(str(x)), Decimal(str(lit))) if kind(x) == "number" else (x, lit)
    return {"==": a == b, ">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[op]


def unwrap(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return out


def path_values(doc: Any, key: str) -> list[Any]:
    seq = [doc]
    for seg in key.split("."):
        nxt: list[Any] = []
        for v in seq:
            if seg.isdigit():
                if isinstance(v, list):
                    nxt.extend(v[int(seg) : int(seg) + 1])
                elif int(seg) == 0:
                    nxt.append(v)
            else:
                for item in v if isinstance(v, list) else [v]:
                    if isinstance(item, dict) and seg in item:
                        nxt.append(item[seg])
        seq = nxt
    return seq


def any_item(doc: Any, key: str, pred: Any) -> bool:
    return any(any(pred(x) for x in unwrap([item])) for item in unwrap(path_values(doc, key)))


def ref_match(flt: dict[str, Any], doc: Any) -> bool:
    for key, spec in flt.items():
        ops = spec if isinstance(spec, dict) else {"$eq": spec}
        for op, lit in ops.items():
            if op == "$exists":
                ok = bool(path_values(doc, key)) == lit
            elif op in ("$eq", "$ne"):
                ok = any_item(doc, key, lambda x, lit=lit: cmp(x, "==", lit)) == (op == "$eq")
            elif op in ("$in", "$nin"):
                ok = any_item(doc, key, lambda x, lit=lit: any(cmp(x, "==", v) for v in lit)) == (op == "$in")
            elif op == "$contains":
                ok = any_item(
                    doc,
                    key,
                    lambda x, lit=lit: (
                        cmp(x, "==", lit) or (isinstance(lit, str) and isinstance(x, str) and lit in x)
                    ),
                )
            else:
                sym = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
                ok = any_item(doc, key, lambda x, lit=lit, sym=sym: cmp(x, sym, lit))
            if not ok:
                return False
    return True


FILTER_KEYS = st.lists(st.sampled_from(KEYS), min_size=1, max_size=3).map(".".join)
ORDERED = st.one_of(st.integers(-3, 3), st.sampled_from([1.5, "a", "B", ""]))
OPS = st.one_of(
    st.tuples(st.sampled_from(["$eq", "$ne", "$contains"]), SCALARS),
    st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ORDERED),
    st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(SCALARS, max_size=3)),
    st.tuples(st.just("$exists"), st.booleans()),
)
SPECS = st.one_of(
    SCALARS,
    st.dictionaries(st.sampled_from(["$eq"]), SCALARS, min_size=1),
    st.lists(OPS, min_size=1, max_size=2).map(dict),
)
FILTERS = st.dictionaries(FILTER_KEYS, SPECS, max_size=3)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flt=FILTERS, doc=DOCS)
def test_match_filter_matches_the_reference(conn: Conn, flt: dict[str, Any], doc: Any) -> None:
    expected = ref_match(flt, doc)
    row = conn.execute(
        "select conveyor.match_filter(%(f)s, %(d)s) as m, jsonb_path_match(%(d)s, conveyor.compile_filter(%(f)s)) as c",
        {"f": Jsonb(flt), "d": Jsonb(doc)},
    ).fetchone()
    assert row == {"m": expected, "c": expected}
