"""Entity group transactions, written and read as text.

``TableClient.submit_transaction`` builds the multipart body and parses the answer with the
standard library's ``email`` package, which costs our process more per operation than a lone
request does (py-spy: two thirds of the host's CPU under load went there). The ledger's group
commit needs little of it: creates, conditional replaces and upserts of small entities, and, of an
answer, whether all of it was applied and each operation's ETag. That is written here; the request
still goes through the SDK client's own pipeline (its authentication, retries, transport).

Anything but a complete success raises ``TransactionNotApplied``; the group commit then makes each
write alone, which is safe whatever the transaction did (a transaction is all or nothing, and a
write that landed conflicts with itself, which the ledger's owner tokens recognise).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.core.rest import HttpRequest
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient

__all__ = ["TransactionNotApplied", "submit"]

_STATUS_LINE = re.compile(rb"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ETAG = re.compile(rb"^ETag: *(.+?)\r?$", re.MULTILINE | re.IGNORECASE)


class TransactionNotApplied(AzureError):
    """The service refused the transaction, or its answer is not one this module can read."""


async def submit(
    table: TableClient, writes: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]
) -> list[dict[str, str]]:
    """Commit ``writes`` ((kind, entity, options), one partition) as one entity group transaction;
    return each write's response metadata (``etag``), in order."""
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    parts = [_operation(table, index, *write) for index, write in enumerate(writes)]
    body = (
        f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n".encode()
        + b"".join(f"--{changeset}\r\n".encode() + part for part in parts)
        + f"--{changeset}--\r\n\r\n--{batch}--\r\n".encode()
    )
    request = HttpRequest(
        "POST",
        f"{table.url}/$batch",
        headers={
            "x-ms-version": table.api_version,
            "DataServiceVersion": "3.0",
            "MaxDataServiceVersion": "3.0;NetFx",
            "Content-Type": f"multipart/mixed; boundary={batch}",
            "Accept": "application/json",
        },
        content=body,
    )
    # the SDK client's pipeline, as its own transactions use it
    response = await table._client.send_request(request, stream=True)
    answer = await response.read()
    if response.status_code != 202:
        raise TransactionNotApplied(f"transaction answered HTTP {response.status_code}")
    statuses = [int(status) for status in _STATUS_LINE.findall(answer)]
    etags = [etag.decode("ascii").strip() for etag in _ETAG.findall(answer)]
    if len(statuses) != len(writes) or not all(200 <= status < 300 for status in statuses):
        raise TransactionNotApplied(f"transaction refused: statuses {statuses[:3]}")
    if len(etags) != len(writes):
        raise TransactionNotApplied("transaction answer without an ETag for every operation")
    return [{"etag": etag} for etag in etags]


def _operation(
    table: TableClient, index: int, kind: str, entity: Mapping[str, Any], options: Mapping[str, Any]
) -> bytes:
    headers = [
        "Content-Type: application/json",
        "Accept: application/json;odata=minimalmetadata",
        "DataServiceVersion: 3.0",
    ]
    replace = options.get("mode") is UpdateMode.REPLACE
    if kind == "create" and not options:
        line = f"POST {table.url}/{table.table_name} HTTP/1.1"
        headers.append("Prefer: return-no-content")
    elif kind == "update" and replace and options.get("match_condition") is MatchConditions.IfNotModified:
        line = f"PUT {_entity_url(table, entity)} HTTP/1.1"
        headers.append(f"If-Match: {options['etag']}")
    elif kind == "upsert" and replace and "match_condition" not in options:
        line = f"PUT {_entity_url(table, entity)} HTTP/1.1"
    else:
        raise ValueError(f"not a write this module makes: {kind} {dict(options)}")
    content = _entity_json(entity)
    preamble = (
        "Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
        f"Content-ID: {index}\r\n\r\n{line}\r\n"
        + "\r\n".join(headers)
        + f"\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    return preamble.encode() + content + b"\r\n"


def _entity_url(table: TableClient, entity: Mapping[str, Any]) -> str:
    key = f"PartitionKey='{_key(entity['PartitionKey'])}',RowKey='{_key(entity['RowKey'])}'"
    return f"{table.url}/{table.table_name}({key})"


def _key(value: str) -> str:
    return quote(value.replace("'", "''"), safe="")


def _entity_json(entity: Mapping[str, Any]) -> bytes:
    """The entity as the Table service takes it: the types the ledger writes, no others."""
    document: dict[str, Any] = {}
    for name, value in entity.items():
        if value is None:
            continue
        if isinstance(value, (bool, str)):
            document[name] = value
        elif isinstance(value, int):
            if not -(2**31) <= value < 2**31:
                raise TypeError(f"{name}: {value} does not fit Edm.Int32")
            document[name] = value
        elif isinstance(value, datetime):
            document[name] = getattr(value, "tables_service_value", None) or _utc_text(value)
            document[f"{name}@odata.type"] = "Edm.DateTime"
        else:
            raise TypeError(f"{name}: {type(value).__name__} is not a type the ledger writes")
    return json.dumps(document, separators=(",", ":")).encode()


def _utc_text(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
