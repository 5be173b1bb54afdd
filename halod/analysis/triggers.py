"""Trigger rules: closed windows whose failure rates trip a threshold ask for an analysis.

Rule kinds (exactly one per rule), evaluated when a window closes, per value of the rule's
`dimension` (`all`, `service`, `agent`, `tool`, `model`):

- `rate_above: R` — the signal's rate in the window is above R, over at least `min_traces` traces;
- `increase_over_baseline: F` — the rate is above F times the mean rate of the previous
  `baseline_windows` closed windows (those with at least `min_traces` traces; at least half of
  them must exist) and above `min_rate`;
- `new: true` — a (signal, tool) pair never seen before appears in the window.

One incident trips once: after a trip the (rule, value) stays *active* and cannot trip again until
a closed window shows the rate at or below `hysteresis` times the threshold (it re-arms), and not
within `cooldown_windows` windows of its last trip either. State (active keys, last trips, the pairs
seen) is persisted in `analysis_state`, so a restart neither forgets an incident nor trips it again.
A trip is stored in `trips`, logged, counted (`halod_trigger_trips_total{rule}`) and published to
the stage's subscribers (the analysis engine asks for an analysis of the window concerned).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import duckdb
import orjson
from pydantic import Field, model_validator

from halod.analysis.windows import WindowStat
from halod.security import StrictModel

STATE_KEY = "triggers.state"
SEEN_KEY = "triggers.seen"


class TriggerRule(StrictModel):
    name: str | None = Field(default=None, description="Rule name in trips and metrics (default: derived).")
    signal: str = Field(default="any", description="Signal name, or `any` (a trace with any signal).")
    dimension: Literal["all", "service", "agent", "tool", "model"] = Field(
        default="all", description="Evaluate the rate overall or per service / agent / tool / model value.")
    rate_above: float | None = Field(default=None, ge=0, le=1, description="Trip when the rate exceeds this.")
    increase_over_baseline: float | None = Field(
        default=None, gt=1, description="Trip when the rate exceeds this many times its baseline.")
    new: bool = Field(default=False, description="Trip on a (signal, tool) pair never seen before.")
    min_traces: int = Field(default=20, ge=1, description="Windows (values) with fewer traces are ignored.")
    baseline_windows: int = Field(default=12, ge=1, description="Closed windows the baseline averages.")
    min_rate: float = Field(default=0.01, ge=0, description="increase_over_baseline: ignore rates below this.")
    hysteresis: float = Field(
        default=0.8, ge=0, le=1, description="An active rule re-arms once the rate is at or below this "
        "fraction of its threshold.")
    cooldown_windows: int = Field(default=0, ge=0, description="Windows after a trip during which it cannot "
                                  "trip again, even re-armed.")

    @model_validator(mode="after")
    def _one_kind(self) -> TriggerRule:
        kinds = [self.rate_above is not None, self.increase_over_baseline is not None, self.new]
        if sum(kinds) != 1:
            raise ValueError("a rule needs exactly one of rate_above, increase_over_baseline, new: true")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        kind = (f"rate_above_{self.rate_above}" if self.rate_above is not None
                else f"increase_{self.increase_over_baseline}x" if self.increase_over_baseline is not None
                else "new")
        return f"{self.signal}:{kind}" + (f":by_{self.dimension}" if self.dimension != "all" else "")


# The embedded defaults: a high overall failure rate, a doubling of any signal per service, a new
# failing tool. Each can be replaced in `analysis.triggers`.
DEFAULT_RULES: list[dict[str, Any]] = [
    {"signal": "any", "rate_above": 0.5, "min_traces": 20},
    {"signal": "tool_error", "dimension": "tool", "rate_above": 0.2, "min_traces": 10},
    {"signal": "any", "dimension": "service", "increase_over_baseline": 2.0, "baseline_windows": 12},
    {"signal": "any", "new": True},
]


@dataclass(frozen=True)
class TripEvent:
    trip_id: int
    rule: str
    signal: str
    dimension: str
    value: str
    window_start_ns: int
    window_end_ns: int
    observed: float
    threshold: float
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Triggers:
    def __init__(self, rules: list[TriggerRule]) -> None:
        self.rules = rules
        self.state: dict[str, dict[str, Any]] = {}  # "rule|value" -> {"active": bool, "last_trip": window}
        self.seen: set[str] = set()  # "signal|tool" pairs

    def state_reader(self, con: duckdb.DuckDBPyConnection) -> tuple[str | None, str | None]:
        rows = dict(con.execute("SELECT key, value FROM analysis_state WHERE key IN (?, ?)",
                                [STATE_KEY, SEEN_KEY]).fetchall())
        return rows.get(STATE_KEY), rows.get(SEEN_KEY)

    def load(self, saved: tuple[str | None, str | None]) -> None:
        state, seen = saved
        self.state = orjson.loads(state) if state else {}
        self.seen = set(orjson.loads(seen)) if seen else set()

    def snapshot(self) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """A copy of the in-memory state, to `restore` when the transaction `evaluate` ran in fails."""
        return {key: dict(entry) for key, entry in self.state.items()}, set(self.seen)

    def restore(self, snapshot: tuple[dict[str, dict[str, Any]], set[str]]) -> None:
        self.state, self.seen = snapshot

    def evaluate(self, con: duckdb.DuckDBPyConnection, window: int, size_ns: int, stats: list[WindowStat],
                 excluded: list[str], now_ns: int) -> list[TripEvent]:
        """Run every rule on a closed window (inside the writer's transaction); store and return trips."""
        pending: list[tuple[TriggerRule, str, str, float, float, str]] = []
        for rule in self.rules:
            if rule.new:
                pending += self._new_pairs(con, rule, window, excluded)
                continue
            rates = {(s.value, s.signal): s.rate for s in stats if s.dimension == rule.dimension}
            totals = {s.value: s.traces for s in stats if s.dimension == rule.dimension}
            for value, traces in sorted(totals.items()):
                if traces < rule.min_traces:
                    continue
                # no row for the signal: no trace in this value of the dimension had it
                stat = WindowStat(window, window + size_ns, rule.dimension, value, rule.signal, traces, 0,
                                  rates.get((value, rule.signal), 0.0))
                threshold = rule.rate_above
                if rule.increase_over_baseline is not None:
                    baseline = self._baseline(con, rule, stat, window, size_ns)
                    if baseline is None:
                        continue
                    threshold = max(rule.increase_over_baseline * baseline, rule.min_rate)
                assert threshold is not None
                key = f"{rule.label}|{stat.value}"
                entry = self.state.setdefault(key, {"active": False, "last_trip": None})
                if stat.rate > threshold:
                    cooling = (entry["last_trip"] is not None
                               and window - entry["last_trip"] <= rule.cooldown_windows * size_ns)
                    if not entry["active"] and not cooling:
                        entry.update(active=True, last_trip=window)
                        pending.append((rule, stat.signal, stat.value, stat.rate, threshold,
                                        f"rate {stat.rate:.3f} over {stat.traces} traces > {threshold:.3f}"))
                elif stat.rate <= threshold * rule.hysteresis:
                    entry["active"] = False
        trips = []
        if pending:
            next_id = int(con.execute("SELECT coalesce(max(trip_id), 0) FROM trips").fetchall()[0][0]) + 1
            for offset, (rule, signal, value, observed, threshold, reason) in enumerate(pending):
                trip = TripEvent(next_id + offset, rule.label, signal, rule.dimension, value, window,
                                 window + size_ns, observed, threshold, reason)
                con.execute("INSERT INTO trips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [trip.trip_id, trip.rule, trip.signal, trip.dimension, trip.value, window,
                             window + size_ns, observed, threshold, reason, now_ns])
                trips.append(trip)
        con.execute("INSERT OR REPLACE INTO analysis_state VALUES (?, ?, ?), (?, ?, ?)",
                    [STATE_KEY, orjson.dumps(self.state).decode(), now_ns,
                     SEEN_KEY, orjson.dumps(sorted(self.seen)).decode(), now_ns])
        return trips

    def _new_pairs(self, con: duckdb.DuckDBPyConnection, rule: TriggerRule, window: int,
                   excluded: list[str]) -> list[tuple[TriggerRule, str, str, float, float, str]]:
        rows = con.execute(
            "SELECT DISTINCT signal, coalesce(tool, '') FROM signals WHERE window_start_ns = ? "
            "AND (? = 'any' OR signal = ?) AND NOT list_contains(?::VARCHAR[], coalesce(service, ''))",
            [window, rule.signal, rule.signal, excluded]).fetchall()
        found = []
        for signal, tool in sorted(rows):
            pair = f"{signal}|{tool}"
            if pair not in self.seen:
                self.seen.add(pair)
                value = f"{signal}/{tool}" if tool else signal
                found.append((rule, signal, value, 1.0, 0.0, f"first {signal} signal" + (f" on tool {tool}" if tool
                                                                                             else "")))
        return found

    @staticmethod
    def _baseline(con: duckdb.DuckDBPyConnection, rule: TriggerRule, stat: WindowStat, window: int,
                  size_ns: int) -> float | None:
        rows = con.execute(
            "SELECT rate FROM window_stats WHERE dimension = ? AND value = ? AND signal = ? AND closed "
            "AND traces >= ? AND window_start_ns < ? AND window_start_ns >= ?",
            [stat.dimension, stat.value, stat.signal, rule.min_traces, window,
             window - rule.baseline_windows * size_ns]).fetchall()
        if len(rows) < max(1, rule.baseline_windows // 2):
            return None
        return sum(float(row[0]) for row in rows) / len(rows)
