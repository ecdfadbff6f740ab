"""Azurite, the real Azure Storage emulator, on free ports for one test session."""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from core.settings import AZURITE_ACCOUNT_KEY

ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(
    r"Azurite (Blob|Queue|Table) service is successfully listening at http://127\.0\.0\.1:(\d+)"
)

REQUEST_LINE = re.compile(r" (Blob|Queue|Table)StorageContextMiddleware: RequestMethod=")


@dataclass
class Azurite:
    process: subprocess.Popen[str]
    ports: dict[str, int]

    @property
    def connection_string(self) -> str:
        return (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.ports['Blob']}/devstoreaccount1;"
            f"QueueEndpoint=http://127.0.0.1:{self.ports['Queue']}/devstoreaccount1;"
            f"TableEndpoint=http://127.0.0.1:{self.ports['Table']}/devstoreaccount1;"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_azurite(timeout: float = 60.0, *, request_log: Path | None = None) -> Azurite:
    """``request_log``: Azurite's debug log, one line per request among others (benchmarks count them)."""
    binary = ROOT / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        raise RuntimeError("Azurite is not installed: run scripts/setup (npm ci)")
    process = subprocess.Popen(
        [
            str(binary),
            "--inMemoryPersistence",
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--blobPort",
            "0",
            "--queuePort",
            "0",
            "--tablePort",
            "0",
            *(["--debug", str(request_log)] if request_log else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    ports: dict[str, int] = {}
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            match = LISTENING.search(line)
            if match:
                ports[match.group(1)] = int(match.group(2))
                if len(ports) == 3:
                    ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(timeout) or len(ports) != 3:
        process.kill()
        raise RuntimeError(f"Azurite did not start (ports seen: {ports})")
    return Azurite(process, ports)


def count_requests(request_log: Path) -> dict[str, int]:
    """Requests Azurite has logged so far, by service ("Queue", "Table", "Blob")."""
    counts = {"Blob": 0, "Queue": 0, "Table": 0}
    with open(request_log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            match = REQUEST_LINE.search(line)
            if match:
                counts[match.group(1)] += 1
    return counts
