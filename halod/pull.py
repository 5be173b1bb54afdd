"""The base of receivers that pull spans from somewhere (an HTTP API, a directory) instead of
listening: the loop, the cursor, retries and accounting live here; a source only fetches pages.

Contract of a subclass: ``fetch(cursor)`` returns the next `Page` after `cursor` (None: from the
beginning) without side effects on halod; ``open()`` / ``close()`` acquire and release its clients.

Delivery: each page is normalized and committed with its cursor in one store transaction
(`SpanBatch.cursor`), and the next page is fetched only after that commit. After a restart or a
crash the receiver resumes from the last committed cursor: nothing is skipped, and a page fetched
twice (the commit was lost with the process) is deduplicated by the store.

Failures: a failed fetch is retried with the shared backoff (`retry_on_failure`; never sooner than
an exception's `retry_after_s`, for sources told to wait by HTTP 429/503) and counted; a
store refusal (queue full) waits as long as the store asks and retries the same page; records a
source cannot convert are reported (log + `halod_receiver_bad_records`) and skipped, never the page.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import Field

from halod.components import Consumer, CreateSettings, Host, stop_tasks
from halod.model import InvalidPayload, Refused
from halod.normalize import normalize_request
from halod.retry import Backoff, RetryConfig
from halod.security import StrictModel
from halod.units import Duration


class PullConfig(StrictModel):
    """Settings every pulling receiver has (embedded in its own config model)."""

    poll_interval: Duration = Field(
        default=10.0, gt=0, description="Wait between two polls once the source has nothing new."
    )
    timeout: Duration = Field(default=30.0, gt=0, description="Longest one fetch (one page) may take.")
    retry_on_failure: RetryConfig = Field(default_factory=RetryConfig, description="Backoff of failed fetches.")


@dataclass
class Page:
    """One fetch: the spans of a page, the cursor to resume after it, and whether more is ready now."""

    request: ExportTraceServiceRequest
    cursor: str | None
    more: bool = False
    problems: list[str] = field(default_factory=list)  # records skipped, each naming the record and the fault


class PullReceiver(ABC):
    """A receiver that polls `fetch` and commits each page with its cursor. See the module docstring.

    Lifecycle (halod.components): ``start`` reads the committed cursor, opens the source's clients and
    starts the loop in a task; ``shutdown`` cancels the loop (a commit already queued still completes
    in the store, with its cursor) and closes the clients.
    """

    transport = "pull"

    def __init__(self, settings: CreateSettings, config: PullConfig, next_consumer: Consumer) -> None:
        self.id = str(settings.id)
        self.telemetry = settings.telemetry
        self.pull_config = config
        self._next = next_consumer
        self._task: asyncio.Task[None] | None = None
        self.cursor: str | None = None
        self.idle = asyncio.Event()  # set whenever the source has nothing new (tests and flushes wait on it)

    @abstractmethod
    async def open(self) -> None:
        """Acquire the source's clients (an HTTP session, ...)."""

    @abstractmethod
    async def close(self) -> None:
        """Release what `open` acquired; safe twice and without `open`."""

    @abstractmethod
    async def fetch(self, cursor: str | None) -> Page:
        """The page after `cursor` (None: the beginning). Raise on any failure: it is retried."""

    async def start(self, host: Host) -> None:
        self.cursor = await host.source_cursor(self.id)
        await self.open()
        self._task = asyncio.create_task(self._run(), name=f"halod-pull-{self.id}")
        self.telemetry.log.info("pulling receiver started", receiver=self.id, cursor=self.cursor)

    async def shutdown(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        await self.close()

    async def _run(self) -> None:
        config = self.pull_config
        backoff = Backoff(config.retry_on_failure)
        while True:
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation that arrives as
                # the fetch completes (CPython gh-86296), and shutdown would then wait on a loop still running
                async with asyncio.timeout(config.timeout):
                    page = await self.fetch(self.cursor)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any fault of the source: log, count, back off, try again
                # a source that was told how long to wait (HTTP 429/503 Retry-After) says so as retry_after_s
                wait = backoff.next_wait(at_least=float(getattr(exc, "retry_after_s", 0.0) or 0.0))
                self.telemetry.pull_failed(self.id, exc, backoff.attempts)
                await asyncio.sleep(config.poll_interval if wait is None else wait)
                if wait is None:
                    backoff.reset()
                continue
            backoff.reset()
            if page.problems:
                self.telemetry.bad_records(self.id, page.problems)
            if len(page.request.resource_spans) or page.cursor != self.cursor:
                await self._commit(page)
            if not page.more:
                self.idle.set()
                await asyncio.sleep(config.poll_interval)
                self.idle.clear()

    async def _commit(self, page: Page) -> None:
        batch = normalize_request(page.request, self.id)
        batch.cursor = page.cursor
        if batch.rejected:
            self.telemetry.rejected_spans(self.id, self.transport, batch.rejection_reason,
                                          "spans with invalid ids or times", batch.rejected)
        while True:
            try:
                await self._next.consume(batch)
            except Refused as refused:  # the store is busy: the same page again, when it says
                self.telemetry.refused(self.id, self.transport, refused.reason, refused.message, batch.num_spans)
                await asyncio.sleep(refused.retry_after_s)
                continue
            except InvalidPayload as invalid:
                # The store refuses this data for good: record the loss and move past it, or the source
                # would be stuck on this page forever.
                self.telemetry.refused(self.id, self.transport, invalid.reason, invalid.message, batch.num_spans)
                batch = normalize_request(ExportTraceServiceRequest(), self.id)
                batch.cursor = page.cursor
                continue
            break
        self.telemetry.accepted(self.id, self.transport, batch.num_spans)
        self.cursor = page.cursor
