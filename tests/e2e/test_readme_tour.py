"""The README's five-minute tour, run as written: every `conveyor` command and SQL statement
in it must work against a database with the demo loaded (so the README stays true)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from conveyor.cli import main
from conveyor.settings import PROJECT_DIR

Conn = psycopg.Connection[dict[str, Any]]
README = (PROJECT_DIR / "README.md").read_text()
TOUR = README[README.index("## Five-minute tour") : README.index("## Workflows")]


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TOUR, re.S)


def sql_statements(block: str) -> list[str]:
    """The block's statements, without their comment lines."""
    text = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in text.split(";\n") if s.strip()]


def tour_commands() -> list[list[str]]:
    commands = []
    for block in blocks("sh"):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("conveyor "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_the_tour_has_commands_to_run() -> None:
    assert len(tour_commands()) >= 7
    assert blocks("sql")


def test_every_tour_command_and_statement_works(
    db_url: str, conn: Conn, monkeypatch: Any, tmp_path: Path
) -> None:
    from conveyor.demo import DemoSetup, load

    load(db_url, DemoSetup(tmp_path))
    before = conn.execute("select coalesce(max(execution_id), 0) as id from conveyor.executions").fetchone()
    assert before is not None
    for block in blocks("sql"):
        for statement in sql_statements(block):
            changed = conn.execute(statement.encode()).rowcount
            assert changed > 0, f"the tour's statement changed nothing:\n{statement}"
    conn.execute("select conveyor.tick()")
    # each statement started the workflow its comment names, for tenant acme
    started = conn.execute(
        "select w.slug from conveyor.executions as e join conveyor.workflows as w using (workflow_id)"
        " where e.execution_id > %s and e.tenant_id = 'acme' order by e.execution_id",
        (before["id"],),
    ).fetchall()
    slugs = [r["slug"] for r in started]
    for comment_slug in re.findall(r"→ ([a-z0-9-]+) ", "".join(blocks("sql"))):
        assert comment_slug in slugs, f"the tour says {comment_slug} starts; started: {slugs}"
    execution = conn.execute(
        "select max(execution_id) as id from conveyor.executions where tenant_id = 'acme'"
    )
    row = execution.fetchone()
    assert row is not None and row["id"] is not None, "the tour's SQL started no execution"
    event = conn.execute(
        "select max(event_id) as id from conveyor.events where tenant_id = 'acme' and dispatched_at is not null"
    ).fetchone()
    assert event is not None and event["id"] is not None
    monkeypatch.chdir(PROJECT_DIR)
    runner = CliRunner()
    env = {**os.environ, "CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_TENANT": "acme"}
    for args in tour_commands():
        args = [{"<id>": str(row["id"]), "<event-id>": str(event["id"])}.get(a, a) for a in args]
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 0, f"conveyor {' '.join(args)} failed:\n{result.output}"
        assert result.output.strip(), f"conveyor {' '.join(args)} printed nothing"
