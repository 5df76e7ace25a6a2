"""The demo's welcome campaign with its simulated email provider, end to end: `conveyor demo
load`'s platform, tenants, connections and campaign on a real PostgreSQL, the demo's real
SMTP outbox, a real runner process and a real `conveyor serve` taking the provider's signed
webhooks and inbound replies. Campaign mail lands in the outbox; delivered / opened / clicked
are accepted over HTTP and move the counters; a reply, a bounce and a one-click unsubscribe
each stop their enrollment; the rest advance through the sequence (campaign delays of
seconds); the console's campaign page shows it; `conveyor demo run` wires it all."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from conveyor.cli import main
from conveyor.demo import DemoSetup, load, new_contact, sinks
from conveyor.demo_provider import Fate, Odds, SimulatedProvider, draw, read_accounts, svix_headers
from conveyor.serve import tokens
from conveyor.serve.server import ServeSettings, serve_in_thread
from tests.conftest import free_port
from tests.e2e.helpers import KEY, Conn
from tests.runner.helpers import wait_for

pytestmark = pytest.mark.slow

TOKEN_SECRET = "a-test-token-secret-of-at-least-32-bytes"

# Each demo contact's fate at the simulated provider, by the first name in its address.
FATES = {
    "ada": Fate(opened=True, replied=True),
    "barbara": Fate(bounced=True),
    "grace": Fate(opened=True, clicked=True, unsubscribed=True),
    "linus": Fate(opened=True, clicked=True),
    "radia": Fate(),
}


def fate(message: EmailMessage) -> Fate:
    """Campaign mail (it has List-Unsubscribe) by FATES; the workflows' mail (new-lead-follow-up
    welcomes leads too) only delivered: its bounce would suppress the address, and the
    campaign's sends to it would be skipped, before or after, as the race falls."""
    if not message["List-Unsubscribe"]:
        return Fate()
    return FATES[str(message["To"]).split(".")[0]]


def outbox(directory: Path) -> list[EmailMessage]:
    messages = []
    for path in sorted((directory / "outbox").glob("*.eml")):
        message = message_from_bytes(path.read_bytes(), policy=default_policy)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def campaign_mail(directory: Path, name: str) -> list[str]:
    return [
        str(m["Subject"])
        for m in outbox(directory)
        if str(m["To"]).startswith(name + ".") and m["List-Unsubscribe"]  # campaign mail carries one
    ]


def enrollments(conn: Conn) -> dict[str, tuple[str, str | None]]:
    rows = conn.execute(
        "select c.first_name, e.status, e.stop_reason from conveyor.campaign_enrollments as e"
        " join demo.contacts as c on c.id::text = e.entity_id where e.tenant_id = 'acme'"
    ).fetchall()
    return {r["first_name"].lower(): (r["status"], r["stop_reason"]) for r in rows}


def explained(predicate: Any, conn: Conn, directory: Path, runner: Any) -> Any:
    """wait_for, and on a timeout what the outbox, the executions and the runner's log say."""
    try:
        return wait_for(predicate, timeout=60)
    except AssertionError:
        mail = [(str(m["To"]), str(m["Subject"])) for m in outbox(directory)]
        runs = conn.execute(
            "select execution_id, status, current_step, resume_at, now() as now from conveyor.executions"
        ).fetchall()
        raise AssertionError(
            f"outbox {mail}\nexecutions {runs}\nrunner {runner.log_path.read_text()[-3000:]}"
        ) from None


def untracked(conn: Conn) -> list[dict[str, Any]]:
    return conn.execute(
        "select to_address, subject from conveyor.email_messages where provider_message_id is null"
    ).fetchall()


def all_finished(conn: Conn) -> dict[str, tuple[str, str | None]] | None:
    now = enrollments(conn)
    return now if all(status != "active" for status, _ in now.values()) else None


