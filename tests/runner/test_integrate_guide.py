"""docs/integrate.md run as written from a blank database: its commands and SQL in order
(a platform table of its own, a tenant, a watched table, an entity, a workflow, an API
key), then an insert of the new tenant's row starts the workflow and the key starts one."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from conveyor.cli import main
from conveyor.settings import PROJECT_DIR

GUIDE = (PROJECT_DIR / "docs" / "integrate.md").read_text()


def steps() -> list[tuple[str, str]]:
    """(language, text) of each fenced block, in the guide's order."""
    return [(m[0], m[1]) for m in re.findall(r"```(sh|sql|yaml)\n(.*?)```", GUIDE, re.S)]


def test_the_guide_walks_from_a_blank_database_to_a_run(
    empty_db_url: str, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    env = {"CONVEYOR_DATABASE_URL": empty_db_url}
    outputs: dict[str, str] = {}
    ran: list[str] = []
    for language, text in steps():
        if language == "yaml":
            name = text.splitlines()[0].lstrip("# ").strip()
            (tmp_path / name).write_text(text)
        elif language == "sql":
            with psycopg.connect(empty_db_url, autocommit=True) as conn:
                conn.execute(text.encode())
        else:
            for line in text.splitlines():
                if not line.startswith("conveyor "):
                    continue
                args = shlex.split(line)[1:]
                result = runner.invoke(main, args, env=env, catch_exceptions=False)
                assert result.exit_code == 0, f"{line}\n{result.output}"
                outputs[" ".join(args[:2])] = result.output
                ran.append(" ".join(args[:2]))
    assert ran[:3] == ["migrate", "tenants add", "tenants list"]
    for command in ("tables watch", "entities add", "workflows apply", "api-keys add", "webhooks list"):
        assert command in ran, f"the guide never runs conveyor {command}"
    assert "bakery" in outputs["tenants list"] and "pro" in outputs["tenants list"]
    assert "shop.customers" in outputs["tables list"] and "account" in outputs["tables list"]
    assert "shop.customer" in outputs["tables list"]
    assert "customer" in outputs["entities list"] and "labels" in outputs["entities list"]
    assert outputs["webhooks list"].strip() == "(none)"

    with psycopg.connect(empty_db_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        # the guide's insert (of tenant bakery) became an event that started the workflow
        for _ in range(5):
            conn.execute("select conveyor.tick()")
        runs = conn.execute(
            "select e.tenant_id, w.slug, e.entity_id"
            " from conveyor.executions as e join conveyor.workflows as w using (workflow_id)"
        ).fetchall()
        assert [(r["tenant_id"], r["slug"]) for r in runs] == [("bakery", "welcome")]
        customer = conn.execute(
            "select customer_id from shop.customers where email = 'ada@example.com'"
        ).fetchone()
        assert customer is not None and runs[0]["entity_id"] == str(customer["customer_id"])

        # the API key the guide created starts a run of the tenant (what POST /api/... calls)
        key = outputs["api-keys add"].strip()
        assert key.startswith("cvk_")
        answer = conn.execute(
            "select status, body from conveyor.http_trigger(%s, 'welcome', %s)",
            (key, json.dumps({"entity_id": "1"})),
        ).fetchone()
        assert answer is not None
        status, body = answer["status"], answer["body"]
        assert status == 202, body
        started = conn.execute(
            "select tenant_id from conveyor.executions where execution_id = %s", (body["execution_id"],)
        ).fetchone()
        assert started == {"tenant_id": "bakery"}

    listed = runner.invoke(main, ["api-keys", "list", "--tenant", "bakery", "--json"], env=env)
    assert [k["name"] for k in json.loads(listed.output)] == ["backend"]
    assert json.loads(listed.output)[0]["last_used_at"] is not None
    revoked = runner.invoke(main, ["api-keys", "revoke", "backend", "--tenant", "bakery"], env=env)
    assert revoked.exit_code == 0, revoked.output
    with psycopg.connect(empty_db_url, autocommit=True) as conn:
        row = conn.execute("select status from conveyor.http_trigger(%s, 'welcome', '{}')", (key,)).fetchone()
        assert row == (401,)
