"""The analysis stage: commit events -> assembled traces -> features + signals -> windows -> triggers.

Lifecycle (like a component): ``start()`` recovers the traces that were open at the last stop from
the store (every span after the persisted assembly cursor, and all spans of their traces), then
subscribes to commit events and ticks every `assembly.tick`; ``shutdown()`` stops ticking. Open
traces are not completed at shutdown: the next start recovers them, so nothing is lost or counted
twice. ``flush()`` completes every open trace, closes every window and evaluates the triggers.

Work per tick: the assembler hands out the complete traces; they are evaluated (features and every
enabled detector) in a worker process (or thread), and the results are written by the store's
writer in one transaction with the new assembly cursor (`SpanStore.run_write`). Ticks and flushes
never overlap. Nothing here is on the acknowledgement path: a commit event only appends references
to the assembler.

Failures: traces whose evaluation or write fails (a store error, the worker process dying) are
retried after a backoff (`halod.retry`), one trace per batch so that one bad trace cannot hold the
others back, and given up after `MAX_ATTEMPTS` (logged with their ids, counted). A worker that died
is replaced. Until then the stored cursor stays below their spans, so a restart retries them too.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa

from halod.analysis.assembly import Assembler, Completed
from halod.analysis.config import AnalysisConfig
from halod.analysis.evaluator import Evaluated, Evaluator, Item, evaluate_ipc, init_worker, to_ipc
from halod.analysis.metrics import AnalysisMetrics
from halod.analysis.signals import build_detectors, outliers
from halod.analysis.trace import EVALUATED_COLUMNS
from halod.analysis.triggers import Triggers, TripEvent
from halod.analysis.windows import WindowClock, WindowStat, write_stats
from halod.components import stop_tasks
from halod.model import CommitEvent
from halod.retry import Backoff, RetryConfig
from halod.store import SpanStore
from halod.telemetry import Telemetry

CURSOR_KEY = "assembly.cursor"
EVALUATION_BATCH = 2000  # traces read back, evaluated and written together, at most
EVALUATION_BATCH_SPANS = 60_000  # and their spans, at most (a trace larger than this goes alone)
MAX_ATTEMPTS = 3  # failed evaluations or writes of a trace before it is given up
RETRY = RetryConfig()  # waits between retries of failed traces: 1 s growing to 30 s, never giving up
SPAN_COLUMNS_SQL = ", ".join(EVALUATED_COLUMNS)  # what detectors read, no more

TRACES_SCHEMA = pa.schema([
    ("trace_id", pa.string()), ("services", pa.list_(pa.string())), ("agent_names", pa.list_(pa.string())),
    ("session_id", pa.string()), ("root_name", pa.string()), ("has_root", pa.bool_()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("duration_ns", pa.int64()), ("span_count", pa.int64()),
    ("kind_counts", pa.string()), ("llm_calls", pa.int64()), ("tool_calls", pa.int64()),
    ("tool_errors", pa.int64()), ("error_spans", pa.int64()), ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()), ("total_tokens", pa.int64()), ("models", pa.list_(pa.string())),
    ("tools", pa.list_(pa.string())), ("outcome", pa.string()), ("signals", pa.list_(pa.string())),
    ("window_start_ns", pa.int64()), ("completed_ns", pa.int64()), ("completion", pa.string()),
    ("evaluations", pa.int64()), ("service", pa.string()), ("agent", pa.string()),
])
SIGNALS_SCHEMA = pa.schema([
    ("trace_id", pa.string()), ("span_id", pa.string()), ("signal", pa.string()), ("severity", pa.string()),
    ("tool", pa.string()), ("details", pa.string()), ("service", pa.string()), ("agent", pa.string()),
    ("window_start_ns", pa.int64()), ("detected_ns", pa.int64()),
])


@dataclass
class FlushResult:
    traces_completed: int = 0
    windows_closed: int = 0
    trips: list[dict[str, Any]] = field(default_factory=list)


class AnalysisStage:
    def __init__(self, config: AnalysisConfig, store: SpanStore, telemetry: Telemetry) -> None:
        self.config = config
        self.store = store
        self.telemetry = telemetry
        detectors = build_detectors(config.signals)  # validates the settings now
        self.detector_names = [d.name for d in detectors]
        self._outliers = next((d for d in detectors if isinstance(d, outliers.Detector)), None)
        self._evaluator: Evaluator | None = None
        self._pool: ProcessPoolExecutor | None = None
        self.assembler = Assembler(config.assembly)
        size_ns = int(config.windows.size * 1e9)
        self.windows = WindowClock(size_ns, int(config.windows.allowed_lateness * 1e9), config.windows.idle_close)
        self.metrics = AnalysisMetrics(telemetry.registry)
        self.triggers = Triggers(config.triggers)
        self._lock = asyncio.Lock()
        self._retry: list[Completed] = []  # traces whose evaluation or write failed, waiting for _retry_at
        self._retry_at = 0.0
        self._retry_backoff = Backoff(RETRY)
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[TripEvent], None]] = []

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self, host: Any = None) -> None:
        cursor_text = await asyncio.to_thread(self.store.read, _state_reader(CURSOR_KEY))
        cursor = int(cursor_text) if cursor_text else 0
        recovered = await asyncio.to_thread(self.store.read, _recovery_reader(cursor))
        self.assembler.last_seq = cursor
        self.assembler.recover(recovered)
        self.triggers.load(await asyncio.to_thread(self.store.read, self.triggers.state_reader))
        baseline_traces = await self._start_evaluator()
        self.store.subscribe(self.on_commit)
        self._task = asyncio.create_task(self._ticks(), name="halod-analysis")
        self.telemetry.log.info("analysis started", cursor=cursor, recovered_traces=len(recovered),
                                detectors=self.detector_names, evaluator=self.config.evaluator,
                                baseline_traces=baseline_traces)

    async def _start_evaluator(self) -> int:
        """A new evaluator (worker process or in-process), its outlier baselines rebuilt from the stored
        traces; returns how many traces they were rebuilt from."""
        history = (await asyncio.to_thread(self.store.read, outliers.history_reader(self._outliers.config.window))
                   if self._outliers is not None else [])
        if self.config.evaluator == "process":
            # spawn, not fork: the daemon has threads (gRPC, the store writer) a fork would copy mid-state
            spawn = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(1, mp_context=spawn, initializer=init_worker,
                                             initargs=(self.config.model_dump_json(), os.getpid(), history))
        else:
            self._evaluator = Evaluator(self.config, history)
        return len(history)

    async def shutdown(self) -> None:
        await stop_tasks(self._task)
        self._task = None
        if self._pool is not None:
            await asyncio.to_thread(self._pool.shutdown, True, cancel_futures=True)
            self._pool = None

    def subscribe(self, listener: Callable[[TripEvent], None]) -> None:
        """`listener` gets every trigger trip (the analysis engine asks for an analysis of its window)."""
        self._listeners.append(listener)

    # -- feeding --------------------------------------------------------------------------------------

    def on_commit(self, event: CommitEvent) -> None:
        """Store commit listener (on the event loop; must not block): new spans join their traces."""
        self.assembler.add(event.spans, event.ingest_seq)
        self.metrics.open_traces.set(len(self.assembler.open))

    async def _ticks(self) -> None:
        while True:
            await asyncio.sleep(self.config.assembly.tick)
            try:
                async with self._lock:
                    await self._complete(self._due())
                    await self._close(self.windows.closing(time.monotonic()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a store error must not stop analysis for good
                self.telemetry.log.error("analysis tick failed", error=repr(exc))

    async def flush(self) -> FlushResult:
        """Complete every open trace, close every window, evaluate the triggers."""
        async with self._lock:
            completed = self._due(everything=True)
            await self._complete(completed)
            closed = self.windows.closing(time.monotonic(), everything=True)
            trips = await self._close(closed)
        return FlushResult(len(completed), len(closed), [trip.as_dict() for trip in trips])

    # -- completing traces ----------------------------------------------------------------------------

    def _due(self, everything: bool = False) -> list[Completed]:
        """The traces complete by now (every open one when `everything`), after the traces to retry
        once their backoff has passed (at once when `everything`)."""
        completed = self.assembler.flush() if everything else self.assembler.due()
        if self._retry and (everything or time.monotonic() >= self._retry_at):
            completed, self._retry = self._retry + completed, []
        return completed

    async def _complete(self, completed: list[Completed]) -> None:
        """Evaluate and store the completed traces in batches (bounded memory; a trace retried after a
        failure alone), pipelined: a batch is read back and evaluated while the one before it is
        written. Writes stay in order, and the cursor stored with a batch stays below the spans of the
        traces not yet stored (later batches, traces to retry, open traces)."""
        batches = self._batches(completed)
        writing: asyncio.Task[None] | None = None
        try:
            for index, batch in enumerate(batches):
                try:
                    views = await self._evaluate(batch)
                except Exception as exc:
                    self._failed(batch, "evaluate", exc)
                    continue
                if writing is not None:
                    await writing  # before the cursor is chosen: a failed write puts its traces back first
                later = [c for rest in batches[index + 1:] for c in rest]
                cursor = min([self.assembler.cursor(), *(c.trace.first_seq - 1 for c in [*self._retry, *later])])
                writing = asyncio.create_task(self._store(batch, views, cursor))
        finally:
            if writing is not None:
                await writing

    def _batches(self, completed: list[Completed]) -> list[list[Completed]]:
        """Traces retried after a failure one per batch; the others up to `EVALUATION_BATCH` traces and
        `EVALUATION_BATCH_SPANS` spans (as many as will be read back) per batch."""
        batches = [[c] for c in completed if c.trace.attempts]
        batch: list[Completed] = []
        spans = 0
        for item in completed:
            if item.trace.attempts:
                continue
            size = min(item.trace.spans, self.config.max_trace_spans)
            if batch and (len(batch) >= EVALUATION_BATCH or spans + size > EVALUATION_BATCH_SPANS):
                batches.append(batch)
                batch, spans = [], 0
            batch.append(item)
            spans += size
        return [*batches, batch] if batch else batches

    def _failed(self, batch: list[Completed], step: str, exc: Exception) -> None:
        """Put a failed batch's traces back for a retry after a backoff, or give them up."""
        for item in batch:
            item.trace.attempts += 1
        given_up = [c.trace.trace_id for c in batch if c.trace.attempts >= MAX_ATTEMPTS]
        self._retry += [c for c in batch if c.trace.attempts < MAX_ATTEMPTS]
        wait = self._retry_backoff.next_wait() or RETRY.max_interval
        self._retry_at = time.monotonic() + wait
        self.metrics.failures.labels(step).inc(len(batch))
        self.metrics.abandoned.inc(len(given_up))
        self.telemetry.log.error("trace evaluation failed", step=step, error=repr(exc), traces=len(batch),
                                 retry_in_s=round(wait, 2), given_up=given_up[:20], given_up_count=len(given_up))

    async def _store(self, completed: list[Completed], views: Evaluated, cursor: int) -> None:
        try:
            await self._write(completed, views, cursor)
        except Exception as exc:
            self._failed(completed, "write", exc)
            return
        self._retry_backoff.reset()
        self.metrics.completed(completed, views.signals, late_count=len(views.reevaluated))
        self.metrics.open_traces.set(len(self.assembler.open))

    async def _write(self, completed: list[Completed], views: Evaluated, cursor: int) -> None:
        now = time.monotonic()
        late_windows = set()
        for row in views.traces:
            if self.windows.observe(row["window_start_ns"], row["end_ns"], now):
                late_windows.add(row["window_start_ns"])
        excluded, size_ns = self.config.exclude_services, self.windows.size_ns
        stats_now = time.time_ns()

        def write(con: duckdb.DuckDBPyConnection) -> None:
            if views.reevaluated:
                con.register("reevaluated", pa.table({"trace_id": views.reevaluated}))
                con.execute("DELETE FROM signals WHERE trace_id IN (SELECT trace_id FROM reevaluated)")
                con.unregister("reevaluated")
            again = set(views.reevaluated)
            for rows, count_evaluations in (([r for r in views.traces if r["trace_id"] not in again], False),
                                            ([r for r in views.traces if r["trace_id"] in again], True)):
                if not rows:
                    continue
                con.register("new_traces", pa.Table.from_pylist(rows, TRACES_SCHEMA))
                # Counting evaluations needs a lookup per row: only for traces known to be evaluated before.
                evaluations = ("coalesce((SELECT t.evaluations FROM traces t WHERE t.trace_id = n.trace_id), 0) + 1"
                               if count_evaluations else "1")
                con.execute(f"INSERT OR REPLACE INTO traces SELECT n.* REPLACE ({evaluations} AS evaluations) "
                            "FROM new_traces n")
                con.unregister("new_traces")
            if views.signals:
                con.register("new_signals", pa.Table.from_pylist(views.signals, SIGNALS_SCHEMA))
                con.execute("INSERT INTO signals SELECT * FROM new_signals")
                con.unregister("new_signals")
            for window in late_windows:  # a late trace updates the statistics of its closed window
                write_stats(con, window, size_ns, excluded, True, stats_now)
            con.execute("INSERT OR REPLACE INTO analysis_state VALUES (?, ?, ?)", [CURSOR_KEY, str(cursor), stats_now])

        await self.store.run_write(write)

    def _read_back(self, completed: list[Completed]) -> tuple[pa.Table, list[str]]:
        """The completed traces' spans (worker thread), at most `max_trace_spans` of each, and the ids of
        the traces that had more. Traces seen whole for the first time are read within their
        `ingest_seq` range (recent row groups only); late and recovered ones, whose earlier spans can be
        anywhere, without it (and, late ones' size being unknown, always with the per-trace limit)."""
        limit = self.config.max_trace_spans
        fresh = [c.trace for c in completed if not (c.trace.late or c.trace.recovered)]
        again = [c.trace for c in completed if c.trace.late or c.trace.recovered]
        tables, truncated = [], []
        if fresh:
            bounds = (min(t.first_seq for t in fresh), max(t.last_seq for t in fresh))
            large = any(t.spans > limit for t in fresh)
            tables.append(self.store.read(_spans_reader([t.trace_id for t in fresh], bounds, limit if large else None)))
            truncated += [t.trace_id for t in fresh if t.spans > limit]
        if again:
            ids = [t.trace_id for t in again]
            tables.append(self.store.read(_spans_reader(ids, None, limit)))
            truncated += self.store.read(_larger_than_reader(ids, limit))
        return pa.concat_tables(tables), truncated

    async def _evaluate(self, completed: list[Completed]) -> Evaluated:
        table, truncated = await asyncio.to_thread(self._read_back, completed)
        if truncated:
            self.metrics.truncated.inc(len(truncated))
            self.telemetry.log.warning("traces evaluated on their first spans only", traces=truncated[:20],
                                       count=len(truncated), max_trace_spans=self.config.max_trace_spans)
        items: list[Item] = [
            (c.trace.trace_id, "recovered" if c.trace.recovered else "late" if c.trace.late else c.reason,
             c.trace.late or c.trace.recovered) for c in completed]
        if self._pool is None:
            assert self._evaluator is not None
            result = await asyncio.to_thread(self._evaluator.evaluate, table, items)
        else:
            ipc = await asyncio.to_thread(to_ipc, table)
            try:
                result = await asyncio.get_running_loop().run_in_executor(self._pool, evaluate_ipc, ipc, items)
            except BrokenProcessPool:
                self.telemetry.log.error("evaluation worker exited; starting a new one")
                self._pool.shutdown(wait=False)
                await self._start_evaluator()
                raise
        for error in result.errors[:20]:
            self.telemetry.log.error("detector failed", error=error)
        return result

    # -- windows and triggers -------------------------------------------------------------------------

    async def _close(self, windows: list[int]) -> list[TripEvent]:
        trips: list[TripEvent] = []
        if not windows:
            return trips
        excluded, size_ns = self.config.exclude_services, self.windows.size_ns
        for position, window in enumerate(windows):
            now_ns = time.time_ns()

            def close(con: duckdb.DuckDBPyConnection, window: int = window,
                      now_ns: int = now_ns) -> tuple[list[WindowStat], list[TripEvent]]:
                stats = write_stats(con, window, size_ns, excluded, True, now_ns)
                return stats, self.triggers.evaluate(con, window, size_ns, stats, excluded, now_ns)

            saved = self.triggers.snapshot()
            try:
                stats, window_trips = await self.store.run_write(close)
            except Exception as exc:  # e.g. the disk is full: these windows close at a later tick, in order
                self.triggers.restore(saved)  # the rolled-back transaction's trips and incidents never happened
                self.windows.reopen(windows[position:])
                self.metrics.failures.labels("close").inc()
                self.telemetry.log.error("closing a window failed; retried at the next tick", window_start_ns=window,
                                         error=repr(exc))
                break
            self.metrics.window_closed(stats)
            for trip in window_trips:
                self.metrics.tripped(trip.rule)
                self.telemetry.log.warning("trigger tripped", **trip.as_dict())
                for listener in self._listeners:
                    try:
                        listener(trip)
                    except Exception as exc:
                        self.telemetry.log.error("trip listener failed", error=repr(exc))
            trips += window_trips
        return trips


