"""bench/ab_revisions.py without running its benchmarks (one round of two trees takes
minutes: dispatch_throughput publishes 10,000 workflows): the trees it prepares, the
environment they run in, and the parsing of the two benchmarks' output, the e2e part
produced by e2e_peers' own report so a change of its format fails here."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from bench import ab_revisions as ab
from bench.e2e_peers import report


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository with one commit (a.txt, bench/e2e_peers.py, .gitignore), then changes:
    a.txt edited, new.txt untracked, gone.txt deleted, junk.log ignored."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "a.txt").write_text("committed\n")
    (root / "gone.txt").write_text("soon deleted\n")
    (root / "bench").mkdir()
    (root / "bench" / "e2e_peers.py").write_text('parser.add_argument("--no-record")\n')
    (root / ".gitignore").write_text("*.log\n")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.test", "commit", "-qm", "one")
    (root / "a.txt").write_text("edited\n")
    (root / "new.txt").write_text("untracked\n")
    (root / "gone.txt").unlink()
    (root / "junk.log").write_text("ignored\n")
    return root


def files(tree: Path) -> dict[str, str]:
    return {p.relative_to(tree).as_posix(): p.read_text() for p in tree.rglob("*") if p.is_file()}


def test_a_revision_is_its_commit_and_worktree_is_the_files_on_disk(repo: Path, tmp_path: Path) -> None:
    head = ab.prepare_tree("HEAD", tmp_path / "t0", repo)
    assert head.commit == git(repo, "rev-parse", "HEAD").strip()[:10]
    assert files(head.path) == {
        ".gitignore": "*.log\n",
        "a.txt": "committed\n",
        "gone.txt": "soon deleted\n",
        "bench/e2e_peers.py": 'parser.add_argument("--no-record")\n',
    }
    work = ab.prepare_tree(ab.WORKTREE, tmp_path / "t1", repo)
    assert work.commit == ab.WORKTREE
    assert files(work.path) == {
        ".gitignore": "*.log\n",
        "a.txt": "edited\n",
        "new.txt": "untracked\n",
        "bench/e2e_peers.py": 'parser.add_argument("--no-record")\n',
    }


def test_an_unknown_revision_is_refused_by_name(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no-such-rev: not a revision"):
        ab.prepare_tree("no-such-rev", tmp_path / "t", repo)


def test_a_tree_runs_its_own_code_and_records_nothing(tmp_path: Path) -> None:
    env = ab.tree_env(tmp_path)
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path / "runner")
    assert env["CONVEYOR_HOME"] == str(tmp_path) and env["CONVEYOR_BENCH_NO_RECORD"] == "1"
    # --no-record only where that revision's e2e_peers has it
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "e2e_peers.py").write_text("older: no such flag\n")
    assert ab.e2e_command(tmp_path, None, 1.0) == [
        sys.executable,
        "-m",
        "bench.e2e_peers",
        "--systems",
        "conveyor",
        "--seconds",
        "1",
        "--rounds",
        "1",
    ]
    (tmp_path / "bench" / "e2e_peers.py").write_text('add_argument("--no-record")')
    assert ab.e2e_command(tmp_path, 200, 0.5)[-5:] == ["--rounds", "1", "--burst", "200", "--no-record"]


def test_the_recorder_leaves_results_alone_when_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench import harness

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    monkeypatch.setattr(harness, "RESULTS", results)
    monkeypatch.setenv("CONVEYOR_BENCH_NO_RECORD", "1")
    harness.record("Anything", "make bench-x", "| a |")
    assert results.read_text() == "# Benchmark results\n"


def test_a_changed_results_file_fails_the_run(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("before\n")
    with pytest.raises(SystemExit, match=r"changed .*RESULTS\.md"), ab.results_untouched([results]):
        results.write_text("after\n")
    with ab.results_untouched([results, tmp_path / "absent.png"]):
        pass


BURST = {"events": 5000, "arrived": 5000, "throughput": 1834.5, "p50": 900.0, "p99": 2500.0, "max": 2600.0,
         "producer_s": 0.2, "offered_per_s": 25000.0, "worker_cpu_ms": 0.61, "postgres_cpu_ms": 0.83,
         "elapsed_s": 2.7}  # fmt: skip
STEADY = BURST | {"throughput": 200.0, "p50": 4.0, "p99": 9.0, "offered_per_s": 199.0}


def test_the_e2e_burst_is_read_from_the_round_line_else_the_table() -> None:
    body = report(
        {"conveyor": {"burst": BURST, "steady": STEADY}},
        {"conveyor": "1 `conveyor run` process"},
        argparse.Namespace(burst=5000, rate=200.0, seconds=1.0),
    )
    round_line = f"round 1, conveyor: burst of 5000, then 200/s for 1 s\n  {json.dumps({'burst': BURST})}\n"
    expected = {"burst": 1834.5, "cpu": pytest.approx(1.44), "cpu_workers": 0.61, "cpu_postgres": 0.83}
    assert ab.parse_e2e(round_line + body) == expected
    # the table rounds the throughput to whole workflows/s
    assert ab.parse_e2e(body) == expected | {"burst": 1834.0}
    with pytest.raises(ValueError, match="no Conveyor burst"):
        ab.parse_e2e("round 1, dbos: ...\n")


def test_dispatch_executions_per_second_are_read_from_its_line() -> None:
    output = (
        "dispatch + 3 internal steps: 7,720 executions/s (target >= 5,000/s)\n"
        "per-event cost, 10,000 vs 10 unrelated subscriptions: 0.88x (target <= 1.2x)\n"
    )
    assert ab.parse_dispatch(output) == 7720.0
    with pytest.raises(ValueError, match="executions/s"):
        ab.parse_dispatch("per-event cost ...")


def test_the_table_has_medians_and_ratios_to_the_first_revision(tmp_path: Path) -> None:
    trees = [ab.Tree("HEAD~1", "abc1234567", tmp_path), ab.Tree(ab.WORKTREE, ab.WORKTREE, tmp_path)]
    rounds = {
        "HEAD~1": [{"burst": 1000.0, "cpu": 2.0, "dispatch": 5000.0}, {"burst": 1200.0, "cpu": 1.0, "dispatch": 7000.0},
                   {"burst": 1100.0, "cpu": 1.5, "dispatch": math.nan}],
        ab.WORKTREE: [{"burst": 1100.0, "cpu": 1.2, "dispatch": 6600.0}, {"burst": 1210.0, "cpu": 1.8, "dispatch": 6600.0},
                      {"burst": 1000.0, "cpu": 1.5, "dispatch": 6600.0}],
    }  # fmt: skip
    text = ab.table(trees, rounds)
    assert "| HEAD~1 (abc1234567) | 1,100 | 1.50 | 6,000 |" in text  # (a failed run is left out)
    assert "| WORKTREE | 1,100 | 1.50 | 6,600 |" in text
    assert "| WORKTREE | 1.000x | 1.000x | 1.100x |" in text
