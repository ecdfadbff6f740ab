from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from typing import Any

#: ``python -m bench.X --smoke``: small counts, to check that the benchmark runs and prints its figures
#: (the test suite does this for every benchmark); the figures it prints then mean little.
SMOKE = "--smoke" in sys.argv[1:]


def sized(full: int, smoke: int) -> int:
    return smoke if SMOKE else full


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.system()}


def emit(benchmark: str, figure: str, value: float, unit: str, **extra: Any) -> None:
    print(
        json.dumps(
            {"benchmark": benchmark, "figure": figure, "value": round(value, 4), "unit": unit, **extra}
        ),
        flush=True,
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]
