"""Many channel-API calls in one Dataverse ``$batch`` request, and the pacing that keeps a backlog
under the service protection limits.

Dataverse counts a ``$batch`` of up to 1,000 operations as one request against its request limit
(6,000 per user and web server in a 5-minute sliding window), but charges every operation's
execution time against the 20 minutes of the same window. One call per delivery report therefore
caps an application user at 20 reports per second; batching lifts that to what execution time allows.

**Wire format** (OData 4.0 ``multipart/mixed``, independent operations, no change set)::

    POST /api/data/v9.2/$batch
    Content-Type: multipart/mixed; boundary="batch_<hex>"
    Prefer: odata.continue-on-error

    --batch_<hex>
    Content-Type: application/http
    Content-Transfer-Encoding: binary
    Content-ID: 1

    POST /api/data/v9.2/msdyn_D365ChannelsNotification HTTP/1.1
    Content-Type: application/json
    Content-Length: 123

    {"notificationPayLoad":"{…}"}
    --batch_<hex>--

The answer is ``200`` with one ``application/http`` part per operation, each with its own status
line; parts are matched to operations by ``Content-ID`` when every part echoes one, otherwise by
position (Dataverse answers in request order).

**Coalescing** (:class:`Batcher`): concurrent callers (the queue trigger's concurrent invocations in
one worker process) each submit one operation and await its own outcome. A dispatcher sends what is
pending as soon as the :class:`Pacer` allows a request: an idle client sends a lone operation at once
(as a plain request, no ``$batch``); while requests are being paced or are in flight, operations
accumulate and leave together, up to the batch size.

**Pacing** (:class:`Pacer`), AIMD driven by the 429s themselves (Microsoft: the
``x-ms-ratelimit-*`` headers are for debugging, not pacing):

* ``Retry-After`` holds back every request of the process (as for single calls);
* requests per second: halved on a "number of requests" 429;
* Dataverse time per second (seconds of request time per second of wall time, i.e. the average
  number of requests in flight) and the time one batch may take (hence its size): halved on an
  "execution time" 429;
* requests in flight: halved on a "concurrent requests" 429;
* a 429 without a known code cuts requests and Dataverse time both;
* after a quiet period (at least MIN_QUIET_SECONDS and the last Retry-After) a budget is raised
  one step, and only if work waited for it (full batches raise the batch time, then the request
  rate): a backlog that fits the budgets never probes the limits again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import copy
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from core import telemetry

__all__ = [
    "BatchFormatError",
    "Batcher",
    "Operation",
    "Pacer",
    "PartResponse",
    "decode_batch",
    "encode_batch",
    "throttle_kind",
]

log = logging.getLogger("sms.dataverse")

#: Dataverse refuses a $batch of more than 1,000 operations.
MAX_BATCH_OPERATIONS = 1000

#: Service protection error codes (Web API hex, SDK decimal) → which limit was hit.
THROTTLE_KINDS = {
    "0x80072322": "requests",
    "-2147015902": "requests",
    "0x80072321": "time",
    "-2147015903": "time",
    "0x80072326": "concurrency",
    "-2147015898": "concurrency",
}


def throttle_kind(code: str | None) -> str | None:
    """ "requests", "time" or "concurrency" for a service protection error code, else None."""
    return THROTTLE_KINDS.get((code or "").strip().lower())


# -- wire format ---------------------------------------------------------------------------------


class BatchFormatError(ValueError):
    """A $batch answer that cannot be read part by part."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One POST of a channel API (``msdyn_D365ChannelsNotification``, ``…Inbound``) with its JSON body."""

    api: str
    body: dict[str, Any]

    def encoded_body(self) -> bytes:
        # as httpx encodes json= for a single call
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class PartResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_id: str | None = None


def encode_batch(operations: Sequence[Operation], *, path_prefix: str, boundary: str) -> bytes:
    """The multipart/mixed body of a $batch of independent operations, Content-IDs 1…n."""
    if not 0 < len(operations) <= MAX_BATCH_OPERATIONS:
        raise ValueError(f"a $batch holds 1 to {MAX_BATCH_OPERATIONS} operations")
    chunks: list[bytes] = []
    for index, operation in enumerate(operations, 1):
        body = operation.encoded_body()
        chunks.append(
            (
                f"--{boundary}\r\n"
                "Content-Type: application/http\r\n"
                "Content-Transfer-Encoding: binary\r\n"
                f"Content-ID: {index}\r\n"
                "\r\n"
                f"POST {path_prefix}{operation.api} HTTP/1.1\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                "\r\n"
            ).encode("ascii")
            + body
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks)


