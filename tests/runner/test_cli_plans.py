"""`conveyor usage`, `conveyor tenants set-plan` and `tenants plans` against a real database
(the `cli` fixture of conftest.py: tenants acme, the default, and globex)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import yaml

Conn = psycopg.Connection[dict[str, Any]]


def apply(cli: Any, tmp_path: Path, slug: str) -> Any:
    path = tmp_path / f"{slug}.yaml"
    document = {
        "slug": slug,
        "name": slug,
        "trigger": {"event": "crm.contact.created"},
        "steps": [{"id": "note", "set": {"seen": "yes"}}],
    }
    path.write_text(yaml.safe_dump(document))
    return cli("workflows", "apply", "-f", str(path))


def test_set_plan_then_usage_shows_the_tenants_counts_against_it(
    cli: Any, conn: Conn, tmp_path: Path
) -> None:
    moved = cli("tenants", "set-plan", "acme", "free")
    assert moved.exit_code == 0, moved.output
    assert moved.output.strip() == "tenant acme: plan free (was standard)"
    for slug in ("one", "two"):
        assert apply(cli, tmp_path, slug).exit_code == 0
    conn.execute("select conveyor.emit('acme', 'crm.contact.created')")
    conn.execute("select conveyor.dispatch()")

    shown = cli("usage", "--json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert (report["tenant"], report["plan"]) == ("acme", "free")
    quotas = {q["quota"]: (q["used"], q["limit"]) for q in report["quotas"]}
    assert quotas["workflows"] == (2, 3)
    assert quotas["executions_per_month"] == (2, 100)

    table = cli("usage")
    assert table.exit_code == 0, table.output
    assert table.output.startswith(f"tenant acme, plan free; month {report['period_start']} until ")
    assert "executions_per_month │ 2" in table.output
    assert "not allowed" in table.output


def test_a_publish_past_the_plan_fails_with_the_quota_named(cli: Any, tmp_path: Path) -> None:
    assert cli("tenants", "set-plan", "acme", "free").exit_code == 0
    for slug in ("one", "two", "three"):
        assert apply(cli, tmp_path, slug).exit_code == 0
    refused = apply(cli, tmp_path, "four")
    assert refused.exit_code == 1
    assert (
        'quota workflows of plan "free" exceeded: tenant "acme" has 3 active workflows, the limit is 3'
        in refused.output
    )


def test_set_plan_refuses_an_unknown_plan_and_usage_an_unknown_tenant(cli: Any) -> None:
    unknown = cli("tenants", "set-plan", "acme", "gold")
    assert unknown.exit_code == 1
    assert 'unknown plan "gold" (plans: enterprise, free, pro, standard)' in unknown.output
    nobody = cli("usage", "--tenant", "nobody")
    assert nobody.exit_code == 1
    assert 'tenant "nobody" does not exist' in nobody.output


def test_plans_lists_every_plan_with_its_tenants(cli: Any) -> None:
    assert cli("tenants", "set-plan", "globex", "pro").exit_code == 0
    listed = cli("tenants", "plans", "--json")
    assert listed.exit_code == 0, listed.output
    plans = {p["plan"]: p for p in json.loads(listed.output)}
    assert sorted(plans) == ["enterprise", "free", "pro", "standard"]
    assert (plans["pro"]["workflows"], plans["pro"]["longest_delay"], plans["pro"]["tenants"]) == (
        25,
        "7 days",
        1,
    )
    assert plans["standard"]["tenants"] == 1
