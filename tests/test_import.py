"""`halod import` and `halod replay` end to end: real files from ../shared/datasets, the real CLI,
a real store file, a real running daemon.

Expected counts are computed here from the source files directly (not with halod's readers), so a
converter that drops or invents spans fails.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import DATASETS, Daemon, run_cli

AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"
RETAIL = DATASETS / "agentrx-tau-retail" / "tau_dataset_full.json"
HALO = sorted((DATASETS / "otel-fixtures" / "halo-engine").glob("*.jsonl"))
ANY_AGENT = sorted((DATASETS / "otel-fixtures" / "any-agent").glob("*_trace.json"))

COUNTS_SQL = """
SELECT count(DISTINCT trace_id) AS traces, count(*) AS spans,
       count(*) FILTER (WHERE semantic_kind = 'LLM') AS llm,
       count(*) FILTER (WHERE semantic_kind = 'TOOL') AS tool,
       count(*) FILTER (WHERE semantic_kind = 'TOOL' AND status_code = 'ERROR') AS tool_errors,
       count(*) FILTER (WHERE parent_span_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM spans p
                        WHERE p.trace_id = s.trace_id AND p.span_id = s.parent_span_id)) AS dangling_parents
FROM spans s"""


def transcript_counts(path: Path) -> dict[str, int]:
    """Runs, assistant turns and tool calls straight from the transcript JSON."""
    runs = json.loads(path.read_text())
    assistant = [m for run in runs for m in run["traj"] if m["role"] == "assistant"]
    tool_results = [m for run in runs for m in run["traj"] if m["role"] == "tool"]
    return {
        "traces": len(runs),
        "llm": len(assistant),
        "tool": sum(len(m.get("tool_calls") or []) for m in assistant),
        "tool_errors": sum(str(m.get("content") or "").startswith("Error") for m in tool_results),
        "dangling_parents": 0,
    }


def halo_counts(paths: list[Path]) -> dict[str, int]:
    lines = [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]
    kinds = Counter(line["attributes"].get("openinference.span.kind") for line in lines)
    ids = {(line["trace_id"], line["span_id"]) for line in lines}
    return {"traces": len({line["trace_id"] for line in lines}), "spans": len(lines),
            "llm": kinds["LLM"], "tool": kinds["TOOL"],
            "dangling_parents": sum(bool(line.get("parent_span_id")) and (line["trace_id"], line["parent_span_id"])
                                    not in ids for line in lines)}


def any_agent_counts(paths: list[Path]) -> dict[str, int]:
    spans = [span for path in paths for span in json.loads(path.read_text())["spans"]]
    operations = Counter(span["attributes"].get("gen_ai.operation.name") for span in spans)
    ids = {(span["context"]["trace_id"], span["context"]["span_id"]) for span in spans}
    return {"traces": len({span["context"]["trace_id"] for span in spans}), "spans": len(spans),
            "llm": operations["call_llm"], "tool": operations["execute_tool"],
            "dangling_parents": sum((span.get("parent") or {}).get("span_id") is not None and (
                span["parent"]["trace_id"], span["parent"]["span_id"]) not in ids for span in spans)}


@pytest.fixture
def offline(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A config whose daemon is not running: the CLI opens the store file itself."""
    daemon = make_daemon(start=False)
    daemon.write_config()
    return daemon


def import_(daemon: Daemon, *args: str | Path) -> tuple[int, str, str]:
    result = daemon.cli("import", *map(str, args), timeout=300)
    return result.returncode, result.stdout, result.stderr


def counts(daemon: Daemon) -> dict[str, int]:
    row = daemon.query(COUNTS_SQL)[0]
    return {key: int(value) for key, value in row.items()}


@pytest.mark.parametrize("files, expected", [
    pytest.param([AIRLINE], transcript_counts(AIRLINE), id="tau-bench-airline"),
    pytest.param([RETAIL], transcript_counts(RETAIL), id="agentrx-tau-retail"),
    pytest.param(HALO, halo_counts(HALO), id="halo-engine-jsonl"),
    pytest.param(ANY_AGENT, any_agent_counts(ANY_AGENT), id="any-agent-sdk-dumps"),
])
def test_every_dataset_imports_with_the_counts_of_its_source(
    offline: Daemon, files: list[Path], expected: dict[str, int]
) -> None:
    code, stdout, stderr = import_(offline, *files)
    assert code == 0, stderr
    assert "problem" in stdout and "into store" in stdout
    got = counts(offline)
    for key, value in expected.items():
        assert got[key] == value, (key, got, expected)
    if files == [AIRLINE]:
        assert got["tool_errors"] == 73  # the dataset's README: 73 tool results start with "Error:"
    # parent links resolve inside their trace, except where the source itself lacks the parent


def test_importing_twice_stores_each_span_once(offline: Daemon) -> None:
    code, first, stderr = import_(offline, AIRLINE, "--json")
    assert code == 0, stderr
    code, second, stderr = import_(offline, AIRLINE, "--json")
    assert code == 0, stderr
    first_summary, second_summary = json.loads(first), json.loads(second)
    assert first_summary["stored"] == first_summary["spans"] > 0
    assert second_summary["stored"] == 0
    assert second_summary["duplicates"] == first_summary["spans"]
    assert counts(offline)["spans"] == first_summary["spans"]


