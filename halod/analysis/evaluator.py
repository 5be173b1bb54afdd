"""Evaluation of completed traces: features and every enabled detector. Pure computation.

It runs in a worker process (`analysis.evaluator: process`, the default): detectors cost tens of
microseconds a span in Python, and in the daemon's process they would share the GIL with the event
loop and the store writer, slowing ingestion (docs/benchmarks.md). The stage sends each batch of
completed traces as Arrow IPC bytes and gets plain rows back; the outlier baselines live in the
worker, rebuilt at start from the stored traces. `thread` keeps it in the daemon's process (no
extra process; for small deployments).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from halod.analysis.config import AnalysisConfig
from halod.analysis.features import features
from halod.analysis.signals import DetectContext, Detector, Finding, build_detectors, outliers
from halod.analysis.trace import TraceSpans

# (trace id, completion, evaluated before) of each trace in a batch
Item = tuple[str, str, bool]


@dataclass
class Evaluated:
    traces: list[dict[str, Any]] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)
    reevaluated: list[str] = field(default_factory=list)  # evaluated before: their old signal rows go
    errors: list[str] = field(default_factory=list)  # detector failures, for the daemon's log


class Evaluator:
    """Evaluates batches of completed traces. `history`: the stored traces the outlier baselines are
    rebuilt from at start (`outliers.history_reader`, oldest first)."""

    def __init__(self, config: AnalysisConfig, history: list[outliers.Row] | None = None) -> None:
        self.detectors: list[Detector] = build_detectors(config.signals)
        self.size_ns = int(config.windows.size * 1e9)
        self.context = DetectContext()
        # The outlier detector learns from the traces it sees: trailing statistics, fed after detection.
        self.outliers = next((d for d in self.detectors if isinstance(d, outliers.Detector)), None)
        self.trailing = self.outliers.new_stats() if self.outliers is not None else None
        if self.outliers is not None and self.trailing is not None:
            for key, value in self.outliers.history(history or []):
                self.trailing.add(key, value)
            self.context.baselines = self.trailing.baselines

    def evaluate(self, table: pa.Table, items: list[Item]) -> Evaluated:
        views = {view.trace_id: view for view in TraceSpans.from_table(table)}
        out = Evaluated()
        now_ns = time.time_ns()
        for trace_id, completion, again in items:
            view = views.get(trace_id)
            if view is None:  # its spans are gone (retention dropped them meanwhile): nothing to evaluate
                continue
            if again:
                out.reevaluated.append(trace_id)
            findings: list[Finding] = []
            for detector in self.detectors:
                try:
                    findings += detector.detect(view, self.context)
                except Exception as exc:  # one detector's bug costs its findings on this trace only
                    out.errors.append(f"detector {detector.name} failed on trace {trace_id}: {exc!r}")
            if self.outliers is not None and self.trailing is not None and not again:
                # after detection (a trace is compared with the others, not itself), and once per trace
                for key, value in self.outliers.observations(view):
                    self.trailing.add(key, value)
            row = features(view, self.size_ns, [f.signal for f in findings], completion, now_ns)
            out.traces.append(row)
            services: list[str | None] = [*view.services, None]
            agents: list[str | None] = [*row["agent_names"], None]
            for finding in findings:
                span = view.by_id.get(finding.span_id) if finding.span_id else view.root
                out.signals.append({
                    "trace_id": trace_id, "span_id": finding.span_id, "signal": finding.signal,
                    "severity": finding.severity, "tool": finding.tool,
                    "details": orjson.dumps(finding.details, default=str).decode(),
                    "service": (span.service_name if span is not None else None) or services[0],
                    "agent": (span.agent_name if span is not None else None) or agents[0],
                    "window_start_ns": row["window_start_ns"], "detected_ns": now_ns,
                })
        return out


# -- the worker process -----------------------------------------------------------------------------

_worker: Evaluator | None = None


def init_worker(config_json: str, parent_pid: int, history: list[outliers.Row]) -> None:
    global _worker
    _worker = Evaluator(AnalysisConfig.model_validate_json(config_json), history)
    # A batch allocates hundreds of thousands of small objects, nearly all freed by reference counting:
    # automatic collections while it runs cost ~20% (measured). The worker collects after each batch.
    gc.disable()
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="halod-evaluator-watch", daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    """A daemon killed with SIGKILL cannot stop its worker, and the worker would not notice (it holds
    its own copy of the task queue's pipe): it watches its parent and leaves with it."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def evaluate_ipc(ipc: bytes, items: list[Item]) -> Evaluated:
    """In the worker: one batch, as Arrow IPC stream bytes."""
    assert _worker is not None, "init_worker did not run"
    with pa.ipc.open_stream(ipc) as reader:
        table = reader.read_all()
    try:
        return _worker.evaluate(table, items)
    finally:
        del table
        gc.collect()


def to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
