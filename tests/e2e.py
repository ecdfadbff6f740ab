"""Running the app through the local host in a child process, as a user does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_host(
    env: Mapping[str, str],
    *,
    port: int | None = None,
    module: str = "function_app",
    host_json: Path | None = None,
    log: Path | None = None,
) -> Iterator[str]:
    """Start ``python -m devhost`` with exactly ``env`` (plus PATH and CA settings); yield its base URL."""
    port = port or free_port()
    child_env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "LANG", "SYSTEMROOT")
    }
    child_env.update(env)
    # dry-run relays go to a scratch file, never into the checkout
    child_env.setdefault("DATAVERSE_DRY_RUN_FILE", str(Path(tempfile.mkdtemp()) / "dry-run.jsonl"))
    child_env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "devhost", "--port", str(port), "--module", module]
    if host_json is not None:
        command += ["--host-json", str(host_json)]
    log = log or Path(tempfile.mkdtemp()) / "host.log"
    output = open(log, "wb")  # noqa: SIM115
    process = subprocess.Popen(command, cwd=ROOT, env=child_env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a cold interpreter on a busy 2-core machine
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"local host exited with {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("local host did not start listening within 120 s") from None
                time.sleep(0.05)
        yield base
    except BaseException:
        # what the app logged is what explains a failure: pytest shows it with the failing test
        print(f"--- local host log ({log}), last lines ---", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-80:]), file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        output.close()


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    """The app runs in another process: poll for what it did. The deadline only stops a test that
    would hang; it is sized for a 2-core machine busy with other work, and a passing test never
    waits longer than the app takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30)
