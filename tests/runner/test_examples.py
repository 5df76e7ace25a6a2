"""Every example workflow validates against the demo platform and dry-runs; the demo loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from conveyor.cli import main
from conveyor.settings import PROJECT_DIR

Conn = psycopg.Connection[dict[str, Any]]
EXAMPLES = sorted((PROJECT_DIR / "examples" / "workflows").glob("*.yaml"))

# A plausible trigger for each example, as dispatch or a schedule would build it.
SAMPLE_TRIGGERS: dict[str, dict[str, Any]] = {
    "order-fan-out": {
        "event_type": "shop.order.placed",
        "entity_type": "order",
        "entity_id": "o-1001",
        "payload": {
            "email": "ada@example.com",
            "lines": [{"sku": "tea", "quantity": 2}, {"sku": "mug", "quantity": 1}],
        },
    },
    "new-lead-follow-up": {
        "event_type": "crm.contact.created",
        "entity_type": "contact",
        "entity_id": "1",
        "payload": {
            "new": {
                "type": "lead",
                "email": "ada@example.com",
                "first_name": "Ada",
                "timezone": "Europe/Berlin",
                "owner_id": 7,
            }
        },
    },
    "deal-won-handoff": {
        "event_type": "crm.deal.updated",
        "entity_type": "deal",
        "entity_id": "5",
        "payload": {
            "old": {"stage": "open"},
            "changed": ["stage"],
            "new": {"stage": "won", "title": "Big order", "amount": 12000, "contact_id": 1, "owner_id": 7},
        },
    },
    "failed-payment-dunning": {
        "event_type": "billing.invoice.updated",
        "entity_type": "invoice",
        "entity_id": "i-7",
        "payload": {
            "old": {"payment_failures": 0},
            "changed": ["payment_failures"],
            "new": {"payment_failures": 1, "number": "INV-7", "amount": 120, "contact_id": 1},
        },
    },
    "form-submission": {"payload": {"body": {"email": "ada@example.com", "name": "Ada"}}},
    "large-deal-approval": {
        "event_type": "crm.deal.updated",
        "entity_type": "deal",
        "entity_id": "6",
        "payload": {
            "old": {"stage": "qualified"},
            "changed": ["stage"],
            "new": {"stage": "proposal", "title": "Fleet", "amount": 80000, "contact_id": 1, "owner_id": 7},
        },
    },
    "weekly-report": {"payload": {"slot": "2026-11-23T13:00:00Z"}},
}


@pytest.fixture
def demo_db(conn: Conn) -> Conn:
    conn.execute(
        "insert into conveyor.tenants (tenant_id, name, timezone) values ('acme', 'Acme', 'Europe/Berlin')"
    )
    conn.execute((PROJECT_DIR / "examples" / "platform.sql").read_text().encode())
    conn.execute(
        "insert into demo.contacts (tenant_id, first_name, email, type) values ('acme', 'Ada', 'ada@example.com', 'customer')"
    )
    return conn


def document(path: Path) -> dict[str, Any]:
    return json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))  # type: ignore[no-any-return]


def test_there_are_eight_examples_each_with_a_comment_header() -> None:
    assert len(EXAMPLES) >= 8
    for path in EXAMPLES:
        assert path.read_text().startswith("# "), f"{path.name} lacks its comment header"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_and_dry_runs(demo_db: Conn, path: Path) -> None:
    doc = document(path)
    problems = demo_db.execute("select conveyor.validate_workflow(%s) as p", (Jsonb(doc),)).fetchall()
    assert problems == []
    trigger = SAMPLE_TRIGGERS.get(doc["slug"], {"entity_type": "contact", "entity_id": "1", "payload": {}})
    result = demo_db.execute(
        "select conveyor.dry_run('acme', %s, %s) as r", (Jsonb(doc), Jsonb(trigger))
    ).fetchone()
    assert result is not None
    report = result["r"]
    assert report["status"] != "would_not_start", f"{path.name}: {report.get('message')}"
    assert report["steps"], f"{path.name}: the dry run visited no step"
    assert demo_db.execute("select count(*) as n from conveyor.executions").fetchone() == {"n": 0}
    assert demo_db.execute("select count(*) as n from pgmq.q_conveyor_actions").fetchone() == {"n": 0}


def test_dry_run_command_prints_decisions(demo_db: Conn, db_url: str, tmp_path: Path) -> None:
    sample = tmp_path / "event.json"
    sample.write_text(json.dumps(SAMPLE_TRIGGERS["deal-won-handoff"]))
    result = CliRunner().invoke(
        main,
        [
            "dry-run",
            "-f",
            str(PROJECT_DIR / "examples/workflows/deal-won-handoff.yaml"),
            "--event",
            str(sample),
            "--tenant",
            "acme",
            "--json",
        ],
        env={"CONVEYOR_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [s["step"] for s in report["steps"]][:2] == ["big-deal", "celebrate"]
    assert report["steps"][1]["would_send"]["input"]["text"].startswith(":tada: Big win: Big order")


def test_demo_load_publishes_every_example_for_both_tenants(db_url: str, conn: Conn, tmp_path: Path) -> None:
    from conveyor.demo import DemoSetup, load

    setup = DemoSetup(tmp_path, serve_port=18898)
    published = load(db_url, setup)
    # the workflows, the welcome campaign and the workflow that enrolls new contacts in it
    assert len(published) == 2 * (len(EXAMPLES) + 2)
    again = load(db_url, setup)  # idempotent: identical documents publish no new version
    assert again == published
    rows = conn.execute(
        "select tenant_id, count(*) as n from conveyor.workflows where category is distinct from 'campaign'"
        " group by 1 order by 1"
    ).fetchall()
    n = len(EXAMPLES) + 1
    assert rows == [{"tenant_id": "acme", "n": n}, {"tenant_id": "globex", "n": n}]
    campaigns = conn.execute(
        "select tenant_id, slug, current_version as version from conveyor.campaigns order by 1"
    ).fetchall()
    assert campaigns == [
        {"tenant_id": "acme", "slug": "welcome", "version": 1},
        {"tenant_id": "globex", "slug": "welcome", "version": 1},
    ]
    # the demo's smtp connection is set up for tracking (docs/email-tracking.md)
    smtp = conn.execute(
        "select tenant_id, config from conveyor.connections where name = 'demo-smtp' order by 1"
    ).fetchall()
    assert [(r["config"]["from"], r["config"]["unsubscribe_url"]) for r in smtp] == [
        ("automations@acme.demo.example", "http://127.0.0.1:18898"),
        ("automations@globex.demo.example", "http://127.0.0.1:18898"),
    ]
    hooks = conn.execute(
        "select tenant_id, provider, path_token from conveyor.email_webhooks order by 1"
    ).fetchall()
    accounts = json.loads(setup.accounts_file.read_text())
    # Resend's tracking events (svix) and Mailgun's inbound route for replies, per tenant
    assert sorted((h["tenant_id"], h["provider"]) for h in hooks) == [
        ("acme", "mailgun"), ("acme", "svix"), ("globex", "mailgun"), ("globex", "svix"),
    ]  # fmt: skip
    for hook in hooks:
        account = accounts[f"{hook['tenant_id']}.demo.example"]
        if hook["provider"] == "svix":
            assert account["webhook_url"] == f"http://127.0.0.1:18898/email/hooks/{hook['path_token']}"
            assert account["secret"].startswith("whsec_")
        else:
            assert account["inbound_url"] == f"http://127.0.0.1:18898/email/inbound/{hook['path_token']}"


def test_the_demo_campaign_with_short_delays(db_url: str, tmp_path: Path) -> None:
    from conveyor.demo import demo_campaign

    document = demo_campaign()
    assert "send_window" not in document  # the demo runs at any hour
    assert [s.get("delay") for s in document["steps"]] == [None, "2m", "3m"]
    assert [s.get("delay") for s in demo_campaign("4s")["steps"]] == [None, "4s", "4s"]


def test_a_demo_sign_up_is_enrolled_by_the_enroll_workflow(db_url: str, conn: Conn, tmp_path: Path) -> None:
    import random

    from conveyor.demo import DemoSetup, load, new_contact

    load(db_url, DemoSetup(tmp_path))
    with psycopg.connect(db_url, autocommit=True) as platform:
        ada = new_contact(platform, "acme", "Ada", random.Random(1))
        platform.execute("select conveyor.tick()")  # dispatch: the contact's created event
    enrolled = conn.execute(
        "select entity_id, status from conveyor.campaign_enrollments where tenant_id = 'acme'"
    ).fetchall()
    assert enrolled == [{"entity_id": str(ada), "status": "active"}]
    [join] = conn.execute(
        "select s.output from conveyor.step_runs as s join conveyor.executions as e using (execution_id)"
        " join conveyor.workflows as w using (workflow_id) where w.slug = 'enroll-new-contacts'"
    ).fetchall()
    assert join["output"]["result"] == "enrolled"
