"""schema/conveyor.sql: a fresh install matches it, and so does an upgrade from an old tree."""

from __future__ import annotations

import difflib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from conveyor import settings
from conveyor.migrate import migrate
from conveyor.schema_snapshot import SNAPSHOT_FILE, describe, server_major

# The first release: the oldest commit whose migrations are all, byte for byte, the ones
# in migrations/ today (before it, 0003-0006 were still being edited), so a database it
# migrated is one the migrator must upgrade.
FIRST_RELEASE = "c3411fe"
# A tree whose sql/ defined conveyor.condition_field_root(jsonb), which fed1b90 removed
# from sql/ without a `drop function`: upgraded, it must be gone as on a fresh install.
BEFORE_A_REMOVED_FUNCTION = "b1caf27"
# The last tree before 0026, with 0019 (which carries a `-- Later:` note) applied.
BEFORE_0026 = "ada69ca"


def snapshot_of(url: str) -> str:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return describe(conn)


def differences(expected: str, actual: str, expected_name: str, actual_name: str) -> str:
    diff = difflib.unified_diff(
        expected.splitlines(), actual.splitlines(), expected_name, actual_name, lineterm="", n=1
    )
    return "\n".join(list(diff)[:80])


def test_a_fresh_install_matches_the_checked_in_snapshot(db_url: str) -> None:
    fresh = snapshot_of(db_url)
    recorded = SNAPSHOT_FILE.read_text()
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        major = server_major(conn)
    if f"as PostgreSQL {major} writes it" not in recorded:
        pytest.skip(f"schema/conveyor.sql was written by another PostgreSQL than this {major}")
    assert fresh == recorded, (
        "the schema of a fresh install differs from schema/conveyor.sql: run `make schema` and "
        "commit the file with the change\n"
        + differences(recorded, fresh, "schema/conveyor.sql", "fresh install")
    )


def checkout(commit: str, into: Path) -> Path:
    """The runner, migrations and sql/ of `commit`, from this repository's history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(settings.PROJECT_DIR), "archive", commit, "runner", "migrations", "sql"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs the repository's history to check out {commit} (a full clone): {exc}")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def migrate_with_old_tree(tree: Path, url: str) -> None:
    """Migrate as that release did: its own migrator, its migrations and its sql/."""
    env = {**os.environ, "PYTHONPATH": str(tree / "runner"), "CONVEYOR_HOME": str(tree)}
    code = "import sys; from conveyor.migrate import migrate; migrate(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", code, url], env=env, cwd=tree, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("commit", [FIRST_RELEASE, BEFORE_A_REMOVED_FUNCTION, BEFORE_0026])
def test_an_upgraded_database_has_a_fresh_installs_schema(
    commit: str, empty_db_url: str, db_url: str, tmp_path: Path
) -> None:
    old_tree = checkout(commit, tmp_path)
    migrate_with_old_tree(old_tree, empty_db_url)
    old = snapshot_of(empty_db_url)
    report = migrate(empty_db_url)
    assert report.applied, f"{commit} predates some migrations"
    upgraded, fresh = snapshot_of(empty_db_url), snapshot_of(db_url)
    assert upgraded == fresh, differences(fresh, upgraded, "fresh install", f"upgraded from {commit}")
    if commit == BEFORE_A_REMOVED_FUNCTION:
        assert "conveyor.condition_field_root(p_condition jsonb)" in old
        assert report.functions_dropped == ["conveyor.condition_field_root(jsonb)"]
