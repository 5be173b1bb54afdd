"""The DuckDB span store: the single writer of the database file and the end of the ack path.

Ack path: a receiver awaits `SpanStore.write(batch)`, which returns only once the batch is committed
(DuckDB fsyncs its WAL on commit), so a crash after the acknowledgement loses nothing: the WAL is
replayed when the file is opened again.

Threading: one writer thread owns the read-write connection. Requests wait in a bounded intake
(`queue_size` requests and `max_inflight_bytes` decoded bytes); when it is full a request is refused
at once with a retryable `Refused` (gRPC UNAVAILABLE / HTTP 503) and nothing of it is stored. The
writer takes everything waiting (up to `max_batch_spans`) and commits it in one transaction: group
commit, so many small requests cost one DuckDB transaction.

Dedup: (trace_id, span_id) is the primary key; spans are inserted with INSERT OR IGNORE and the
RETURNING clause tells which ones were new. A client retrying a request it thinks failed stores
nothing twice, and `CommitResult.duplicates` / `CommitEvent.spans` keep later counts honest.

Every request gets its own `ingest_seq`, increasing in commit order, so consumers after the commit
(trace assembly, signals, ...) can resume from the store with ``WHERE ingest_seq > last_seen``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa

from halod.config import StorageConfig
from halod.model import STORE_COLUMNS, CommitEvent, CommitResult, InvalidPayload, Refused, SpanBatch
from halod.store.query import QueryResult, run_query
from halod.store.schema import migrate, scalar
from halod.telemetry import Telemetry

CommitListener = Callable[[CommitEvent], None]

# Settings of the writer's connection. max_vacuum_tasks = 0: checkpoints do not vacuum (merge row
# groups). DuckDB checkpoints automatically every ~16 MiB of WAL (with ~1 KB spans: every 10-15 K
# spans, i.e. every few group commits), and with vacuum on each checkpoint merges the small row
# groups left by the previous ones, rewriting the same rows again and again: measured on 2 vCPUs,
# commits that checkpoint then take 0.1-6 s, growing with the table, and the store alone takes ~14 K
# spans/s; without vacuum a checkpoint only writes its new rows (~10 us a row): ~38 K spans/s, p99
# commit 0.26 s (docs/benchmarks.md). The cost: row groups stay the size of one checkpoint (~16 K
# rows instead of 122 K; ~7% more space), and a row group only partly deleted by age retention keeps
# its space until all its rows are deleted (fully deleted row groups are freed as before). Size
# retention still checkpoints with vacuum (_drop_before), as it needs the space back.
_WRITER_SETTINGS = ("SET max_vacuum_tasks = 0",)

# Errors about the data itself (a value DuckDB cannot store), as opposed to the database or the disk.
_DATA_ERRORS = (duckdb.ConversionException, duckdb.InvalidInputException, duckdb.ConstraintException)


@dataclass(slots=True)
class _Pending:
    batch: SpanBatch
    pipeline: str
    future: asyncio.Future[CommitResult]
    loop: asyncio.AbstractEventLoop


_Committed = tuple[_Pending, CommitResult, pa.Table]
T = TypeVar("T")


@dataclass(slots=True)
class _Job:
    run: Callable[[duckdb.DuckDBPyConnection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class StoreClosed(Exception):
    pass


def connect(path: Path, read_only: bool = False, memory_limit: int | None = None) -> duckdb.DuckDBPyConnection:
    """Open the database with SQL file access disabled (queries can reach no other file)."""
    config: dict[str, Any] = {"enable_external_access": False}
    if memory_limit:
        config["memory_limit"] = f"{memory_limit}B"
    return duckdb.connect(str(path), read_only=read_only, config=config)


class SpanStore:
    """Owns the DuckDB file for the daemon's lifetime. See the module docstring for the contract.

    Lifecycle: ``open()`` (blocking: creates the folder, opens the file, migrates, starts the writer),
    ``write()`` from the event loop, ``close()`` (stops taking requests, commits what is queued,
    checkpoints and closes; safe twice and without open()).
    """

    def __init__(self, config: StorageConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self._queue_config = config.queue
        self._pending: deque[_Pending] = deque()
        self._jobs: deque[_Job] = deque()
        self._pending_bytes = 0
        self._lock = threading.Condition()
        self._closing = False
        self._con: duckdb.DuckDBPyConnection | None = None
        self._thread: threading.Thread | None = None
        self._listeners: list[CommitListener] = []
        self._next_seq = 1
        self._failed: BaseException | None = None
        self._next_retention = 0.0
        self._size_after_drop: int | None = None  # data size right after the last size-retention drop
        telemetry.store_queue_capacity.set(config.queue.queue_size)
        telemetry.store_queue_capacity_bytes.set(config.queue.max_inflight_bytes)

    # -- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> None:
        path = self.config.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = connect(path, memory_limit=self.config.memory_limit)
        try:
            for setting in _WRITER_SETTINGS:
                self._con.execute(setting)
            applied = migrate(self._con)
            self._next_seq = int(scalar(self._con, "SELECT coalesce(max(ingest_seq), 0) FROM spans")) + 1
        except BaseException:
            # A refused file (newer schema, failed migration) must not look open: writes would queue
            # for a writer that never starts, and the file would stay locked.
            self._con.close()
            self._con = None
            raise
        self.telemetry.log.info("store opened", path=str(path), migrations_applied=applied,
                                next_ingest_seq=self._next_seq)
        self._thread = threading.Thread(target=self._run, name="halod-store-writer", daemon=True)
        self._thread.start()

    @property
    def is_open(self) -> bool:
        return self._con is not None and not self._closing and self._failed is None

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.telemetry.log.error("store writer did not drain in time", timeout_s=timeout)
                return
            self._thread = None
        if self._con is not None:
            try:
                self._con.execute("CHECKPOINT")
            except duckdb.Error as exc:
                self.telemetry.log.warning("checkpoint on close failed (the WAL keeps the data)", error=str(exc))
            self._con.close()
            self._con = None
            self.telemetry.log.info("store closed", path=str(self.config.path))

    def subscribe(self, listener: CommitListener) -> None:
        """`listener` is called on the writer's event loop with every `CommitEvent`; it must not block."""
        self._listeners.append(listener)

    # -- the ack path --------------------------------------------------------------------------------

    def admission_check(self, nbytes: int = 0) -> None:
        """Raise `Refused` if a request of `nbytes` would not be admitted now. Cheap, lock-free read."""
        if self._closing or self._con is None:
            raise Refused("shutting_down", "halod is shutting down", self._queue_config.retry_after)
        if self._failed is not None:
            raise Refused("store_failed", f"the store is unavailable: {self._failed}", self._queue_config.retry_after)
        if len(self._pending) >= self._queue_config.queue_size or (
            self._pending and self._pending_bytes + nbytes > self._queue_config.max_inflight_bytes
        ):
            raise Refused(
                "queue_full",
                f"the store queue is full ({len(self._pending)} requests, {self._pending_bytes} bytes waiting); "
                "retry later",
                self._queue_config.retry_after,
            )

    async def write(self, batch: SpanBatch, pipeline: str = "traces") -> CommitResult:
        """Commit `batch`; returns once it is durable. Raises `Refused` when the queue is full."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CommitResult] = loop.create_future()
        with self._lock:
            self.admission_check(batch.nbytes)
            self._pending.append(_Pending(batch, pipeline, future, loop))
            self._pending_bytes += batch.nbytes
            self._lock.notify()
        self.telemetry.store_queue_size.set(len(self._pending))
        self.telemetry.store_queue_bytes.set(self._pending_bytes)
        # Shielded: a client that disconnects must not cancel a commit already queued.
        return await asyncio.shield(future)

    async def run_write(self, job: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `job(connection)` on the writer thread in one transaction, after the span commits queued
        before it, and return its result (its exception rolls the transaction back and is raised here).

        For halod's own derived tables (traces, signals, windows, ...): the writer is the only
        connection that writes, so these never race span commits. A job must be short (span commits
        wait behind it) and must not touch `spans`. Not subject to the span queue's admission limits:
        callers bound their own jobs.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._closing or self._con is None or self._thread is None:
                raise StoreClosed("the store is not open")
            self._jobs.append(_Job(job, future, loop))
            self._lock.notify()
        return await asyncio.shield(future)

    def read(self, job: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run `job(cursor)` on a cursor of its own (blocking: call it from a thread); for reads of
        halod's own code (no statement restrictions, unlike `query`). Never blocks the writer."""
        if self._con is None:
            raise StoreClosed("the store is not open")
        cursor = self._con.cursor()
        try:
            return job(cursor)
        finally:
            cursor.close()

    # -- reads ---------------------------------------------------------------------------------------

    def query(self, sql: str, max_rows: int = 10_000, timeout_s: float | None = 60.0) -> QueryResult:
        """Read-only query on a fresh cursor (blocking: call it from a thread). Never blocks the writer."""
        if self._con is None:
            raise StoreClosed("the store is not open")
        return run_query(self._con, sql, max_rows, timeout_s)

    def source_cursor(self, source: str) -> str | None:
        """The cursor last committed with a batch of `source`, None if it never committed one
        (blocking, on its own cursor: call it from a thread)."""
        if self._con is None:
            raise StoreClosed("the store is not open")
        value = scalar(self._con.cursor(), "SELECT cursor FROM source_cursors WHERE source = ?", [source])
        return None if value is None else str(value)

    # -- the writer thread ----------------------------------------------------------------------------

    def _take(self) -> tuple[list[_Pending], list[_Job]] | None:
        max_spans = self._queue_config.max_batch_spans
        with self._lock:
            while not self._pending and not self._jobs:
                if self._closing:
                    return None
                self._lock.wait(timeout=self._retention_wait())
                if not self._pending and not self._jobs and not self._closing:
                    return [], []  # woke up for retention
            jobs = list(self._jobs)
            self._jobs.clear()
            taken: list[_Pending] = []
            spans = 0
            while self._pending and (not taken or spans + self._pending[0].batch.num_spans <= max_spans):
                item = self._pending.popleft()
                self._pending_bytes -= item.batch.nbytes
                spans += item.batch.num_spans
                taken.append(item)
        self.telemetry.store_queue_size.set(len(self._pending))
        self.telemetry.store_queue_bytes.set(self._pending_bytes)
        return taken, jobs

    def _retention_wait(self) -> float:
        return max(0.05, self._next_retention - time.monotonic())

    def _run(self) -> None:
        self._next_retention = time.monotonic() + self.config.retention.check_interval
        while True:
            work = self._take()
            if work is None:
                return
            taken, jobs = work
            if taken:
                self._commit(taken)
            for job in jobs:  # after the spans queued with them: a job sees what was queued before it
                self._run_job(job)
            if time.monotonic() >= self._next_retention:
                self._enforce_retention()
                self._next_retention = time.monotonic() + self.config.retention.check_interval

    def _commit(self, taken: list[_Pending]) -> None:
        assert self._con is not None
        con = self._con
        now_ns = time.time_ns()
        tables = []
        seqs = []
        for item in taken:
            n = item.batch.num_spans
            seq = self._next_seq
            self._next_seq += 1
            seqs.append(seq)
            extra = [
                pa.repeat(pa.scalar(item.batch.source, pa.string()), n),
                pa.repeat(pa.scalar(seq, pa.int64()), n),
                pa.repeat(pa.scalar(now_ns, pa.int64()), n),
            ]
            table = item.batch.spans
            for (name, _, _), column in zip(STORE_COLUMNS, extra, strict=True):
                table = table.append_column(name, column)
            tables.append(table)
        started = time.perf_counter()
        try:
            incoming = pa.concat_tables(tables)
            # later requests of one source win: a source's batches are queued in the order it read them
            cursors = {item.batch.source: item.batch.cursor for item in taken if item.batch.cursor is not None}
            con.register("incoming", incoming)
            try:
                new_per_seq = self._insert_incoming(con, cursors, now_ns)
            finally:
                con.unregister("incoming")
        except duckdb.Error as exc:
            if len(taken) > 1 and not self._fatal(exc):
                # One bad request must not sink the others grouped with it: commit them one by one
                # (the failed statement changed nothing, and their ingest_seqs are simply skipped).
                for item in taken:
                    self._commit([item])
            else:
                self._fail(taken, exc)
            return
        elapsed = time.perf_counter() - started
        total = incoming.num_rows
        stored_total = total if new_per_seq is None else new_per_seq.total()
        self.telemetry.committed(stored_total, total - stored_total, elapsed)

        results = []
        for item, table, seq in zip(taken, tables, seqs, strict=True):
            stored = item.batch.num_spans if new_per_seq is None else new_per_seq.get(seq, 0)
            results.append((item, CommitResult(seq, stored, item.batch.num_spans - stored), table))
        needs_events = bool(self._listeners)
        if needs_events and stored_total < total:
            results = self._only_new(results)
        for item, result, table in results:
            item.loop.call_soon_threadsafe(self._deliver, item, result, table if needs_events else None)

    @classmethod
    def _insert_incoming(
        cls, con: duckdb.DuckDBPyConnection, cursors: dict[str, str], now_ns: int
    ) -> Counter[int] | None:
        """Insert the registered table `incoming` (and the sources' `cursors`, atomically with it);
        returns the new spans per ingest_seq, or None when all of them were new.

        A plain INSERT first: it costs ~30% less than INSERT OR IGNORE ... RETURNING (on 600 K stored
        spans: 20-22 vs 27-29 us a span, docs/benchmarks.md) and fails as a whole on a duplicate key,
        which is rare (client retries, re-imports). Then the statement that skips the duplicates and
        tells which spans were new; it also meets any other constraint error again, for the caller.
        """
        try:
            cls._insert(con, "INSERT INTO spans SELECT * FROM incoming", cursors, now_ns)
            return None
        except duckdb.ConstraintException:
            pass
        rows = cls._insert(con, "INSERT OR IGNORE INTO spans SELECT * FROM incoming RETURNING ingest_seq",
                           cursors, now_ns)
        return Counter(row[0] for row in rows)

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, insert: str, cursors: dict[str, str], now_ns: int) -> list[Any]:
        if not cursors:
            return con.execute(insert).fetchall()  # one statement: its own transaction
        con.execute("BEGIN TRANSACTION")
        try:
            rows = con.execute(insert).fetchall()
            for source, cursor in cursors.items():  # one row per pulling source in the group
                con.execute("INSERT OR REPLACE INTO source_cursors VALUES (?, ?, ?)", [source, cursor, now_ns])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return rows

    def _run_job(self, job: _Job) -> None:
        assert self._con is not None
        con = self._con
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                result = job.run(con)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        except Exception as exc:
            job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
        else:
            job.loop.call_soon_threadsafe(_settle, job.future, result, None)

    def _only_new(self, results: list[_Committed]) -> list[_Committed]:
        """Drop redelivered spans from commit-event tables (rare path: only when duplicates arrived).

        A span is new in its request iff the row stored under its key carries that request's ingest_seq.
        """
        assert self._con is not None
        out = []
        for item, result, table in results:
            if result.duplicates and table.num_rows:
                if result.stored == 0:
                    table = table.slice(0, 0)
                else:
                    rows = self._con.execute(
                        "SELECT trace_id, span_id FROM spans WHERE ingest_seq = ?", [result.ingest_seq]
                    ).fetchall()
                    keep = {t + s for t, s in rows}
                    keys = [t + s for t, s in zip(table.column("trace_id").to_pylist(),
                                                  table.column("span_id").to_pylist(), strict=True)]
                    # a span sent twice in one request is stored once, so it is new once
                    seen: set[str] = set()
                    mask = []
                    for key in keys:
                        mask.append(key in keep and key not in seen)
                        seen.add(key)
                    table = table.filter(pa.array(mask))
            out.append((item, result, table))
        return out

    def _deliver(self, item: _Pending, result: CommitResult, table: pa.Table | None) -> None:
        if not item.future.done():
            item.future.set_result(result)
        if table is None or not table.num_rows:
            return
        event = CommitEvent(item.pipeline, item.batch.source, result.ingest_seq, table)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:  # a listener bug must not break the ack path
                self.telemetry.log.error("commit listener failed", error=repr(exc))

    @staticmethod
    def _fatal(error: duckdb.Error) -> bool:
        return isinstance(error, duckdb.FatalException) or "invalidated" in str(error)

    def _fail(self, taken: list[_Pending], error: duckdb.Error) -> None:
        """Answer the requests of a failed commit: a request whose own data DuckDB refused gets a
        permanent error (retrying it cannot help), anything else a retryable refusal."""
        self.telemetry.store_write_failed(error, len(taken))
        if self._fatal(error):
            self._failed = error  # DuckDB refuses all further writes; readiness reports it
        refusal: Exception
        if len(taken) == 1 and isinstance(error, _DATA_ERRORS):
            refusal = InvalidPayload(f"the store refused the request's data: {error}", reason="store_rejected")
        else:
            refusal = Refused("store_error", f"the store could not commit the request: {error}",
                              self._queue_config.retry_after)

        def reject(item: _Pending) -> None:
            if not item.future.done():
                item.future.set_exception(refusal)

        for item in taken:
            item.loop.call_soon_threadsafe(reject, item)

    # -- retention --------------------------------------------------------------------------------

    def _enforce_retention(self) -> None:
        assert self._con is not None
        retention = self.config.retention
        try:
            if retention.max_age is not None:
                cutoff = time.time_ns() - int(retention.max_age * 1e9)
                # by the later of end and ingestion time: imported history stays max_age after its import
                self._drop_before(cutoff, "age", also_ingested_before=True)
            if retention.max_size is not None:
                self._enforce_max_size(retention.max_size)
        except duckdb.Error as exc:
            self.telemetry.log.error("retention failed", error=str(exc))

    def _enforce_max_size(self, max_size: int) -> None:
        """Drop the oldest spans (by end time) so the data fits in 90% of `max_size`.

        DuckDB frees space by row groups (~122k rows): deleting part of one does not shrink the file,
        so the size is not re-measured after a delete (that would keep deleting until nothing is
        left). The rows to keep are estimated once from the bytes per row, and nothing more is
        dropped until the data grows past the size it had right after the last drop (new spans
        first reuse the space freed). The file can exceed `max_size` by about one row group.
        """
        assert self._con is not None
        size = self.data_size()
        if size <= max_size or (self._size_after_drop is not None and size <= self._size_after_drop):
            return
        rows = int(scalar(self._con, "SELECT count(*) FROM spans") or 0)
        drop = rows - int(rows * 0.9 * max_size / size)
        if rows == 0 or drop <= 0:
            return
        cutoff = scalar(self._con, "SELECT end_ns FROM spans ORDER BY end_ns LIMIT 1 OFFSET ?", [drop - 1])
        if cutoff is not None:
            # With vacuum: rows dropped from row groups that stay partly used free no space otherwise.
            self._drop_before(int(cutoff) + 1, "size", vacuum=True)
        self._size_after_drop = self.data_size()

    def _drop_before(self, cutoff_ns: int, reason: str, vacuum: bool = False,
                     also_ingested_before: bool = False) -> None:
        """Delete the spans that ended before `cutoff_ns` (and, with `also_ingested_before`, were
        stored before it) and checkpoint. `vacuum`: with DuckDB's default vacuum (off for the writer,
        see _WRITER_SETTINGS), which merges partly deleted row groups to free their space; it must run
        in the checkpoint that follows the delete."""
        assert self._con is not None
        where = "end_ns < $1" + (" AND ingested_ns < $1" if also_ingested_before else "")
        dropped = int(scalar(self._con, f"DELETE FROM spans WHERE {where}", [cutoff_ns]) or 0)
        if dropped:
            if vacuum:
                self._con.execute("RESET max_vacuum_tasks")
            try:
                self._con.execute("CHECKPOINT")
            finally:
                if vacuum:
                    self._con.execute("SET max_vacuum_tasks = 0")
            self.telemetry.retention_dropped(reason, dropped, cutoff_ns)

    def data_size(self) -> int:
        """Bytes of live data in the file (used blocks), plus the WAL not yet checkpointed."""
        assert self._con is not None
        used = scalar(self._con, "SELECT block_size * used_blocks FROM pragma_database_size()")
        wal = self.config.path.with_name(self.config.path.name + ".wal")
        return int(used or 0) + (os.path.getsize(wal) if wal.exists() else 0)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
