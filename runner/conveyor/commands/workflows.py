"""`conveyor workflows ...` and `conveyor dry-run`: publish, inspect and try workflow documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml
from psycopg.types.json import Jsonb

from conveyor import output
from conveyor.commands.common import database_option, fail_cleanly, json_option, read_document, tenant_option
from conveyor.db import connect
from conveyor.errors import ConveyorError


@click.group()
def workflows() -> None:
    """Publish and manage workflows."""


@workflows.command("apply")
@click.option(
    "-f",
    "--file",
    "files",
    type=click.Path(exists=True, path_type=Path),
    multiple=True,
    required=True,
    help="A workflow document (YAML or JSON), or a directory of them (*.yaml, *.yml, *.json); repeat for several.",
)
@click.option("--dry-run", is_flag=True, help="Validate only; publish nothing.")
@tenant_option
@database_option
@json_option
@fail_cleanly
def apply(
    files: tuple[Path, ...], dry_run: bool, tenant: str, database_url: str | None, as_json: bool
) -> None:
    """Validate and publish workflow documents (a new version when changed)."""
    documents = [(path, read_document(path)) for path in document_files(files)]
    results: list[dict[str, Any]] = []
    with connect(database_url) as conn:
        for path, document in output.progress(documents, "publishing", enabled=not as_json):
            problems = [
                r["problem"]
                for r in conn.execute("select conveyor.validate_workflow(%s) as problem", (Jsonb(document),))
            ]
            if problems:
                listing = "\n".join(f"  {p}" for p in problems)
                raise ConveyorError(
                    f'{path}: workflow "{document.get("slug")}" has {len(problems)} problem(s):\n{listing}'
                )
            if dry_run:
                results.append({"file": str(path), "slug": document.get("slug"), "result": "valid"})
                continue
            before = conn.execute(
                "select current_version from conveyor.workflows where tenant_id = %s and slug = %s",
                (tenant, document.get("slug")),
            ).fetchone()
            row = conn.execute("select * from conveyor.publish(%s, %s)", (tenant, Jsonb(document))).fetchone()
            assert row is not None
            # publish keeps the current version when the document is the same: say so
            unchanged = before is not None and before["current_version"] == row["version"]
            results.append(
                {
                    "file": str(path),
                    "slug": document.get("slug"),
                    "workflow_id": row["workflow_id"],
                    "version": row["version"],
                    "result": "unchanged" if unchanged else "published",
                }
            )
    if as_json:
        output.emit_json(results)
        return
    for result in results:
        if dry_run:
            click.echo(f"valid      {result['slug']}  ({result['file']})")
        else:
            verb = "unchanged " if result["result"] == "unchanged" else "published "
            click.echo(f"{verb} {result['slug']} version {result['version']}  ({result['file']})")


def document_files(paths: tuple[Path, ...]) -> list[Path]:
    """The files given, a directory standing for its workflow documents (sorted by name)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml", ".json")
            )
            if not found:
                raise ConveyorError(f"{path}: no workflow documents (*.yaml, *.yml, *.json) in the directory")
            files.extend(found)
        else:
            files.append(path)
    return files


@workflows.command("list")
@tenant_option
@database_option
@json_option
@fail_cleanly
def list_workflows(tenant: str, database_url: str | None, as_json: bool) -> None:
    """List the tenant's workflows."""
    with connect(database_url) as conn:
        rows = conn.execute("select * from conveyor.list_workflows(%s)", (tenant,)).fetchall()
    output.show(rows, ["slug", "name", "active", "version", "trigger", "updated_at"], as_json=as_json)


@workflows.command("show")
@click.argument("slug")
@tenant_option
@database_option
@json_option
@fail_cleanly
def show_workflow(slug: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Show a workflow: settings, versions, compiled steps and recent numbers."""
    with connect(database_url) as conn:
        workflow = conn.execute("select * from conveyor.workflow_detail(%s, %s)", (tenant, slug)).fetchone()
        if workflow is None:
            raise ConveyorError(f'workflow "{slug}" does not exist for tenant "{tenant}"')
        steps = conn.execute(
            "select * from conveyor.compiled_steps(%s, %s, %s)", (tenant, slug, workflow["current_version"])
        ).fetchall()
        versions = conn.execute(
            "select * from conveyor.published_versions(%s, %s)", (tenant, slug)
        ).fetchall()
        summary = conn.execute("select * from conveyor.workflow_summary(%s, %s)", (tenant, slug)).fetchone()
    if as_json:
        output.emit_json({"workflow": workflow, "steps": steps, "versions": versions, "last_7_days": summary})
        return
    click.echo(
        f"{workflow['slug']}: {workflow['name']}  (version {workflow['current_version']}, "
        f"{'active' if workflow['active'] else 'inactive'})"
    )
    if workflow["description"]:
        click.echo(workflow["description"])
    output.table(steps, ["step_id", "kind", "action", "next_step", "branches", "on_error"], title="steps")
    if summary:
        output.table(
            [summary],
            ["runs", "completed", "failed", "success_rate", "avg_ms", "p95_ms", "last_error"],
            title="last 7 days",
        )
    click.echo(
        "versions: " + ", ".join(f"{v['version']} ({v['published_at']:%Y-%m-%d %H:%M})" for v in versions)
    )


@workflows.command("export")
@click.argument("slug")
@click.option("--version", type=int, help="A specific version (default: the current one).")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml", show_default=True)
@tenant_option
@database_option
@fail_cleanly
def export(slug: str, version: int | None, fmt: str, tenant: str, database_url: str | None) -> None:
    """Print a workflow's document, as published."""
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.export_workflow(%s, %s, %s) as doc", (tenant, slug, version)
        ).fetchone()
    assert row is not None
    if fmt == "json":
        output.emit_json(row["doc"])
    else:
        click.echo(yaml.safe_dump(row["doc"], sort_keys=False, allow_unicode=True), nl=False)


