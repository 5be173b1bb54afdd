"""The daemon: the store, the pipeline graph and the admin listener, with their lifecycle.

Start order: store (open + migrate) -> admin listener (health answers at once; ready only at the
end) -> extensions -> exporters -> analysis (post-commit: assembly, signals, windows, triggers) ->
processors -> receivers. Shutdown is the reverse: receivers stop
taking requests and finish the ones in flight (each awaiting its commit), the store commits what is
queued and closes, exporters drain their queues, and the admin listener goes last.

Signals: the first SIGINT/SIGTERM starts a graceful drain bounded by `service.shutdown_timeout`
(exit 0 when it completes in time, 1 otherwise); a second one forces an immediate exit (code 130).
Nothing acknowledged is lost either way: acknowledged spans are already in DuckDB's WAL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
import time
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod import __version__, otlp
from halod.admin import AdminServer, error_response, json_response
from halod.analysis.stage import AnalysisStage, FlushResult
from halod.components import StartError
from halod.config import HalodConfig
from halod.model import ImportResult, InvalidPayload, Refused
from halod.normalize import normalize_request
from halod.pipeline import Graph, build_graph
from halod.store import SpanStore
from halod.telemetry import Telemetry

# Largest body of one POST /api/v1/import (the CLI sends chunks of a few MB).
MAX_IMPORT_BODY = 64 * 2**20


class Daemon:
    """One running halod. ``start()`` / ``shutdown()`` follow the component lifecycle contract."""

    def __init__(self, config: HalodConfig, telemetry: Telemetry | None = None) -> None:
        self.config = config
        self.telemetry = telemetry or Telemetry()
        self.store = SpanStore(config.storage, self.telemetry)
        self.graph: Graph = build_graph(config, self.store, self.telemetry)
        self.admin = AdminServer(config.service.telemetry.metrics, self.telemetry, self.store, self.status)
        self.admin.add_readiness_check(self._not_ready_reasons)
        self.admin.add_route("POST", "/api/v1/import", self._api_import)
        self.admin.add_route("POST", "/api/v1/flush", self._api_flush)
        self.analysis = AnalysisStage(config.analysis, self.store, self.telemetry) if config.analysis.enabled else None
        self._started: list[Any] = []
        self._ready = False
        self._started_at = time.time()
        self._shutdown_done = False
        self.stopping: str | None = None  # the component whose shutdown is under way (named if the drain times out)

    # Host interface offered to components --------------------------------------------------------

    def admission_check(self) -> None:
        self.store.admission_check()

    async def source_cursor(self, source: str) -> str | None:
        return await asyncio.to_thread(self.store.source_cursor, source)

    async def ingest(self, request: ExportTraceServiceRequest, pipeline: str | None = None,
                     source: str = "import") -> ImportResult:
        """Normalize `request` and send it down `pipeline`'s acknowledgement path (its processors, then
        the store), as a receiver would: the path of `halod import` (admin API or embedded). The
        default pipeline is `traces`, else the first one in the config."""
        pipeline = pipeline or ("traces" if "traces" in self.graph.entries else next(iter(self.graph.entries)))
        entry = self.graph.entries.get(pipeline)
        if entry is None:
            raise InvalidPayload(f"no pipeline {pipeline!r}; the config has {', '.join(self.graph.entries)}",
                                 reason="unknown_pipeline")
        batch = normalize_request(request, source)
        result = await entry.consume(batch)
        return ImportResult(result.ingest_seq, result.stored, result.duplicates, batch.rejected,
                            batch.rejection_reason)

    async def _api_import(self, request: web.Request) -> web.Response:
        """POST /api/v1/import?pipeline=P&source=S, body: one OTLP protobuf ExportTraceServiceRequest."""
        pipeline = request.query.get("pipeline")
        source = request.query.get("source", "import")
        body = bytearray()
        async for chunk in request.content.iter_chunked(2**16):
            body += chunk
            if len(body) > MAX_IMPORT_BODY:
                return error_response(413, f"an import request may carry at most {MAX_IMPORT_BODY} bytes; "
                                           "send smaller chunks")
        try:
            result = await self.ingest(otlp.decode_protobuf(bytes(body)), pipeline, source)
        except InvalidPayload as exc:
            return error_response(400, str(exc))
        except Refused as exc:
            response = error_response(503, str(exc))
            response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
            return response
        return json_response(dataclasses.asdict(result))

    async def flush(self) -> FlushResult:
        """Complete every open trace, close every window, evaluate the triggers (no-op without analysis)."""
        return await self.analysis.flush() if self.analysis is not None else FlushResult()

    async def _api_flush(self, request: web.Request) -> web.Response:
        return json_response(dataclasses.asdict(await self.flush()))

    # Lifecycle -------------------------------------------------------------------------------------

    async def start(self, serve: bool = True) -> None:
        """Open the store and start the components. `serve` False is the embedded mode of the CLI's
        import (and later batch analysis): no admin listener and no receivers, so it binds no port
        and takes spans only through `ingest`; everything after the store runs as in the daemon."""
        log = self.telemetry.log
        log.info("halod starting", version=__version__, config=self.config.source, pid=os.getpid())
        for warning in self.config.warnings:
            log.warning("config warning", warning=warning)
        try:
            await asyncio.to_thread(self.store.open)
            if serve:
                await self.admin.start()
            self.store.subscribe(self.graph.route)
            components: list[tuple[str, Any]] = [
                *((f"extension {cid}", ext) for cid, ext in self.graph.extensions),
                *((f"exporter {cid}", runner.exporter) for cid, runner in self.graph.exporters.items()),
                *((("analysis", self.analysis),) if self.analysis is not None else ()),
                *((f"processor {pid}", proc) for pid, proc in self.graph.processors),
                *((f"receiver {cid}", rec) for cid, rec in self.graph.receivers if serve),
            ]
            for name, component in components:
                await component.start(self)
                self._started.append((name, component))
            for runner in self.graph.exporters.values():
                runner.queue.start()
        except BaseException:
            await self.shutdown()
            raise
        self._ready = True
        log.info("halod ready", pipelines=list(self.config.service.pipelines),
                 receivers=[str(cid) for cid, _ in self.graph.receivers], store=str(self.config.storage.path))

    async def shutdown(self) -> None:
        """Drain and stop everything that started, in reverse order. Safe twice and without start()."""
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._ready = False
        log = self.telemetry.log
        log.info("halod shutting down")
        exporters = {id(runner.exporter) for runner in self.graph.exporters.values()}
        for name, component in reversed(self._started):
            if id(component) in exporters:
                continue  # exporters stop after the store has delivered its last commit events
            await self._stop(name, component)
        self.stopping = "store"
        await asyncio.to_thread(self.store.close)
        for cid, runner in self.graph.exporters.items():
            self.stopping = f"exporter {cid} queue"
            await runner.queue.shutdown(self.config.service.shutdown_timeout)
        for name, component in reversed(self._started):
            if id(component) in exporters:
                await self._stop(name, component)
        self._started.clear()
        self.stopping = "admin"
        await self.admin.shutdown()
        self.stopping = None
        log.info("halod stopped")

    async def _stop(self, name: str, component: Any) -> None:
        self.stopping = name
        try:
            await component.shutdown()
        except Exception as exc:
            self.telemetry.log.error("component shutdown failed", component=name, error=repr(exc))
        self.stopping = None

    # Status ----------------------------------------------------------------------------------------

    def _not_ready_reasons(self) -> list[str]:
        reasons = []
        if not self._ready:
            reasons.append("starting or shutting down")
        if not self.store.is_open:
            reasons.append("store is not open")
        for cid, receiver in self.graph.receivers:
            listening = getattr(receiver, "is_listening", None)
            if listening is not None and not listening():
                reasons.append(f"receiver {cid} is not listening")
        return reasons

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "pid": os.getpid(),
            "config": self.config.source,
            "store": str(self.config.storage.path.resolve()),
            "started_at": self._started_at,
            "ready": not self._not_ready_reasons(),
            "pipelines": {
                name: {"receivers": p.receivers, "processors": p.processors, "exporters": p.exporters}
                for name, p in self.config.service.pipelines.items()
            },
        }


# The store's writer thread and the event loop (decode + normalize) share the GIL. With Python's
# default 5 ms switch interval the loop waits up to 5 ms each time the writer holds the GIL between
# DuckDB calls; 0.5 ms measured +12-20% acknowledged spans/s on 2 vCPUs (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0005


async def run_daemon(config: HalodConfig) -> int:
    """Run until the first SIGINT/SIGTERM, drain, and return the exit code."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            daemon.telemetry.log.info("signal received; draining (send it again to force exit)",
                                      signal=signal.Signals(signum).name,
                                      timeout_s=config.service.shutdown_timeout)
            stop.set()
        else:
            daemon.telemetry.log.warning("second signal; forcing exit", signal=signal.Signals(signum).name)
            os._exit(130)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await daemon.start()
    except StartError as exc:
        daemon.telemetry.log.error("startup failed", error=str(exc))
        return 1
    except Exception as exc:  # a locked or unreadable database, a bad TLS file, ...
        daemon.telemetry.log.error("startup failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    await stop.wait()
    try:
        await asyncio.wait_for(daemon.shutdown(), config.service.shutdown_timeout)
    except TimeoutError:
        daemon.telemetry.log.error("drain did not finish in time; exiting", timeout_s=config.service.shutdown_timeout,
                                   stopping=daemon.stopping)
        return 1
    return 0
