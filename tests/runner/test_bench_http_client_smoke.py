"""bench/http_client_cpu.py, small: both clients (this checkout's and one loaded from git)
perform every request against the benchmark's sink process and are measured."""

from __future__ import annotations

from bench.http_client_cpu import report, run


def test_the_http_client_benchmark_measures_both_clients() -> None:
    samples, names = run(requests=40, blocks=2, baseline="HEAD")
    assert names == ["baseline (HEAD)", "this checkout"]
    assert sorted(samples) == [(name, threads) for name in sorted(names) for threads in (1, 16)]
    assert all(len(cpu) == 2 and all(c > 0 for c in cpu) for cpu in samples.values())
    body = report(samples, names, 40, 2)
    assert "| baseline (HEAD) |" in body and "| this checkout |" in body
