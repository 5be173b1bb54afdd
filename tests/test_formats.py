"""halod.formats: every trace file format read into OTLP requests, checked on the real datasets.

Expectations (numbers of traces, spans, LLM / TOOL / ERROR spans, typed column values) are computed
here straight from the source JSON with rules written out in this file, never with the converter's
code; every chunk goes through the real `halod.normalize.normalize_request`.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod import otlp
from halod.formats import (
    FORMATS,
    LINE_FORMATS,
    Chunk,
    FormatError,
    Problem,
    ReadOptions,
    detect_format,
    read_file,
    read_lines,
)
from halod.formats import ids as format_ids
from halod.normalize import normalize_request
from tests.conftest import DATASETS, FIXTURES

AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"
RETAIL = DATASETS / "agentrx-tau-retail" / "tau_dataset_full.json"
RETAIL_LABELS = DATASETS / "agentrx-tau-retail" / "tau_ground_truth.json"
ANY_AGENT = sorted((FIXTURES / "any-agent").glob("*_trace.json"))
HALO = sorted((FIXTURES / "halo-engine").glob("*.jsonl"))
TRANSCRIPTS = [AIRLINE, RETAIL]
ALL_FILES = [*TRANSCRIPTS, *ANY_AGENT, *HALO]
EXPECTED_FORMAT = {**{p: "transcript" for p in TRANSCRIPTS}, **{p: "sdk_spans" for p in ANY_AGENT},
                   **{p: "halo_jsonl" for p in HALO}}

Row = dict[str, Any]


# ------------------------------------------------------------------------------------------ helpers


def tools_for(path: Path) -> list[dict[str, Any]] | None:
    tools = path.parent / "tools.json"
    return json.loads(tools.read_text()) if tools.exists() else None


def rows_of(chunks: Iterable[Chunk]) -> tuple[list[Row], list[Problem], list[Chunk]]:
    """Normalized rows of every chunk (attributes/events decoded), the problems, and the chunks."""
    rows: list[Row] = []
    problems: list[Problem] = []
    kept: list[Chunk] = []
    for chunk in chunks:
        batch = normalize_request(chunk.request, "import")
        assert batch.rejected == 0, batch.rejection_reason
        assert batch.num_spans == chunk.spans
        for row in batch.spans.to_pylist():
            row["attrs"] = json.loads(row["attributes"])
            row["event_list"] = json.loads(row["events"]) if row["events"] else []
            rows.append(row)
        problems += chunk.problems
        kept.append(chunk)
    return rows, problems, kept


@functools.cache
def converted(path: Path) -> tuple[list[Row], list[Problem]]:
    rows, problems, _ = rows_of(read_file(path, options=ReadOptions(tools=tools_for(path))))
    return rows, problems


def comparable(rows: Iterable[Row]) -> list[tuple[Any, ...]]:
    """Rows as sorted tuples of their stored columns (for equality between two reads)."""
    return sorted(tuple(v for k, v in row.items() if k not in ("attrs", "event_list")) for row in rows)


def kinds(rows: Iterable[Row]) -> Counter[str]:
    return Counter(row["semantic_kind"] for row in rows)


def write_lines(path: Path, lines: Iterable[bytes]) -> Path:
    path.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
    return path


def file_lines(path: Path, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """What a tailing receiver feeds read_lines: (offset after the line, line bytes)."""
    data = path.read_bytes()
    position = start
    for line in data[start:].splitlines(keepends=True):
        position += len(line)
        yield position, line


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# ------------------------------------------------------------------------------ expectations from the raw files


def transcript_expectations(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts computed from the raw runs: one trace per run, one LLM span per assistant message, one TOOL
    span per tool call plus one per tool result that answers no call. In these datasets the results of an
    assistant message's k calls are the k messages right after it, in call order (their tool_call_id says
    so): that is the join used here. `calls` maps (run index, message index, call position) to (tool
    name, arguments, result content)."""
    llm = tools = answered = errors = results = 0
    calls: dict[tuple[int, int, int], tuple[str, str, str | None]] = {}
    for run, record in enumerate(records):
        traj = record["traj"]
        for position, message in enumerate(traj):
            if message["role"] == "tool":
                results += 1
                errors += (message["content"] or "").startswith("Error")
            if message["role"] != "assistant":
                continue
            llm += 1
            for number, call in enumerate(message.get("tool_calls") or []):
                tools += 1
                after = traj[position + 1 + number] if position + 1 + number < len(traj) else {}
                result = after.get("content") if after.get("tool_call_id") == call["id"] else None
                answered += after.get("tool_call_id") == call["id"]
                index = message.get("index", position)  # AgentRx numbers its messages from 1
                calls[(run, index, number)] = (call["function"]["name"], call["function"]["arguments"], result)
    orphans = results - answered
    return {"traces": len(records), "llm": llm, "tool": tools + orphans, "errors": errors,
            "spans": len(records) + llm + tools + orphans, "calls": calls}


