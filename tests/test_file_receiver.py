"""The `file` receiver in a real daemon: tailing, new files, whole documents, restarts and kill -9.

Each file's position is committed in the same transaction as its spans, so the strongest check is
the store's duplicate counter: after restarts (even kill -9) nothing is read twice, and nothing is
skipped (the counts equal the source lines).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import DATASETS, Daemon

HALO_LINES = [line for path in sorted((DATASETS / "otel-fixtures" / "halo-engine").glob("*.jsonl"))
              for line in path.read_text().splitlines() if line.strip()]
AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"


def file_daemon(make_daemon: Callable[..., Daemon], folder: Path, start: bool = True, **settings: Any) -> Daemon:
    receiver = {"include": [str(folder / "**" / "*")], "poll_interval": "100ms", "settle_time": "200ms", **settings}
    return make_daemon({"receivers": {"file": receiver},
                        "service": {"pipelines": {"traces": {"receivers": ["otlp", "file"]}}}}, start=start)


def span_count(daemon: Daemon) -> int:
    return int(daemon.query("SELECT count(*) AS n FROM spans")[0]["n"])


def wait_for_spans(daemon: Daemon, expected: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = span_count(daemon)
        if count == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} spans stored, expected {expected}\n{daemon.log()[-3000:]}")


def append(path: Path, lines: list[str], newline: bool = True) -> None:
    with path.open("a") as file:
        file.write("\n".join(lines) + ("\n" if newline else ""))


def test_appended_lines_and_new_files_are_picked_up(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    log = folder / "agent.jsonl"
    append(log, HALO_LINES[:20])
    daemon = file_daemon(make_daemon, folder)
    wait_for_spans(daemon, 20)

    # a line cut in the middle is not read until its end arrives
    half = len(HALO_LINES[20]) // 2
    append(log, [HALO_LINES[20][:half]], newline=False)
    time.sleep(0.5)
    assert span_count(daemon) == 20
    append(log, [HALO_LINES[20][half:], *HALO_LINES[21:40]])
    wait_for_spans(daemon, 40)

    nested = folder / "2026" / "11"
    nested.mkdir(parents=True)
    append(nested / "more.jsonl", HALO_LINES[40:])
    wait_for_spans(daemon, len(HALO_LINES))
    assert daemon.metric("halod_store_duplicate_spans_total") == 0
    assert daemon.metric("halod_receiver_accepted_spans_total", receiver="file", transport="pull") == len(HALO_LINES)


def test_a_bad_line_is_reported_and_skipped(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    append(folder / "agent.jsonl", [*HALO_LINES[:5], "{not json", *HALO_LINES[5:10]])
    daemon = file_daemon(make_daemon, folder, format="halo_jsonl")
    wait_for_spans(daemon, 10)
    assert daemon.metric("halod_receiver_bad_records_total", receiver="file") == 1
    assert "agent.jsonl:line 6" in daemon.log()


def test_positions_survive_restarts_and_kill9(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    log = folder / "agent.jsonl"
    append(log, HALO_LINES[:30])
    daemon = file_daemon(make_daemon, folder)
    wait_for_spans(daemon, 30)
    assert daemon.stop() == 0

    append(log, HALO_LINES[30:50])  # written while halod is down
    daemon.start()
    wait_for_spans(daemon, 50)
    assert daemon.metric("halod_store_duplicate_spans_total") == 0  # the first 30 were not read again

    # a whole transcript dataset, killed while it is being read: resumes after the last committed chunk
    shutil.copy(AIRLINE, folder / "airline.json")
    deadline = time.monotonic() + 30
    while span_count(daemon) == 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.kill9()
    daemon.start()
    runs = json.loads(AIRLINE.read_text())  # one AGENT span per run, an LLM span per turn, a TOOL span per call
    airline_spans = sum(1 + sum(1 + len(m.get("tool_calls") or []) for m in run["traj"] if m["role"] == "assistant")
                        for run in runs)
    wait_for_spans(daemon, 50 + airline_spans, timeout=120)
    assert daemon.metric("halod_store_duplicate_spans_total") == 0


def test_start_at_end_reads_only_what_is_appended(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    folder = tmp_path / "traces"
    folder.mkdir()
    log = folder / "agent.jsonl"
    append(log, HALO_LINES[:10])
    daemon = file_daemon(make_daemon, folder, start_at="end")
    time.sleep(0.5)
    append(log, HALO_LINES[10:15])
    wait_for_spans(daemon, 5)
    stored = {row["span_id"] for row in daemon.query("SELECT attributes->>'$.\"halod.original.span_id\"' AS span_id "
                                                      "FROM spans")}
    assert stored == {json.loads(line)["span_id"] for line in HALO_LINES[10:15]}
