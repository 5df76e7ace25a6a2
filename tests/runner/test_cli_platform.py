"""`conveyor tenants add | list`, `tables`, `entities`, `api-keys`, `webhooks`: their
refusals name what is wrong and the command to use (the `cli` fixture: tenants acme, globex)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import yaml

Conn = psycopg.Connection[dict[str, Any]]


def test_tenants_add_refuses_a_duplicate_and_a_bad_zone_and_lists_the_new_one(cli: Any) -> None:
    added = cli("tenants", "add", "initech", "--plan", "free")
    assert added.exit_code == 0, added.output
    assert added.output.strip() == "tenant initech created (plan free, time zone UTC)"
    again = cli("tenants", "add", "initech")
    assert again.exit_code == 1 and "tenant 'initech' exists already" in again.output
    zone = cli("tenants", "add", "hooli", "--timezone", "Mars/Olympus")
    assert zone.exit_code == 1 and "unknown timezone 'Mars/Olympus'" in zone.output
    listed = json.loads(cli("tenants", "list", "--json").output)
    assert [(t["tenant"], t["plan"]) for t in listed] == [
        ("acme", "standard"),
        ("globex", "standard"),
        ("initech", "free"),
    ]


def test_tables_and_entities_name_the_missing_column(cli: Any, conn: Conn) -> None:
    conn.execute("create table public.orders (order_no bigint primary key, shop text, tags text[])")
    missing = cli("tables", "watch", "public.orders", "--module", "shop")
    assert missing.exit_code == 1
    assert "no such column: tenant_id (tenant column), id (id column)" in missing.output
    watched = cli("tables", "watch", "public.orders", "--module", "shop", "--entity", "order",
                  "--tenant-column", "shop", "--id-column", "order_no")  # fmt: skip
    assert watched.exit_code == 0, watched.output
    assert "events shop.order.created|updated|deleted" in watched.output
    assert json.loads(cli("tables", "list", "--json").output)[0]["tenant_column"] == "shop"
    assert cli("tables", "unwatch", "public.orders").exit_code == 0
    gone = cli("tables", "unwatch", "public.orders")
    assert gone.exit_code == 1 and "`conveyor tables list`" in gone.output

    bad = cli("entities", "add", "order", "public.orders", "--id-column", "order_no")
    assert bad.exit_code == 1 and "has no such column: tenant_id (tenant column)" in bad.output
    ok = cli("entities", "add", "order", "public.orders", "--id-column", "order_no",
             "--tenant-column", "shop", "--tags-column", "tags")  # fmt: skip
    assert ok.exit_code == 0 and "registered" in ok.output
    assert json.loads(cli("entities", "list", "--json").output) == [
        {
            "entity": "order",
            "table": "orders",
            "id_column": "order_no",
            "tenant_column": "shop",
            "tags_column": "tags",
        }
    ]


def test_api_keys_and_webhooks_refuse_an_unknown_tenant_and_name(cli: Any, tmp_path: Path) -> None:
    for args in (("api-keys", "list"), ("webhooks", "list"), ("api-keys", "add", "k")):
        nobody = cli(*args, "--tenant", "nobody")
        assert nobody.exit_code == 1, args
        assert (
            'tenant "nobody" does not exist (see `conveyor tenants list`; create it with `conveyor tenants add`)'
            in nobody.output
        )
    assert cli("api-keys", "add", "ci").exit_code == 0
    twice = cli("api-keys", "add", "ci")
    assert twice.exit_code == 1 and 'already has an API key named "ci"' in twice.output
    assert cli("api-keys", "revoke", "ci").exit_code == 0
    again = cli("api-keys", "revoke", "ci")
    assert again.exit_code == 1 and "`conveyor api-keys list`" in again.output

    path = tmp_path / "hook.yaml"
    path.write_text(yaml.safe_dump({"slug": "hook", "name": "Hook", "trigger": {"webhook": {}},
                                    "steps": [{"id": "s", "set": {"a": "1"}}]}))  # fmt: skip
    assert cli("workflows", "apply", "-f", str(path)).exit_code == 0
    listed = json.loads(cli("webhooks", "list", "--json").output)
    assert [w["workflow"] for w in listed] == ["hook"] and listed[0]["path"].startswith("/hooks/")
    first = cli("webhooks", "rotate", "hook").output.strip()
    second = cli("webhooks", "rotate", "hook").output.strip()
    assert len(first) >= 32 and first != second
    none = cli("webhooks", "rotate", "nothing")
    assert none.exit_code == 1 and "has no webhook trigger" in none.output
