"""Templates: conveyor.render, template_errors, template_step_refs (sql/templates.sql)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

CONTEXT = {
    "trigger": {
        "event_type": "crm.contact.created",
        "payload": {
            "new": {"first_name": "ada", "email": "Ada@Example.com", "amount": 1234.5, "tags": ["a", "b"]},
            "when": "2026-03-01T08:30:00Z",
            "nothing": None,
            "count": 3,
            "ratio": 2.50,
            "flag": True,
        },
    },
    "steps": {"fetch": {"output": {"items": [{"sku": "x-1"}, {"sku": "x-2"}], "message_id": "m-9"}}},
    "vars": {"greeting": "Hello"},
    "execution": {"id": 42},
    "tenant": {"id": "acme", "name": "Acme", "timezone": "Europe/Paris"},
    "now": "2026-03-01T10:00:00Z",
}


def render(conn: Conn, value: Any, context: Any = CONTEXT, where: str | None = None) -> Any:
    row = conn.execute(
        "select conveyor.render(%s, %s, %s) as r", (Jsonb(value), Jsonb(context), where)
    ).fetchone()
    assert row is not None
    return row["r"]


def template_errors(conn: Conn, value: Any, path: str = "with", roots: list[str] | None = None) -> list[str]:
    rows = conn.execute(
        "select e from conveyor.template_errors(%s, %s, %s) as e order by 1", (Jsonb(value), path, roots)
    ).fetchall()
    return [r["e"] for r in rows]


def test_whole_expression_keeps_the_json_type(conn: Conn) -> None:
    assert render(conn, "{{trigger.payload.count}}") == 3
    assert render(conn, "{{ trigger.payload.flag }}") is True
    assert render(conn, "{{trigger.payload.new.tags}}") == ["a", "b"]
    assert render(conn, "{{steps.fetch.output.items.1}}") == {"sku": "x-2"}
    assert render(conn, "{{trigger.payload.nothing}}") is None
    assert render(conn, "{{execution.id}}") == 42


def test_expressions_inside_text_render_as_text(conn: Conn) -> None:
    assert render(conn, "{{vars.greeting}}, {{trigger.payload.new.first_name}}!") == "Hello, ada!"
    assert (
        render(conn, "ratio {{trigger.payload.ratio}} count {{trigger.payload.count}}") == "ratio 2.5 count 3"
    )
    assert render(conn, "tags={{trigger.payload.new.tags}}") == 'tags=["a", "b"]'
    assert render(conn, "[{{trigger.payload.nothing}}]") == "[]"
    assert render(conn, "plain text, no templates") == "plain text, no templates"


def test_render_is_deep_over_objects_and_arrays(conn: Conn) -> None:
    value = {
        "to": "{{trigger.payload.new.email | lower}}",
        "lines": ["{{trigger.payload.count}}", {"n": "{{execution.id}}"}, 7, None],
        "keep": True,
    }
    assert render(conn, value) == {
        "to": "ada@example.com",
        "lines": [3, {"n": 42}, 7, None],
        "keep": True,
    }


def test_missing_field_raises_naming_where_expression_and_path(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue) as err:
        render(conn, {"to": "Hi {{trigger.payload.new.last_name}}"}, where="steps[2].with")
    assert err.value.diag.message_primary == (
        'steps[2].with.to: {{trigger.payload.new.last_name}}: no value at "trigger.payload.new.last_name"'
    )


def test_default_supplies_missing_and_null_values(conn: Conn) -> None:
    assert render(conn, "Hi {{trigger.payload.new.last_name | default: 'there'}}") == "Hi there"
    assert render(conn, "{{trigger.payload.nothing | default: 5}}") == 5
    assert render(conn, '{{vars.missing | default: "a | b, c"}}') == "a | b, c"
    assert render(conn, "{{vars.missing | default: 'it''s'}}") == "it's"
    assert render(conn, r"{{vars.missing | default: 'it\'s'}}") == "it's"
    assert render(conn, "{{trigger.payload.count | default: 0}}") == 3


def test_case_json_and_length_filters(conn: Conn) -> None:
    assert render(conn, "{{trigger.payload.new.first_name | upper}}") == "ADA"
    assert render(conn, "{{trigger.payload.new.email | lower}}") == "ada@example.com"
    assert render(conn, "{{steps.fetch.output.items.0 | json}}") == '{"sku": "x-1"}'
    assert render(conn, "{{trigger.payload.new.tags | length}}") == 2
    assert render(conn, "{{trigger.payload.new.first_name | length}}") == 3
    assert render(conn, "{{trigger.payload.new | length}}") == 4
    assert render(conn, "{{trigger.payload.nothing | length}}") == 0


def test_date_filter_uses_to_char_patterns_and_time_zones(conn: Conn) -> None:
    assert render(conn, "{{trigger.payload.when | date: 'YYYY-MM-DD HH24:MI', 'UTC'}}") == "2026-03-01 08:30"
    assert (
        render(conn, "{{trigger.payload.when | date: 'YYYY-MM-DD HH24:MI', 'Australia/Sydney'}}")
        == "2026-03-01 19:30"
    )
    # without a zone argument, the tenant's time zone (Europe/Paris, UTC+1 in March)
    assert render(conn, "{{trigger.payload.when | date: 'HH24:MI'}}") == "09:30"


def test_add_filter_adds_a_duration_to_a_timestamp(conn: Conn) -> None:
    assert render(conn, "{{now | add: '1 day'}}") == "2026-03-02T10:00:00Z"
    assert render(conn, "{{trigger.payload.when | add: '90m' | date: 'HH24:MI', 'UTC'}}") == "10:00"


def test_now_defaults_to_the_transaction_time(conn: Conn) -> None:
    row = conn.execute(
        "select (conveyor.render('\"{{now}}\"', '{}') #>> '{}')::timestamptz = now() as same"
    ).fetchone()
    assert row == {"same": True}


def test_currency_filter_formats_two_decimals_with_code_suffix(conn: Conn) -> None:
    assert render(conn, "{{trigger.payload.new.amount | currency: 'EUR'}}") == "1234.50 EUR"
    assert render(conn, "{{trigger.payload.count | currency}}") == "3.00"
    assert render(conn, {"v": "{{x | currency: 'USD'}}"}, {"x": "19.999"}, None) == {"v": "20.00 USD"}


def test_filter_on_wrong_value_type_raises(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not an ISO 8601"):
        render(conn, "{{trigger.payload.count | date: 'YYYY'}}")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="is not a number"):
        render(conn, "{{vars.greeting | currency: 'EUR'}}")


def test_render_raises_on_malformed_templates(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape('unclosed "{{"')):
        render(conn, "Hi {{trigger.payload.new.first_name")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape('unknown filter "shout"')):
        render(conn, "{{vars.greeting | shout}}")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=re.escape('no value at "trigr.payload"')):
        render(conn, "{{trigr.payload}}")


def test_template_errors_name_the_path_of_each_problem(conn: Conn) -> None:
    value = {
        "to": "{{trigr.payload.email}}",
        "cc": ["ok {{vars.x}}", "{{ }}", "x {{ vars.y"],
        "subject": "{{vars.x | shout}}",
        "body": "{{vars.x | default}} {{now | add: '3 parsecs'}} {{now | date: 'YYYY', 'Mars/Base'}}",
        "odd key": "{{vars.x | upper: 1}}",
        "bad": "{{vars.x | default: 'a' 'b'}}",
    }
    assert template_errors(conn, value, "steps[2].with") == sorted(
        [
            'steps[2].with.to: unknown template root "trigr" (expected one of trigger, steps, vars, '
            "execution, tenant, now, item)",
            "steps[2].with.cc[1]: empty template expression",
            'steps[2].with.cc[2]: unclosed "{{" (expected "}}")',
            'steps[2].with.subject: unknown filter "shout" (expected one of default, upper, lower, date, '
            "currency, json, length, add, escape, raw)",
            'steps[2].with.body: filter "default" takes exactly one argument',
            'steps[2].with.body: filter "add": invalid duration "3 parsecs"',
            'steps[2].with.body: filter "date": unknown time zone "Mars/Base"',
            'steps[2].with["odd key"]: filter "upper" takes no arguments',
            "steps[2].with.bad: cannot parse \"| default: 'a' 'b'\" (expected | filter or | filter: arg, ...)",
        ]
    )


@pytest.mark.parametrize(
    "expression",
    [
        "vars.x | lower:",
        "vars.x | default: 'a',",
        "vars.x | default: abc",
        "vars.x | default: 1 2",
        "vars.x |",
        "vars.x | default: 'unterminated",
        "vars.x | 9lives",
    ],
)
def test_malformed_filter_syntax_is_reported_not_ignored(conn: Conn, expression: str) -> None:
    [message] = template_errors(conn, "{{" + expression + "}}", "with.to")
    assert message.startswith('with.to: cannot parse "|')
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot parse"):
        render(conn, "{{" + expression + "}}", {"vars": {"x": "v"}})


def test_filter_arguments_accept_every_literal_form(conn: Conn) -> None:
    context = {"vars": {}}
    assert render(conn, "{{vars.x | default: 'it''s'}}", context) == "it's"
    assert render(conn, '{{vars.x | default: "say \\"hi\\""}}', context) == 'say "hi"'
    assert render(conn, "{{vars.x | default: -2.5}}", context) == -2.5
    assert render(conn, "{{vars.x | default: true}}", context) is True
    assert render(conn, "{{vars.x | default: null | default: 'b'}}", context) == "b"
    assert render(conn, "{{vars.x|default:'a|b, c'|upper}}", context) == "A|B, C"


def test_template_errors_respects_the_allowed_roots(conn: Conn) -> None:
    assert template_errors(conn, "{{item.price}}", "map", ["item", "vars"]) == []
    assert template_errors(conn, "{{trigger.x}}", "map", ["item", "vars"]) == [
        'map: unknown template root "trigger" (expected one of item, vars)'
    ]
    assert template_errors(conn, {"a": ["{{steps.s.output | default: 1}}", 5]}, "with") == []


def test_template_step_refs_lists_referenced_steps(conn: Conn) -> None:
    rows = conn.execute(
        "select r from conveyor.template_step_refs(%s) as r order by 1",
        (
            Jsonb(
                {
                    "a": "{{steps.fetch.output.x}} and {{steps.replied?.output}}",
                    "b": ["{{steps.fetch.output}}"],
                }
            ),
        ),
    ).fetchall()
    assert [r["r"] for r in rows] == ["fetch", "replied?"]


# ---------------------------------------------------------------------------
# Property test: render against a small Python reference renderer.

KEYS = st.sampled_from(["a", "b", "name", "x_1", "n"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**9), max_value=10**9),
    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False, allow_infinity=False).map(
        lambda d: d + 0
    ),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="{}"), max_size=8
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(KEYS, children, max_size=3)),
    max_leaves=8,
)


def to_json(value: Any) -> str:
    """JSON text with Decimals as JSON numbers."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(json.dumps(k) + ": " + to_json(v) for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=False)