# -- reads (worker threads, own cursors) ---------------------------------------------------------------


def _state_reader(key: str) -> Callable[[duckdb.DuckDBPyConnection], str | None]:
    def read(con: duckdb.DuckDBPyConnection) -> str | None:
        rows = con.execute("SELECT value FROM analysis_state WHERE key = ?", [key]).fetchall()
        return str(rows[0][0]) if rows else None
    return read


def _recovery_reader(cursor: int) -> Callable[[duckdb.DuckDBPyConnection], list[tuple[str, int, int, bool, int]]]:
    """The traces with a span after `cursor` (open at the last stop): id, seq range, root, span count."""
    def read(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, int, bool, int]]:
        return con.execute(
            "SELECT trace_id, min(ingest_seq), max(ingest_seq), bool_or(parent_span_id IS NULL), count(*) "
            "FROM spans WHERE trace_id IN (SELECT DISTINCT trace_id FROM spans WHERE ingest_seq > ?) "
            "GROUP BY trace_id ORDER BY min(ingest_seq)", [cursor]).fetchall()
    return read


def _spans_reader(trace_ids: list[str], seq_bounds: tuple[int, int] | None, per_trace: int | None
                  ) -> Callable[[duckdb.DuckDBPyConnection], pa.Table]:
    """The spans of `trace_ids` (within `seq_bounds` when given; the first `per_trace` of each by start
    time when given)."""
    def read(con: duckdb.DuckDBPyConnection) -> pa.Table:
        con.register("wanted", pa.table({"trace_id": trace_ids}))
        try:
            params: list[int] = list(seq_bounds) if seq_bounds else []
            sql = f"SELECT {SPAN_COLUMNS_SQL} FROM spans SEMI JOIN wanted USING (trace_id)"
            if seq_bounds:
                sql += " WHERE ingest_seq BETWEEN ? AND ?"
            if per_trace is not None:
                sql += " QUALIFY row_number() OVER (PARTITION BY trace_id ORDER BY start_ns, span_id) <= ?"
                params.append(per_trace)
            return con.sql(sql, params=params or None).to_arrow_table()
        finally:
            con.unregister("wanted")
    return read


def _larger_than_reader(trace_ids: list[str], spans: int) -> Callable[[duckdb.DuckDBPyConnection], list[str]]:
    """Which of `trace_ids` have more than `spans` spans stored."""
    def read(con: duckdb.DuckDBPyConnection) -> list[str]:
        con.register("wanted", pa.table({"trace_id": trace_ids}))
        try:
            rows = con.execute("SELECT trace_id FROM spans SEMI JOIN wanted USING (trace_id) GROUP BY trace_id "
                               "HAVING count(*) > ?", [spans]).fetchall()
            return [str(row[0]) for row in rows]
        finally:
            con.unregister("wanted")
    return read