def test_import_goes_through_the_running_daemon_and_keeps_message_indexes(make_daemon: Callable[..., Daemon]) -> None:
    """With a daemon up, the CLI imports through its admin API (DuckDB lets one process open the
    file). The AgentRx step labels (step_number = message index) join to the imported spans."""
    daemon = make_daemon()
    code, stdout, stderr = import_(daemon, RETAIL, "--tools", DATASETS / "agentrx-tau-retail" / "tools.json")
    assert code == 0, stderr
    assert "into halod at http://127.0.0.1" in stdout
    assert counts(daemon)["traces"] == 100

    indexes: set[tuple[str, str]] = set()
    trace_task = {r["trace_id"]: r["task"] for r in daemon.query(
        """SELECT trace_id, attributes->>'$."halod.run.task_id"' AS task FROM spans WHERE parent_span_id IS NULL""")}
    assert len(set(trace_task.values())) == 100  # every run's root carries its task id
    message_sql = """SELECT trace_id, attributes->>'$."halod.message.index"' AS message, events FROM spans"""
    for row in daemon.query(message_sql):
        task = trace_task[row["trace_id"]]
        if row["message"] is not None:
            indexes.add((task, str(row["message"])))
        for event in json.loads(row["events"] or "[]"):
            index = event["attributes"].get("halod.message.index")
            if index is not None:
                indexes.add((task, str(index)))
    labels = json.loads((DATASETS / "agentrx-tau-retail" / "tau_ground_truth.json").read_text())
    steps = [(str(label["trajectory_id"]), str(failure["step_number"]))
             for label in labels for failure in label["failures"]]
    assert len(steps) == 39
    # two labels point at runs the published dataset does not contain (task ids 104, 105)
    runs = {str(run["task_id"]) for run in json.loads(RETAIL.read_text())}
    labelled = [step for step in steps if step[0] in runs]
    assert len(labelled) == 37
    assert [step for step in labelled if step not in indexes] == []


def test_corrupt_lines_are_reported_and_the_rest_is_imported(offline: Daemon, tmp_path: Path) -> None:
    lines = HALO[0].read_text().splitlines()
    broken = [*lines[:3], '{"trace_id": "abc", "attributes": 5', *lines[3:6],
              json.dumps({**json.loads(lines[6]), "start_time": "yesterday"}), *lines[7:], lines[0][:40]]
    path = tmp_path / "broken.jsonl"
    path.write_text("\n".join(broken) + "\n")
    missing = tmp_path / "missing.jsonl"

    code, stdout, stderr = import_(offline, path, missing, "--format", "halo_jsonl")
    assert code == 2, (stdout, stderr)
    assert f"{path}:line 4:" in stderr and f"{path}:line 8:" in stderr and f"{path}:line {len(broken)}:" in stderr
    assert str(missing) in stderr
    assert counts(offline)["spans"] == len(lines) - 1  # every good line; line 7 of the source was spoiled


def test_replay_round_trip_over_otlp_json_gives_the_same_rows(
    offline: Daemon, make_daemon: Callable[..., Daemon]
) -> None:
    """Import a dataset into one store; replay the same file over OTLP/HTTP JSON into a running
    halod: every column of every span is the same (the store's own columns aside)."""
    assert import_(offline, AIRLINE)[0] == 0
    second = make_daemon(name="second")
    result = run_cli("replay", str(AIRLINE), "--endpoint", second.http_url, "--protocol", "http",
                     "--encoding", "json", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "rejected" in result.stdout

    columns = "* EXCLUDE (source, ingest_seq, ingested_ns)"
    order = "ORDER BY trace_id, span_id"
    imported = offline.query(f"SELECT {columns} FROM spans {order}")
    replayed = second.query(f"SELECT {columns} FROM spans {order}")
    assert len(imported) == counts(offline)["spans"] > 0
    assert replayed == imported


def test_replay_over_grpc_with_a_token_and_a_rate(make_daemon: Callable[..., Daemon]) -> None:
    token = "s3cret-token"
    daemon = make_daemon({"receivers": {"otlp": {"protocols": {"grpc": {"auth": {"bearer_token": token}}}}}})
    wrong = run_cli("replay", *map(str, HALO), "--endpoint", daemon.grpc_endpoint, "--token", "nope")
    assert wrong.returncode == 1 and "UNAUTHENTICATED" in wrong.stderr

    result = run_cli("replay", *map(str, HALO), "--endpoint", daemon.grpc_endpoint, "--token", token,
                     "--rate", "5000")
    assert result.returncode == 0, result.stderr
    assert counts(daemon)["spans"] == halo_counts(HALO)["spans"]
    assert token not in result.stdout + result.stderr + daemon.log()


def test_a_file_of_no_known_format_is_a_clear_error(offline: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some text\n")
    code, _, stderr = import_(offline, path, AIRLINE)
    assert code == 2
    assert str(path) in stderr
    assert counts(offline)["traces"] == transcript_counts(AIRLINE)["traces"]  # the other file was imported