def ref_number_text(value: Decimal | int) -> str:
    text = str(Decimal(value))
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def ref_lookup(context: Any, path: list[str]) -> tuple[bool, Any]:
    current = context
    for seg in path:
        if isinstance(current, dict) and seg in current:
            current = current[seg]
        elif (
            isinstance(current, list)
            and re.fullmatch(r"-?[0-9]+", seg)
            and -len(current) <= int(seg) < len(current)
        ):
            current = current[int(seg)]
        else:
            return False, None
    return True, current


def pg_json_text(value: Any) -> str:
    """PostgreSQL's jsonb text output: ', ' and ': ' separators, keys shortest-first then bytewise."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return (
            "{"
            + ", ".join(json.dumps(k, ensure_ascii=False) + ": " + pg_json_text(value[k]) for k in keys)
            + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(pg_json_text(v) for v in value) + "]"
    return to_json(value)


def ref_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return ref_number_text(value)
    if isinstance(value, str):
        return value
    return pg_json_text(value)


def ref_apply(value: Any, found: bool, name: str, arg: Any) -> tuple[bool, Any]:
    if name == "default":
        return (True, arg) if not found or value is None else (True, value)
    if not found or value is None:
        return (True, 0) if name == "length" and found else (found, value)
    if name == "upper":
        return True, ref_text(value).upper()
    if name == "lower":
        return True, ref_text(value).lower()
    if name == "length":
        if isinstance(value, (list, dict)):
            return True, len(value)
        return True, len(ref_text(value))
    if name == "json":
        return True, pg_json_text(value)
    if name == "escape":
        entities = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
        return True, "".join(entities.get(c, c) for c in ref_text(value))
    if name == "raw":
        return True, value
    raise AssertionError(name)


def normalise(value: Any) -> Any:
    """Numbers as Decimal so the reference and PostgreSQL's output compare by value."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, Decimal)):
        return Decimal(str(value))
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return {k: normalise(v) for k, v in value.items()}


