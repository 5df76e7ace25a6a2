"""The web console and GET /api/executions/<id> over HTTP (runner/conveyor/serve/console/):
tenant isolation against a second tenant, escaping, filters and keyset pages, requeue."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conveyor.serve import ServeSettings, serve_in_thread, tokens
from tests.e2e.console_helpers import HOSTILE, SECRET, dead_letter, finish_action, two_tenants
from tests.sql.interpreter_helpers import Conn, step_runs


@pytest.fixture
def seeded(conn: Conn) -> dict[str, Any]:
    return two_tenants(conn)


@pytest.fixture
def server(db_url: str, seeded: dict[str, Any]) -> Iterator[str]:
    settings = ServeSettings(db_url, "127.0.0.1", 0, pool_size=2, token_secret=SECRET)
    with serve_in_thread(settings) as running:
        yield running.url


def signed_in(server: str, tenant: str = "acme", *, operator: bool = False) -> httpx.Client:
    client = httpx.Client(base_url=server, follow_redirects=True)
    token = tokens.sign(SECRET, tenant, "ann", 600, operator=operator)
    first = client.get("/console", params={"token": token})
    assert first.status_code == 200, first.text
    assert "token=" not in str(first.url)  # dropped from the URL once the cookie is set
    cookie = first.history[0].headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    return client


def test_the_api_key_reads_its_tenants_execution_and_not_anothers(
    server: str, conn: Conn, seeded: dict[str, Any]
) -> None:
    acme = conn.execute("select conveyor.create_api_key('acme', 'ci') as k").fetchone()
    assert acme is not None
    key = {"Authorization": f"Bearer {acme['k']}"}
    finish_action(conn, seeded["waiting"])
    got = httpx.get(f"{server}/api/executions/{seeded['waiting']}", headers=key)
    assert got.status_code == 200, got.text
    body = got.json()
    assert (body["id"], body["workflow"], body["status"]) == (seeded["waiting"], "wb", "completed")
    assert [(s["step"], s["status"]) for s in body["steps"]] == [
        ("welcome", "completed"),
        ("after", "completed"),
    ]
    assert body["steps"][0]["output"] == {"status": 200} and body["steps"][0]["ms"] is not None
    assert body["children"] == []
    # globex's execution, and one that does not exist: the same 404
    assert httpx.get(f"{server}/api/executions/{seeded['other']}", headers=key).status_code == 404
    assert httpx.get(f"{server}/api/executions/999999", headers=key).status_code == 404
    assert httpx.get(f"{server}/api/executions/{seeded['waiting']}").status_code == 401
    wrong = {"Authorization": "Bearer cvk_not-a-key"}
    assert httpx.get(f"{server}/api/executions/{seeded['waiting']}", headers=wrong).status_code == 401
    # a run the same key starts is readable by it
    conn.execute("update conveyor.workflows set active = true where slug = 'hostile'")
    started = httpx.post(f"{server}/api/workflows/hostile/runs", headers=key, json={})
    assert started.status_code in (200, 201, 202), started.text
    new_id = started.json().get("execution_id")
    assert httpx.get(f"{server}/api/executions/{new_id}", headers=key).json()["workflow"] == "hostile"


def test_a_tenants_admin_sees_only_their_tenant_and_an_operator_sees_any(
    server: str, seeded: dict[str, Any]
) -> None:
    admin = signed_in(server)
    listed = admin.get("/console/executions").text
    assert f'data-id="{seeded["waiting"]}"' in listed and f'data-id="{seeded["other"]}"' not in listed
    assert admin.get(f"/console/executions/{seeded['other']}").status_code == 404
    # ?tenant= is an operator's choice only: an admin's token keeps its own tenant
    assert admin.get(f"/console/executions/{seeded['other']}", params={"tenant": "globex"}).status_code == 404
    assert "theirs" not in admin.get("/console", params={"tenant": "globex"}).text
    operator = signed_in(server, operator=True)
    page = operator.get(f"/console/executions/{seeded['other']}", params={"tenant": "globex"})
    assert page.status_code == 200 and "theirs" in page.text
    anonymous = httpx.get(f"{server}/console/executions", follow_redirects=True)
    assert anonymous.status_code == 401 and "Sign in" in anonymous.text
    forged = tokens.sign("z" * 48, "acme", "ann", 600)
    assert httpx.get(f"{server}/console", params={"token": forged}).status_code == 401


def test_a_hostile_name_and_output_render_as_text(server: str, seeded: dict[str, Any]) -> None:
    admin = signed_in(server)
    for path in ("/console", "/console/executions", f"/console/executions/{seeded['hostile']}"):
        text = admin.get(path).text
        assert "<script>window.pwned" not in text, path
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in admin.get("/console").text
    assert "&lt;script&gt;window.pwned" in admin.get(f"/console/executions/{seeded['hostile']}").text
    assert HOSTILE.startswith("<script>")


def test_filters_and_keyset_pages(server: str, seeded: dict[str, Any]) -> None:
    admin = signed_in(server)
    waiting = admin.get("/console/executions", params={"status": "waiting"}).text
    assert f'data-id="{seeded["waiting"]}"' in waiting and f'data-id="{seeded["hostile"]}"' not in waiting
    by_entity = admin.get("/console/executions", params={"entity": "c2"}).text
    assert f'data-id="{seeded["hostile"]}"' in by_entity and f'data-id="{seeded["waiting"]}"' not in by_entity
    by_workflow = admin.get("/console/executions", params={"workflow": "wb"}).text
    assert (
        f'data-id="{seeded["waiting"]}"' in by_workflow
        and f'data-id="{seeded["hostile"]}"' not in by_workflow
    )
    first = admin.get("/console/executions", params={"limit": "1"}).text
    assert f'data-id="{seeded["hostile"]}"' in first and f'data-id="{seeded["waiting"]}"' not in first
    assert f"before={seeded['hostile']}" in first
    second = admin.get("/console/executions", params={"limit": "1", "before": str(seeded["hostile"])}).text
    assert f'data-id="{seeded["waiting"]}"' in second
    assert admin.get("/console/executions", params={"status": "bogus"}).status_code == 400
    assert admin.get("/console/executions", params={"before": "x"}).status_code == 400


def test_requeue_from_the_console_queues_the_step_again(
    server: str, conn: Conn, seeded: dict[str, Any]
) -> None:
    dead = dead_letter(conn, seeded["waiting"])
    admin = signed_in(server)
    assert f'data-id="{dead}"' in admin.get("/console/dead-letters").text
    assert f'data-id="{dead}"' not in signed_in(server, "globex").get("/console/dead-letters").text
    # globex's admin cannot requeue acme's dead letter
    assert signed_in(server, "globex").post(f"/console/dead-letters/{dead}/requeue").status_code == 409
    done = admin.post(f"/console/dead-letters/{dead}/requeue")
    assert done.status_code == 200 and "Requeued as message" in done.text, done.text
    [run] = step_runs(conn, seeded["waiting"])
    assert run["status"] == "queued"
    row = conn.execute(
        "select count(*) as n from pgmq.q_conveyor_actions where msg_id = %s", (run["msg_id"],)
    ).fetchone()
    assert row == {"n": 1}


def test_the_live_stream_sends_the_timeline_and_ends_when_finished(
    server: str, seeded: dict[str, Any]
) -> None:
    admin = signed_in(server)
    with admin.stream("GET", f"/console/executions/{seeded['hostile']}/live", timeout=15) as live:
        assert live.headers["content-type"].startswith("text/event-stream")
        text = "".join(live.iter_text())  # the execution is finished: the stream ends by itself
    assert "event: timeline" in text and "event: finished" in text
    assert "<script>window.pwned" not in text  # the fragment is escaped before it is sent
    assert admin.get(f"/console/executions/{seeded['other']}/live").text.count("event: gone") == 1
    assert admin.get(f"/console/executions/{2**63}/live").status_code == 404
    assert httpx.get(f"{server}/console/executions/{seeded['hostile']}/live").status_code == 401