_BOUNDARY_PARAM = re.compile(r';\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)
_STATUS_LINE = re.compile(rb"^HTTP/\d\.\d[ \t]+(\d{3})(?:[ \t].*)?$")


def boundary_of(content_type: str | None) -> str | None:
    """The boundary of a multipart/mixed Content-Type, None for any other type."""
    if not content_type or content_type.split(";", 1)[0].strip().lower() != "multipart/mixed":
        return None
    match = _BOUNDARY_PARAM.search(content_type)
    return (match.group(1) or match.group(2)) if match else None


def decode_batch(content_type: str | None, body: bytes) -> list[PartResponse]:
    """Every operation's answer in a $batch answer, in order (change set answers flattened)."""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise BatchFormatError(f"not a multipart/mixed answer: {content_type!r}")
    return _responses(body, boundary)


def _responses(body: bytes, boundary: str) -> list[PartResponse]:
    responses: list[PartResponse] = []
    for headers, content in _mime_parts(body, boundary):
        kind = _header(headers, "content-type") or ""
        nested = boundary_of(kind)
        if nested is not None:  # a change set's answers
            responses += _responses(content, nested)
        elif kind.split(";", 1)[0].strip().lower() == "application/http":
            responses.append(_http_response(content, _header(headers, "content-id")))
        else:
            raise BatchFormatError(f"unexpected part type {kind!r}")
    return responses


def _mime_parts(body: bytes, boundary: str) -> list[tuple[list[tuple[str, str]], bytes]]:
    escaped = re.escape(boundary.encode("ascii"))
    delimiter = re.compile(rb"(?:\r?\n|^)--" + escaped + rb"(--)?[ \t]*(?:\r?\n|$)")
    matches = list(delimiter.finditer(body))
    if not matches:
        raise BatchFormatError("no part delimiter")
    if not any(m.group(1) for m in matches):
        raise BatchFormatError("no closing delimiter: the answer is cut short")
    parts = []
    for current, following in itertools.pairwise(matches):
        if current.group(1):  # the closing delimiter: the epilogue follows
            break
        parts.append(_split_headers(body[current.end() : following.start()]))
    return parts


def _split_headers(part: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """(headers, body) of a header section, a blank line and a body."""
    if part.startswith((b"\r\n", b"\n")):  # no headers at all
        return [], part.split(b"\n", 1)[1]
    match = re.search(rb"\r?\n\r?\n", part)
    if match is None:
        head, rest = part, b""
    else:
        head, rest = part[: match.start()], part[match.end() :]
    headers = []
    for line in re.split(rb"\r?\n", head):
        if not line.strip():
            continue
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name.strip():
            raise BatchFormatError(f"malformed header line {line[:80]!r}")
        headers.append((name.strip(), value.strip()))
    return headers, rest


def _http_response(content: bytes, content_id: str | None) -> PartResponse:
    status_line, _, rest = content.lstrip(b"\r\n").partition(b"\n")
    match = _STATUS_LINE.match(status_line.rstrip(b"\r"))
    if match is None:
        raise BatchFormatError(f"no status line in a part: {status_line[:80]!r}")
    headers, body = _split_headers(rest)
    return PartResponse(int(match.group(1)), headers, body, content_id)


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


# -- pacing --------------------------------------------------------------------------------------

#: Requests per second a fresh client allows itself: a quarter of one web server's 6,000 per 5 minutes
#: (several instances share one application user; full batches at this rate carry hundreds per second).
START_REQUEST_RATE = 5.0
MIN_REQUEST_RATE = 0.1
#: Requests that may start back to back before the request rate applies.
REQUEST_BURST = 2.0
#: Seconds of Dataverse time per second a fresh client allows itself: one user's budget on one web
#: server (20 minutes per 5 minutes). It is charged per operation, so batching cannot raise it.
START_TIME_RATE = 4.0
MIN_TIME_RATE = 0.05
#: Seconds of Dataverse time one batch may take at most, as a share of the request timeout.
BATCH_SHARE_OF_TIMEOUT = 0.25
MIN_BATCH_SECONDS = 1.0
#: A batch's size before the time one operation takes is known (Microsoft: start with about 10).
START_BATCH = 10
#: A throttling-free period after which each budget is raised one step (at least this long, and at
#: least the last Retry-After).
MIN_QUIET_SECONDS = 5.0
#: How far back the observed request rate and Dataverse time are measured.
OBSERVE_SECONDS = 10.0


@dataclass
class PacerState:
    request_rate: float
    time_rate: float
    in_flight_limit: int
    batch_seconds: float


class Pacer:
    """How fast this process may call Dataverse, learnt from the 429s it gets."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        timeout_seconds: float,
        request_rate: float = START_REQUEST_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.max_in_flight = max_in_flight
        self.max_request_rate = request_rate
        self.max_batch_seconds = max(MIN_BATCH_SECONDS, timeout_seconds * BATCH_SHARE_OF_TIMEOUT)
        self.state = PacerState(
            request_rate=request_rate,
            time_rate=min(float(max_in_flight), START_TIME_RATE),
            in_flight_limit=max_in_flight,
            batch_seconds=self.max_batch_seconds,
        )
        #: Every request of the process waits until then (Retry-After).
        self.resume_at = 0.0
        self.in_flight = 0
        self.throttle_events = 0
        #: Seconds of Dataverse time one operation takes, as measured (moving average).
        self.seconds_per_operation: float | None = None
        self._request_clock = 0.0
        self._time_clock = 0.0
        self._last_cut = -1e18
        self._last_raise = clock()
        self._quiet_seconds = MIN_QUIET_SECONDS
        self._pressure: set[str] = set()
        self._sent: collections.deque[float] = collections.deque()
        self._spent: collections.deque[tuple[float, float]] = collections.deque()
        self._freed = asyncio.Event()

    # -- what the dispatcher asks

    def delay(self) -> float:
        """Seconds until another request may start (0: now), ignoring the in-flight limit."""
        now = self.clock()
        return max(self.resume_at - now, self._request_clock - now, self._time_clock - now, 0.0)

    def hold_back(self) -> float:
        """:meth:`delay`, noting which budget held back work that was waiting."""
        now = self.clock()
        if self._time_clock > now and self._time_clock >= self._request_clock:
            self._pressure.add("time")
        return self.delay()

    def pressed(self, budget: str) -> None:
        """Work waited for ``budget`` ("slots"), or a batch left full ("size"): the budget may be
        raised after a quiet period. A budget nothing waited for is never raised (no probing for
        a limit that is not in the way)."""
        self._pressure.add(budget)

    def rebind(self) -> None:
        """Start afresh on another event loop (what was in flight on the old one is gone)."""
        self.in_flight = 0
        self._freed = asyncio.Event()

    def has_slot(self) -> bool:
        if self.in_flight < self.state.in_flight_limit:
            return True
        self._pressure.add("slots")
        return False

    async def slot_freed(self) -> None:
        self._freed.clear()
        await self._freed.wait()

    def batch_limit(self, configured: int) -> int:
        """Operations the next batch may hold: the setting, and what fits its time budget."""
        if self.seconds_per_operation is None or self.seconds_per_operation <= 0:
            return min(configured, START_BATCH)
        return max(1, min(configured, int(self.state.batch_seconds / self.seconds_per_operation)))

    # -- what a request reports

    def started(self) -> float:
        now = self.clock()
        self.in_flight += 1
        rate = self.state.request_rate
        self._request_clock = max(self._request_clock, now - REQUEST_BURST / rate) + 1 / rate
        self._sent.append(now)
        self._forget(now)
        return now

    def finished(self, started: float) -> None:
        """A request started at ``started`` (by :meth:`started`) has its answer."""
        now = self.clock()
        self.in_flight -= 1
        self._freed.set()
        spent = now - started
        self._spent.append((now, spent))
        self._time_clock = max(self._time_clock, now - 1.0) + spent / self.state.time_rate

    def measured(self, started: float, operations: int) -> None:
        """A request of ``operations`` went through unthrottled: learn how long one takes, and
        raise the budgets after a quiet period."""
        now = self.clock()
        per_operation = (now - started) / max(operations, 1)
        previous = self.seconds_per_operation
        self.seconds_per_operation = (
            per_operation if previous is None else 0.8 * previous + 0.2 * per_operation
        )
        self._maybe_raise(now)

    def throttled(self, kind: str | None, retry_after: float, *, sent_at: float | None) -> None:
        """A 429 (``kind`` from its error code) for a request sent at ``sent_at``."""
        now = self.clock()
        self.resume_at = max(self.resume_at, now + retry_after)
        self._quiet_seconds = max(MIN_QUIET_SECONDS, retry_after)
        if sent_at is not None and sent_at < self._last_cut:
            return  # sent before the last cut: that event is already accounted for
        self.throttle_events += 1
        self._last_cut = now
        state = self.state
        if kind in ("requests", None):
            state.request_rate = max(MIN_REQUEST_RATE, min(state.request_rate, self._observed_rate(now)) / 2)
        if kind in ("time", None):
            state.time_rate = max(MIN_TIME_RATE, min(state.time_rate, self._observed_time(now)) / 2)
            state.batch_seconds = max(MIN_BATCH_SECONDS, state.batch_seconds / 2)
        if kind == "concurrency":
            state.in_flight_limit = max(1, min(state.in_flight_limit, self.in_flight) // 2)
        log.warning(
            "dataverse throttled (%s limit): pausing %.1fs, then %.2f requests/s, "
            "%.2f s of Dataverse time/s, %d in flight, batches of up to %.2fs",
            kind or "unknown",
            retry_after,
            state.request_rate,
            state.time_rate,
            state.in_flight_limit,
            state.batch_seconds,
        )

    def _maybe_raise(self, now: float) -> None:
        """After a quiet period, raise by one step each budget that held work back."""
        quiet = self._quiet_seconds
        if not self._pressure or now - self._last_cut < quiet or now - self._last_raise < quiet:
            return
        self._last_raise = now
        pressure, self._pressure = self._pressure, set()
        state = self.state
        if "size" in pressure:  # full batches: larger ones first, then more of them
            if state.batch_seconds < self.max_batch_seconds:
                state.batch_seconds = min(self.max_batch_seconds, state.batch_seconds * 1.5)
            else:
                state.request_rate = min(
                    self.max_request_rate, state.request_rate + self.max_request_rate / 5
                )
        if "time" in pressure:
            state.time_rate = min(float(self.max_in_flight), state.time_rate + max(0.25, state.time_rate / 4))
        if "slots" in pressure:
            state.in_flight_limit = min(self.max_in_flight, state.in_flight_limit + 1)

    def _forget(self, now: float) -> None:
        """Keep only what the observed rates look at."""
        while self._sent and self._sent[0] < now - OBSERVE_SECONDS:
            self._sent.popleft()
        while self._spent and self._spent[0][0] < now - OBSERVE_SECONDS:
            self._spent.popleft()

    def _observed_rate(self, now: float) -> float:
        self._forget(now)
        span = min(OBSERVE_SECONDS, max(now - (self._sent[0] if self._sent else now), 1.0))
        return max(len(self._sent) / span, MIN_REQUEST_RATE)

    def _observed_time(self, now: float) -> float:
        self._forget(now)
        span = min(OBSERVE_SECONDS, max(now - (self._spent[0][0] if self._spent else now), 1.0))
        return max(sum(spent for _, spent in self._spent) / span + self.in_flight, MIN_TIME_RATE)


# -- coalescing ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Pending:
    operation: Operation
    future: asyncio.Future[None]
    submitted: float
    #: The span of the call that submitted it: its batch links to it.
    origin: trace.SpanContext = trace.INVALID_SPAN_CONTEXT
    attempt: int = 0
    sent: bool = False


#: What a batch send returns: per operation, None (accepted) or the exception it failed with.
Outcomes = list[BaseException | None]
#: Sends the operations as one request started at the given (pacer) time.
Send = Callable[[list[Operation], float], Awaitable[Outcomes]]
#: Decides what to do with a failed operation: seconds to wait before trying it again in this
#: process, or None to give the failure to its caller.
Retry = Callable[[Pending, BaseException], float | None]
#: The failure given to waiting callers when Retry-After is longer than the batcher waits.
LongPause = Callable[[float], BaseException]


@dataclass
class Batcher:
    """Coalesces concurrently submitted operations into batches the :class:`Pacer` lets through."""

    send: Send
    pacer: Pacer
    batch_size: int
    retry: Retry
    long_pause: LongPause
    #: Told how long the dispatcher waited for a Retry-After to pass (a metric).
    on_throttled_wait: Callable[[float], None] | None = None
    #: Before sending, fail what waits for a Retry-After longer than this (the queue brings it back).
    max_pause: float = 30.0
    _pending: collections.deque[Pending] = field(default_factory=collections.deque)
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _dispatcher: asyncio.Task[None] | None = None
    _flights: set[asyncio.Task[None]] = field(default_factory=set)
    _loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, operation: Operation) -> None:
        """Send ``operation`` in the next batch; raise what it failed with."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a client carried over to another event loop
            self._loop, self._dispatcher, self._wakeup = loop, None, asyncio.Event()
            self._pending.clear()
            self._flights.clear()
            self.pacer.rebind()
        origin = trace.get_current_span().get_span_context()
        item = Pending(operation, loop.create_future(), self.pacer.clock(), origin)
        self._enqueue(item)
        try:
            await item.future
        except asyncio.CancelledError:
            if not item.sent:  # never sent: withdraw it, so nothing goes out for a caller that is gone
                with contextlib.suppress(ValueError):
                    self._pending.remove(item)
            raise

    def _enqueue(self, item: Pending, front: bool = False) -> None:
        if item.future.done():
            return
        if front:
            self._pending.appendleft(item)
        else:
            self._pending.append(item)
        if self._dispatcher is None or self._dispatcher.done():
            # a context of its own: the dispatcher outlives the call that happens to start it, and
            # every batch names its callers itself (a span per batch, linked to each of them)
            self._dispatcher = contextvars.Context().run(
                asyncio.get_running_loop().create_task, self._dispatch()
            )
        self._wakeup.set()

    async def _dispatch(self) -> None:
        pacer = self.pacer
        while True:
            while self._pending and self._pending[0].future.done():
                self._pending.popleft()  # withdrawn by its caller
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            pause = pacer.resume_at - pacer.clock()
            if pause > self.max_pause:
                self._fail_pending(self.long_pause(pause))
                continue
            delay = pacer.hold_back()
            if delay > 0:
                await asyncio.sleep(delay)
                if pause > 0 and self.on_throttled_wait is not None:
                    self.on_throttled_wait(min(pause, delay))
                continue
            if not pacer.has_slot():
                await pacer.slot_freed()
                continue
            limit = pacer.batch_limit(self.batch_size)
            batch: list[Pending] = []
            while self._pending and len(batch) < limit:
                item = self._pending.popleft()
                if not item.future.done():
                    item.sent = True
                    batch.append(item)
            if len(batch) == limit and self._pending:
                pacer.pressed("size")
            if batch:
                flight = asyncio.get_running_loop().create_task(self._fly(batch, pacer.started()))
                self._flights.add(flight)
                flight.add_done_callback(self._flights.discard)

    def _fail_pending(self, error: BaseException) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(copy.copy(error))

    async def _fly(self, batch: list[Pending], sent_at: float) -> None:
        outcomes: Outcomes
        try:
            with _batch_span(batch):
                outcomes = await self.send([item.operation for item in batch], sent_at)
        except Exception as exc:  # a failure of the whole request
            outcomes = [exc] * len(batch)
        finally:
            self.pacer.finished(sent_at)
        if all(outcome is None for outcome in outcomes):
            self.pacer.measured(sent_at, len(batch))
        again: list[Pending] = []
        wait = 0.0
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue
            if outcome is None:
                item.future.set_result(None)
                continue
            item_wait = self.retry(item, outcome)
            if item_wait is None:
                item.future.set_exception(copy.copy(outcome))  # each caller raises its own
                continue
            item.attempt += 1
            item.sent = False
            again.append(item)
            wait = max(wait, item_wait)
        if again:  # together, in their order, ahead of what came since
            if wait <= 0:
                self._requeue(again)
            else:
                asyncio.get_running_loop().call_later(wait, self._requeue, again)

    def _requeue(self, items: list[Pending]) -> None:
        for item in reversed(items):
            self._enqueue(item, True)

    async def aclose(self) -> None:
        tasks = [t for t in (self._dispatcher, *self._flights) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.cancel()


def _batch_span(batch: list[Pending]) -> contextlib.AbstractContextManager[trace.Span]:
    """Span ``Dataverse batch``: a child of the first caller's span (so a lone report's request stays
    in its trace), linked to every caller's span, whatever trace each belongs to."""
    first = batch[0].origin
    parent = trace.set_span_in_context(trace.NonRecordingSpan(first)) if first.is_valid else None
    links = [trace.Link(item.origin) for item in batch if item.origin.is_valid]
    return telemetry.span("Dataverse batch", context=parent, links=links, Operations=len(batch))