@st.composite
def expressions(draw: st.DrawFn, context: Any) -> tuple[str, list[str], list[tuple[str, Any]]]:
    path = ["vars", *draw(st.lists(st.one_of(KEYS, st.sampled_from(["0", "1"])), max_size=3))]
    filters = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["default", "upper", "lower", "length", "json", "escape", "raw"]),
                st.one_of(st.text(alphabet="xyz |,:", max_size=4), st.integers(-5, 5)),
            ),
            max_size=2,
        )
    )
    text = ".".join(path)
    for name, arg in filters:
        if name == "default":
            literal = "'" + arg + "'" if isinstance(arg, str) else str(arg)
            text += f" | default: {literal}"
        else:
            text += f" | {name}"
    return text, path, filters


@st.composite
def templates(draw: st.DrawFn) -> tuple[Any, list[Any]]:
    context = {"vars": draw(st.dictionaries(KEYS, VALUES, max_size=4))}
    pieces = draw(
        st.lists(
            st.one_of(st.text(alphabet="ab .-\n}", max_size=5), expressions(context)),
            min_size=1,
            max_size=4,
        )
    )
    return context, pieces


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=templates())
def test_render_matches_the_reference_renderer(conn: Conn, case: tuple[Any, list[Any]]) -> None:
    context, pieces = case
    template = "".join(p if isinstance(p, str) else "{{" + p[0] + "}}" for p in pieces)
    results = []
    for piece in pieces:
        if isinstance(piece, str):
            results.append((True, piece))
            continue
        _, path, filters = piece
        found, value = ref_lookup(context, path)
        for name, arg in filters:
            found, value = ref_apply(value, found, name, arg)
        results.append((found, value))
    query = "select conveyor.render(%s::jsonb, %s::jsonb) as r"
    params = (to_json(template), to_json(context))
    if not all(found for found, _ in results):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no value at"):
            conn.execute(query, params)
        return
    row = conn.execute(query, params).fetchone()
    assert row is not None
    expressions_only = [p for p in pieces if not isinstance(p, str)]
    if len(expressions_only) == 1 and all(p == "" for p in pieces if isinstance(p, str)):
        [value] = [v for p, (_, v) in zip(pieces, results, strict=True) if not isinstance(p, str)]
        assert normalise(row["r"]) == normalise(value)
    else:
        assert row["r"] == "".join(
            p if isinstance(p, str) else ref_text(v) for p, (_, v) in zip(pieces, results, strict=True)
        )


