"""Queue triggers of a FunctionApp, run by polling Azure Storage queues (Azurite locally).

Mirrors the Functions queue extension: a message is deleted when the function returns, made
visible again after ``visibilityTimeout`` when it raises, and moved to ``<queue>-poison`` once it
has been dequeued ``maxDequeueCount`` times.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import azure.functions.queue
from azure.core.exceptions import AzureError, ResourceExistsError
from azure.functions.decorators.queue import QueueTrigger
from azure.storage.queue import QueueClient, QueueMessage

from core.settings import ConfigurationError, storage_location_from_environ
from devhost.asgi import invoke
from storage.clients import StorageAccess

log = logging.getLogger("devhost.queues")

#: How long a received message stays invisible, renewed at half-time while its function runs.
PROCESSING_VISIBILITY_SECONDS = 60


@dataclass(frozen=True)
class QueueOptions:
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    batch_size: int = 16
    #: Another batch is fetched once no more than this many messages are being processed.
    new_batch_threshold: int = 8
    max_polling_interval: float = 2.0

    @classmethod
    def from_host_json(cls, host_json: Path) -> QueueOptions:
        try:
            queues = json.loads(host_json.read_text(encoding="utf-8"))["extensions"]["queues"]
        except (OSError, ValueError, KeyError, TypeError):
            return cls()
        return cls(
            max_dequeue_count=int(queues.get("maxDequeueCount", 5)),
            visibility_timeout=_timespan(queues.get("visibilityTimeout", "00:00:00")),
            batch_size=int(queues.get("batchSize", 16)),
            new_batch_threshold=int(queues.get("newBatchThreshold", int(queues.get("batchSize", 16)) // 2)),
            max_polling_interval=min(_timespan(queues.get("maxPollingInterval", "00:00:02")), 2.0),
        )


def _timespan(value: str) -> float:
    hours, minutes, seconds = value.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def storage_access(setting: str) -> StorageAccess:
    """The trigger's ``connection`` as the Functions host resolves it: the connection string
    ``<setting>``, or the identity-based ``<setting>__queueServiceUri`` (or ``__accountName``) settings."""
    try:
        return StorageAccess(storage_location_from_environ(setting))
    except ConfigurationError as exc:
        raise RuntimeError(f"queue trigger connection {setting}: {exc}") from None


def decode_body(message: QueueMessage) -> bytes:
    """The Functions host reads base64 queue messages (its default encoding), else raw text."""
    content = message.content
    try:
        return base64.b64decode(content, validate=True)
    except (ValueError, TypeError):
        return content.encode("utf-8") if isinstance(content, str) else bytes(content)


class QueueWorker:
    def __init__(self, function: Any, trigger: QueueTrigger, options: QueueOptions) -> None:
        self.name = function.get_function_name()
        self.handler = function.get_user_function()
        self.arg_name = trigger.name
        self.options = options
        self.access = storage_access(trigger.connection)
        self.queue: QueueClient = self.access.queue(trigger.queue_name)
        self.poison: QueueClient = self.access.queue(f"{trigger.queue_name}-poison")
        self._running: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        created = False
        idle = 0.05
        while not stop.is_set():
            try:
                if not created:  # storage (or its token endpoint) may come up after the host
                    for queue in (self.queue, self.poison):
                        with contextlib.suppress(ResourceExistsError):
                            await asyncio.to_thread(queue.create_queue)
                    created = True
                handled = await self.poll_once()
            except AzureError as exc:
                log.warning("queue %s unreachable: %s", self.queue.queue_name, type(exc).__name__)
                handled = 0
            idle = 0.05 if handled else min(idle * 2, self.options.max_polling_interval)
            if not handled:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle)
        await asyncio.gather(*self._running, return_exceptions=True)
        self.close()

    def close(self) -> None:
        self.queue.close()
        self.poison.close()
        self.access.close()

    async def poll_once(self) -> int:
        """Receive up to batchSize messages and start their functions; return once no more than
        newBatchThreshold messages are being processed. Like the Functions host, at most batchSize +
        newBatchThreshold messages are processed at once, and the pipeline never waits for a whole batch."""
        visibility = max(int(self.options.visibility_timeout), 0)
        messages = await asyncio.to_thread(
            lambda: list(
                self.queue.receive_messages(
                    messages_per_page=self.options.batch_size,
                    max_messages=self.options.batch_size,
                    visibility_timeout=PROCESSING_VISIBILITY_SECONDS,
                )
            )
        )
        for message in messages:
            task = asyncio.create_task(self._handle(message, visibility))
            self._running.add(task)
            task.add_done_callback(self._finished)
        while len(self._running) > self.options.new_batch_threshold:
            await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)
        return len(messages)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:  # the function's own failures are handled in _handle: this is the queue's
            log.warning("queue %s unreachable: %s", self.queue.queue_name, type(error).__name__)

    async def _handle(self, message: QueueMessage, visibility: int) -> None:
        body = decode_body(message)
        dequeue_count = message.dequeue_count or 1
        if dequeue_count > self.options.max_dequeue_count:
            await self._to_poison(message, body)
            return
        queue_message = azure.functions.queue.QueueMessage(
            id=message.id,
            body=body,
            pop_receipt=message.pop_receipt,
            dequeue_count=message.dequeue_count,
            insertion_time=message.inserted_on,
            expiration_time=message.expires_on,
        )
        current = message
        done = asyncio.Event()

        async def keep_invisible() -> None:
            # like the Functions host: a message being processed does not reappear for another worker
            nonlocal current
            while True:
                try:
                    await asyncio.wait_for(done.wait(), timeout=PROCESSING_VISIBILITY_SECONDS / 2)
                    return
                except asyncio.TimeoutError:
                    current = await asyncio.to_thread(
                        self.queue.update_message, current, visibility_timeout=PROCESSING_VISIBILITY_SECONDS
                    )

        renewal = asyncio.create_task(keep_invisible())
        try:
            await invoke(self.handler, **{self.arg_name: queue_message})
            failed = False
        except Exception:
            log.exception(
                "function %s failed on message %s (dequeue %s)", self.name, message.id, message.dequeue_count
            )
            failed = True
        done.set()
        await renewal  # an update in flight changes the pop receipt: wait for it
        if not failed:
            await asyncio.to_thread(self.queue.delete_message, current)
        elif dequeue_count >= self.options.max_dequeue_count:
            await self._to_poison(current, body)
        else:
            await asyncio.to_thread(self.queue.update_message, current, visibility_timeout=visibility)

    async def _to_poison(self, message: QueueMessage, body: bytes) -> None:
        await asyncio.to_thread(self.poison.send_message, base64.b64encode(body).decode("ascii"))
        await asyncio.to_thread(self.queue.delete_message, message)
        log.warning("message %s of %s moved to %s", message.id, self.queue.queue_name, self.poison.queue_name)


def queue_workers(functions: list[Any], options: QueueOptions) -> list[QueueWorker]:
    workers = []
    for function in functions:
        trigger = function.get_trigger()
        if isinstance(trigger, QueueTrigger):
            workers.append(QueueWorker(function, trigger, options))
    return workers
