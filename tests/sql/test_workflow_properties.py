"""Properties of workflow documents: validation never crashes, and what it accepts publishes
into a closed graph (every target names a step of the same version)."""

from __future__ import annotations

from typing import Any

import psycopg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.sql.workflow_documents import lead_document, problems, publish

Conn = psycopg.Connection[dict[str, Any]]


TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    TEXT,
    st.sampled_from(
        [
            "",
            "{{",
            "}}",
            "{{ }}",
            "{{trigger.entity_id}}",
            "{{steps.welcome.output}}",
            "{{nope.x}}",
            "1d",
            "0s",
            "welcome",
            "wait",
            "replied",
            "notify",
            "done",
            "crm.*",
            "lead",
            "is_null",
            "equals",
            "fail",
            "continue",
            "retry",
            "email.send",
            "09:00-17:00",
            "mon",
        ]
    ),
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "id",
            "next",
            "then",
            "else",
            "on_error",
            "goto",
            "with",
            "to",
            "text",
            "op",
            "field",
            "value",
            "for",
            "until",
            "window",
            "event",
            "filter",
            "condition",
            "manual",
            "retry",
            "attempts",
            "timeout",
            "action",
            "if",
            "set",
            "stop",
            "switch",
            "when",
            "data",
            "entity",
            "transform",
            "emit",
            "delay",
            "split",
            "weight",
            "name",
        ]
    ),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


@st.composite
def mutated_documents(draw: st.DrawFn) -> Any:
    """The documented example with a few random edits: a value replaced, a key removed or added."""
    document: Any = lead_document()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(paths(document)))
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if not path:
            if action == "replace":
                document = draw(JSON)
            continue
        parent = document
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        if action == "replace":
            parent[last] = draw(JSON)
        elif action == "remove":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][draw(KEYS)] = draw(JSON)
        elif isinstance(parent[last], list):
            parent[last].append(draw(JSON))
    return document


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=mutated_documents())
def test_validation_reports_problems_and_never_raises(conn: Conn, document: Any) -> None:
    found = problems(conn, document)
    assert all(": " in message for message in found), found
    event("invalid" if found else "valid")
    if found:
        return
    # A document without problems publishes, and its compiled graph is closed: every
    # target names a step of the same version.
    with conn.transaction(force_rollback=True):
        conn.execute("insert into conveyor.tenants (tenant_id, name) values ('prop', 'Prop')")
        workflow_id, version = publish(conn, "prop", document)
        rows = conn.execute(
            "select step_id, next_step, branches, error_step from conveyor.workflow_steps"
            " where workflow_id = %s and version = %s",
            (workflow_id, version),
        ).fetchall()
    ids = {r["step_id"] for r in rows}
    assert len(rows) == len(document["steps"])
    for row in rows:
        branches = row["branches"] or {}
        targets = [
            row["next_step"],
            row["error_step"],
            *(branches.get(k) for k in ("then", "else", "default")),
        ]
        targets += [branches.get("event"), branches.get("timeout")]
        targets += [case["goto"] for case in branches.get("cases", [])]
        assert {t for t in targets if t is not None} <= ids, row
