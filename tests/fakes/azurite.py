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
    r"Azurite (Blob|Queue|Table) service is successfully listening at https?://127\.0\.0\.1:(\d+)"
)

REQUEST_LINE = re.compile(r" (Blob|Queue|Table)StorageContextMiddleware: RequestMethod=")


@dataclass
class Azurite:
    process: subprocess.Popen[str]
    ports: dict[str, int]
    scheme: str = "http"

    def service_url(self, service: str) -> str:
        """The account's endpoint of one service ("Blob", "Queue", "Table"), IP style."""
        return f"{self.scheme}://127.0.0.1:{self.ports[service]}/devstoreaccount1"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol={self.scheme};AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint={self.service_url('Blob')};"
            f"QueueEndpoint={self.service_url('Queue')};"
            f"TableEndpoint={self.service_url('Table')};"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_azurite(
    timeout: float = 60.0,
    *,
    request_log: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    oauth: bool = False,
) -> Azurite:
    """``request_log``: Azurite's debug log, one line per request among others (benchmarks count them).
    ``tls``: (PEM certificate, PEM key) to serve HTTPS. ``oauth``: accept bearer tokens (``--oauth
    basic``: issuer, audience and lifetime are checked, the signature is not; Azurite needs HTTPS for it).
    """
    if oauth and tls is None:
        raise ValueError("Azurite accepts bearer tokens over HTTPS only: pass tls too")
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
            *(["--cert", str(tls[0]), "--key", str(tls[1])] if tls else []),
            *(["--oauth", "basic"] if oauth else []),
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
    return Azurite(process, ports, "https" if tls else "http")


def count_requests(request_log: Path) -> dict[str, int]:
    """Requests Azurite has logged so far, by service ("Queue", "Table", "Blob")."""
    counts = {"Blob": 0, "Queue": 0, "Table": 0}
    with open(request_log, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            match = REQUEST_LINE.search(line)
            if match:
                counts[match.group(1)] += 1
    return counts
