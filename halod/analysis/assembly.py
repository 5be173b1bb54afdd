"""Trace assembly: which traces are complete (after the Collector's groupbytrace processor).

A trace is complete when its root span has arrived (OTLP exports a span when it ends, so an arrived
root has ended) and no new span arrived for `wait_duration`, or when no span arrived for `max_idle`
even without a root. At most `max_open_traces` are open; adding one more completes the oldest early
(`evicted`). Flush completes them all.

Only commit events feed it, and they carry only spans that were new to the store, so a redelivered
span never reopens a trace. A span of a trace completed earlier (its id is among the
`recent_completed` remembered) reopens it as *late*: the whole trace is evaluated again.

Memory: an open trace is a few numbers (arrival times, the range of `ingest_seq` its spans came in,
whether its root arrived); its spans stay in the store, which the stage reads them back from when
the trace completes (the `ingest_seq` range keeps that read to the recent row groups).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from halod.analysis.config import AssemblyConfig


@dataclass(slots=True)
class OpenTrace:
    trace_id: str
    first_arrival: float
    last_arrival: float
    first_seq: int
    last_seq: int
    has_root: bool = False
    late: bool = False  # completed before: its earlier spans are outside [first_seq, last_seq]
    recovered: bool = False  # rebuilt from the store at start: perhaps evaluated before the stop
    spans: int = 0
    attempts: int = 0  # failed evaluations or writes so far (the stage retries, then gives up)


@dataclass
class Completed:
    trace: OpenTrace
    reason: str  # root_quiet, idle, evicted, flush, recovered


class Assembler:
    """Open traces by id. ``add`` (per commit event) and ``due`` (per tick) run on one thread: the
    event loop. See the module docstring for the rules."""

    def __init__(self, config: AssemblyConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.open: OrderedDict[str, OpenTrace] = OrderedDict()  # by first arrival
        self.recent: OrderedDict[str, None] = OrderedDict()  # completed trace ids, bounded
        self.last_seq = 0
        self.evicted: list[Completed] = []  # completed early on overflow, handed out by the next `due`

    def add(self, table: pa.Table, ingest_seq: int) -> None:
        now = self.clock()
        self.last_seq = max(self.last_seq, ingest_seq)
        trace_ids = table.column("trace_id").to_pylist()
        parents = table.column("parent_span_id").to_pylist()
        rows: dict[str, list[int]] = {}
        for index, trace_id in enumerate(trace_ids):
            rows.setdefault(trace_id, []).append(index)
        for trace_id, indexes in rows.items():
            trace = self.open.get(trace_id)
            if trace is None:
                trace = OpenTrace(trace_id, now, now, ingest_seq, ingest_seq, late=trace_id in self.recent)
                self.open[trace_id] = trace
                if len(self.open) > self.config.max_open_traces:
                    _, oldest = self.open.popitem(last=False)
                    self._forget(oldest)
                    self.evicted.append(Completed(oldest, "evicted"))
            trace.last_arrival = now
            trace.first_seq = min(trace.first_seq, ingest_seq)
            trace.last_seq = max(trace.last_seq, ingest_seq)
            trace.spans += len(indexes)
            trace.has_root = trace.has_root or any(not parents[i] for i in indexes)

    def recover(self, traces: list[tuple[str, int, int, bool, int]]) -> None:
        """Reopen traces found in the store at start: (trace id, first seq, last seq, has root, spans).
        They are marked `recovered`: some may have been evaluated before the stop."""
        now = self.clock()
        for trace_id, first_seq, last_seq, has_root, spans in traces:
            self.open[trace_id] = OpenTrace(trace_id, now, now, first_seq, last_seq, has_root, recovered=True,
                                            spans=spans)
            self.last_seq = max(self.last_seq, last_seq)

    def due(self) -> list[Completed]:
        """Pop the traces complete by now (and those evicted since the last call)."""
        now = self.clock()
        done, self.evicted = self.evicted, []
        wait, idle = self.config.wait_duration, self.config.max_idle
        for trace_id in [t.trace_id for t in self.open.values()
                         if (now - t.last_arrival >= wait and t.has_root) or now - t.last_arrival >= idle]:
            trace = self.open.pop(trace_id)
            self._forget(trace)
            done.append(Completed(trace, "root_quiet" if trace.has_root else "idle"))
        return done

    def flush(self, reason: str = "flush") -> list[Completed]:
        done, self.evicted = self.evicted, []
        for trace in self.open.values():
            self._forget(trace)
            done.append(Completed(trace, reason))
        self.open.clear()
        return done

    def cursor(self) -> int:
        """The ingest_seq at or below which every span belongs to a trace already completed: where a
        restart re-reads the store from (the spans of traces still open are all after it)."""
        if not self.open:
            return self.last_seq
        return min(trace.first_seq for trace in self.open.values()) - 1

    def _forget(self, trace: OpenTrace) -> None:
        """Remember the id as completed (bounded), so a later span of it is known as late."""
        if not self.config.recent_completed:
            return
        self.recent[trace.trace_id] = None
        self.recent.move_to_end(trace.trace_id)
        while len(self.recent) > self.config.recent_completed:
            self.recent.popitem(last=False)
