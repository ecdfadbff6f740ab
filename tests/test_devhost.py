"""The local host: routes from function metadata, and queue triggers with poison handling."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
from azure.storage.queue import QueueClient

from devhost.asgi import compile_route
from tests.e2e import local_host, wait_for
from tests.fakes.azurite import Azurite


def test_route_templates() -> None:
    route = compile_route("api", "providers/{provider}/delivery-reports")
    match = route.match("/api/providers/twilio/delivery-reports")
    assert match and match.group("provider") == "twilio"
    assert not route.match("/api/providers/twilio/inbound")
    assert compile_route("api", "files/{*rest}").match("/api/files/a/b/c").group("rest") == "a/b/c"  # type: ignore[union-attr]
    assert compile_route("", "health").match("/health")


def test_http_route_parameters_and_query(azurite: Azurite, tmp_path: Path) -> None:
    env = {"AzureWebJobsStorage": azurite.connection_string, "SAMPLE_OUT": str(tmp_path / "out.txt")}
    with local_host(env, module="tests.sample_queue_app") as base:
        response = httpx.get(f"{base}/api/items/42?q=x")
    assert response.text == "42 x"


def test_queue_trigger_runs_and_failures_end_in_the_poison_queue(azurite: Azurite, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    host_json = tmp_path / "host.json"
    host_json.write_text(
        json.dumps(
            {
                "version": "2.0",
                "extensions": {
                    "queues": {
                        "maxDequeueCount": 2,
                        "visibilityTimeout": "00:00:00",
                        "maxPollingInterval": "00:00:01",
                    }
                },
            }
        )
    )
    queue = QueueClient.from_connection_string(azurite.connection_string, "devhost-sample")
    poison = QueueClient.from_connection_string(azurite.connection_string, "devhost-sample-poison")
    env = {"AzureWebJobsStorage": azurite.connection_string, "SAMPLE_OUT": str(out)}
    with local_host(env, module="tests.sample_queue_app", host_json=host_json):
        wait_for(lambda: _exists(queue))
        queue.send_message(base64.b64encode(b"hello").decode())
        queue.send_message(base64.b64encode(b"fail").decode())
        wait_for(lambda: out.exists() and "hello" in out.read_text())
        wait_for(lambda: poison.get_queue_properties().approximate_message_count == 1)
    assert out.read_text() == "hello 1\n"
    [dead] = list(poison.receive_messages())
    assert base64.b64decode(dead.content) == b"fail"
    assert queue.get_queue_properties().approximate_message_count == 0


def _exists(queue: QueueClient) -> bool:
    try:
        queue.get_queue_properties()
        return True
    except Exception:
        return False
