"""halod's own telemetry: Prometheus metrics and structured logs, emitted as one event per call.

Every method of `Telemetry` updates the metric and writes the log line together, so a number on a
dashboard always has a log line that explains it. Metric names are shared by every component of a
kind (`halod_receiver_accepted_spans_total{receiver="otlp/edge", transport="grpc"}`), after the
Collector's `otelcol_receiver_accepted_spans`.

Log lines on hot paths (refusals under overload) are rate-limited per (event, component, reason):
at most one a second, carrying the count suppressed since the previous one.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from halod import __version__

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(level: str = "info", encoding: str = "auto") -> None:
    """JSON lines on stderr; human-readable when stderr is a terminal (encoding=auto) or asked for."""
    console = encoding == "console" or (encoding == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class Telemetry:
    """Metrics registry + logger of one daemon (a fresh registry each, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.log = structlog.get_logger("halod")
        r = self.registry
        Info("halod_build", "halod build information", registry=r).info({"version": __version__})
        self.accepted_spans = Counter(
            "halod_receiver_accepted_spans", "Spans a receiver got committed to the store (new or redelivered).",
            ["receiver", "transport"], registry=r,
        )
        self.refused_spans = Counter(
            "halod_receiver_refused_spans", "Spans a receiver refused, by reason.",
            ["receiver", "transport", "reason"], registry=r,
        )
        self.refused_requests = Counter(
            "halod_receiver_refused_requests",
            "Requests refused whole (malformed, unauthenticated, queue full, ...), by reason.",
            ["receiver", "transport", "reason"], registry=r,
        )
        self.store_committed_spans = Counter(
            "halod_store_committed_spans", "New spans written to the store.", registry=r
        )
        self.store_duplicate_spans = Counter(
            "halod_store_duplicate_spans", "Spans the store already had (client retries, re-imports).", registry=r
        )
        self.store_write_errors = Counter(
            "halod_store_write_errors", "Failed store transactions (every request in them was refused).", registry=r
        )
        self.store_write_duration = Histogram(
            "halod_store_write_duration_seconds", "Duration of one group commit to DuckDB.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.store_batch_spans = Histogram(
            "halod_store_commit_spans", "Spans per group commit.",
            buckets=(1, 10, 100, 512, 1024, 2048, 4096, 8192, 16384, 65536), registry=r,
        )
        self.store_queue_size = Gauge("halod_store_queue_size", "Requests waiting for a commit.", registry=r)
        self.store_queue_capacity = Gauge(
            "halod_store_queue_capacity", "Requests that may wait for a commit.", registry=r
        )
        self.store_queue_bytes = Gauge("halod_store_queue_bytes", "Decoded bytes waiting for a commit.", registry=r)
        self.store_queue_capacity_bytes = Gauge(
            "halod_store_queue_capacity_bytes", "Decoded bytes that may wait for a commit.", registry=r
        )
        self.retention_dropped_spans = Counter(
            "halod_store_retention_dropped_spans", "Spans dropped by retention, by reason (age, size).",
            ["reason"], registry=r,
        )
        self.exporter_queue_size = Gauge(
            "halod_exporter_queue_size", "Commit events waiting for an exporter.", ["exporter"], registry=r
        )
        self.exporter_dropped_events = Counter(
            "halod_exporter_dropped_events",
            "Commit events an exporter's full queue dropped (the spans stay in the store).", ["exporter"], registry=r,
        )
        self.exporter_failed_events = Counter(
            "halod_exporter_failed_events", "Commit events an exporter failed to handle.", ["exporter"], registry=r
        )
        self.processor_failures = Counter(
            "halod_processor_failures", "Batches a processor failed on (the request was refused).",
            ["processor"], registry=r,
        )
        self.pull_errors = Counter(
            "halod_receiver_pull_errors", "Failed fetches of a pulling receiver (each retried).",
            ["receiver"], registry=r,
        )
        self.bad_records_total = Counter(
            "halod_receiver_bad_records",
            "Records a receiver or import could not convert (skipped; the rest was kept).", ["receiver"], registry=r,
        )
        self._last_logged: dict[tuple[str, ...], tuple[float, int]] = {}

    # -- events -----------------------------------------------------------------------------------

    def accepted(self, receiver: str, transport: str, spans: int) -> None:
        self.accepted_spans.labels(receiver, transport).inc(spans)

    def refused(self, receiver: str, transport: str, reason: str, message: str, spans: int | None = None) -> None:
        """A request (or part of it) was refused; `spans` is None when the count is unknown (undecodable)."""
        self.refused_requests.labels(receiver, transport, reason).inc()
        if spans:
            self.refused_spans.labels(receiver, transport, reason).inc(spans)
        self._limited(
            "warning", ("refused", receiver, transport, reason), "request refused",
            receiver=receiver, transport=transport, reason=reason, spans=spans, error=message,
        )

    def rejected_spans(self, receiver: str, transport: str, reason: str, message: str, spans: int) -> None:
        """Some spans of an otherwise stored request were rejected (OTLP partial success)."""
        self.refused_spans.labels(receiver, transport, reason).inc(spans)
        self._limited(
            "warning", ("rejected", receiver, transport, reason), "spans rejected",
            receiver=receiver, transport=transport, reason=reason, spans=spans, error=message,
        )

    def committed(self, stored: int, duplicates: int, seconds: float) -> None:
        self.store_committed_spans.inc(stored)
        self.store_duplicate_spans.inc(duplicates)
        self.store_write_duration.observe(seconds)
        self.store_batch_spans.observe(stored + duplicates)

    def store_write_failed(self, error: BaseException, requests: int) -> None:
        self.store_write_errors.inc()
        self._limited("error", ("store_write_failed",), "store write failed; requests refused",
                      requests=requests, error=str(error))

    def retention_dropped(self, reason: str, spans: int, cutoff_ns: int) -> None:
        self.retention_dropped_spans.labels(reason).inc(spans)
        self.log.info("retention dropped spans", reason=reason, spans=spans, cutoff_ns=cutoff_ns)

    def exporter_dropped(self, exporter: str, ingest_seq: int) -> None:
        self.exporter_dropped_events.labels(exporter).inc()
        self._limited("warning", ("exporter_dropped", exporter), "exporter queue full; commit event dropped "
                      "(spans remain in the store)", exporter=exporter, ingest_seq=ingest_seq)

    def exporter_failed(self, exporter: str, error: BaseException) -> None:
        self.exporter_failed_events.labels(exporter).inc()
        self._limited("error", ("exporter_failed", exporter), "exporter failed on a commit event",
                      exporter=exporter, error=repr(error))

    def processor_failed(self, processor: str, error: BaseException) -> None:
        self.processor_failures.labels(processor).inc()
        self._limited("error", ("processor_failed", processor), "processor failed; request refused",
                      processor=processor, error=repr(error))

    def pull_failed(self, receiver: str, error: BaseException, attempt: int) -> None:
        self.pull_errors.labels(receiver).inc()
        self._limited("warning", ("pull_failed", receiver), "fetch failed; retrying", receiver=receiver,
                      attempt=attempt, error=str(error) or repr(error))

    def bad_records(self, receiver: str, problems: list[str]) -> None:
        """`problems`: one line per skipped record, naming it (file and line, record, ...) and the fault."""
        self.bad_records_total.labels(receiver).inc(len(problems))
        for problem in problems[:5]:
            self._limited("warning", ("bad_record", receiver), "record skipped", receiver=receiver, problem=problem)

    def _limited(self, level: str, key: tuple[str, ...], message: str, **fields: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._last_logged.get(key, (0.0, 0))
        if now - last < 1.0:
            self._last_logged[key] = (last, suppressed + 1)
            return
        self._last_logged[key] = (now, 0)
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        getattr(self.log, level)(message, **fields)