@workflows.command("refusals")
@click.argument("slug")
@click.option("--since", default="7d", show_default=True, help="How far back, a duration (30m, 24h, 7d).")
@tenant_option
@database_option
@json_option
@fail_cleanly
def refusals(slug: str, since: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Why the workflow's events started nothing: each reason dispatch logged, counted.

    Quotas (executions_per_month), rate and concurrency limits, run once per entity,
    throttle, debounce (events folded into a waiting execution), work budgets, chain depth
    and failing trigger conditions; `conveyor events show ID` explains one event."""
    with connect(database_url) as conn:
        rows = conn.execute(
            "select * from conveyor.workflow_refusals(%s, %s, conveyor.parse_duration(%s))",
            (tenant, slug, since),
        ).fetchall()
    if as_json:
        output.emit_json(rows)
        return
    if not rows:
        click.echo(f"no event was refused for workflow {slug} in the last {since}")
        return
    output.table(rows, ["reason", "events", "first_at", "last_at", "last_event_id", "last_message"])


def _set_active(slug: str, active: bool, tenant: str, database_url: str | None, as_json: bool) -> None:
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.set_workflow_active(%s, %s, %s) as changed", (tenant, slug, active)
        )
        changed = row.fetchone()
    output.result(
        f"{slug}: {'active' if active else 'inactive'}",
        {"slug": slug, "active": active, "changed": bool(changed and changed["changed"])},
        as_json=as_json,
    )


@workflows.command("activate")
@click.argument("slug")
@tenant_option
@database_option
@json_option
@fail_cleanly
def activate(slug: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Let new events start the workflow again."""
    _set_active(slug, True, tenant, database_url, as_json)


@workflows.command("deactivate")
@click.argument("slug")
@tenant_option
@database_option
@json_option
@fail_cleanly
def deactivate(slug: str, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Stop new executions; running ones finish on their version."""
    _set_active(slug, False, tenant, database_url, as_json)


@workflows.command("delete")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@tenant_option
@database_option
@json_option
@fail_cleanly
def delete(slug: str, yes: bool, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Delete a workflow that has no executions."""
    if not yes:
        click.confirm(f'Delete workflow "{slug}" of tenant "{tenant}"?', abort=True)
    with connect(database_url) as conn:
        conn.execute("select conveyor.delete_workflow(%s, %s)", (tenant, slug))
    output.result(f"{slug}: deleted", {"slug": slug, "deleted": True}, as_json=as_json)


@click.command("dry-run")
@click.option(
    "-f",
    "--file",
    "file",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="The workflow document.",
)
@click.option(
    "--event",
    type=click.Path(exists=True, path_type=Path),
    required=True,
    help="A sample trigger (JSON or YAML), e.g. {event_type, payload, entity_id}.",
)
@tenant_option
@database_option
@json_option
@fail_cleanly
def dry_run(file: Path, event: Path, tenant: str, database_url: str | None, as_json: bool) -> None:
    """Run a workflow against a sample event: every decision, nothing sent, nothing kept."""
    document = read_document(file)
    trigger = read_document(event)
    with connect(database_url) as conn:
        row = conn.execute(
            "select conveyor.dry_run(%s, %s, %s) as r", (tenant, Jsonb(document), Jsonb(trigger))
        )
        result = row.fetchone()
    assert result is not None
    report = result["r"]
    if as_json:
        output.emit_json(report)
        return
    rows = [
        {
            "step": s.get("step"),
            "kind": s.get("kind"),
            "status": s.get("status"),
            "decision": s.get("decision"),
            "next": s.get("next"),
            "input": s.get("input"),
            "result": s.get("would_send") or s.get("output") or s.get("error"),
        }
        for s in report.get("steps", [])
    ]
    output.table(
        rows,
        ["step", "kind", "status", "decision", "next", "input", "result"],
        title=f"dry run of {document.get('slug')} (nothing sent, nothing kept)",
    )
    click.echo(
        f"final status: {report.get('status')}" + (f" ({report['error']})" if report.get("error") else "")
    )