def test_the_demo_campaign_moves_with_the_simulated_provider(
    db_url: str, conn: Conn, runners: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_SECRET_KEY", KEY)  # the runner process decrypts with it
    setup = DemoSetup(tmp_path / "demo", free_port(), free_port(), free_port(), campaign_delay="5s")
    published = load(db_url, setup)
    assert {"acme/welcome (campaign) v1", "globex/welcome (campaign) v1"} <= set(published)
    accounts = read_accounts(setup.accounts_file)
    assert accounts["acme.demo.example"].webhook_url.startswith(setup.serve_url + "/email/hooks/")
    provider = SimulatedProvider(accounts, setup.directory / "inbox", pace=0.1, fate=fate).start()
    runner = runners()
    try:
        with (
            sinks(setup, provider.offer),
            serve_in_thread(ServeSettings(db_url, port=setup.serve_port, token_secret=TOKEN_SECRET)),
            psycopg.connect(db_url, autocommit=True) as platform,
        ):
            rng = random.Random(1)
            for name in FATES:
                new_contact(platform, "acme", name.capitalize(), rng)
            # enroll-new-contacts enrolls each (the runner dispatches their created events)
            explained(lambda: set(enrollments(conn)) == set(FATES), conn, setup.directory, runner)

            # the first campaign email reaches the outbox, with an unsubscribe link to serve
            explained(
                lambda: all(campaign_mail(setup.directory, n) for n in FATES), conn, setup.directory, runner
            )
            [hello] = [m for m in outbox(setup.directory) if str(m["Subject"]) == "Getting started, Ada"]
            assert str(hello["List-Unsubscribe"]).strip().startswith(f"<{setup.serve_url}/u/")

            # replies, bounces and unsubscribes stop their enrollments; the others complete
            final = explained(lambda: all_finished(conn), conn, setup.directory, runner)
            assert final["ada"] == ("stopped", "replied")
            assert final["barbara"] == ("stopped", "bounced")
            assert final["grace"] == ("stopped", "unsubscribed")
            assert final["linus"] == ("completed", None) and final["radia"] == ("completed", None)
            assert campaign_mail(setup.directory, "ada") == ["Getting started, Ada"]
            assert campaign_mail(setup.directory, "barbara") == ["Getting started, Barbara"]
            assert len(campaign_mail(setup.directory, "linus")) >= 2  # the steps advanced
            # the provider reported on every message, the last ones too, before it stops
            explained(lambda: not untracked(conn), conn, setup.directory, runner)

            # the console's campaign page shows the same (docs/console.md)
            bearer = {"Authorization": "Bearer " + tokens.sign(TOKEN_SECRET, "acme", "demo", 600)}
            html = httpx.get(f"{setup.serve_url}/console/campaigns/welcome", headers=bearer).text
            assert "Enrollments: completed 2, stopped 3" in html
            [total] = conn.execute(
                "select * from conveyor.campaign_stats('acme', 'welcome') where step_key = ''"
            ).fetchall()
            assert f"<td>whole campaign</td><td></td><td>5</td><td>{total['sent']}</td>" in html
            assert f"<td>{total['delivered']} <small>(" in html
    finally:
        provider.stop()
        assert runner.stop() == 0

    # the webhooks went through serve: the rows know the provider's id and the events' effects
    delivered = [r for r in provider.reported if r[1] == "delivered" and r[2] == "recorded"]
    assert len(delivered) >= 4
    rows = conn.execute(
        "select to_address, status, opened_count, clicked_count, provider_message_id, replied_at"
        " from conveyor.email_messages where tenant_id = 'acme' and tags ? 'campaign_id'"
    ).fetchall()
    assert rows and all(r["provider_message_id"] for r in rows)
    by_name = {
        r["to_address"].split(".")[0]: r for r in rows if r["to_address"].startswith(("ada", "barbara"))
    }
    assert by_name["ada"]["replied_at"] is not None and by_name["ada"]["opened_count"] == 1
    assert by_name["barbara"]["status"] == "bounced"
    [reply] = list((setup.directory / "inbox").glob("*.eml"))
    assert "In-Reply-To: " + str(hello["Message-ID"]) in reply.read_text()
    # the reply came through the Mailgun inbound route of serve (the provider has no database)
    [replied] = conn.execute(
        "select payload from conveyor.events where tenant_id = 'acme' and event_type = 'email.message.replied'"
    ).fetchall()
    assert replied["payload"]["message_id"] == str(hello["Message-ID"])
    assert replied["payload"]["details"]["provider"] == "mailgun"

    # what the README's tour and docs/campaigns.md point at
    result = CliRunner().invoke(
        main,
        ["campaigns", "stats", "welcome", "--tenant", "acme", "--json"],
        env={**os.environ, "CONVEYOR_DATABASE_URL": db_url},
    )
    assert result.exit_code == 0, result.output
    [total] = [r for r in json.loads(result.output) if r["step_key"] == "" and r["variant"] == ""]
    assert total["enrolled"] == 5 and total["sent"] >= 7
    assert total["delivered"] >= 4 and total["opened"] >= 3 and total["clicked"] >= 2
    assert (total["replied"], total["bounced"], total["unsubscribed"]) == (1, 1, 1)
    assert (total["stopped"], total["completed"]) == (3, 2)


def test_the_provider_draws_fates_from_seeded_odds_and_signs_like_svix() -> None:
    odds = Odds(bounce=0.1, open=0.5, click=0.5, reply=0.2, unsubscribe=0.05)
    fates = [draw(random.Random(7), odds) for _ in range(3)]
    assert fates[0] == fates[1] == fates[2]  # seeded: the same demo every run
    rng = random.Random(7)
    many = [draw(rng, odds) for _ in range(2000)]
    bounced = sum(f.bounced for f in many)
    assert 140 <= bounced <= 260
    assert not any(f.opened or f.replied for f in many if f.bounced)
    assert not any(f.clicked and not f.opened for f in many)
    assert 300 <= sum(f.replied for f in many) <= 420
    # the documented example (docs/email-tracking.md), signed as openssl would
    headers = svix_headers("whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "msg_1", b"{}", 1700000000)
    assert headers["svix-signature"] == "v1,2c4VI0bO4Wd5svqP2unEA9pCk0dTAXr/elrHCJ+/efk="


def test_demo_run_wires_the_campaign_serve_and_the_provider(db_url: str, conn: Conn, tmp_path: Path) -> None:
    """`conveyor demo run` as `make run` starts it (activity every half second): campaign mail
    lands in the outbox, the provider's webhooks reach its serve, the counters move; Ctrl-C
    stops it cleanly."""
    directory = tmp_path / "demo"
    log_path = tmp_path / "demo.log"
    ports = [str(free_port()) for _ in range(3)]
    args = ["--directory", str(directory), "--serve-port", ports[0], "--smtp-port", ports[1]]
    args += ["--http-port", ports[2], "--every", "0.5", "--campaign-delay", "3s"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "demo", "run", *args],
            env={**os.environ, "CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_SECRET_KEY": KEY},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        try:

            def delivered() -> int:
                row = conn.execute(
                    "select coalesce(sum(delivered), 0) as n from conveyor.campaign_stats"
                    " where step_key = '' and variant = ''"
                ).fetchone()
                return int(row["n"]) if row else 0

            wait_for(delivered, timeout=60)
            # the provider logs what it simulated once serve answered
            wait_for(lambda: '"msg": "simulated provider: delivered"' in log_path.read_text(), timeout=30)
            lines = log_path.read_text()
            [console] = re.findall(r"demo: the console for acme \(12 h\): (\S+)", lines)
            page = httpx.get(console, follow_redirects=True)
            assert page.status_code == 200 and "Welcome sequence (demo)" in page.text
            assert '"msg": "demo activity"' in lines
            assert any(m["List-Unsubscribe"] for m in outbox(directory))
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
    assert code == 0, log_path.read_text()[-2000:]


def test_demo_run_names_the_port_it_cannot_listen_on(db_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        args = ["--directory", str(tmp_path), "--serve-port", port, "--smtp-port", str(free_port())]
        done = subprocess.run(
            [sys.executable, "-m", "conveyor.cli", "demo", "run", *args, "--http-port", str(free_port())],
            env={**os.environ, "CONVEYOR_DATABASE_URL": db_url, "CONVEYOR_SECRET_KEY": KEY},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert (
        f"error: the demo cannot listen: address already in use (--serve-port {port}," in done.stderr.lower()
    )
