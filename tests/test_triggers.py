"""Trigger rules on a real DuckDB with halod's schema: first-seen pairs, jumps over the baseline,
hysteresis and cooldown, and state surviving a restart (the stream test is in test_signals_stage)."""

from __future__ import annotations

import duckdb
import pytest

from halod.analysis.triggers import TriggerRule, Triggers
from halod.analysis.windows import write_stats
from halod.store.schema import migrate

SIZE = 60 * 10**9


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    migrate(connection)
    return connection


def window(con: duckdb.DuckDBPyConnection, w: int, traces: int, failing: int, signal: str = "tool_error",
           tool: str = "search", service: str = "shop") -> int:
    """Window w with `traces` traces of `service`, `failing` of them with `signal` on `tool`; its stats."""
    start = w * SIZE
    for n in range(traces):
        trace_id = f"{w:04d}{n:028d}"
        con.execute("INSERT INTO traces (trace_id, services, agent_names, models, tools, window_start_ns) "
                    "VALUES (?, [?], [], [], [?], ?)", [trace_id, service, tool, start])
        if n < failing:
            con.execute("INSERT INTO signals (trace_id, signal, tool, service, window_start_ns) VALUES (?, ?, ?, ?, ?)",
                        [trace_id, signal, tool, service, start])
    return start


def close(con: duckdb.DuckDBPyConnection, triggers: Triggers, w: int, traces: int, failing: int,
          **kwargs: str) -> list[str]:
    start = window(con, w, traces, failing, **kwargs)
    stats = write_stats(con, start, SIZE, ["halod"], True, 0)
    return [f"{trip.rule}:{trip.value}" for trip in triggers.evaluate(con, start, SIZE, stats, ["halod"], 0)]


def test_a_pair_never_seen_before_trips_once_and_halod_itself_never(con: duckdb.DuckDBPyConnection) -> None:
    triggers = Triggers([TriggerRule(name="new", new=True)])
    assert close(con, triggers, 0, 10, 2) == ["new:tool_error/search"]
    assert close(con, triggers, 1, 10, 5) == []  # seen already
    assert close(con, triggers, 2, 10, 1, tool="book") == ["new:tool_error/book"]
    assert close(con, triggers, 3, 10, 3, tool="cancel", service="halod") == []  # halod's own telemetry


def test_a_jump_over_the_baseline_trips_once_per_incident(con: duckdb.DuckDBPyConnection) -> None:
    rule = TriggerRule(name="jump", signal="tool_error", increase_over_baseline=2.0, baseline_windows=4,
                       min_traces=10)
    triggers = Triggers([rule])
    shares = [2, 2, 2, 2, 2, 6, 7, 2, 2, 2, 2, 2, 6]
    trips = [close(con, triggers, w, 20, failing) for w, failing in enumerate(shares)]
    # 10% baseline: 30% trips; still 35% next window (active: no new trip); back to 10% re-arms it, and
    # once the incident has left the 4-window baseline, 30% trips again
    assert trips == [[], [], [], [], [], ["jump:all"], [], [], [], [], [], [], ["jump:all"]]


def test_hysteresis_cooldown_and_a_restart_keep_one_incident_one_trip(con: duckdb.DuckDBPyConnection) -> None:
    rule = TriggerRule(name="high", signal="tool_error", rate_above=0.3, min_traces=10, cooldown_windows=4)
    triggers = Triggers([rule])
    assert close(con, triggers, 0, 10, 5) == ["high:all"]
    assert close(con, triggers, 1, 10, 3) == []  # 0.3 is not <= 0.8 * 0.3: still the same incident
    restarted = Triggers([rule])
    restarted.load(restarted.state_reader(con))
    assert close(con, restarted, 2, 10, 6) == []  # the restart remembers the active incident
    assert close(con, restarted, 3, 10, 0) == []  # re-armed...
    assert close(con, restarted, 4, 10, 6) == []  # ...but within the cooldown of the trip at window 0
    assert close(con, restarted, 5, 10, 0) == []
    assert close(con, restarted, 6, 10, 6) == ["high:all"]
    assert close(con, restarted, 7, 5, 5) == []  # too few traces to judge
    assert con.execute("SELECT count(*) FROM trips").fetchall() == [(2,)]
