"""The step kinds are declared once (conveyor.step_kinds) and everything else follows it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.Connection[dict[str, Any]]

INTERPRETER = "conveyor.interpret_batch(conveyor.executions[], timestamptz, boolean)"


def kinds(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute("select * from conveyor.step_kinds()").fetchall()


def test_every_declared_kind_has_its_functions(conn: Conn) -> None:
    for kind in kinds(conn):
        expected = {
            f"conveyor.{kind['errors_function']}(jsonb,text,jsonb)",
            f"conveyor.{kind['code_function']}()",
        }
        if kind["compiled_function"]:
            expected.add(f"conveyor.{kind['compiled_function']}(jsonb,text)")
        for signature in expected:
            row = conn.execute("select to_regprocedure(%s) is not null as present", (signature,)).fetchone()
            assert row == {"present": True}, f"step kind {kind['kind']}: {signature} is missing"
        code = conn.execute(f"select conveyor.{kind['code_function']}() as c").fetchone()
        assert code is not None and code["c"]["run"].strip(), kind["kind"]


def test_the_interpreter_runs_every_declared_kind_with_the_code_of_its_file(conn: Conn) -> None:
    source = conn.execute("select pg_get_functiondef(%s::regprocedure) as d", (INTERPRETER,)).fetchone()
    assert source is not None
    body = source["d"]
    assert "@step-kinds" not in body and "generate_interpreter has not run" not in body
    for kind in kinds(conn):
        code = conn.execute(f"select conveyor.{kind['code_function']}() as c").fetchone()
        assert code is not None
        # each kind appears in the preparation and in the run, with its own code
        assert body.count(f"when '{kind['kind']}' then") == 2, kind["kind"]
        first_line = next(line.strip() for line in code["c"]["run"].splitlines() if line.strip())
        assert first_line in body, kind["kind"]


def test_a_steps_spec_is_read_where_its_kind_declares_it(conn: Conn) -> None:
    for kind in kinds(conn):
        config = {"connection": "c", "with": {"x": 1}}
        if kind["spec_key"]:
            config[kind["spec_key"]] = {"the": "spec"}
        spec = conn.execute(
            "select conveyor.step_spec(%s, %s) as s", (kind["kind"], Jsonb(config))
        ).fetchone()
        assert spec is not None
        assert spec["s"] == ({"the": "spec"} if kind["spec_key"] else config), kind["kind"]


def test_an_action_messages_connection_is_read_as_step_spec_reads_an_action(conn: Conn) -> None:
    # conveyor.action_message reads p_step.config ->> 'connection' (step_spec, inlined): an
    # action's spec is its config
    assert next(k for k in kinds(conn) if k["kind"] == "action")["spec_key"] is None
