"""The console's campaign pages (runner/conveyor/serve/console/campaigns.py): the list with
counters, one campaign's counters per step, its enrollments linked to their executions —
over HTTP (tenant isolation, escaping, keyset pages) and in a real browser (Debian's
chromium via Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright
from psycopg.types.json import Jsonb

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.e2e.console_helpers import HOSTILE, SECRET
from tests.e2e.test_console_browser import CHROMIUM, CHROMIUM_ARGS, shoot
from tests.sql.interpreter_helpers import Conn
from tests.sql.test_campaigns import setup

DOC = {
    "slug": "welcome",
    "name": f"Welcome {HOSTILE}",
    "audience": "contact",
    "steps": [{"id": "hello", "channel": "email", "subject": "Hi", "text": "Hi"}],
}


def seed(conn: Conn) -> dict[str, Any]:
    """acme's campaign with three enrollments, two sends counted and one opened; globex's own."""
    setup(conn, contacts=3)
    conn.execute("select conveyor.create_tenant('globex', 'Globex')")
    conn.execute("insert into public.contacts values (100, 'globex', 'g', 'g@example.com', 'UTC', false)")
    conn.execute("select * from conveyor.apply_campaign('acme', %s)", (Jsonb(DOC),))
    conn.execute("select * from conveyor.apply_campaign('globex', %s)", (Jsonb({**DOC, "slug": "theirs"}),))
    rows = conn.execute(
        "select * from conveyor.enroll_campaign('acme', 'welcome', array['1', '2', '3'])"
    ).fetchall()
    conn.execute("select * from conveyor.enroll_campaign('globex', 'theirs', array['100'])")
    campaign_id = conn.execute("select campaign_id from conveyor.campaigns where slug = 'welcome'").fetchone()
    assert campaign_id is not None
    for n, row in enumerate(rows[:2]):
        tags = {"campaign_id": str(campaign_id["campaign_id"]), "enrollment_id": str(row["enrollment_id"]),
                "step": "hello", "variant": ""}  # fmt: skip
        conn.execute(
            "select conveyor.record_email_sent('acme', %s, 'hello-send', 'smtp', %s, %s)",
            (row["execution_id"], Jsonb({"to": f"c{n}@example.com", "subject": "Hi", "tags": tags}),
             Jsonb({"message_id": f"<m{n}@acme.test>", "accepted": [f"c{n}@example.com"]})),
        )  # fmt: skip
    conn.execute("select conveyor.record_email_event('acme', '<m0@acme.test>', 'opened', now(), '{}')")
    return {"enrollments": rows}


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        yield running.url


def client(server: str, tenant: str) -> httpx.Client:
    c = httpx.Client(base_url=server, follow_redirects=True)
    assert c.get("/console", params={"token": tokens.sign(SECRET, tenant, "ann", 600)}).status_code == 200
    return c


def test_the_campaign_pages_show_the_tenants_counters_and_nothing_of_another(server: str, conn: Conn) -> None:
    seeded = seed(conn)
    acme = client(server, "acme")
    listed = acme.get("/console/campaigns").text
    assert 'data-id="welcome"' in listed and 'data-id="theirs"' not in listed
    assert HOSTILE not in listed and "&lt;script&gt;" in listed  # the name stayed text
    # enrolled 3, sent 2, opened 1 (50 % of sent)
    assert "<td>3</td>" in listed and "<td>2</td>" in listed and "1 <small>(50 %)</small>" in listed

    detail = acme.get("/console/campaigns/welcome")
    assert detail.status_code == 200
    assert "whole campaign" in detail.text and "<td>hello</td>" in detail.text
    for row in seeded["enrollments"]:
        assert f'data-id="{row["enrollment_id"]}"' in detail.text
        assert f"/console/executions/{row['execution_id']}" in detail.text
    # keyset pages: before the newest, only the older two
    newest = max(r["enrollment_id"] for r in seeded["enrollments"])
    older = acme.get("/console/campaigns/welcome", params={"before": newest}).text
    assert f'data-id="{newest}"' not in older and older.count("<tr data-id=") == 2
    assert acme.get("/console/campaigns/welcome", params={"before": "x"}).status_code == 400

    # globex's campaign is not acme's to see, and globex sees only its own
    assert acme.get("/console/campaigns/theirs").status_code == 404
    globex = client(server, "globex")
    assert globex.get("/console/campaigns/welcome").status_code == 404
    assert 'data-id="theirs"' in globex.get("/console/campaigns").text


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"{CHROMIUM} is missing")
def test_a_campaign_in_a_browser_down_to_an_enrollments_execution(server: str, conn: Conn) -> None:
    seeded = seed(conn)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{server}/console?token={tokens.sign(SECRET, 'acme', 'ann', 600)}")
            page.click("nav a:text('Campaigns')")
            page.wait_for_selector("h1:text('Campaigns')")
            assert page.evaluate("window.pwned") is None
            page.click("tr[data-id='welcome'] a")
            page.wait_for_selector("h1:text('Campaign welcome')")
            assert "Welcome <script>" in page.inner_text("main p")  # shown as text
            shoot(page, "campaign")
            first = seeded["enrollments"][0]
            page.click(f"tr[data-id='{first['enrollment_id']}'] a")
            page.wait_for_selector(f"h1:text('Execution {first['execution_id']}')")
        finally:
            browser.close()
