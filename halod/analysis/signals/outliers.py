"""`latency_outlier` and `token_outlier`: a trace far above the recent traces of its service and agent.

Values, per trace (the `duration_ns` and `total_tokens` of its row in the `traces` table):
- duration (`latency_outlier`, nanoseconds): the root span's `duration_ns`; without a root (or
  without its duration), the trace's last span end minus its first span start;
- tokens (`token_outlier`): the sum over LLM spans of `total_tokens`, else `prompt_tokens +
  completion_tokens` (either alone when only one is known); a trace with no token count on any
  LLM span has no token value and is not judged.

Group: `(service, agent)` (the `service` and `agent` of the trace's row) = the root's `service_name`
(else the trace's first service, else `unknown_service`) and the root's `agent_name` (else the first
non-empty `agent_name` of its spans in start order, else ""). The baseline of a signal is
`context.baselines[(signal, service, agent)]`: the sorted recent values of that group, which the
signal stage maintains with `TrailingStats` below.

Rule: with `n = len(baseline) >= min_samples` (default 50), let `p = quantile(baseline, quantile)`
(default 0.99, nearest rank: the `ceil(q * n)`-th smallest value). The trace fires when `p > 0` and
`value > factor * p` (default factor 2.0): one finding (severity `warning`) at the root (None
without a root), `details = {value, baseline_quantile, factor, samples, service, agent, unit}`.
Fewer than `min_samples` values, or a baseline of zeros: silent.

Order (the stage's contract): run `detect` first, then feed the trace's values with
`stats.add_trace(trace)` (or `add` each of `observations(trace)`), so a trace is never compared with
a baseline that already contains it. A re-evaluated (late) trace should not be added a second time.
At start the stage rebuilds the baselines from the stored traces (`history_reader`: the last
`window` traces of each group, at most 200,000 in all, oldest first), so a restart, even after
kill -9, keeps them.

`TrailingStats(window=1000, max_keys=10000)` keeps, per key, the last `window` values (a FIFO) and
the same values sorted (insert and evict by bisection, O(window) per add at worst); at most
`max_keys` keys, the least recently added-to key evicted first. `stats.baselines` is the live
`{key: sorted values}` mapping to pass as `DetectContext.baselines` (read-only: do not mutate it, and
do not add while detectors read it); `snapshot()` returns a copy; `quantile(key, q)` reads one.

Knobs: `enabled`, `latency`, `tokens`, `factor`, `quantile`, `min_samples`, `window`, `max_keys`
(the last two size the stage's `TrailingStats`: `Detector(config).new_stats()`).

Example: 60 earlier traces of service "shop", agent "support" took 1 to 2 s each (p99 = 2 s); a
trace of that group whose root span lasts 10 s -> one `latency_outlier` at its root with
`details["value"] == 10_000_000_000` and `details["baseline_quantile"] == 2_000_000_000`.
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque
from collections.abc import Callable

import duckdb
from pydantic import Field

from halod.analysis.features import UNKNOWN_SERVICE, trace_duration_ns, trace_group, trace_tokens
from halod.analysis.signals.base import DetectContext, Finding
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

LATENCY = "latency_outlier"
TOKENS = "token_outlier"
Key = tuple[str, str, str]
Row = tuple[str, str, int | None, int | None]


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    latency: bool = Field(default=True, description="Emit latency_outlier.")
    tokens: bool = Field(default=True, description="Emit token_outlier.")
    factor: float = Field(default=2.0, gt=0, description="Fire above factor x the baseline quantile.")
    quantile: float = Field(default=0.99, gt=0, le=1, description="Baseline quantile (0.99: trailing p99).")
    min_samples: int = Field(default=50, ge=1, description="Baseline values needed before firing.")
    window: int = Field(default=1000, ge=1, description="Recent values kept per (signal, service, agent).")
    max_keys: int = Field(default=10_000, ge=1, description="Groups kept; the least recently updated is evicted.")


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of a non-empty sorted list."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, max(0, math.ceil(q * n) - 1))]


def observations(trace: TraceSpans, latency: bool = True, tokens: bool = True) -> list[tuple[Key, float]]:
    """The (baseline key, value) pairs this trace contributes."""
    service, agent = trace_group(trace)
    return observed(service, agent, trace_duration_ns(trace), trace_tokens(trace), latency, tokens)


def observed(service: str, agent: str, duration_ns: int | None, token_count: int | None, latency: bool = True,
             tokens: bool = True) -> list[tuple[Key, float]]:
    """The (baseline key, value) pairs of a trace's group and values (as the `traces` table stores them)."""
    values: list[tuple[Key, float]] = []
    if latency and duration_ns is not None:
        values.append(((LATENCY, service, agent), float(duration_ns)))
    if tokens and token_count is not None:
        values.append(((TOKENS, service, agent), float(token_count)))
    return values