def test_transcript_counts_match_the_raw_runs() -> None:
    for path in TRANSCRIPTS:
        records = json.loads(path.read_text())
        expected = transcript_expectations(records)
        rows, problems = converted(path)
        assert problems == []
        assert len({row["trace_id"] for row in rows}) == expected["traces"]
        assert len(rows) == expected["spans"]
        assert kinds(rows) == {"AGENT": expected["traces"], "LLM": expected["llm"], "TOOL": expected["tool"]}
        error_tools = [row for row in rows if row["semantic_kind"] == "TOOL" and row["status_code"] == "ERROR"]
        assert len(error_tools) == expected["errors"]
        assert all(row["status_message"].startswith("Error") for row in error_tools)
        # Typed columns of every TOOL span, joined back to the raw call by run, message and call position.
        run_of = {row["trace_id"]: row["attrs"]["halod.run.index"] for row in rows if row["semantic_kind"] == "AGENT"}
        by_call = {(run_of[row["trace_id"]], row["attrs"]["halod.tool_call.message_index"],
                    row["attrs"]["halod.tool_call.position"]): row for row in rows if row["semantic_kind"] == "TOOL"}
        assert len(by_call) == len(expected["calls"])
        for key, (name, arguments, result) in expected["calls"].items():
            row = by_call[key]
            # (an empty result, as the think tool returns, is stored as NULL: normalize's rule for "")
            assert (row["tool_name"], row["tool_arguments"], row["output_text"]) == (name, arguments, result or None)
        assert all(row["output_text"] for row in rows if row["semantic_kind"] == "LLM")
        assert all(row["session_id"] and row["agent_name"] for row in rows)
        assert all(row["attrs"]["halod.synthetic_time"] is True for row in rows)
    assert transcript_expectations(json.loads(AIRLINE.read_text()))["errors"] == 73  # the dataset README's number


def test_transcript_runs_roots_and_outcomes() -> None:
    records = json.loads(AIRLINE.read_text())
    rows, _ = converted(AIRLINE)
    roots = sorted((row for row in rows if row["semantic_kind"] == "AGENT"),
                   key=lambda row: row["attrs"]["halod.run.index"])
    assert [root["attrs"]["halod.run.index"] for root in roots] == list(range(len(records)))
    step = ReadOptions().transcript_step_ns
    clock = ReadOptions().transcript_start_ns
    for record, root in zip(records, roots, strict=True):
        attrs = root["attrs"]
        assert (attrs["halod.run.task_id"], attrs["halod.run.trial"]) == (record["task_id"], record["trial"])
        assert attrs["outcome.reward"] == record["reward"]
        assert attrs["outcome.success"] is (record["reward"] >= 1)
        for key, value in ((record["info"].get("reward_info") or {}).get("info") or {}).items():
            if isinstance(value, str | int | float):
                assert attrs[f"outcome.{key}"] == value
        assert attrs["outcome.ended_by"] == record["info"]["source"]
        assert root["user_id"] == record["info"]["task"]["user_id"]
        assert root["input_text"] == next(m["content"] for m in record["traj"] if m["role"] == "user")
        answers = [m["content"] for m in record["traj"] if m["role"] == "assistant" and m["content"]]
        assert root["output_text"] == answers[-1]
        assert attrs["halod.run.system_prompt"] == record["traj"][0]["content"]
        # The synthetic timeline: runs back to back, one step per message.
        assert (root["start_ns"], root["end_ns"]) == (clock, clock + len(record["traj"]) * step)
        clock = root["end_ns"]
        users = [event for event in root["event_list"] if event["name"] == "user_message"]
        assert [e["attributes"]["halod.message.index"] for e in users] == [
            i for i, m in enumerate(record["traj"]) if m["role"] == "user"]
    assert Counter(root["attrs"]["outcome.success"] for root in roots) == {False: 116, True: 84}
    # LLM spans sit in their message's slot; TOOL spans in their result's slot.
    root_start = {root["trace_id"]: root["start_ns"] for root in roots}
    for row in rows:
        if row["semantic_kind"] in ("LLM", "TOOL"):
            assert row["start_ns"] == root_start[row["trace_id"]] + row["attrs"]["halod.message.index"] * step
            assert row["end_ns"] == row["start_ns"] + step


