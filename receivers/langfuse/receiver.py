"""The `langfuse` receiver: pulls a Langfuse project's traces and observations through its public API
(``GET /api/public/traces``, ``GET /api/public/observations``; see api.py) and stores them as spans
(mapping.py). The loop, retries and commits are `halod.pull.PullReceiver`'s; this module decides what
to ask for next.

Incremental pulling
-------------------
Both list endpoints filter by a time (a trace's `timestamp`, an observation's `startTime`; "from" is
inclusive, "to" exclusive) and paginate by page number. Langfuse ingests asynchronously and an
observation is usually written when it *ends*, so records keep appearing with times in the past. Each
stream (traces, observations) therefore keeps:

- ``mark``: every record with a time before it was listed by a completed scan;
- in memory, ``seen``: the ids (with their times) of the records stored from the last `overlap`.

A poll at time T, for each stream (traces first, so observations find their trace's service name):

1. **new window** ``[mark, T)``: every page of it (newest first); records not yet seen become spans.
   Its progress (window and next page) is part of the cursor committed with each page, so a restart
   resumes in the middle of a long backfill; when its last page is done, ``mark = T``.
2. **look-back** ``[mark_before - overlap, mark_before)``: one request with ``limit=1`` reads Langfuse's
   ``meta.totalItems`` for the range and compares it with the number of seen ids in it. Equal: nothing
   arrived late (the normal case: one cheap request). Different: the range is split in halves, each
   counted again, down to ranges that fit a page or are mostly new, which are listed in full and
   yield the late records. Ids listed there no longer returned are forgotten (deleted or moved).

Records that look unfinished (an observation without endTime, a trace without output: SDKs send the
end as an update) are held back and looked at again on later polls, until they are finished or
`hold_unfinished` old; then they are stored as they are (observations marked `langfuse.unfinished`).
The store keeps the first version of a span, so storing early would lose the update.

Cursor (JSON, committed with the spans of each page)::

    {"v": 1,
     "traces":       {"mark": 1717171717000, "scan": null},
     "observations": {"mark": 1717171700000, "scan": {"from": 1717171700000, "to": 1717171717000, "page": 3}}}

Times are Unix milliseconds (Langfuse's precision); ``mark: null`` means never scanned (the first scan
starts at `initial_lookback`, or at the beginning of the project). Nothing is skipped: a record is
either before a mark (listed by a completed scan), in a window still being paged, or in the look-back.
What is fetched again is bounded: only look-back ranges whose counts changed; after a restart (the
seen ids live in memory) the whole look-back once, whose duplicates the store drops.
Limits: a record that reaches the API more than `overlap` after its time is missed; so is one inserted
into an already-paged part of a window if it is older than `overlap`. Counts can be fooled only when a
record is deleted or moves (its time updated) just as a new one arrives in the same range; the moved
record is re-filed the next time its range is listed. A record whose time cannot be read is never
counted, so its range keeps being listed: more requests, never a miss.

Errors: 401/403 are logged naming the receiver and host ("check public_key/secret_key") and retried
with backoff, as are timeouts and 5xx; a 429 raises `RateLimited` carrying its Retry-After, which the
PullReceiver backoff never undercuts; a
record that cannot be converted is skipped and reported once (`halod_receiver_bad_records`).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from halod.components import Consumer, CreateSettings
from halod.pull import Page, PullReceiver
from halod.receivers.langfuse import mapping
from halod.receivers.langfuse.api import (
    OBSERVATIONS_PATH,
    TRACES_PATH,
    AuthError,
    LangfuseClient,
    LangfuseError,
    ListResponse,
)
from halod.receivers.langfuse.config import LangfuseReceiverConfig

CURSOR_VERSION = 1
_TRACE_RESOURCE_CACHE = 10_000
_REPORTED_CAP = 10_000
_UNPLACED_CAP = 10_000

Resource = tuple[tuple[str, str], ...]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Window:
    """The new-window scan of a stream in progress: [lo, hi) (lo None: from the beginning), next page."""

    lo: int | None
    hi: int
    page: int = 1


@dataclass
class Stream:
    name: str  # "traces" / "observations": the cursor key
    record: str  # "trace" / "observation": how problems name a record
    path: str
    from_param: str
    to_param: str
    time_field: str
    order_by: str | None
    mark: int | None = None
    scan: Window | None = None
    seen: dict[str, int] = field(default_factory=dict)  # id -> time (ms); in memory only
    # Skipped records whose time is unreadable: never counted (so their range keeps being listed, which
    # can only cost requests, never hide a record), never reported twice. An ordered set, capped.
    unplaced: dict[str, None] = field(default_factory=dict)

    def count_seen(self, lo: int, hi: int) -> int:
        return sum(1 for at in self.seen.values() if lo <= at < hi)

    def remember(self, key: str, at: int | None) -> None:
        if at is not None:
            self.seen[key] = at
            return
        self.unplaced[key] = None
        while len(self.unplaced) > _UNPLACED_CAP:
            del self.unplaced[next(iter(self.unplaced))]


@dataclass
class Task:
    """One step of a poll. `probe`: count the range; else list it page by page. `persist`: the
    stream's new window (progress in the cursor, completion moves the mark); otherwise a look-back
    range, whose seen ids that the full listing no longer `returned` are forgotten at its end."""

    stream: Stream
    lo: int | None
    hi: int
    page: int = 1
    probe: bool = False
    persist: bool = False
    returned: set[str] = field(default_factory=set)


class LangfuseReceiver(PullReceiver):
    def __init__(self, settings: CreateSettings, config: LangfuseReceiverConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, config, next_consumer)
        self.config = config
        self._client: LangfuseClient | None = None
        self.streams = (
            Stream("traces", "trace", TRACES_PATH, "fromTimestamp", "toTimestamp", "timestamp", "timestamp.desc"),
            Stream("observations", "observation", OBSERVATIONS_PATH, "fromStartTime", "toStartTime", "startTime",
                   None),
        )
        self._tasks: list[Task] = []
        self._loaded: str | None = None  # the cursor the in-memory state belongs to
        self._loaded_once = False
        self._failing: str | None = None  # the kind of failure already logged as an error
        self._trace_resources: OrderedDict[str, Resource] = OrderedDict()
        self._reported: set[str] = set()

    # -- PullReceiver ------------------------------------------------------------------------------

    async def open(self) -> None:
        config = self.config
        if config.public_key is not None and config.secret_key is not None:
            self._client = LangfuseClient(config.host, config.public_key, config.secret_key, config.timeout,
                                          config.tls.client_ssl())
            await self._client.open()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def fetch(self, cursor: str | None) -> Page:
        if not self._loaded_once or cursor != self._loaded:
            self._restore(cursor)
        if self._client is None:
            self._fail_once("keys", "langfuse receiver has no API keys: set public_key and secret_key "
                            "(e.g. ${env:LANGFUSE_PUBLIC_KEY} / ${env:LANGFUSE_SECRET_KEY}); pulling nothing")
            raise LangfuseError(f"{self.id}: public_key and secret_key are not set; check public_key/secret_key")
        if not self._tasks:
            self._plan()
        task = self._tasks[0]
        try:
            response = await self._client.list(task.stream.path, self._params(task))
        except AuthError as exc:
            self._fail_once("auth", "langfuse rejected the API keys: check public_key/secret_key", status=exc.status)
            raise
        self._failing = None
        spans, problems = self._advance(task, response)
        page = Page(request=mapping.export_request(spans), cursor=self._cursor(), more=bool(self._tasks),
                    problems=problems)
        self._loaded = page.cursor
        return page

    # -- planning ----------------------------------------------------------------------------------

    def _plan(self) -> None:
        """The tasks of one poll: per stream its new window, then its look-back."""
        now = now_ms()
        lookback = self.config.initial_lookback
        for stream in self.streams:
            if stream.scan is None:
                start = stream.mark
                if start is None and lookback is not None:
                    start = now - int(lookback * 1000)
                stream.scan = Window(start, max(now, start or 0))
            scan = stream.scan
            self._tasks.append(Task(stream, scan.lo, scan.hi, scan.page, persist=True))
            if stream.mark is not None and self.config.overlap > 0:
                self._tasks.append(Task(stream, stream.mark - int(self.config.overlap * 1000), stream.mark,
                                        probe=True))

    def _params(self, task: Task) -> dict[str, str]:
        stream = task.stream
        params = {"page": str(task.page), "limit": "1" if task.probe else str(self.config.page_size)}
        if task.lo is not None:
            params[stream.from_param] = mapping.iso_ms(task.lo)
        params[stream.to_param] = mapping.iso_ms(task.hi)
        if stream.order_by:
            params["orderBy"] = stream.order_by
        return params

    # -- one step ----------------------------------------------------------------------------------

    def _advance(self, task: Task, response: ListResponse) -> tuple[list[tuple[Resource, Span]], list[str]]:
        """Apply one answer: returns the new spans and problems, and moves the task list on."""
        stream = task.stream
        meta = response["meta"]
        if task.probe:
            assert task.lo is not None
            self._tasks.pop(0)
            total, known = meta["totalItems"], stream.count_seen(task.lo, task.hi)
            if total == known:
                return [], []
            mid = (task.lo + task.hi) // 2
            differs = abs(total - known)
            # List the range when that is about as cheap as counting its halves (two requests or fewer)
            # or when most of it is new; otherwise narrow down to where the counts differ.
            if total <= 2 * self.config.page_size or 2 * differs >= total or mid == task.lo:
                self._tasks.insert(0, Task(stream, task.lo, task.hi))  # list it in full
            else:
                self._tasks[:0] = [Task(stream, mid, task.hi, probe=True), Task(stream, task.lo, mid, probe=True)]
            return [], []

        spans, problems = self._convert(task, response["data"])
        if task.page < meta["totalPages"] and response["data"]:
            task.page += 1
            if task.persist and stream.scan is not None:
                stream.scan.page = task.page
            return spans, problems
        self._tasks.pop(0)
        if task.persist:
            stream.mark, stream.scan = task.hi, None
        elif task.lo is not None:  # a look-back range listed in full: forget what Langfuse no longer has
            lo, hi = task.lo, task.hi
            stream.seen = {key: at for key, at in stream.seen.items()
                           if not lo <= at < hi or key in task.returned}
        if not self._tasks:  # the poll is over: keep only the ids the next look-back counts
            overlap_ms = int(self.config.overlap * 1000)
            for each in self.streams:
                if each.mark is not None:
                    horizon = each.mark - overlap_ms
                    each.seen = {key: at for key, at in each.seen.items() if at >= horizon}
        return spans, problems

    def _convert(self, task: Task, records: list[Any]) -> tuple[list[tuple[Resource, Span]], list[str]]:
        stream = task.stream
        hold_ms = int(self.config.hold_unfinished * 1000)
        now = now_ms()
        spans: list[tuple[Resource, Span]] = []
        problems: list[str] = []
        for record in records:
            key = record.get("id") if isinstance(record, dict) else None
            if not isinstance(key, str) or not key:
                self._problem(problems, f"{stream.record} without an id: {json.dumps(record, default=str)[:200]}")
                continue
            if not task.persist:
                task.returned.add(key)
            try:
                at: int | None = mapping.time_ns(record.get(stream.time_field), stream.time_field) // 1_000_000
            except mapping.RecordError:
                at = None
            if key in stream.seen:
                known = stream.seen[key]
                if at is not None and task.lo is not None and not task.lo <= known < task.hi:
                    stream.seen[key] = at  # Langfuse files it elsewhere now (its time was updated)
                continue
            if key in stream.unplaced:
                continue
            traces = stream.name == "traces"
            try:
                if traces:
                    resource = self._trace_resource(record)
                    unfinished = mapping.is_unfinished_trace(record)
                else:
                    resource = self._observation_resource(record)
                    unfinished = mapping.is_unfinished_observation(record)
                if unfinished and hold_ms and at is not None and now - at < hold_ms:
                    continue  # held back: not seen, so the look-back lists it again
                span = (mapping.trace_span(record, self.config.host) if traces
                        else mapping.observation_span(record, unfinished))
            except Exception as exc:  # any fault of one record skips that record only
                message = str(exc) if isinstance(exc, mapping.RecordError) else repr(exc)
                self._problem(problems, f"{stream.record} {key}: {message}")
                stream.remember(key, at)
                continue
            stream.remember(key, at)
            spans.append((resource, span))
        return spans, problems

    def _trace_resource(self, trace: dict[str, Any]) -> Resource:
        service = mapping.service_name_of(trace.get("metadata")) or mapping.DEFAULT_SERVICE
        resource: Resource = mapping.resource_of(service, trace.get("release"), trace.get("environment"))
        key = trace.get("id")
        if isinstance(key, str):
            self._trace_resources[key] = resource
            self._trace_resources.move_to_end(key)
            while len(self._trace_resources) > _TRACE_RESOURCE_CACHE:
                self._trace_resources.popitem(last=False)
        return resource

    def _observation_resource(self, observation: dict[str, Any]) -> Resource:
        own = mapping.service_name_of(observation.get("metadata"))
        if own:
            resource: Resource = mapping.resource_of(own, None, observation.get("environment"))
            return resource
        trace_key = observation.get("traceId")
        cached = self._trace_resources.get(trace_key) if isinstance(trace_key, str) else None
        if cached is None:
            cached = mapping.resource_of(mapping.DEFAULT_SERVICE, None, observation.get("environment"))
        return cached

    def _problem(self, problems: list[str], problem: str) -> None:
        """Report each problem once: a record skipped in a range that is listed again is not news."""
        if problem in self._reported:
            return
        if len(self._reported) >= _REPORTED_CAP:
            self._reported.clear()
        self._reported.add(problem)
        problems.append(problem)

    def _fail_once(self, kind: str, message: str, **fields: Any) -> None:
        """An error log line when a failure starts (the retries are counted and logged as warnings)."""
        if self._failing != kind:
            self._failing = kind
            self.telemetry.log.error(message, receiver=self.id, host=self.config.host, **fields)

    # -- cursor ------------------------------------------------------------------------------------

    def _cursor(self) -> str:
        state: dict[str, Any] = {"v": CURSOR_VERSION}
        for stream in self.streams:
            scan = stream.scan
            state[stream.name] = {
                "mark": stream.mark,
                "scan": None if scan is None else {"from": scan.lo, "to": scan.hi, "page": scan.page},
            }
        return json.dumps(state, sort_keys=True, separators=(",", ":"))

    def _restore(self, cursor: str | None) -> None:
        """Reset the state to `cursor` (the committed one): marks and scans from it, nothing seen."""
        self._loaded_once, self._loaded, self._tasks = True, cursor, []
        for stream in self.streams:
            stream.mark, stream.scan, stream.seen, stream.unplaced = None, None, {}, {}
        if cursor is None:
            return
        try:
            state = json.loads(cursor)
            if state.get("v") != CURSOR_VERSION:
                raise ValueError(f"unknown cursor version {state.get('v')!r}")
            for stream in self.streams:
                entry = state[stream.name]
                stream.mark = _optional_int(entry["mark"])
                scan = entry["scan"]
                if scan is not None:
                    stream.scan = Window(_optional_int(scan["from"]), int(scan["to"]), max(1, int(scan["page"])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.telemetry.log.error("langfuse cursor unreadable; pulling again from the start",
                                     receiver=self.id, error=str(exc))
            for stream in self.streams:
                stream.mark, stream.scan = None, None


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value
