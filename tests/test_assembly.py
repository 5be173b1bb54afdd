"""Trace assembly: the completion rules on their own (a controlled clock), then in a real daemon:
late spans, restart recovery and kill -9, all through OTLP/HTTP and the real store."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod.analysis.assembly import Assembler
from halod.analysis.config import AssemblyConfig
from halod.model import SPAN_SCHEMA
from tests.conftest import Daemon


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spans(*rows: tuple[str, str, str | None]) -> pa.Table:
    """(trace, span, parent) rows with every other column null."""
    columns: dict[str, Any] = {name: [None] * len(rows) for name in SPAN_SCHEMA.names}
    columns["trace_id"] = [r[0] for r in rows]
    columns["span_id"] = [r[1] for r in rows]
    columns["parent_span_id"] = [r[2] for r in rows]
    return pa.table(columns, schema=SPAN_SCHEMA)


def assembler(**settings: Any) -> tuple[Assembler, Clock]:
    clock = Clock()
    config = AssemblyConfig.model_validate({"wait_duration": 10, "max_idle": 120, **settings})
    return Assembler(config, clock), clock


def test_a_trace_completes_wait_duration_after_its_last_span_once_the_root_is_in() -> None:
    asm, clock = assembler()
    asm.add(spans(("t1", "c1", "r1"), ("t1", "c2", "r1")), 1)  # children first: out of order
    clock.now += 30
    assert asm.due() == []  # no root yet, not idle for max_idle
    asm.add(spans(("t1", "r1", None)), 2)
    clock.now += 9.9
    assert asm.due() == []
    clock.now += 0.2
    [done] = asm.due()
    assert (done.trace.trace_id, done.reason, done.trace.spans) == ("t1", "root_quiet", 3)
    assert (done.trace.first_seq, done.trace.last_seq) == (1, 2)  # where the stage reads its spans back


def test_a_trace_without_root_completes_after_max_idle() -> None:
    asm, clock = assembler()
    asm.add(spans(("t1", "c1", "missing")), 1)
    clock.now += 119
    assert asm.due() == []
    asm.add(spans(("t1", "c2", "missing")), 2)  # a new span restarts the idle clock
    clock.now += 119
    assert asm.due() == []
    clock.now += 1
    [done] = asm.due()
    assert (done.reason, done.trace.spans, done.trace.has_root) == ("idle", 2, False)


def test_the_oldest_open_trace_is_completed_early_when_full() -> None:
    asm, _ = assembler(max_open_traces=2)
    for n in range(3):
        asm.add(spans((f"t{n}", "s", None)), n + 1)
    [evicted] = asm.due()
    assert (evicted.trace.trace_id, evicted.reason) == ("t0", "evicted")
    assert list(asm.open) == ["t1", "t2"]


def test_a_span_after_completion_reopens_the_trace_as_late_and_the_cursor_follows_open_traces() -> None:
    asm, clock = assembler()
    asm.add(spans(("t1", "r", None)), 5)
    asm.add(spans(("t2", "r", None)), 6)
    assert asm.cursor() == 4  # t1 still open: a restart must re-read from seq 5
    clock.now += 11
    assert {c.trace.trace_id for c in asm.due()} == {"t1", "t2"}
    assert asm.cursor() == 6
    asm.add(spans(("t1", "late", "r")), 7)
    assert asm.open["t1"].late and asm.cursor() == 6
    assert [c.reason for c in asm.flush()] == ["flush"]


# ------------------------------------------------------------------------------------------- in a daemon


def request(trace: int, span_ids: list[int], root: int | None, end_ns: int | None = None) -> bytes:
    end = end_ns or time.time_ns()
    req = ExportTraceServiceRequest()
    resource_spans = req.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "assembly-test"
    scope = resource_spans.scope_spans.add()
    for span_id in span_ids:
        span = scope.spans.add(trace_id=trace.to_bytes(16, "big"), span_id=span_id.to_bytes(8, "big"),
                               name=f"span-{span_id}", start_time_unix_nano=end - 1000, end_time_unix_nano=end)
        if span_id != root:
            span.parent_span_id = (root or 999).to_bytes(8, "big")
    return req.SerializeToString()


def post(daemon: Daemon, body: bytes) -> None:
    http = urllib.request.Request(daemon.http_url, data=body, headers={"Content-Type": "application/x-protobuf"})
    with urllib.request.urlopen(http, timeout=10) as response:
        assert response.status == 200


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def evaluation_workers(pid: int) -> list[int]:
    """The evaluation worker processes of the daemon `pid` (multiprocessing's spawned children, not
    its resource tracker)."""
    return [child for child in children(pid)
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def trace_row(daemon: Daemon, trace: int) -> dict[str, Any] | None:
    rows = daemon.query(f"SELECT span_count, evaluations, completion FROM traces WHERE trace_id = '{trace:032x}'")
    return rows[0] if rows else None


FAST = {"analysis": {"assembly": {"wait_duration": "300ms", "max_idle": "2s", "tick": "100ms"}}}


def test_late_spans_reevaluate_their_trace_and_restarts_lose_nothing(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(FAST)
    post(daemon, request(1, [10, 11, 12], root=10))
    wait_for(lambda: trace_row(daemon, 1) is not None, "trace 1 to complete")
    assert trace_row(daemon, 1) == {"span_count": 3, "evaluations": 1, "completion": "root_quiet"}

    post(daemon, request(1, [13], root=10))  # after completion: late
    wait_for(lambda: (trace_row(daemon, 1) or {}).get("evaluations") == 2, "trace 1 re-evaluated")
    assert trace_row(daemon, 1) == {"span_count": 4, "evaluations": 2, "completion": "late"}
    assert daemon.metric("halod_late_traces_total") == 1

    # a trace open at shutdown (no root yet) is recovered at the next start and completes whole
    post(daemon, request(2, [20, 21], root=None))
    assert daemon.stop() == 0
    daemon.start()
    post(daemon, request(2, [22], root=22))
    wait_for(lambda: trace_row(daemon, 2) is not None, "trace 2 to complete after the restart")
    assert (trace_row(daemon, 2) or {})["span_count"] == 3

    # kill -9 after completions: nothing evaluated twice into duplicate rows, and the evaluator process
    # does not outlive the daemon
    post(daemon, request(3, [30, 31], root=30))
    wait_for(lambda: trace_row(daemon, 3) is not None, "trace 3 to complete")
    assert daemon.proc is not None
    workers = children(daemon.proc.pid)
    assert workers, "the evaluator runs in a child process"
    daemon.kill9()
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "the evaluator to exit", 10)
    daemon.start()
    wait_for(lambda: daemon.metric("halod_open_traces") == 0, "recovered traces to complete", timeout=10)
    time.sleep(0.5)
    counts = daemon.query("SELECT count(*) AS n, count(DISTINCT trace_id) AS distinct_n FROM traces")[0]
    assert counts == {"n": 3, "distinct_n": 3}
    spans_total = daemon.query("SELECT sum(span_count) AS n FROM traces")[0]["n"]
    assert spans_total == daemon.query("SELECT count(*) AS n FROM spans")[0]["n"] == 4 + 3 + 2


def test_a_dead_evaluation_worker_is_replaced_and_its_traces_are_evaluated(
    make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon(FAST)
    post(daemon, request(1, [10, 11], root=10))
    wait_for(lambda: trace_row(daemon, 1) is not None, "trace 1 to complete")
    assert daemon.proc is not None
    [worker] = evaluation_workers(daemon.proc.pid)
    os.kill(worker, signal.SIGKILL)  # e.g. the kernel's OOM killer
    post(daemon, request(2, [20, 21, 22], root=20))
    wait_for(lambda: trace_row(daemon, 2) is not None, "trace 2 to be evaluated by a new worker")
    assert trace_row(daemon, 2) == {"span_count": 3, "evaluations": 1, "completion": "root_quiet"}
    assert evaluation_workers(daemon.proc.pid) not in ([], [worker])
    assert "evaluation worker exited" in daemon.log()
    assert daemon.metric("halod_analysis_failures_total") >= 1
    assert daemon.metric("halod_traces_abandoned_total") == 0


def test_a_trace_above_max_trace_spans_is_evaluated_on_its_first_spans(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon({"analysis": {**FAST["analysis"], "max_trace_spans": 5}})
    post(daemon, request(1, list(range(10, 18)), root=10))  # 8 spans
    post(daemon, request(2, [20, 21, 22], root=20))
    wait_for(lambda: trace_row(daemon, 1) is not None and trace_row(daemon, 2) is not None, "both traces")
    assert (trace_row(daemon, 1) or {})["span_count"] == 5
    assert (trace_row(daemon, 2) or {})["span_count"] == 3
    assert daemon.query(f"SELECT count(*) AS n FROM spans WHERE trace_id = '{1:032x}'") == [{"n": 8}]  # all stored
    assert daemon.metric("halod_traces_truncated_total") == 1
    assert f"{1:032x}" in daemon.log()
