"""Cold start: ``import function_app`` against importing the runtime packages it uses, in fresh interpreters.

Runs alternate (baseline, app, baseline, app, ...) so drift on a noisy machine hits both alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.common import emit, machine, median, sized

ROOT = Path(__file__).resolve().parents[1]
RUNS = sized(15, 2)

#: The third-party packages function_app imports at module level (msal and cryptography are imported
#: lazily, when a token or a Telnyx signature is first needed).
APP_PACKAGES = [
    "azure.storage.queue",
    "azure.functions",
    "azure.data.tables",
    "azure.data.tables.aio",
    "azure.storage.queue.aio",
    "azure.core",
    "aiohttp",
    "httpx",
    "pydantic",
    "pydantic_settings",
    "phonenumbers",
    "tenacity",
    # the OpenTelemetry API only: the Azure Monitor distro is imported by the worker, or by function_app
    # when a connection string is set without the worker doing it (never in this measurement)
    "opentelemetry.trace",
    "opentelemetry.metrics",
]
ALL_RUNTIME_PACKAGES = [*APP_PACKAGES, "msal", "cryptography.x509"]

PROBE = "import time; t = time.perf_counter(); {imports}; print(time.perf_counter() - t)"


def measure(imports: list[str]) -> float:
    code = PROBE.format(imports="; ".join(f"import {name}" for name in imports))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip())


def main() -> None:
    baseline, everything, app = [], [], []
    for _ in range(RUNS):
        baseline.append(measure(APP_PACKAGES))
        app.append(measure(["function_app"]))
        everything.append(measure(ALL_RUNTIME_PACKAGES))
    emit(
        "cold_start",
        "import runtime packages the app uses (median)",
        median(baseline) * 1000,
        "ms",
        runs=RUNS,
        machine=machine(),
    )
    emit("cold_start", "import all of requirements.txt (median)", median(everything) * 1000, "ms", runs=RUNS)
    emit("cold_start", "import function_app (median)", median(app) * 1000, "ms", runs=RUNS)
    emit("cold_start", "function_app / its packages", median(app) / median(baseline), "ratio", goal="<= 1.25")


if __name__ == "__main__":
    main()
