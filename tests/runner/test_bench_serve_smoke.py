"""bench/serve_ingest.py, small: both servers (this checkout's and one loaded from git)
accept every signed delivery and are measured."""

from __future__ import annotations

from bench.serve_ingest import measure, report


def test_the_serve_benchmark_measures_both_servers(db_url: str) -> None:
    results = measure(db_url, "HEAD", clients=2, requests=20, rounds=1)
    assert {version: len(rounds) for version, rounds in results.items()} == {"base": 1, "new": 1}
    assert all(rps > 0 and cpu > 0 for rounds in results.values() for rps, cpu in rounds)
    body = report(results, "HEAD", 2, 20, 1)
    assert "| baseline (`HEAD`) |" in body and "| this checkout |" in body
