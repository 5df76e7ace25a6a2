"""The notification stream in a real browser: Debian's chromium, driven by Playwright, on the
page `conveyor serve` serves at /demo/notifications (an EventSource with the user's token).

A platform commit (conveyor.notify_user, and a workflow's notify step triggered by an insert
into a watched platform table) shows in the page's DOM; the server is then stopped and a new
one started on the same port while more notifications are committed, and after the browser's
reconnect (Last-Event-ID) every one is in the page exactly once. A token for one user never
shows another user's or tenant's notification.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright
from psycopg.types.json import Jsonb

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.conftest import free_port

Conn = psycopg.Connection[dict[str, Any]]
SECRET = "b" * 48
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

if shutil.which(CHROMIUM) is None:
    pytest.fail(
        f"{CHROMIUM} is missing: scripts/bootstrap.sh installs Debian's chromium (apt-get install chromium)"
    )


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium with a new, empty user-data-dir (never `playwright install`)."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def platform(conn: Conn) -> Conn:
    conn.execute("select conveyor.create_tenant('acme', 'Acme'), conveyor.create_tenant('globex', 'Globex')")
    conn.execute("create schema crm")
    conn.execute(
        "create table crm.contacts (id bigint primary key, tenant_id text not null, owner text not null)"
    )
    conn.execute("select conveyor.watch('crm.contacts', 'crm', 'contact')")
    document = {
        "slug": "tell-owner",
        "name": "Tell the owner",
        "trigger": {"event": "crm.contact.created"},
        "steps": [
            {
                "id": "tell",
                "notify": {
                    "to": "{{trigger.payload.new.owner}}",
                    "title": "New contact {{trigger.entity_id}}",
                },
            }
        ],
    }
    conn.execute("select conveyor.publish('acme', %s)", (Jsonb(document),))
    return conn


def notify(conn: Conn, user: str, title: str, tenant: str = "acme") -> int:
    row = conn.execute(
        "select conveyor.notify_user(%s, %s, %s) as id", (tenant, user, json.dumps({"title": title}))
    ).fetchone()
    assert row is not None
    return int(row["id"])


def shown(page: Page) -> list[tuple[int, str]]:
    items = page.eval_on_selector_all(
        "#notifications li", "els => els.map(e => [e.dataset.id, e.textContent])"
    )
    return sorted((int(i), text) for i, text in items)


def wait_for(page: Page, count: int, timeout_s: float = 15) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        items = shown(page)
        if len(items) >= count or time.monotonic() > deadline:
            return items
        page.wait_for_timeout(100)


def open_page(browser: BrowserContext, url: str, user: str, tenant: str = "acme") -> Page:
    page: Page = browser.new_page()
    page.goto(f"{url}/demo/notifications#token={tokens.sign(SECRET, tenant, user, 600)}")
    page.wait_for_function("document.getElementById('unread').textContent !== '?'", timeout=15000)
    return page


def test_commits_show_in_the_page_and_a_server_restart_loses_and_repeats_nothing(
    browser: BrowserContext, platform: Conn, db_url: str
) -> None:
    conn = platform
    port = free_port()
    settings = ServeSettings(db_url, "127.0.0.1", port, pool_size=2, token_secret=SECRET)
    expected: dict[int, str] = {}
    with serve_in_thread(settings) as running:
        page = open_page(browser, running.url, "u-1")
        other_user = open_page(browser, running.url, "u-2")
        other_tenant = open_page(browser, running.url, "u-1", "globex")

        expected[notify(conn, "u-1", "from the platform")] = "from the platform"
        # A platform insert into a watched table → a workflow's notify step for its owner.
        conn.execute("insert into crm.contacts values (7, 'acme', 'u-1')")
        conn.execute("select conveyor.tick()")
        row = conn.execute(
            "select notification_id, title from conveyor.notifications where step_id = 'tell'"
        ).fetchone()
        assert row is not None and row["title"] == "New contact 7"
        expected[row["notification_id"]] = "New contact 7"
        assert wait_for(page, 2) == sorted(expected.items())
    # The server is gone; notifications committed meanwhile wait in the table.
    for i in range(3):
        title = f"while down {i}"
        expected[notify(conn, "u-1", title)] = title
    with serve_in_thread(settings):
        for i in range(2):
            title = f"after restart {i}"
            expected[notify(conn, "u-1", title)] = title
        got = wait_for(page, len(expected), timeout_s=30)
        assert got == sorted(expected.items())  # every one, exactly once
        page.wait_for_timeout(500)
        assert shown(page) == sorted(expected.items())
        # Another user's and another tenant's pages got none of them.
        notify(conn, "u-2", "for u-2")
        notify(conn, "u-1", "for globex's u-1", tenant="globex")
        assert [t for _, t in wait_for(other_user, 1)] == ["for u-2"]
        assert [t for _, t in wait_for(other_tenant, 1)] == ["for globex's u-1"]
        assert shown(page) == sorted(expected.items())


def test_an_expired_token_gets_401_in_the_browser(
    browser: BrowserContext, platform: Conn, db_url: str
) -> None:
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        page: Page = browser.new_page()
        page.goto(running.url + "/demo/notifications")
        expired = tokens.sign(SECRET, "acme", "u-1", 60, now=time.time() - 120)
        status = page.evaluate(
            "async (t) => (await fetch('/api/notifications/stream?access_token=' + t)).status", expired
        )
        assert status == 401
