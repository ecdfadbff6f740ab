"""A FunctionApp with a queue trigger and a parameterized route, for the local host's own tests."""

from __future__ import annotations

import os
from pathlib import Path

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.queue_trigger(arg_name="msg", queue_name="devhost-sample", connection="AzureWebJobsStorage")
def record_message(msg: func.QueueMessage) -> None:
    body = msg.get_body().decode()
    if body == "fail":
        raise RuntimeError("fails on purpose")
    with Path(os.environ["SAMPLE_OUT"]).open("a", encoding="utf-8") as out:
        out.write(f"{body} {msg.dequeue_count}\n")


@app.route(route="items/{item_id}", methods=["GET"])
def get_item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(f"{req.route_params['item_id']} {req.params.get('q', '')}")
