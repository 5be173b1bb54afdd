"""`latency_outlier` and `token_outlier`: a trace far above the recent traces of its service and agent.

Values, per trace:
- duration (`latency_outlier`, nanoseconds): the root span's `duration_ns`; without a root (or
  without its duration), the trace's last span end minus its first span start;
- tokens (`token_outlier`): the sum over LLM spans of `total_tokens`, else `prompt_tokens +
  completion_tokens` (either alone when only one is known); a trace with no token count on any
  LLM span has no token value and is not judged.

Group: `(service, agent)` = the root's `service_name` (else the trace's first service, else
`unknown_service`) and the root's `agent_name` (else the first non-empty `agent_name` of its spans
in start order, else ""). The baseline of a signal is `context.baselines[(signal, service, agent)]`:
the sorted recent values of that group, which the signal stage maintains with `TrailingStats` below.

Rule: with `n = len(baseline) >= min_samples` (default 50), let `p = quantile(baseline, quantile)`
(default 0.99, nearest rank: the `ceil(q * n)`-th smallest value). The trace fires when `p > 0` and
`value > factor * p` (default factor 2.0): one finding (severity `warning`) at the root (None
without a root), `details = {value, baseline_quantile, factor, samples, service, agent, unit}`.
Fewer than `min_samples` values, or a baseline of zeros: silent.

Order (the stage's contract): run `detect` first, then feed the trace's values with
`stats.add_trace(trace)` (or `add` each of `observations(trace)`), so a trace is never compared with
a baseline that already contains it. A re-evaluated (late) trace should not be added a second time.

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

from pydantic import Field

from halod.analysis.signals._outputs import column
from halod.analysis.signals.base import DetectContext, Finding
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

LATENCY = "latency_outlier"
TOKENS = "token_outlier"
UNKNOWN_SERVICE = "unknown_service"
Key = tuple[str, str, str]


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


def trace_group(trace: TraceSpans) -> tuple[str, str]:
    """(service, agent) of a trace, as the baselines are keyed."""
    root = trace.root
    service = column(root, "service_name") if root is not None else None
    if not service:
        service = trace.services[0] if trace.services else UNKNOWN_SERVICE
    agent = column(root, "agent_name") if root is not None else None
    if not agent:
        agent = next((span.agent_name for span in trace.spans if column(span, "agent_name")), "")
    return str(service), str(agent)


def trace_duration_ns(trace: TraceSpans) -> float | None:
    root = trace.root
    duration = column(root, "duration_ns") if root is not None else None
    if isinstance(duration, int) and duration >= 0:
        return float(duration)
    if not trace.spans:
        return None
    return float(max(0, trace.end_ns - trace.start_ns))


def trace_tokens(trace: TraceSpans) -> float | None:
    total = 0
    seen = False
    for span in trace.llm_spans:
        tokens = column(span, "total_tokens")
        if tokens is None:
            prompt, completion = column(span, "prompt_tokens"), column(span, "completion_tokens")
            if prompt is None and completion is None:
                continue
            tokens = (prompt or 0) + (completion or 0)
        total += tokens
        seen = True
    return float(total) if seen else None


def observations(trace: TraceSpans, latency: bool = True, tokens: bool = True) -> list[tuple[Key, float]]:
    """The (baseline key, value) pairs this trace contributes."""
    service, agent = trace_group(trace)
    values: list[tuple[Key, float]] = []
    if latency and (duration := trace_duration_ns(trace)) is not None:
        values.append(((LATENCY, service, agent), duration))
    if tokens and (count := trace_tokens(trace)) is not None:
        values.append(((TOKENS, service, agent), count))
    return values


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