ADD = {
    "90m": timedelta(minutes=90),
    "1 day": timedelta(days=1),
    "2w": timedelta(weeks=2),
    "45s": timedelta(seconds=45),
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    at=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(UTC)),
    offset_minutes=st.sampled_from([0, 60, -300, 330, 345, -570]),
    add=st.sampled_from(sorted(ADD)),
    zone=st.sampled_from(["UTC", "Europe/Berlin", "Australia/Sydney", "America/New_York", "Asia/Kathmandu"]),
)
def test_add_and_date_filters_match_python_datetime(
    conn: Conn, at: datetime, offset_minutes: int, add: str, zone: str
) -> None:
    at = at.replace(microsecond=0)
    written = at.astimezone(timezone(timedelta(minutes=offset_minutes))).isoformat()
    template = "{{vars.t | add: '" + add + "' | date: 'YYYY-MM-DD HH24:MI:SS', '" + zone + "'}}"
    expected = (at + ADD[add]).astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M:%S")
    assert render(conn, template, {"vars": {"t": written}}) == expected


# ---------------------------------------------------------------------------
# Render plans (render_plan once per step, render_planned per execution) against render.

TEMPLATE_STRINGS = st.sampled_from(
    [
        "{{vars.a}}",
        "{{ vars.b }}",
        "{{vars.missing}}",
        "{{vars.a | upper}}",
        "{{vars.missing | default: 'd'}}",
        "{{vars.list.1}}",
        "{{now}}",
        "x {{vars.a}} y",
        "{{vars.a}}{{vars.b}}",
        "{{vars.missing}} and text",
        "{{vars.a",
        "{{trigger.id}}",
        "{{ steps.s.output }}",
        "{{steps.s.missing}}",
        "{{execution.id}}",
        "plain",
        "",
    ]
)
TEMPLATE_KEYS = st.sampled_from(["a", "b", "x_1", "two words", 'q"uote', "1st", "{{k}}"])
TEMPLATED = st.recursive(
    st.one_of(TEMPLATE_STRINGS, st.integers(-3, 3), st.none(), st.booleans()),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(TEMPLATE_KEYS, children, max_size=3)
    ),
    max_leaves=8,
)
PLAN_CONTEXT = {
    "trigger": {"id": 5},
    "steps": {"s": {"output": {"ok": True}}},
    "vars": {"a": "ada", "b": 7, "list": [1, {"k": "v"}]},
    "execution": {"id": 42},
    "now": "2026-03-01T10:00:00Z",
}