def test_transcript_llm_spans_carry_openinference_output_and_tools() -> None:
    tools = tools_for(AIRLINE)
    assert tools
    rows, _ = converted(AIRLINE)
    prefix = "llm.output_messages.0.message.tool_calls.0.tool_call."
    llm = [row for row in rows if row["semantic_kind"] == "LLM"]
    for row in llm:
        schemas = [json.loads(row["attrs"][f"llm.tools.{n}.tool.json_schema"]) for n in range(len(tools))]
        assert schemas == tools
        assert f"llm.tools.{len(tools)}.tool.json_schema" not in row["attrs"]
    tools_of: dict[str, list[Row]] = defaultdict(list)  # LLM span id -> the TOOL spans linked to it
    for row in rows:
        if row["semantic_kind"] == "TOOL":
            tools_of[json.loads(row["links"])[0]["span_id"]].append(row)
    calling = [row for row in llm if f"{prefix}id" in row["attrs"]]
    assert len(calling) == 1164  # every airline assistant message with a call makes exactly one call
    for row in calling:
        [tool] = tools_of[row["span_id"]]
        assert row["attrs"][f"{prefix}id"] == tool["attrs"]["tool_call.id"]
        assert row["attrs"][f"{prefix}function.name"] == tool["tool_name"]
        assert row["attrs"][f"{prefix}function.arguments"] == tool["tool_arguments"]
        assert tool["attrs"]["halod.tool_call.message_index"] == row["attrs"]["halod.message.index"]


def test_any_agent_counts_and_columns_match_the_raw_dumps() -> None:
    for path in ANY_AGENT:
        spans = json.loads(path.read_text())["spans"]  # json keeps the 128-bit integer ids exact
        rows, problems = converted(path)
        assert problems == []
        operations = Counter(span["attributes"]["gen_ai.operation.name"] for span in spans)
        assert kinds(rows) == {"LLM": operations["call_llm"], "TOOL": operations["execute_tool"],
                               "AGENT": operations["invoke_agent"]}
        assert len({row["trace_id"] for row in rows}) == len({span["context"]["trace_id"] for span in spans})
        by_id = {row["span_id"]: row for row in rows}
        for span in spans:
            row = by_id[format(span["context"]["span_id"], "016x")]  # the SDK's own ids are kept
            assert row["trace_id"] == format(span["context"]["trace_id"], "032x")
            parent = (span["parent"] or {}).get("span_id")
            assert row["parent_span_id"] == (format(parent, "016x") if parent else None)
            attributes = span["attributes"]
            assert row["model_name"] == attributes.get("gen_ai.request.model")
            assert row["tool_name"] == attributes.get("gen_ai.tool.name")
            if "gen_ai.tool.args" in attributes:
                assert row["tool_arguments"] == attributes["gen_ai.tool.args"]
            assert row["start_ns"] == span["start_time"] and row["end_ns"] == span["end_time"]
            assert row["status_code"] == span["status"]["status_code"].upper()
            assert not any(key.startswith("halod.original") for key in row["attrs"])
            if parent is None:
                assert json.loads(row["attrs"]["halod.document.final_output"]) == json.loads(
                    path.read_text())["final_output"]
            assert row["service_name"] == path.stem  # the dumps say unknown_service: the file name is used


def test_halo_counts_ids_and_columns_match_the_raw_lines() -> None:
    for path in HALO:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows, problems = converted(path)
        assert problems == []
        assert len(rows) == len(lines)
        assert len({row["trace_id"] for row in rows}) == len({line["trace_id"] for line in lines})
        expected_kinds = Counter(line["attributes"]["openinference.span.kind"] for line in lines)
        assert kinds(rows) == expected_kinds
        by_original = {row["attrs"]["halod.original.span_id"]: row for row in rows}
        for line in lines:
            row = by_original[line["span_id"]]  # 24-hex span ids: mapped, the original kept
            assert row["trace_id"] == line["trace_id"]  # 32-hex trace ids are valid: unchanged
            assert "halod.original.trace_id" not in row["attrs"]
            if line["parent_span_id"]:
                assert row["parent_span_id"] == by_original[line["parent_span_id"]]["span_id"]
                assert row["attrs"]["halod.original.parent_span_id"] == line["parent_span_id"]
            else:
                assert row["parent_span_id"] is None
            assert row["name"] == line["name"]
            assert row["tool_name"] == line["attributes"].get("tool.name")
            assert row["status_code"] == line["status"]["code"].removeprefix("STATUS_CODE_")
            assert row["kind"] == line["kind"].removeprefix("SPAN_KIND_")
            assert row["service_name"] == line["resource"]["attributes"]["service.name"]


