"""The bounded queue in front of every exporter (after the Collector's exporterhelper sending_queue).

Exporters run after the commit, so a slow exporter must never hold up the acknowledgement path:
when its queue is full the newest event is dropped and counted, and the spans stay in the store
(the event's `ingest_seq` tells a consumer what it missed). Components embed `SendingQueueConfig`
in their config as `sending_queue:`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from pydantic import Field

from halod.components import stop_tasks
from halod.security import StrictModel

T = TypeVar("T")


class SendingQueueConfig(StrictModel):
    queue_size: int = Field(default=1000, ge=1, description="Events that may wait; beyond it new ones are dropped.")
    num_consumers: int = Field(default=1, ge=1, le=64, description="Events handled concurrently.")


class SendingQueue(Generic[T]):
    """Bounded asyncio queue with worker tasks calling `handle(item)`.

    ``offer`` never blocks; ``start`` launches the workers; ``shutdown`` lets them finish what is
    queued within `timeout`, then cancels them (safe twice and without start).
    """

    def __init__(
        self,
        config: SendingQueueConfig,
        handle: Callable[[T], Awaitable[None]],
        on_drop: Callable[[T], None],
        on_error: Callable[[T, BaseException], None],
        on_size: Callable[[int], None] | None = None,
    ) -> None:
        self._config = config
        self._queue: asyncio.Queue[T] = asyncio.Queue(config.queue_size)
        self._handle = handle
        self._on_drop = on_drop
        self._on_error = on_error
        self._on_size = on_size or (lambda size: None)
        self._workers: list[asyncio.Task[None]] = []

    def offer(self, item: T) -> bool:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._on_drop(item)
            return False
        self._on_size(self._queue.qsize())
        return True

    def start(self) -> None:
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._config.num_consumers)]

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._handle(item)
            except Exception as exc:
                self._on_error(item, exc)
            finally:
                self._queue.task_done()
                self._on_size(self._queue.qsize())

    async def shutdown(self, timeout: float = 10.0) -> None:
        if not self._workers:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        await stop_tasks(*self._workers)
        self._workers = []
