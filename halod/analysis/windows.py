"""Tumbling windows by trace end time, and their statistics (the `window_stats` table).

A window holds the traces whose end time falls in [start, start + size). It closes when the
watermark (the latest trace end seen, minus `allowed_lateness`) passes its end, when no trace
completed for `idle_close` (imported history, quiet periods), or on flush. A trace evaluated after
its window closed (a late span) recomputes that window's statistics; it does not re-run triggers.

Statistics are computed in SQL from the `traces` and `signals` tables, so they are always exactly
what those tables hold (a re-evaluated trace is counted once): per dimension (`all`, `service`,
`agent`, `tool`, `model`) and value, per signal plus `any`, the traces, the traces affected and the
rate. For the `tool` dimension a trace counts as affected by a signal only when a finding names
that tool. Traces of excluded services (halod itself) are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

STATS_SQL = """
WITH t AS (
    SELECT trace_id, services, agent_names, models, tools FROM traces
    WHERE window_start_ns = $start AND NOT list_has_any(services, $excluded::VARCHAR[])
),
s AS (
    SELECT DISTINCT s.trace_id, s.signal, s.tool FROM signals s SEMI JOIN t USING (trace_id)
    WHERE s.window_start_ns = $start
),
dims AS (
    SELECT trace_id, 'all' AS dimension, 'all' AS value FROM t
    UNION ALL SELECT trace_id, 'service', unnest(services) FROM t
    UNION ALL SELECT trace_id, 'agent', unnest(agent_names) FROM t
    UNION ALL SELECT trace_id, 'model', unnest(models) FROM t
    UNION ALL SELECT trace_id, 'tool', unnest(tools) FROM t
),
totals AS (SELECT dimension, value, count(DISTINCT trace_id) AS traces FROM dims GROUP BY ALL),
hits AS (
    SELECT d.dimension, d.value, s.signal, count(DISTINCT d.trace_id) AS affected
    FROM dims d JOIN s ON s.trace_id = d.trace_id AND (d.dimension <> 'tool' OR s.tool = d.value)
    GROUP BY ALL
    UNION ALL
    SELECT d.dimension, d.value, 'any', count(DISTINCT d.trace_id)
    FROM dims d JOIN s ON s.trace_id = d.trace_id AND (d.dimension <> 'tool' OR s.tool = d.value)
    GROUP BY ALL
)
SELECT $start, $end, totals.dimension, totals.value, coalesce(hits.signal, 'any'), totals.traces,
       coalesce(hits.affected, 0), coalesce(hits.affected, 0) / totals.traces, $closed, $now
FROM totals LEFT JOIN hits USING (dimension, value)
"""


@dataclass
class WindowStat:
    start_ns: int
    end_ns: int
    dimension: str
    value: str
    signal: str
    traces: int
    affected: int
    rate: float


def write_stats(con: duckdb.DuckDBPyConnection, start_ns: int, size_ns: int, excluded: list[str], closed: bool,
                now_ns: int) -> list[WindowStat]:
    """Recompute one window's rows of `window_stats` (in the caller's transaction); returns them."""
    con.execute("DELETE FROM window_stats WHERE window_start_ns = ?", [start_ns])
    params: dict[str, Any] = {"start": start_ns, "end": start_ns + size_ns, "excluded": excluded,
                              "closed": closed, "now": now_ns}
    con.execute("INSERT INTO window_stats " + STATS_SQL, params)
    rows = con.execute(
        "SELECT window_start_ns, window_end_ns, dimension, value, signal, traces, affected_traces, rate "
        "FROM window_stats WHERE window_start_ns = ?", [start_ns]).fetchall()
    return [WindowStat(*row) for row in rows]


class WindowClock:
    """Which windows are open and when they close (event time, with an idle fallback)."""

    def __init__(self, size_ns: int, lateness_ns: int, idle_close_s: float) -> None:
        self.size_ns = size_ns
        self.lateness_ns = lateness_ns
        self.idle_close_s = idle_close_s
        self.open: set[int] = set()
        self.closed: set[int] = set()
        self.watermark_ns = 0
        self.last_completion = 0.0

    def window_of(self, end_ns: int) -> int:
        return end_ns // self.size_ns * self.size_ns

    def observe(self, window_start: int, end_ns: int, now: float) -> bool:
        """A trace completed in this window; True when the window had already closed (late)."""
        self.last_completion = now
        self.watermark_ns = max(self.watermark_ns, end_ns - self.lateness_ns)
        if window_start in self.closed:
            return True
        self.open.add(window_start)
        return False

    def closing(self, now: float, everything: bool = False) -> list[int]:
        """Windows to close now, oldest first (all open ones when `everything` or idle)."""
        idle = self.open and now - self.last_completion >= self.idle_close_s
        due = sorted(w for w in self.open if everything or idle or w + self.size_ns <= self.watermark_ns)
        for window in due:
            self.open.discard(window)
            self.closed.add(window)
        return due

    def reopen(self, windows: list[int]) -> None:
        """Windows handed out by `closing` that could not be closed: they close at a later call."""
        for window in windows:
            self.closed.discard(window)
            self.open.add(window)