def dangling_parents(path: Path) -> tuple[int, int]:
    """(spans without a parent, spans whose parent is not in the file), counted in the raw file.
    Google ADK's dump has spans whose parents ADK did not export: they stay dangling, as in the source."""
    if path in TRANSCRIPTS:
        return len(json.loads(path.read_text())), 0
    if path in HALO:
        spans = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        pairs = [(span["span_id"], span["parent_span_id"] or None) for span in spans]
    else:
        spans = json.loads(path.read_text())["spans"]
        pairs = [(span["context"]["span_id"], (span["parent"] or {}).get("span_id")) for span in spans]
    present = {span for span, _ in pairs}
    return (sum(parent is None for _, parent in pairs),
            sum(parent is not None and parent not in present for _, parent in pairs))


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_every_dataset_file_is_detected_and_converts_to_valid_linked_ids(path: Path) -> None:
    assert detect_format(path) == EXPECTED_FORMAT[path]
    rows, problems = converted(path)
    assert rows and problems == []
    by_trace: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        assert len(row["trace_id"]) == 32 and int(row["trace_id"], 16)
        assert len(row["span_id"]) == 16 and int(row["span_id"], 16)
        by_trace[row["trace_id"]].add(row["span_id"])
    assert sum(len(spans) for spans in by_trace.values()) == len(rows)  # (trace, span) ids are unique
    roots = sum(row["parent_span_id"] is None for row in rows)
    dangling = sum(row["parent_span_id"] is not None and row["parent_span_id"] not in by_trace[row["trace_id"]]
                   for row in rows)
    assert (roots, dangling) == dangling_parents(path)  # every parent in the file resolves
    assert path.parent.name == "any-agent" or dangling == 0
    again, _, _ = rows_of(read_file(path, options=ReadOptions(tools=tools_for(path))))
    assert comparable(again) == comparable(rows)  # deterministic: re-importing stores nothing new


def test_agentrx_failure_labels_join_to_spans_and_events() -> None:
    """Every step label (trajectory_id = task_id, step_number = message index) whose run is in the
    dataset file lands on a span or root event carrying that halod.message.index."""
    labels = [(entry["trajectory_id"], failure["step_number"], failure["failed_agent"])
              for entry in json.loads(RETAIL_LABELS.read_text()) for failure in entry["failures"]]
    assert len(labels) == 39
    runs = {record["task_id"]: record for record in json.loads(RETAIL.read_text())}
    rows, _ = converted(RETAIL)
    trace_of_task = {row["attrs"]["halod.run.task_id"]: row["trace_id"] for row in rows
                     if row["semantic_kind"] == "AGENT"}
    carriers: dict[tuple[str, int], list[str]] = defaultdict(list)
    for row in rows:
        if "halod.message.index" in row["attrs"]:
            carriers[(row["trace_id"], row["attrs"]["halod.message.index"])].append(row["semantic_kind"])
        for event in row["event_list"]:
            carriers[(row["trace_id"], event["attributes"]["halod.message.index"])].append(event["name"])
    matched, unmatched = [], []
    for task_id, step, _agent in labels:
        found = task_id in trace_of_task and carriers.get((trace_of_task[task_id], step))
        (matched if found else unmatched).append((task_id, step))
    # The labels of trajectories 104 and 105 point at runs that tau_dataset_full.json does not hold (its
    # task ids are 0-99); every label whose run exists matches a span or event of that message.
    assert {task for task, _ in unmatched} == {task for task, _, _ in labels if task not in runs} == {104, 105}
    assert len(matched) == 37, f"{len(matched)} of {len(labels)} labels matched"
    for task_id, step in matched:
        message = next(m for m in runs[task_id]["traj"] if m["index"] == step)
        expected = {"assistant": "LLM", "user": "user_message"}[message["role"]]
        assert carriers[(trace_of_task[task_id], step)] == [expected]


# ------------------------------------------------------------------------------------------ OTLP round trips


@functools.cache
def _source_requests() -> tuple[bytes, ...]:
    requests = []
    for path in HALO:
        requests += [chunk.request for chunk in read_file(path, options=ReadOptions(max_spans_per_chunk=25))]
    airline = next(iter(read_file(AIRLINE, options=ReadOptions(max_spans_per_chunk=150))))
    return tuple(request.SerializeToString() for request in [*requests, airline.request])


def source_requests() -> list[ExportTraceServiceRequest]:
    """Requests converted from real data: the HALO files and the first airline runs, in small chunks
    (fresh copies: tests may change them)."""
    return [ExportTraceServiceRequest.FromString(data) for data in _source_requests()]


