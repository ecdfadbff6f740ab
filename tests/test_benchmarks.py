"""Every benchmark runs in its smoke mode and prints its figures, so that none can silently rot.

The figures of a smoke run mean little (tiny counts); the README's come from full runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in {"__init__", "common", "fake_server"}
)


def test_every_benchmark_is_listed_here() -> None:
    assert BENCHMARKS == ["cold_start", "outbound_rps", "per_send", "relay", "table_writes"]


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_benchmark_smoke_run_prints_its_figures(benchmark: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{benchmark}", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert figures, result.stdout[-2000:]
    for figure in figures:
        assert figure["benchmark"] == benchmark
        assert isinstance(figure["value"], (int, float)) and figure["unit"]
    if benchmark == "relay":
        by_name = {f["figure"]: f["value"] for f in figures}
        assert by_name["duplicate relays"] == 0
        assert by_name["notifications received"] == 250
        # under Dataverse's limits too, batched, unbatched and in a burst: nothing twice, nothing lost
        exactly_once = {name: v for name, v in by_name.items() if name.endswith((": duplicates", ": lost"))}
        assert len(exactly_once) == 6 and set(exactly_once.values()) == {0}, exactly_once
