"""Prometheus metrics of the analysis, with bounded label cardinality.

Label values that come from trace data (service, agent, tool) are admitted first come, up to
`TOP_K` distinct values per label; later values are reported as `other`, so a tenant with ten
thousand tool names cannot blow up the metrics endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from halod.analysis.assembly import Completed
from halod.analysis.windows import WindowStat

TOP_K = 50
OTHER = "other"


class LabelLimiter:
    def __init__(self, k: int = TOP_K) -> None:
        self.k = k
        self.admitted: dict[str, set[str]] = {}

    def __call__(self, label: str, value: str | None) -> str:
        if not value:
            return ""
        values = self.admitted.setdefault(label, set())
        if value in values:
            return value
        if len(values) < self.k:
            values.add(value)
            return value
        return OTHER


class AnalysisMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.limit = LabelLimiter()
        self.traces_completed = Counter(
            "halod_traces_completed", "Traces completed and evaluated, by how they completed "
            "(root_quiet, idle, evicted, flush, late, recovered).", ["completion"], registry=r)
        self.failure_signals = Counter(
            "halod_failure_signals", "Failure signals found in completed traces.",
            ["signal", "service", "agent", "tool"], registry=r)
        self.failure_rate = Gauge(
            "halod_failure_rate", "Share of traces with the signal in the last closed window "
            "(service 'all': every service).", ["signal", "service"], registry=r)
        self.trips = Counter("halod_trigger_trips", "Trigger rules tripped.", ["rule"], registry=r)
        self.open_traces = Gauge("halod_open_traces", "Traces being assembled (not complete yet).", registry=r)
        self.late_traces = Counter(
            "halod_late_traces", "Completed traces that received spans after completing (re-evaluated).",
            registry=r)
        self.failures = Counter(
            "halod_analysis_failures", "Analysis failures by step: evaluate or write (traces, each retried "
            "alone, then given up), close (a window's close, retried at the next tick).", ["step"], registry=r)
        self.truncated = Counter(
            "halod_traces_truncated", "Completed traces with more than analysis.max_trace_spans spans, evaluated "
            "on their first ones.", registry=r)
        self.abandoned = Counter(
            "halod_traces_abandoned", "Completed traces given up after repeated failures (logged with their ids; "
            "their spans stay stored).", registry=r)

    def completed(self, completed: Iterable[Completed], signals: list[dict[str, Any]], late_count: int) -> None:
        for item in completed:
            completion = "recovered" if item.trace.recovered else "late" if item.trace.late else item.reason
            self.traces_completed.labels(completion).inc()
        if late_count:
            self.late_traces.inc(late_count)
        for row in signals:
            self.failure_signals.labels(
                row["signal"], self.limit("service", row["service"]), self.limit("agent", row["agent"]),
                self.limit("tool", row["tool"])).inc()

    def window_closed(self, stats: list[WindowStat]) -> None:
        for stat in stats:
            if stat.dimension == "all":
                self.failure_rate.labels(stat.signal, "all").set(stat.rate)
            elif stat.dimension == "service":
                self.failure_rate.labels(stat.signal, self.limit("service", stat.value)).set(stat.rate)

    def tripped(self, rule: str) -> None:
        self.trips.labels(rule).inc()
