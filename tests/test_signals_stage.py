"""Signals, windows and triggers end to end: files imported through the real CLI into a real store
(or a running daemon), the analysis stage completing and evaluating the traces, SQL and metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import DATASETS, Daemon

AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"
MINUTE_NS = 60 * 10**9
START_NS = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z, on a window boundary


def agent_run(trace: int, end_ns: int, failing: bool, service: str = "shop",
              duration_ns: int = 5000) -> dict[str, Any]:
    """OTLP/JSON of one run: an AGENT root lasting `duration_ns` and a `search` TOOL call (ERROR when
    failing)."""
    trace_id = f"{trace:032x}"
    tool: dict[str, Any] = {
        "traceId": trace_id, "spanId": f"{trace:08x}00000002", "parentSpanId": f"{trace:08x}00000001",
        "name": "search", "startTimeUnixNano": str(end_ns - 2000), "endTimeUnixNano": str(end_ns - 1000),
        "attributes": [{"key": "openinference.span.kind", "value": {"stringValue": "TOOL"}},
                       {"key": "tool.name", "value": {"stringValue": "search"}},
                       {"key": "output.value", "value": {"stringValue": "Error: index offline" if failing
                                                         else "3 results"}}],
    }
    if failing:
        tool["status"] = {"code": 2, "message": "index offline"}
    root = {"traceId": trace_id, "spanId": f"{trace:08x}00000001", "name": "run",
            "startTimeUnixNano": str(end_ns - duration_ns), "endTimeUnixNano": str(end_ns),
            "attributes": [{"key": "openinference.span.kind", "value": {"stringValue": "AGENT"}},
                           {"key": "output.value", "value": {"stringValue": "done"}}]}
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name",
                                                            "value": {"stringValue": service}}]},
                               "scopeSpans": [{"spans": [root, tool]}]}]}


def stream(path: Path, failing_share: list[float], runs_per_window: int = 20) -> None:
    """One window a minute; in window w, `failing_share[w]` of the runs have a failing tool."""
    lines = []
    for window, share in enumerate(failing_share):
        for n in range(runs_per_window):
            end = START_NS + window * MINUTE_NS + (n + 1) * (MINUTE_NS // (runs_per_window + 1))
            lines.append(json.dumps(agent_run(window * 1000 + n + 1, end, n < share * runs_per_window)))
    path.write_text("\n".join(lines) + "\n")


TOOL_RULE = {"analysis": {"windows": {"size": "1m"},
                          "triggers": [{"name": "search_failing", "signal": "tool_error", "dimension": "tool",
                                        "rate_above": 0.2, "min_traces": 10}]}}


def test_a_tool_failing_mid_stream_trips_once_per_incident_and_recovers(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    shares = [0, 0, 0, 0, 0.5, 0.6, 0.5, 0.1, 0, 0, 0.5, 0.5, 0]  # two incidents, re-armed in between
    stream(tmp_path / "stream.jsonl", shares)
    daemon = make_daemon(TOOL_RULE, start=False)
    daemon.write_config()
    result = daemon.cli("import", str(tmp_path / "stream.jsonl"), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    flush = json.loads(result.stdout)["flush"]
    assert flush["traces_completed"] == 20 * len(shares)
    assert flush["windows_closed"] == len(shares)
    trips = [(trip["rule"], trip["value"], (trip["window_start_ns"] - START_NS) // MINUTE_NS)
             for trip in flush["trips"]]
    assert trips == [("search_failing", "search", 4), ("search_failing", "search", 10)]

    rates = daemon.query(f"SELECT (window_start_ns - {START_NS}) // {MINUTE_NS} AS w, rate FROM window_stats "
                         "WHERE dimension = 'tool' AND value = 'search' AND signal = 'tool_error' ORDER BY w")
    expected = {w: share for w, share in enumerate(shares) if share}
    assert {row["w"]: row["rate"] for row in rates if row["rate"]} == expected
    stored = daemon.query("SELECT rule, value, window_start_ns FROM trips ORDER BY trip_id")
    assert [(row["rule"], row["value"]) for row in stored] == [("search_failing", "search")] * 2

    # flushing again (nothing new) and importing the same file again trip nothing more
    again = daemon.cli("import", str(tmp_path / "stream.jsonl"), "--json", timeout=120)
    assert json.loads(again.stdout)["flush"]["trips"] == []


def test_imported_runs_get_signals_windows_and_metrics_and_halod_itself_is_not_counted(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = make_daemon()
    result = daemon.cli("import", str(AIRLINE), "--tools", str(DATASETS / "tau-bench-airline" / "tools.json"),
                        timeout=300)
    assert result.returncode == 0, result.stderr
    assert "flushed: 200 trace(s) completed" in result.stdout

    runs = json.loads(AIRLINE.read_text())
    failed = daemon.query("SELECT count(DISTINCT trace_id) AS n FROM signals WHERE signal = 'failed_outcome'")
    assert failed == [{"n": sum(1 for run in runs if run["reward"] == 0)}]
    tool_errors = daemon.query("SELECT count(*) AS n FROM signals WHERE signal = 'tool_error'")
    assert tool_errors == [{"n": 73}]
    # every finding points at a span of its trace (or the whole trace)
    dangling = daemon.query("SELECT count(*) AS n FROM signals s WHERE span_id IS NOT NULL AND NOT EXISTS "
                            "(SELECT 1 FROM spans p WHERE p.trace_id = s.trace_id AND p.span_id = s.span_id)")
    assert dangling == [{"n": 0}]
    traces = daemon.query("SELECT count(*) AS n, sum(tool_errors) AS tool_errors, sum(llm_calls) AS llm FROM traces")
    assert traces == [{"n": 200, "tool_errors": 73,
                       "llm": sum(1 for run in runs for m in run["traj"] if m["role"] == "assistant")}]
    overall = daemon.query("SELECT sum(traces) AS traces, sum(affected_traces) AS affected FROM window_stats "
                           "WHERE dimension = 'all' AND signal = 'failed_outcome'")
    assert overall == [{"traces": 200, "affected": 116}]
    assert daemon.metric("halod_traces_completed_total") == 200
    assert daemon.metric("halod_failure_signals_total", signal="tool_error") == 73

    trace_id = daemon.query("SELECT trace_id FROM signals WHERE signal = 'tool_error' LIMIT 1")[0]["trace_id"]
    shown = daemon.cli("signals", "--trace", trace_id)
    assert shown.returncode == 0 and "tool_error" in shown.stdout

    # halod's own telemetry is evaluated but never counted in windows (nor triggers)
    own = tmp_path / "own.jsonl"
    own.write_text("\n".join(json.dumps(agent_run(90_000 + n, START_NS + n, failing=True, service="halod"))
                             for n in range(30)) + "\n")
    before = daemon.query("SELECT sum(traces) AS n FROM window_stats WHERE dimension = 'all' AND signal = 'any'")
    assert daemon.cli("import", str(own), "--format", "otlp_json").returncode == 0
    after = daemon.query("SELECT sum(traces) AS n FROM window_stats WHERE dimension = 'all' AND signal = 'any'")
    assert after == before
    assert daemon.query("SELECT count(*) AS n FROM traces WHERE list_contains(services, 'halod')") == [{"n": 30}]
    assert daemon.query("SELECT count(*) AS n FROM signals WHERE service = 'halod'") == [{"n": 30}]


def test_outlier_baselines_are_rebuilt_from_the_store_after_a_restart(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # 60 runs of 4-6 us, imported by one embedded daemon; then a 60 us run imported by another process:
    # it is judged against the 60 stored runs (min_samples is 50), not against an empty baseline.
    daemon = make_daemon({"analysis": {"windows": {"size": "1m"}}}, start=False)
    daemon.write_config()
    usual = tmp_path / "usual.jsonl"
    usual.write_text("".join(json.dumps(agent_run(n, START_NS + n * 10**9, False, duration_ns=4000 + 33 * n)) + "\n"
                             for n in range(1, 61)))
    assert daemon.cli("import", str(usual), timeout=120).returncode == 0
    slow = tmp_path / "slow.jsonl"
    slow.write_text(json.dumps(agent_run(99, START_NS + 99 * 10**9, False, duration_ns=60_000)) + "\n")
    result = daemon.cli("import", str(slow), timeout=120)
    assert result.returncode == 0, result.stderr
    [found] = daemon.query("SELECT trace_id, details FROM signals WHERE signal = 'latency_outlier'")
    assert found["trace_id"] == f"{99:032x}"
    details = json.loads(found["details"])
    assert details["samples"] == 60 and details["value"] == 60_000 and details["baseline_quantile"] == 4000 + 33 * 60
    assert daemon.query(f"SELECT service, agent FROM traces WHERE trace_id = '{99:032x}'") == [
        {"service": "shop", "agent": ""}]