def render_outcome(conn: Conn, query: str, params: tuple[Any, ...]) -> tuple[str, Any]:
    """("ok", value) or ("error", message): a failed render rolls back only its savepoint."""
    try:
        with conn.transaction():
            row = conn.execute(query, params).fetchone()
    except psycopg.errors.InvalidParameterValue as error:
        return "error", str(error).splitlines()[0]
    assert row is not None
    return "ok", row["r"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=TEMPLATED, where=st.sampled_from([None, 'step "notify".with']))
def test_a_render_plan_renders_what_render_renders(conn: Conn, value: Any, where: str | None) -> None:
    context = Jsonb(PLAN_CONTEXT)
    expected = render_outcome(conn, "select conveyor.render(%s, %s, %s) as r", (Jsonb(value), context, where))
    planned = render_outcome(
        conn,
        "select conveyor.render_planned(conveyor.render_plan(%s, %s), %s) as r",
        (Jsonb(value), where, context),
    )
    assert planned == expected
    # a plan reading only trigger, steps and vars renders alike from those three alone
    row = conn.execute(
        "select conveyor.render_plan(%s, %s) -> 'context' as c", (Jsonb(value), where)
    ).fetchone()
    assert row is not None
    if row["c"] is False:
        from_parts = render_outcome(
            conn,
            "select conveyor.render_planned(conveyor.render_plan(%s, %s), null, %s, %s, %s) as r",
            (
                Jsonb(value),
                where,
                Jsonb(PLAN_CONTEXT["trigger"]),
                Jsonb(PLAN_CONTEXT["steps"]),
                Jsonb(PLAN_CONTEXT["vars"]),
            ),
        )
        assert from_parts == expected


def test_a_render_plan_names_each_template_and_where_it_is(conn: Conn) -> None:
    value = {"url": "https://x/{{vars.a}}", "body": {"seq": "{{vars.b}}", "n": 1, "list": ["{{ now }}", "z"]}}
    row = conn.execute("select conveyor.render_plan(%s, 'step \"s\".with') as p", (Jsonb(value),)).fetchone()
    assert row is not None
    assert row["p"]["value"] == value
    slots = {slot["where"]: slot for slot in row["p"]["slots"]}
    assert set(slots) == {'step "s".with.url', 'step "s".with.body.seq', 'step "s".with.body.list[0]'}
    # a whole-string plain path is looked up directly; the others go through render_string
    assert slots['step "s".with.body.seq'] == {
        "at": "{body,seq}",
        "text": "{{vars.b}}",
        "where": 'step "s".with.body.seq',
        "path": "{vars,b}",
        "root": "vars",
        "rest": "{b}",
    }
    assert "path" not in slots['step "s".with.url']
    # `now` is now() when a context has none: render_string decides
    assert "path" not in slots['step "s".with.body.list[0]']
    nothing = conn.execute("select conveyor.render_plan('{\"a\": 1}', null) as p").fetchone()
    assert nothing is not None and nothing["p"] == {"value": {"a": 1}, "slots": [], "context": False}
    # `now` and the mixed string need the context object
    assert row["p"]["context"] is True
