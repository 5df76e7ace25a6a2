"""A hostile tenant's documents: huge, long and deep workflows, through the SQL API and
through `conveyor workflows apply`, refused quickly with the limit named, nothing stored,
while tenant A is served (tests/e2e/hostile.py has the platform)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.helpers import KEY
from tests.e2e.hostile import VICTIM_BOUND_S, Conn, Platform

pytestmark = pytest.mark.slow

# How long refusing one of these documents may take (measured: well under 1 s each).
REFUSAL_BOUND_S = 2.0

STEP = {"id": "s", "set": {"n": 1}}


def document(**fields: Any) -> dict[str, Any]:
    return {"slug": "huge", "name": "Huge", "trigger": {"event": "b.doc.go"}, "steps": [STEP], **fields}


def five_megabytes() -> dict[str, Any]:
    return document(description="x" * 5_000_000)


def sixty_thousand_steps() -> dict[str, Any]:
    return document(steps=[{"id": f"s{i}", "set": {"n": i}} for i in range(60_000)])


def nested_1000_deep() -> str:
    """JSON text of a document whose condition is 1,000 `not`s deep (json.dumps cannot
    write it: it recurses)."""
    head = json.dumps(document(steps=[{"id": "s", "if": None}]))
    leaf = json.dumps({"field": "trigger.payload.x", "op": "equals", "value": 1})
    return head.replace('"if": null', '"if": ' + '{"not": ' * 1000 + leaf + "}" * 1000)


# What the engine says of each (sql/document_limits.sql checks them before anything else).
SIZE = "exceeds the limit 262144 (setting conveyor.max_document_bytes)"
STEPS = "steps: 60000 steps exceed the limit 500 (setting conveyor.max_workflow_steps)"
DEPTH = (
    "steps[0].if"
    + ".not" * 29
    + ": nesting depth 33 exceeds the limit 32 (setting conveyor.max_document_depth)"
)


def nothing_stored(platform: Platform) -> None:
    for table in ("workflows", "workflow_versions", "workflow_steps", "subscriptions"):
        assert platform.count(f"select count(*) from conveyor.{table} where tenant_id = 'tb'") == 0, table


def timed_refusal(platform: Platform, doc: dict[str, Any] | str) -> tuple[str, float]:
    started = time.monotonic()
    problems = platform.refusal("tb", doc)
    return problems, time.monotonic() - started


def test_huge_long_and_deep_documents_are_refused_by_the_sql_api_and_a_is_served(platform: Platform) -> None:
    # Guards: conveyor.document_limit_errors (sql/document_limits.sql), run first by
    # validate_workflow: the size (before any walk), the step count, and a depth walk that
    # stops at the limit. Without them the 5 MB document is published, the 60,000 steps take
    # over a minute to validate (1.4 ms a step), and the deep condition's validators recurse
    # into PostgreSQL's stack-depth error.
    docs: list[dict[str, Any] | str] = [five_megabytes(), sixty_thousand_steps(), nested_1000_deep()]
    for doc, expected in zip(docs, [SIZE, SIZE, DEPTH], strict=True):
        problems, seconds = timed_refusal(platform, doc)
        assert problems.endswith(expected)
        assert seconds < REFUSAL_BOUND_S
    # past the size limit (raised for this session), the step count speaks
    platform.conn.execute("set conveyor.max_document_bytes = 10000000")
    problems, seconds = timed_refusal(platform, docs[1])
    assert problems == STEPS
    assert seconds < REFUSAL_BOUND_S
    platform.conn.execute("reset conveyor.max_document_bytes")

    def attack(own: Conn) -> None:
        for doc in docs:
            try:
                own.execute(
                    "select conveyor.publish('tb', %s::jsonb)",
                    (doc if isinstance(doc, str) else json.dumps(doc),),
                )
            except psycopg.errors.InvalidParameterValue as exc:
                assert "exceeds the limit" in str(exc.diag.message_detail)
            else:
                raise AssertionError("a huge document was published")

    with platform.attacking(attack) as errors:
        assert platform.victim_latency() < VICTIM_BOUND_S
    assert errors == []
    nothing_stored(platform)


def apply(platform: Platform, path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "workflows", "apply", "-f", str(path)],
        env={
            **os.environ,
            "CONVEYOR_DATABASE_URL": platform.db_url,
            "CONVEYOR_TENANT": "tb",
            "CONVEYOR_SECRET_KEY": KEY,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def cli_error(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of a refused apply: an `error:` line (and the engine's problems, one per
    line), never a traceback."""
    assert result.returncode == 1, result
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = output.strip().splitlines()
    assert lines[0].startswith("error: "), lines[:5]
    return lines


def test_huge_long_and_deep_documents_are_one_line_from_the_cli_and_a_is_served(
    platform: Platform, tmp_path: Path
) -> None:
    # Guards: the CLI's own checks before PyYAML loads a file (CONVEYOR_MAX_DOCUMENT_BYTES /
    # _DEPTH, runner/conveyor/commands/common.py): without them the deep file ends in a
    # RecursionError traceback; past them (raised here), the engine's limits, one line too.
    files = {}
    for name, doc in [
        ("five-mb.json", json.dumps(five_megabytes())),
        ("sixty-thousand.json", json.dumps(sixty_thousand_steps())),
        ("deep.json", nested_1000_deep()),
    ]:
        files[name] = tmp_path / name
        files[name].write_text(doc)

    for name, expected in [
        ("five-mb.json", "bytes exceeds the limit 1048576 (CONVEYOR_MAX_DOCUMENT_BYTES)"),
        ("sixty-thousand.json", "bytes exceeds the limit 1048576 (CONVEYOR_MAX_DOCUMENT_BYTES)"),
        ("deep.json", "line 1: nesting depth 65 exceeds the limit 64 (CONVEYOR_MAX_DOCUMENT_DEPTH)"),
    ]:
        result, seconds = apply(platform, files[name])
        [line] = cli_error(result)
        assert line.startswith(f"error: {files[name]}: ") and line.endswith(expected)
        assert seconds < REFUSAL_BOUND_S + 3  # a Python process's start included
    # with the CLI's limit raised, the engine's (the problems it lists, one per line)
    path = files["five-mb.json"]
    result, seconds = apply(platform, path, CONVEYOR_MAX_DOCUMENT_BYTES="10000000")
    lines = cli_error(result)
    assert lines == [
        f'error: {path}: workflow "huge" has 1 problem(s):',
        f"  (document): size {path.stat().st_size} bytes {SIZE}",
    ]
    assert seconds < REFUSAL_BOUND_S + 3

    def attack(_: Conn) -> None:
        for path in files.values():
            assert apply(platform, path)[0].returncode == 1

    with platform.attacking(attack) as errors:
        assert platform.victim_latency() < VICTIM_BOUND_S
    assert errors == []
    nothing_stored(platform)
