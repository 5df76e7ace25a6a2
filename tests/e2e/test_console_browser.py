"""The web console in a real browser (Debian's chromium via Playwright): sign in with a
token, watch an execution's timeline change live as its step's result is written back
(no reload), filter executions, requeue a dead letter, and tenant A's admin cannot open
tenant B's execution. With CONVEYOR_CONSOLE_SCREENSHOTS=<dir> (make console-screenshots)
it saves the pages docs/console.md and the README show."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, sync_playwright

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.e2e.console_helpers import SECRET, dead_letter, finish_action, two_tenants
from tests.sql.interpreter_helpers import AMOUNT, Conn, flow, start, step_runs

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
SHOTS = os.environ.get("CONVEYOR_CONSOLE_SCREENSHOTS")

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing: scripts/bootstrap.sh installs Debian's chromium (apt-get install chromium)",
)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 720},
        )
        try:
            yield context
        finally:
            context.close()


def shoot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"), full_page=True)


def sign_in(browser: BrowserContext, url: str, tenant: str = "acme") -> Page:
    page = browser.new_page()
    page.goto(f"{url}/console/login")
    page.fill("input[name=token]", tokens.sign(SECRET, tenant, "ann", 600))
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Workflows')")
    return page


def row_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all("tbody tr[data-id]", "els => els.map(e => e.dataset.id)")
    return ids


def test_the_console_in_a_browser(browser: BrowserContext, conn: Conn, db_url: str) -> None:
    seeded: dict[str, Any] = two_tenants(conn)
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        page = sign_in(browser, running.url)
        assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the token
        assert page.evaluate("window.pwned") is None  # the hostile name stayed text
        shoot(page, "workflows")

        # the timeline: the action step waits; its result comes in; the page changes by itself
        page.goto(f"{running.url}/console/executions/{seeded['waiting']}")
        page.wait_for_function("document.getElementById('timeline').dataset.updates >= '1'")
        assert row_ids(page) == ["welcome:1:1"]
        page.evaluate("window.notReloaded = true")
        finish_action(conn, seeded["waiting"])
        page.wait_for_selector("tr[data-id='after:1:1']", timeout=15000)
        assert page.evaluate("window.notReloaded") is True
        assert page.inner_text("#execution-status").startswith("completed")
        page.wait_for_function("document.getElementById('timeline').dataset.finished === '1'", timeout=15000)
        shoot(page, "execution")

        # filters
        page.goto(f"{running.url}/console/executions")
        assert set(row_ids(page)) == {str(seeded["waiting"]), str(seeded["hostile"])}
        page.fill("input[name=entity]", "c2")
        page.click("form.filters button")
        page.wait_for_url("**entity=c2**")
        assert row_ids(page) == [str(seeded["hostile"])]
        shoot(page, "executions")

        # tenant A's admin cannot see tenant B's execution
        page.goto(f"{running.url}/console/executions/{seeded['other']}")
        assert "Not found" in page.inner_text("h1")

        # a dead letter requeued with its button
        again = another_waiting(conn)
        dead = dead_letter(conn, again)
        page.goto(f"{running.url}/console/dead-letters")
        assert row_ids(page) == [str(dead)]
        shoot(page, "dead-letters")
        page.click(f"tr[data-id='{dead}'] button.requeue")
        page.wait_for_selector(".notice")
        assert "Requeued as message" in page.inner_text(".notice")
        [run] = step_runs(conn, again)
        assert run["status"] == "queued"

        # signed in as globex's admin, the same browser sees globex's execution and not acme's
        theirs = sign_in(browser, running.url, "globex")
        theirs.goto(f"{running.url}/console/executions")
        assert row_ids(theirs) == [str(seeded["other"])]
        theirs.goto(f"{running.url}/console/executions/{seeded['waiting']}")
        assert "Not found" in theirs.inner_text("h1")


def another_waiting(conn: Conn) -> int:
    return start(conn, "acme", flow(conn, "acme", slug="wb2"), AMOUNT)