def rows_of_requests(requests: Iterable[ExportTraceServiceRequest]) -> list[tuple[Any, ...]]:
    return comparable(row for request in requests for row in normalize_request(request, "import").spans.to_pylist())


def test_otlp_json_lines_round_trip(tmp_path: Path) -> None:
    requests = source_requests()
    path = write_lines(tmp_path / "spans.json", (otlp.encode_json_request(request) for request in requests))
    assert detect_format(path) == "otlp_json"
    rows, problems, chunks = rows_of(read_file(path))
    assert problems == []
    assert comparable(rows) == rows_of_requests(requests)
    assert chunks[-1].position == path.stat().st_size
    # encode_json_request writes OTLP/JSON (hex ids), which decode_json reads back; protobuf's own JSON mapping
    # (halod.otlp.encode) writes base64 ids, so it is not used for files.
    assert otlp.decode_json(otlp.encode_json_request(requests[0])) == requests[0]


def test_otlp_json_single_pretty_document_and_array(tmp_path: Path) -> None:
    requests = source_requests()
    merged = ExportTraceServiceRequest()
    for request in requests:
        merged.resource_spans.extend(request.resource_spans)
    pretty = tmp_path / "one.json"
    pretty.write_text(json.dumps(json.loads(otlp.encode_json_request(merged)), indent=2))
    assert detect_format(pretty) == "otlp_json"
    rows, problems, chunks = rows_of(read_file(pretty))
    assert problems == [] and comparable(rows) == rows_of_requests([merged])
    assert chunks[-1].position == pretty.stat().st_size
    with pytest.raises(FormatError, match="start"):
        read_file(pretty, start=1)
    array = tmp_path / "array.json"
    array.write_text(json.dumps([json.loads(otlp.encode_json_request(request)) for request in requests], indent=1))
    assert detect_format(array) == "otlp_json"
    rows, problems, _ = rows_of(read_file(array))
    assert problems == [] and comparable(rows) == rows_of_requests(requests)


def test_otlp_proto_both_layouts_round_trip(tmp_path: Path) -> None:
    requests = source_requests()
    delimited = tmp_path / "spans.binpb"
    delimited.write_bytes(b"".join(varint(len(data)) + data for data in (r.SerializeToString() for r in requests)))
    merged = ExportTraceServiceRequest()
    for request in requests:
        merged.resource_spans.extend(request.resource_spans)
    single = tmp_path / "one.binpb"
    single.write_bytes(merged.SerializeToString())
    expected = rows_of_requests(requests)
    for path in (delimited, single):
        assert detect_format(path) == "otlp_proto"
        rows, problems, chunks = rows_of(read_file(path, options=ReadOptions(max_spans_per_chunk=40)))
        assert problems == [] and comparable(rows) == expected
        assert all(chunk.spans <= 40 for chunk in chunks)
        assert chunks[-1].position == path.stat().st_size


