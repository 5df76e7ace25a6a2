"""Interleaved A/B of git revisions: the end-to-end burst and the dispatch benchmark, each
revision's own code, in turn, round after round.

    .venv/bin/python -m bench.ab_revisions [--rounds 5] REV [REV ...]
    make bench-ab REVS="HEAD~1 HEAD"

Each revision (anything `git rev-parse` knows; `WORKTREE` is the working tree with its
uncommitted changes) is unpacked into a temporary directory: `git archive` of the commit,
or for WORKTREE a copy of the tracked files as they are on disk and of the untracked files
git does not ignore. Every tree runs with this venv's Python, its own `runner/` first on
the path (the venv's editable install points at one checkout) and CONVEYOR_HOME set to the
tree, so its own migrations and SQL are what the benchmarks install. In each round, each
tree (in an order rotated by one every round, so none always runs first) runs, with the
tree as the working directory:

* `python -m bench.e2e_peers --systems conveyor --seconds 1 --rounds 1`: the burst's
  completed workflows/s and CPU per workflow (runner processes + PostgreSQL);
* `python -m bench.dispatch_throughput`: dispatch + three internal steps, executions/s.

Then it prints every round, the median of each measure per revision, and each revision's
medians as a ratio of the first revision's. Nothing is recorded: the benchmarks run with
CONVEYOR_BENCH_NO_RECORD=1 (and e2e_peers with --no-record where it has it), and an older
revision's `record` could only write into its own temporary tree; that this checkout's
bench/RESULTS.md is unchanged afterwards is checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"
# what each round measures: (key, heading)
MEASURES = (
    ("burst", "burst workflows/s"),
    ("cpu", "burst CPU ms/workflow (runners + PostgreSQL)"),
    ("dispatch", "dispatch executions/s"),
)


@dataclass(frozen=True)
class Tree:
    revision: str  # as given on the command line
    commit: str  # the commit's short hash, or WORKTREE
    path: Path


def git(*args: str, repo: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def prepare_tree(revision: str, into: Path, repo: Path = ROOT) -> Tree:
    """`revision` unpacked into the new directory `into`: git archive of its commit, or for
    WORKTREE the tracked files as on disk plus the untracked ones git does not ignore."""
    into.mkdir(parents=True)
    if revision == WORKTREE:
        listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", repo=repo)
        for name in sorted(set(filter(None, listed.split("\0")))):
            source = repo / name
            if not source.is_file():  # deleted but not yet staged, or a submodule
                continue
            target = into / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        return Tree(revision, WORKTREE, into)
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", repo=repo).strip()
    except subprocess.CalledProcessError:
        raise SystemExit(f"{revision}: not a revision of {repo} (git rev-parse finds no commit)") from None
    archive = subprocess.run(["git", "archive", commit], cwd=repo, check=True, capture_output=True).stdout
    archive_path = into.parent / f"{into.name}.tar"
    archive_path.write_bytes(archive)
    with tarfile.open(archive_path) as tar:
        tar.extractall(into, filter="data")
    archive_path.unlink()
    return Tree(revision, commit[:10], into)


def tree_env(tree: Path) -> dict[str, str]:
    """The environment a tree's benchmarks run in: its own runner package and SQL, no records."""
    path = [str(tree / "runner"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "CONVEYOR_HOME": str(tree),
        "CONVEYOR_BENCH_NO_RECORD": "1",
    }


def e2e_command(tree: Path, burst: int | None, seconds: float) -> list[str]:
    command = [sys.executable, "-m", "bench.e2e_peers", "--systems", "conveyor", "--seconds", f"{seconds:g}"]
    command += ["--rounds", "1"]
    if burst is not None:
        command += ["--burst", str(burst)]
    source = tree / "bench" / "e2e_peers.py"
    if source.exists() and "--no-record" in source.read_text():
        command.append("--no-record")
    return command


def dispatch_command(events: int | None) -> list[str]:
    command = [sys.executable, "-m", "bench.dispatch_throughput"]
    return command + (["--events", str(events)] if events is not None else [])


_E2E_ROUND = re.compile(r"^round \d+, conveyor:.*\n\s+(\{.*\})\s*$", re.M)
_E2E_ROW = re.compile(r"^\| conveyor \| ([\d.]+) \| [^|]* \| ([\d.]+) \+ ([\d.]+) \|", re.M)
_DISPATCH = re.compile(r"dispatch \+ 3 internal steps: ([\d,.]+) executions/s")


def parse_e2e(output: str) -> dict[str, float]:
    """The Conveyor burst of e2e_peers' output: workflows/s and CPU ms per workflow (runner
    processes + PostgreSQL), from its round line (JSON), else from its results table."""
    rounds = _E2E_ROUND.findall(output)
    if rounds:
        burst = json.loads(rounds[-1])["burst"]
        workers, postgres = float(burst["worker_cpu_ms"]), float(burst["postgres_cpu_ms"])
        return {
            "burst": float(burst["throughput"]),
            "cpu": workers + postgres,
            "cpu_workers": workers,
            "cpu_postgres": postgres,
        }
    row = _E2E_ROW.search(output)
    if row is None:
        raise ValueError("no Conveyor burst in the output of bench.e2e_peers")
    workers, postgres = float(row[2]), float(row[3])
    return {
        "burst": float(row[1]),
        "cpu": workers + postgres,
        "cpu_workers": workers,
        "cpu_postgres": postgres,
    }


def parse_dispatch(output: str) -> float:
    """Executions/s of dispatch + three internal steps, from bench.dispatch_throughput's output."""
    found = _DISPATCH.search(output)
    if found is None:
        raise ValueError(
            "no 'dispatch + 3 internal steps: N executions/s' in the output of bench.dispatch_throughput"
        )
    return float(found[1].replace(",", ""))


def run_in(tree: Tree, command: list[str], timeout_s: float) -> str:
    """Runs `command` in `tree`; its stdout. A failure raises with the end of its stderr."""
    done = subprocess.run(
        command,
        cwd=tree.path,
        env=tree_env(tree.path),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(
            f"{' '.join(command[1:])} failed in {tree.revision} (exit {done.returncode}):\n{tail}"
        )
    return done.stdout


def measure(tree: Tree, args: argparse.Namespace) -> dict[str, float]:
    """One round of one tree: the e2e burst, then dispatch. A failed benchmark is NaN (reported)."""
    result: dict[str, float] = {"burst": math.nan, "cpu": math.nan, "dispatch": math.nan}
    try:
        result |= parse_e2e(run_in(tree, e2e_command(tree.path, args.burst, args.seconds), args.timeout))
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
        print(f"  e2e_peers: {error}", file=sys.stderr, flush=True)
    try:
        result["dispatch"] = parse_dispatch(
            run_in(tree, dispatch_command(args.dispatch_events), args.timeout)
        )
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
        print(f"  dispatch_throughput: {error}", file=sys.stderr, flush=True)
    return result


def median(values: list[float]) -> float:
    measured = [v for v in values if not math.isnan(v)]
    return statistics.median(measured) if measured else math.nan


def label(tree: Tree) -> str:
    return tree.revision if tree.commit in (WORKTREE, tree.revision) else f"{tree.revision} ({tree.commit})"


def table(trees: list[Tree], rounds: dict[str, list[dict[str, float]]]) -> str:
    """Medians per revision, then each revision's medians over the first's."""
    medians = {
        t.revision: {key: median([r[key] for r in rounds[t.revision]]) for key, _ in MEASURES} for t in trees
    }
    lines = [
        f"Medians of {max(len(r) for r in rounds.values())} interleaved round(s):",
        "",
        "| revision | " + " | ".join(heading for _, heading in MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for tree in trees:
        cells = [
            f"{medians[tree.revision][key]:,.2f}" if key == "cpu" else f"{medians[tree.revision][key]:,.0f}"
            for key, _ in MEASURES
        ]
        lines.append(f"| {label(tree)} | " + " | ".join(cells) + " |")
    first = trees[0].revision
    lines += [
        "",
        f"Ratios against {label(trees[0])} (burst and dispatch: higher is faster; CPU: lower is cheaper):",
        "",
        "| revision | " + " | ".join(heading for _, heading in MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for tree in trees[1:]:
        cells = [f"{medians[tree.revision][key] / medians[first][key]:.3f}x" for key, _ in MEASURES]
        lines.append(f"| {label(tree)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@contextmanager
def results_untouched(paths: list[Path]) -> Iterator[None]:
    """Fails if any of `paths` (this checkout's recorded results) changed meanwhile."""
    before = {p: _digest(p) for p in paths}
    yield
    changed = [str(p) for p in paths if _digest(p) != before[p]]
    if changed:
        raise SystemExit(f"the A/B run changed {', '.join(changed)}: a benchmark recorded into this checkout")


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "revisions", nargs="+", help=f"git revisions; {WORKTREE} is the uncommitted working tree"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=None, help="e2e_peers --burst (default: its own, 5,000)")
    parser.add_argument("--seconds", type=float, default=1.0, help="e2e_peers --seconds of steady rate")
    parser.add_argument("--dispatch-events", type=int, default=None, help="dispatch_throughput --events")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one benchmark run may take")
    args = parser.parse_args(argv)
    if len(set(args.revisions)) != len(args.revisions):
        raise SystemExit("each revision once, please: " + " ".join(args.revisions))

    scratch = Path(tempfile.mkdtemp(prefix="conveyor-ab-"))
    scratch.chmod(0o755)
    try:
        trees = [prepare_tree(rev, scratch / f"tree{i}") for i, rev in enumerate(args.revisions)]
        rounds: dict[str, list[dict[str, float]]] = {t.revision: [] for t in trees}
        with results_untouched([ROOT / "bench" / "RESULTS.md", ROOT / "bench" / "e2e_peers.png"]):
            for r in range(args.rounds):
                for tree in trees[r % len(trees) :] + trees[: r % len(trees)]:
                    started = time.monotonic()
                    result = measure(tree, args)
                    rounds[tree.revision].append(result)
                    print(
                        f"round {r + 1}/{args.rounds}, {label(tree)}: burst {result['burst']:,.0f} workflows/s,"
                        f" CPU {result.get('cpu_workers', math.nan):.2f} + {result.get('cpu_postgres', math.nan):.2f}"
                        f" ms/workflow, dispatch {result['dispatch']:,.0f} executions/s"
                        f" ({time.monotonic() - started:.0f} s)",
                        flush=True,
                    )
        print()
        print(table(trees, rounds))
        return rounds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