HISTORY_LIMIT = 200_000
"""The most stored traces a restart rebuilds baselines from (the most recent ones)."""


def history_reader(window: int, limit: int = HISTORY_LIMIT) -> Callable[[duckdb.DuckDBPyConnection], list[Row]]:
    """Reads the stored traces that rebuild the baselines at start: the last `window` of each group (by
    end time, at most `limit` in all), oldest first, as (service, agent, duration_ns, total_tokens).
    Rows from before schema 5 have no group: it is read from their service and agent lists."""
    def read(con: duckdb.DuckDBPyConnection) -> list[Row]:
        return con.execute(
            "SELECT service, agent, duration_ns, total_tokens FROM ("
            "  SELECT coalesce(service, services[1], ?) AS service, coalesce(agent, agent_names[1], '') AS agent,"
            "         duration_ns, total_tokens, end_ns FROM traces"
            "  QUALIFY row_number() OVER (PARTITION BY 1, 2 ORDER BY end_ns DESC) <= ?"
            "  ORDER BY end_ns DESC LIMIT ?"
            ") ORDER BY end_ns", [UNKNOWN_SERVICE, window, limit]).fetchall()
    return read


class TrailingStats:
    """The last `window` values of each key, kept sorted, for at most `max_keys` keys (LRU)."""

    def __init__(self, window: int = 1000, max_keys: int = 10_000) -> None:
        if window < 1 or max_keys < 1:
            raise ValueError("window and max_keys must be at least 1")
        self.window = window
        self.max_keys = max_keys
        self._recent: OrderedDict[Key, deque[float]] = OrderedDict()
        self._sorted: dict[Key, list[float]] = {}
        self.evicted = 0

    def add(self, key: Key, value: float) -> None:
        """Record one value (NaN and infinities are ignored)."""
        if not math.isfinite(value):
            return
        recent = self._recent.get(key)
        if recent is None:
            if len(self._recent) >= self.max_keys:
                oldest, _ = self._recent.popitem(last=False)
                del self._sorted[oldest]
                self.evicted += 1
            recent = self._recent[key] = deque()
            self._sorted[key] = []
        else:
            self._recent.move_to_end(key)
        ordered = self._sorted[key]
        if len(recent) >= self.window:
            old = recent.popleft()
            del ordered[bisect.bisect_left(ordered, old)]
        recent.append(value)
        bisect.insort(ordered, value)

    def add_trace(self, trace: TraceSpans, latency: bool = True, tokens: bool = True) -> None:
        for key, value in observations(trace, latency, tokens):
            self.add(key, value)

    @property
    def baselines(self) -> dict[Key, list[float]]:
        """The live sorted values per key: pass as `DetectContext.baselines`; never mutate."""
        return self._sorted

    def snapshot(self) -> dict[Key, list[float]]:
        return {key: list(values) for key, values in self._sorted.items()}

    def quantile(self, key: Key, q: float = 0.99) -> float | None:
        values = self._sorted.get(key)
        return quantile(values, q) if values else None

    def __len__(self) -> int:
        return len(self._sorted)


class Detector:
    name = LATENCY
    names = (LATENCY, TOKENS)

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()

    def new_stats(self) -> TrailingStats:
        """The `TrailingStats` this configuration asks for (the stage owns it)."""
        return TrailingStats(self.config.window, self.config.max_keys)

    def observations(self, trace: TraceSpans) -> list[tuple[Key, float]]:
        return observations(trace, self.config.latency, self.config.tokens)

    def history(self, rows: list[Row]) -> list[tuple[Key, float]]:
        """The observations of stored traces (`history_reader`), to rebuild the baselines at start."""
        config = self.config
        return [pair for row in rows for pair in observed(*row, latency=config.latency, tokens=config.tokens)]

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        config = self.config
        if not config.enabled or not context.baselines:
            return []
        findings = []
        for (signal, service, agent), value in self.observations(trace):
            baseline = context.baselines.get((signal, service, agent))
            if not baseline or len(baseline) < config.min_samples:
                continue
            threshold = quantile(baseline, config.quantile)
            if threshold > 0 and value > config.factor * threshold:
                findings.append(Finding.at(
                    signal, "warning", trace.root, value=value, baseline_quantile=threshold, factor=config.factor,
                    samples=len(baseline), service=service, agent=agent,
                    unit="ns" if signal == LATENCY else "tokens",
                ))
        return findings