def test_otlp_proto_truncated_and_corrupt_keep_what_precedes(tmp_path: Path) -> None:
    requests = source_requests()
    records = [varint(len(data)) + data for data in (r.SerializeToString() for r in requests)]
    third = sum(len(record) for record in records[:2])
    truncated = tmp_path / "cut.binpb"
    truncated.write_bytes(b"".join(records)[: third + len(records[2]) // 2])
    rows, problems, _ = rows_of(read_file(truncated))
    assert comparable(rows) == rows_of_requests(requests[:2])
    assert [(p.location, "truncated" in p.message) for p in problems] == [(f"byte {third}", True)]
    assert str(problems[0]).startswith(f"{truncated}:byte {third}: ")
    corrupt = tmp_path / "corrupt.binpb"
    corrupt.write_bytes(records[0] + varint(6) + b"\x0a\x7f\xff\xff\xff\xff" + b"".join(records[1:]))
    rows, problems, _ = rows_of(read_file(corrupt, format="otlp_proto"))
    assert comparable(rows) == rows_of_requests(requests[:1])
    assert [p.location for p in problems] == [f"byte {len(records[0])}"]
    # A single serialized request cut short keeps its complete ResourceSpans.
    merged = ExportTraceServiceRequest()
    for request in requests[:3]:
        merged.resource_spans.extend(request.resource_spans)
    data = merged.SerializeToString()
    complete = sum(len(rs.SerializeToString()) + 1 + len(varint(rs.ByteSize())) for rs in merged.resource_spans[:2])
    cut = tmp_path / "cut-single.binpb"
    cut.write_bytes(data[: complete + 7])
    rows, problems, _ = rows_of(read_file(cut, format="otlp_proto"))
    kept = ExportTraceServiceRequest()
    kept.resource_spans.extend(merged.resource_spans[:2])
    assert comparable(rows) == rows_of_requests([kept])
    assert [p.location for p in problems] == [f"byte {complete}"]


# ------------------------------------------------------------------------------------------ damaged input


def test_damaged_halo_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    lines = HALO[1].read_bytes().splitlines()
    spans = [json.loads(line) for line in lines]
    wrong_attributes = {**spans[3], "attributes": 5}
    wrong_time = {**spans[7], "start_time": "yesterday"}
    no_id = {key: value for key, value in spans[9].items() if key != "span_id"}
    damaged = [*lines[:3], json.dumps(wrong_attributes).encode(), *lines[4:7], json.dumps(wrong_time).encode(),
               lines[8], json.dumps(no_id).encode(), b"this is not json", *lines[10:-1], lines[-1][:40]]
    path = write_lines(tmp_path / "damaged.jsonl", damaged)
    assert detect_format(path) == "halo_jsonl"
    rows, problems, _ = rows_of(read_file(path))
    bad = {3, 7, 9, len(lines) - 1}  # indexes of the spans that cannot be read
    assert sorted(row["attrs"]["halod.original.span_id"] for row in rows) == sorted(
        span["span_id"] for n, span in enumerate(spans) if n not in bad)
    found = [(p.file, p.location, p.message) for p in problems]
    assert found[:4] == [
        (str(path), "line 4", "attributes must be an object, not number"),
        (str(path), "line 8", "start_time 'yesterday' is not an ISO-8601 date-time"),
        (str(path), "line 10", "span_id is missing"),
        (str(path), "line 11", found[3][2]),
    ]
    assert found[3][2].startswith("not valid JSON")
    assert found[4][1] == f"line {len(damaged)}" and found[4][2].startswith("not valid JSON")
    assert len(found) == 5


def test_truncated_transcript_array_keeps_the_complete_runs(tmp_path: Path) -> None:
    records = json.loads(AIRLINE.read_text())[:5]
    text = json.dumps(records, indent=2)
    path = tmp_path / "runs.json"
    path.write_text(text[: len(text) - 500])  # the last run loses its end
    assert detect_format(path) == "transcript"
    rows, problems, _ = rows_of(read_file(path))
    expected = transcript_expectations(records[:4])
    assert kinds(rows) == {"AGENT": 4, "LLM": expected["llm"], "TOOL": expected["tool"]}
    assert [(p.location, "truncated" in p.message) for p in problems] == [("record 4", True)]
    # The four complete runs are the same spans as in the intact file.
    intact_path = write_json(tmp_path / "intact.json", records)
    intact, _, _ = rows_of(read_file(intact_path, options=ReadOptions(dataset="runs")))
    assert comparable(rows) == comparable(row for row in intact if not row["session_id"].endswith(":4"))


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_damaged_transcript_records_and_calls(tmp_path: Path) -> None:
    records = json.loads(AIRLINE.read_text())[:4]
    missing_traj = {key: value for key, value in records[1].items() if key != "traj"}
    broken_call = json.loads(json.dumps(records[2]))
    position = next(i for i, m in enumerate(broken_call["traj"]) if m.get("tool_calls"))
    del broken_call["traj"][position]["tool_calls"][0]["function"]
    lines = [json.dumps(records[0]), json.dumps(missing_traj), json.dumps(broken_call), "{not json",
             json.dumps(records[3])]
    path = write_lines(tmp_path / "runs.jsonl", (line.encode() for line in lines))
    assert detect_format(path) == "transcript"
    rows, problems, _ = rows_of(read_file(path))
    assert [(p.location, p.message) for p in problems] == [
        ("line 2", "missing traj (the run's list of messages)"),
        ("line 3", f"message {position}: tool_calls[0] has no function object; the call is skipped"),
        ("line 4", problems[2].message),
    ]
    assert problems[2].message.startswith("not valid JSON")
    roots = {row["attrs"]["halod.run.index"] for row in rows if row["semantic_kind"] == "AGENT"}
    assert roots == {0, 2, 4}  # record indexes are line positions: run 3 keeps its place
    # The broken run is still there: its assistant message is an LLM span, its tool result an orphan TOOL span.
    broken = [row for row in rows if row["session_id"].endswith(":2")]
    orphans = [row for row in broken if row["attrs"].get("halod.tool_call.orphan")]
    assert len(orphans) == 1 and orphans[0]["attrs"]["halod.message.index"] == position + 1
    expected = transcript_expectations([records[2]])
    assert kinds(broken) == {"AGENT": 1, "LLM": expected["llm"], "TOOL": expected["tool"]}
    # The other runs are the same spans as when imported alone.
    alone, _, _ = rows_of(read_file(write_lines(tmp_path / "alone.jsonl", [lines[0].encode()]), format="transcript",
                                    options=ReadOptions(dataset="runs")))
    assert comparable(alone) == comparable(row for row in rows if row["session_id"].endswith(":0"))


def test_transcript_missing_results_and_orphans(tmp_path: Path) -> None:
    record = json.loads(AIRLINE.read_text())[0]
    calls = [i for i, m in enumerate(record["traj"]) if m.get("tool_calls")]
    traj = list(record["traj"])
    result = calls[0] + 1
    traj[result] = {**traj[result], "tool_call_id": "call_nobody_made"}  # its call loses its result
    path = write_json(tmp_path / "one.json", [{**record, "traj": traj}])
    rows, problems, _ = rows_of(read_file(path))
    assert problems == []
    tools = [row for row in rows if row["semantic_kind"] == "TOOL"]
    missing = [row for row in tools if row["attrs"].get("halod.tool_call.result_missing")]
    orphan = [row for row in tools if row["attrs"].get("halod.tool_call.orphan")]
    assert len(missing) == 1 and missing[0]["output_text"] is None
    assert missing[0]["attrs"]["halod.message.index"] == calls[0]
    assert len(orphan) == 1 and orphan[0]["output_text"] == traj[result]["content"]
    assert len(tools) == len(calls) + 1


def test_damaged_sdk_dump_and_otlp_json_line(tmp_path: Path) -> None:
    source = ANY_AGENT[0]
    text = source.read_text()
    path = tmp_path / "dump.json"
    path.write_text(text[: text.index('"name"', len(text) // 2)])  # cut inside a span in the middle
    assert detect_format(path) == "sdk_spans"
    rows, problems, _ = rows_of(read_file(path))
    assert len(rows) >= 1 and len(problems) == 1
    assert problems[0].location == f"record {len(rows)}" and "truncated" in problems[0].message
    lines = [otlp.encode_json_request(request) for request in source_requests()]
    lines[1] = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}'
    otlp_path = write_lines(tmp_path / "otlp.jsonl", lines)
    rows, problems, _ = rows_of(read_file(otlp_path))
    assert [p.location for p in problems] == ["line 2"]
    assert comparable(rows) == rows_of_requests(otlp.decode_json(line) for n, line in enumerate(lines) if n != 1)


# ------------------------------------------------------------------------------------------ resuming and chunking


def line_format_files(tmp_path: Path) -> list[Path]:
    halo = write_lines(tmp_path / "halo.jsonl", [*HALO[0].read_bytes().splitlines(), b"", b"  ",
                                                  *HALO[1].read_bytes().splitlines()])
    runs = json.loads(RETAIL.read_text())[:12]
    transcript = write_lines(tmp_path / "runs.jsonl", [json.dumps(run).encode() for run in runs[:6]]
                             + [b"", b"oops"] + [json.dumps(run).encode() for run in runs[6:]])
    otlp_lines = write_lines(tmp_path / "otlp.jsonl", [otlp.encode_json_request(r) for r in source_requests()])
    return [halo, transcript, otlp_lines]


def test_read_file_resumes_exactly_after_a_line(tmp_path: Path) -> None:
    for path in line_format_files(tmp_path):
        assert detect_format(path) in LINE_FORMATS
        full, full_problems, chunks = rows_of(read_file(path, options=ReadOptions(max_spans_per_chunk=16)))
        assert len(chunks) > 3 and all(a.position < b.position for a, b in itertools.pairwise(chunks))
        data = path.read_bytes()
        boundaries = [n + 1 for n, byte in enumerate(data) if byte == ord("\n")]
        starts = random.Random(7).sample(boundaries[:-1], min(5, len(boundaries) - 1))
        for start in [*starts, chunks[len(chunks) // 2].position]:
            head = path.with_suffix(".head")
            head.write_bytes(data[:start])
            before, before_problems, _ = rows_of(read_file(head, format=detect_format(path),
                                                           options=ReadOptions(dataset=path.stem)))
            after, after_problems, _ = rows_of(read_file(path, start=start))
            assert comparable(before + after) == comparable(full)  # same ids, times, line numbers
            assert [(p.location, p.message) for p in before_problems + after_problems] == [
                (p.location, p.message) for p in full_problems]
        with pytest.raises(FormatError, match="beginning of a line"):
            read_file(path, start=boundaries[0] + 1)


def test_read_lines_matches_read_file_and_continues_from_a_chunk_state(tmp_path: Path) -> None:
    for path in line_format_files(tmp_path):
        fmt = detect_format(path)
        options = ReadOptions(max_spans_per_chunk=16)
        by_file = list(read_file(path, options=options))
        by_lines = list(read_lines(fmt, file_lines(path), str(path), options))
        assert [(c.spans, c.problems, c.position, c.state, c.request) for c in by_lines] == [
            (c.spans, c.problems, c.position, c.state, c.request) for c in by_file]
        # A tailing receiver that stopped after some chunk goes on from its position and state.
        stop = by_file[len(by_file) // 2]
        resumed = list(read_lines(fmt, file_lines(path, stop.position), str(path), options, state=stop.state))
        again = list(read_file(path, options=options, start=stop.position))
        assert [(c.request, c.problems, c.position) for c in resumed] == [
            (c.request, c.problems, c.position) for c in again]


def test_chunks_respect_the_limit_and_never_split_a_line(tmp_path: Path) -> None:
    requests = source_requests()  # HALO requests of 7, 25, 25 and 8 spans, then 150 airline spans
    path = write_lines(tmp_path / "big.jsonl", [otlp.encode_json_request(request) for request in requests])
    sizes = [sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans) for request in requests]
    lengths = [len(otlp.encode_json_request(request)) + 1 for request in requests]
    ends = [sum(lengths[: n + 1]) for n in range(len(requests))]
    chunks = list(read_file(path, options=ReadOptions(max_spans_per_chunk=40)))
    # Lines are packed while they fit; the 150-span line makes a chunk of its own; positions are line ends.
    assert sizes == [7, 25, 25, 8, 150]
    assert [chunk.spans for chunk in chunks] == [7 + 25, 25 + 8, 150]
    assert [chunk.position for chunk in chunks] == [ends[1], ends[3], ends[4]]
    assert [chunk.state.line for chunk in chunks if chunk.state] == [3, 5, 6]
    rows, _, _ = rows_of(chunks)
    assert comparable(rows) == rows_of_requests(requests)
    # Formats read as a whole split one input across chunks to keep the limit.
    array = write_json(tmp_path / "array.json", [json.loads(otlp.encode_json_request(requests[-1]))])
    assert [chunk.spans for chunk in read_file(array, options=ReadOptions(max_spans_per_chunk=40))] == [40, 40, 40, 30]


# ------------------------------------------------------------------------------------------ detection and ids


def test_detect_format_refuses_what_it_cannot_tell(tmp_path: Path) -> None:
    cases = {
        "empty.json": b"",
        "blank.jsonl": b"\n  \n",
        "notes.txt": b"hello, this is text\n",
        "other.json": b'{"name": "x", "value": 1}\n',
        "list.json": b"[1, 2, 3]",
        "random.bin": bytes(random.Random(1).randrange(256) for _ in range(4096)),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(FormatError, match=f"{path}: cannot tell the trace format"):
            detect_format(path)
    with pytest.raises(FormatError, match="unknown format"):
        read_file(tmp_path / "notes.txt", format="csv")
    with pytest.raises(FormatError, match="not a line format"):
        read_lines("sdk_spans", [], "x.json", ReadOptions())
    assert set(FORMATS) > LINE_FORMATS


def test_id_mapping_rules() -> None:
    valid_trace, valid_span = "84559aaf5d124026b1da35a7a66d9e94", "79d500bda507440f"
    assert format_ids.map_id(valid_trace, 16) == (bytes.fromhex(valid_trace), None)
    assert format_ids.map_id("0x" + valid_span.upper(), 8) == (bytes.fromhex(valid_span), None)
    assert format_ids.map_id(2**64 - 1, 8) == (b"\xff" * 8, None)
    halo = "79d500bda507440f8a237682"
    mapped, original = format_ids.map_id(halo, 8)
    assert len(mapped) == 8 and original == halo
    assert format_ids.map_id(halo.upper(), 8)[0] == mapped  # hex case does not matter
    assert format_ids.map_parent_id(halo) == (mapped, halo)  # parents map the same way
    assert format_ids.map_parent_id("") == (b"", None) and format_ids.map_parent_id("0" * 16) == (b"", None)
    assert format_ids.map_id(2**64, 8)[1] == str(2**64)
    with pytest.raises(format_ids.IdError, match="all zero"):
        format_ids.map_id("0" * 32, 16)
    with pytest.raises(format_ids.IdError, match="missing"):
        format_ids.map_id(None, 8)
