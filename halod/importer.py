"""`halod import`: trace files of any supported format into the store, through the same
normalization and pipeline (processors, store, post-commit consumers) as live OTLP traffic.

Where the spans go: when a daemon answers at the configured admin address, each chunk is sent to it
as one OTLP protobuf request (POST /api/v1/import), since DuckDB lets only one process open the
file; otherwise an embedded daemon opens the configured store itself (`Daemon.start(serve=False)`:
no ports bound). Either way a chunk is acknowledged only once committed, the store deduplicates by
(trace_id, span_id), so importing a file twice stores each span once, and the formats' ids are
deterministic, so a converted file produces the same spans every time.

Bad input never aborts an import: each record a reader cannot convert becomes a `Problem` naming
the file and line or record (reported as it happens, counted in the summary) and the rest goes on.
A file that cannot be read at all (missing, undetectable format) is a problem of that file, and the
other files are still imported.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod.adminclient import AdminClient
from halod.config import HalodConfig
from halod.formats import Chunk, Problem, ReadOptions, detect_format, read_file
from halod.model import ImportResult, InvalidPayload, Refused
from halod.retry import Backoff, RetryConfig

Send = Callable[[ExportTraceServiceRequest], Awaitable[ImportResult]]

# Chunks in flight at once: enough for the store's group commit to batch them, few enough to keep
# memory bounded (a chunk is at most ReadOptions.max_spans_per_chunk spans).
MAX_IN_FLIGHT = 4
# A busy store (queue full) is waited out; this is how long one chunk may keep being refused.
_REFUSED_RETRY = RetryConfig(initial_interval=0.2, max_interval=5.0, max_elapsed_time=300.0)


@dataclass
class FileSummary:
    path: str
    format: str = ""
    spans: int = 0  # spans read from the file
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0  # spans normalization refused (invalid ids or times)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class ImportSummary:
    via: str  # "halod at http://..." or "store /path/halod.duckdb"
    files: list[FileSummary] = field(default_factory=list)
    last_ingest_seq: int = 0  # the commits of this import are at or below it (post-commit consumers)
    flush: dict[str, Any] | None = None  # what the closing flush did (traces completed, windows, trips)

    @property
    def problems(self) -> int:
        return sum(len(f.problems) for f in self.files)

    @property
    def complete(self) -> bool:
        """Every record of every file was stored (or already there)."""
        return not self.problems and not any(f.rejected for f in self.files)

    def totals(self) -> dict[str, int]:
        return {key: sum(getattr(f, key) for f in self.files) for key in ("spans", "stored", "duplicates", "rejected")}


async def import_files(
    paths: Iterable[Path],
    send: Send,
    via: str,
    format: str | None = None,
    options: ReadOptions | None = None,
    on_problem: Callable[[Problem], None] = lambda problem: None,
) -> ImportSummary:
    """Read every file and send its chunks through `send`, at most MAX_IN_FLIGHT at a time."""
    options = options or ReadOptions()
    summary = ImportSummary(via)
    in_flight: set[asyncio.Task[None]] = set()

    async def deliver(chunk: Chunk, file: FileSummary) -> None:
        try:
            result = await _send_waiting_out_refusals(send, chunk.request)
        except InvalidPayload as exc:  # the pipeline refused this chunk's data for good: the rest goes on
            problem = Problem(file.path, f"spans before byte {chunk.position}", f"not stored: {exc}")
            file.problems.append(problem)
            on_problem(problem)
            return
        file.stored += result.stored
        file.duplicates += result.duplicates
        file.rejected += result.rejected
        summary.last_ingest_seq = max(summary.last_ingest_seq, result.ingest_seq)

    for path in paths:
        file = FileSummary(str(path))
        summary.files.append(file)
        try:
            file.format = format or detect_format(path)
            for chunk in read_file(path, file.format, options):
                for problem in chunk.problems:
                    file.problems.append(problem)
                    on_problem(problem)
                if not chunk.spans:
                    continue
                file.spans += chunk.spans
                if len(in_flight) >= MAX_IN_FLIGHT:
                    done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    in_flight -= done
                    for task in done:
                        task.result()  # a failed delivery (store gone, daemon error) ends the import
                in_flight.add(asyncio.create_task(deliver(chunk, file)))
        except (OSError, ValueError) as exc:  # unreadable file, unknown format: this file only
            problem = Problem(str(path), "file", str(exc))
            file.problems.append(problem)
            on_problem(problem)
    if in_flight:
        await asyncio.gather(*in_flight)
    return summary


async def _send_waiting_out_refusals(send: Send, request: ExportTraceServiceRequest) -> ImportResult:
    backoff = Backoff(_REFUSED_RETRY)
    while True:
        try:
            return await send(request)
        except Refused as refused:
            wait = backoff.next_wait(at_least=refused.retry_after_s)
            if wait is None:
                raise
            await asyncio.sleep(wait)


# -- the two ways in ---------------------------------------------------------------------------------


def daemon_sender(client: AdminClient, pipeline: str | None) -> Send:
    """Chunks to a running daemon's POST /api/v1/import (blocking HTTP, run in a thread)."""

    async def send(request: ExportTraceServiceRequest) -> ImportResult:
        return await asyncio.to_thread(client.import_request, request.SerializeToString(), pipeline)

    return send


async def run_import(
    config: HalodConfig,
    paths: list[Path],
    format: str | None = None,
    options: ReadOptions | None = None,
    pipeline: str | None = None,
    on_problem: Callable[[Problem], None] = lambda problem: None,
    flush: bool = True,
) -> ImportSummary:
    """Import through the running daemon if one answers, else into the store file directly; then flush
    (complete the imported traces, close their windows, evaluate the triggers) unless told not to."""
    if pipeline is not None and pipeline not in config.service.pipelines:
        raise ValueError(f"no pipeline {pipeline!r} in {config.source}; it has {', '.join(config.service.pipelines)}")
    client = AdminClient.from_config(config)
    if client.is_up():
        summary = await import_files(paths, daemon_sender(client, pipeline), f"halod at {client.base_url}",
                                     format, options, on_problem)
        if flush:
            summary.flush = await asyncio.to_thread(client.flush)
        return summary

    from halod.daemon import Daemon

    daemon = Daemon(config)
    await daemon.start(serve=False)
    try:
        async def send(request: ExportTraceServiceRequest) -> ImportResult:
            return await daemon.ingest(request, pipeline)

        summary = await import_files(paths, send, f"store {config.storage.path}", format, options, on_problem)
        if flush:
            summary.flush = dataclasses.asdict(await daemon.flush())
        return summary
    finally:
        await daemon.shutdown()

