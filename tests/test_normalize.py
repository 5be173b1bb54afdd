"""Normalization of OTLP spans into typed columns, driven by real fixture attribute sets, plus the
OTLP/JSON decoder and the gzip guard.

Fixtures (under /work/shared/datasets/otel-fixtures):
- halo-engine/*.jsonl: flattened spans from the HALO exporter (OpenInference attributes); their span
  ids are 24 hex characters, mapped here to 8 bytes by taking the first 16;
- any-agent/*_trace.json: {"spans": [...]} from any-agent (OTel GenAI attributes, integer ids,
  lower-case kinds, call_llm / execute_tool / invoke_agent operations).

The expectations below are computed from the source attributes by rules written out in this file,
not by calling halod's mapping tables.
"""

from __future__ import annotations

import base64
import calendar
import gzip
import json
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from halod import otlp
from halod.model import SPAN_SCHEMA, InvalidPayload, SpanBatch
from halod.normalize import mapping_markdown, normalize_request
from tests.conftest import FIXTURES, REPO

HALO_FILES = sorted((FIXTURES / "halo-engine").glob("*.jsonl"))
ANY_AGENT_FILES = sorted((FIXTURES / "any-agent").glob("*_trace.json"))


# ------------------------------------------------------------------------------------------ OTLP builders


def to_any_value(value: Any) -> AnyValue:
    out = AnyValue()
    if value is None:
        pass  # an empty AnyValue: what an SDK sends for a null
    elif isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.int_value = value
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list):
        out.array_value.SetInParent()  # an empty array is still an array
        for item in value:
            out.array_value.values.add().CopyFrom(to_any_value(item))
    elif isinstance(value, dict):
        out.kvlist_value.SetInParent()
        for key, item in value.items():
            out.kvlist_value.values.add(key=key).value.CopyFrom(to_any_value(item))
    else:
        raise TypeError(type(value))
    return out


def key_values(attributes: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=key, value=to_any_value(value)) for key, value in attributes.items()]


def as_json(value: Any) -> Any:
    """What the attributes JSON column must hold for `value` (bytes as base64, as in OTLP JSON)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


def build_request(spans: list[dict[str, Any]]) -> ExportTraceServiceRequest:
    """Spans in a neutral form (bytes ids, ns times, OTLP enum names) -> one request, grouped by
    resource and scope the way an SDK groups them."""
    request = ExportTraceServiceRequest()
    groups: dict[tuple[str, str, str], Any] = {}
    resources: dict[str, Any] = {}
    for span in spans:
        resource_key = json.dumps(span["resource"], sort_keys=True)
        if resource_key not in resources:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.attributes.extend(key_values(span["resource"]))
            resources[resource_key] = resource_spans
        group_key = (resource_key, span["scope_name"], span["scope_version"])
        if group_key not in groups:
            scope_spans = resources[resource_key].scope_spans.add()
            scope_spans.scope.name = span["scope_name"]
            scope_spans.scope.version = span["scope_version"]
            groups[group_key] = scope_spans
        out = groups[group_key].spans.add()
        out.trace_id, out.span_id, out.parent_span_id = span["trace_id"], span["span_id"], span["parent_span_id"]
        out.trace_state = span["trace_state"]
        out.name = span["name"]
        out.kind = Span.SpanKind.Value(span["kind"])
        out.start_time_unix_nano, out.end_time_unix_nano = span["start_ns"], span["end_ns"]
        out.status.code = Status.StatusCode.Value(span["status_code"])
        out.status.message = span["status_message"]
        out.attributes.extend(key_values(span["attributes"]))
    return request


def iso_ns(text: str) -> int:
    """'2026-04-24T18:12:13.315189000Z' -> Unix ns."""
    base, _, fraction = text.rstrip("Z").partition(".")
    seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    return seconds * 10**9 + int(fraction.ljust(9, "0")[:9])


def halo_id(hex24: str) -> bytes:
    return bytes.fromhex(hex24[:16]) if hex24 else b""


def load_halo(path: Path) -> list[dict[str, Any]]:
    spans = []
    for line in path.read_text().splitlines():
        raw = json.loads(line)
        spans.append({
            "trace_id": bytes.fromhex(raw["trace_id"]),
            "span_id": halo_id(raw["span_id"]),
            "parent_span_id": halo_id(raw["parent_span_id"]),
            "trace_state": raw["trace_state"],
            "name": raw["name"],
            "kind": raw["kind"],
            "start_ns": iso_ns(raw["start_time"]),
            "end_ns": iso_ns(raw["end_time"]),
            "status_code": raw["status"]["code"],
            "status_message": raw["status"]["message"],
            "resource": raw["resource"]["attributes"],
            "scope_name": raw["scope"]["name"],
            "scope_version": raw["scope"]["version"],
            "attributes": raw["attributes"],
        })
    ids = [span["span_id"] for span in spans]
    assert len(set(ids)) == len(ids), f"{path.name}: truncated span ids collide"
    return spans


def load_any_agent(path: Path) -> list[dict[str, Any]]:
    spans = []
    for raw in json.loads(path.read_text())["spans"]:
        parent = raw["parent"] or {}
        assert not raw["events"] and not raw["links"]
        spans.append({
            "trace_id": bytes.fromhex(format(raw["context"]["trace_id"], "032x")),
            "span_id": bytes.fromhex(format(raw["context"]["span_id"], "016x")),
            "parent_span_id": bytes.fromhex(format(parent["span_id"], "016x")) if parent.get("span_id") else b"",
            "trace_state": "",
            "name": raw["name"],
            "kind": "SPAN_KIND_" + raw["kind"].upper(),
            "start_ns": raw["start_time"],
            "end_ns": raw["end_time"],
            "status_code": "STATUS_CODE_" + raw["status"]["status_code"].upper(),
            "status_message": raw["status"]["description"] or "",
            "resource": raw["resource"]["attributes"],
            "scope_name": "",
            "scope_version": "",
            "attributes": raw["attributes"],
        })
    return spans


def rows_by_span_id(batch: SpanBatch) -> dict[str, dict[str, Any]]:
    rows = batch.spans.to_pylist()
    by_id = {row["span_id"]: row for row in rows}
    assert len(by_id) == len(rows)
    return by_id


ALL_FIXTURES = [(path, load_halo) for path in HALO_FILES] + [(path, load_any_agent) for path in ANY_AGENT_FILES]


def test_fixtures_are_present() -> None:
    assert len(HALO_FILES) >= 2 and len(ANY_AGENT_FILES) >= 7


# -------------------------------------------------------------------- common columns, every fixture span


@pytest.mark.parametrize(("path", "loader"), ALL_FIXTURES, ids=lambda v: getattr(v, "name", ""))
def test_fixture_spans_keep_everything_otlp_carries(path: Path, loader: Any) -> None:
    spans = loader(path)
    batch = normalize_request(build_request(spans), "otlp")
    assert batch.spans.schema == SPAN_SCHEMA
    assert (batch.num_spans, batch.rejected, batch.source) == (len(spans), 0, "otlp")
    rows = rows_by_span_id(batch)
    for span in spans:
        row = rows[span["span_id"].hex()]
        assert row["trace_id"] == span["trace_id"].hex() and len(row["trace_id"]) == 32
        assert row["trace_id"] == row["trace_id"].lower() and len(row["span_id"]) == 16
        assert row["parent_span_id"] == (span["parent_span_id"].hex() if span["parent_span_id"] else None)
        assert row["trace_state"] is None
        assert row["name"] == span["name"]
        assert row["kind"] == span["kind"].removeprefix("SPAN_KIND_")
        assert row["status_code"] == span["status_code"].removeprefix("STATUS_CODE_")
        assert row["status_message"] == (span["status_message"] or None)
        assert (row["start_ns"], row["end_ns"]) == (span["start_ns"], span["end_ns"])
        assert row["duration_ns"] == span["end_ns"] - span["start_ns"] >= 0
        assert row["service_name"] == span["resource"]["service.name"]
        assert json.loads(row["attributes"]) == as_json(span["attributes"])
        assert json.loads(row["resource_attributes"]) == span["resource"]
        assert row["scope_name"] == (span["scope_name"] or None)
        assert row["scope_version"] == (span["scope_version"] or None)
        assert row["events"] is None and row["links"] is None and row["dropped_counts"] is None
        assert row["flags"] == 0


def test_roots_have_null_parent() -> None:
    for path, loader in ALL_FIXTURES:
        spans = loader(path)
        rows = rows_by_span_id(normalize_request(build_request(spans), "otlp"))
        roots = [span for span in spans if not span["parent_span_id"]]
        assert roots, f"{path.name} has no root span"
        assert sum(row["parent_span_id"] is None for row in rows.values()) == len(roots)


def test_error_status_is_kept() -> None:
    spans = [span for path in HALO_FILES for span in load_halo(path)]
    rows = rows_by_span_id(normalize_request(build_request(spans), "otlp"))
    errors = [span for span in spans if span["status_code"] == "STATUS_CODE_ERROR"]
    assert errors
    for span in errors:
        row = rows[span["span_id"].hex()]
        assert (row["status_code"], row["status_message"]) == ("ERROR", span["status_message"])
        assert row["kind"] == span["kind"].removeprefix("SPAN_KIND_")


# ---------------------------------------------------------------------- typed columns: halo-engine (OI)


def first_present(attributes: dict[str, Any], *keys: str) -> Any:
    """The first value that is there and not empty (docs/semconv.md: an empty string counts as absent)."""
    for key in keys:
        if attributes.get(key) not in (None, ""):
            return attributes[key]
    return None


@pytest.mark.parametrize("path", HALO_FILES, ids=lambda p: p.name)
def test_openinference_typed_columns(path: Path) -> None:
    spans = load_halo(path)
    batch = normalize_request(build_request(spans), "otlp")
    rows = rows_by_span_id(batch)
    for span in spans:
        attrs = span["attributes"]
        row = rows[span["span_id"].hex()]
        kind = attrs["openinference.span.kind"]
        assert row["semantic_kind"] == kind
        # OpenInference first, the HALO exporter's inference.* after; nulls are skipped
        assert row["agent_name"] == first_present(attrs, "agent.name", "inference.agent_name")
        assert row["session_id"] is None and row["user_id"] is None  # null in every fixture span
        assert row["model_name"] is None  # inference.llm.model_name is null throughout
        if kind == "LLM":
            assert row["prompt_tokens"] == attrs["llm.token_count.prompt"] > 0
            assert row["completion_tokens"] == attrs["llm.token_count.completion"]
            assert row["total_tokens"] == attrs["llm.token_count.total"]
        else:
            assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (None, None, None)
        if kind == "TOOL":
            assert row["tool_name"] == attrs["tool.name"]
            # OpenInference TOOL spans of this exporter carry the arguments only as input.value
            assert "tool.parameters" not in attrs
            assert row["tool_arguments"] == attrs["input.value"]
            assert row["input_text"] == attrs["input.value"]
            assert row["output_text"] == attrs.get("output.value")
        else:
            assert row["tool_name"] is None and row["tool_arguments"] is None
    assert any(row["agent_name"] == "HaloCodeHelper" for row in rows.values())


# -------------------------------------------------------------------------- typed columns: any-agent


ANY_AGENT_KINDS = {"call_llm": "LLM", "execute_tool": "TOOL", "invoke_agent": "AGENT"}


@pytest.mark.parametrize("path", ANY_AGENT_FILES, ids=lambda p: p.name)
def test_genai_typed_columns(path: Path) -> None:
    spans = load_any_agent(path)
    rows = rows_by_span_id(normalize_request(build_request(spans), "otlp"))
    for span in spans:
        attrs = span["attributes"]
        row = rows[span["span_id"].hex()]
        kind = ANY_AGENT_KINDS[attrs["gen_ai.operation.name"]]
        assert row["semantic_kind"] == kind
        assert row["service_name"] == "unknown_service"
        assert row["model_name"] == attrs.get("gen_ai.request.model")
        assert row["output_text"] == attrs.get("gen_ai.output")
        assert row["input_text"] == attrs.get("gen_ai.input.messages")
        if kind == "LLM":
            assert row["model_name"] == "mistral/mistral-small-latest"
            assert row["prompt_tokens"] == attrs["gen_ai.usage.input_tokens"]
            assert row["completion_tokens"] == attrs["gen_ai.usage.output_tokens"]
            # any-agent reports no total: it is prompt + completion
            assert "gen_ai.usage.total_tokens" not in attrs
            assert row["total_tokens"] == attrs["gen_ai.usage.input_tokens"] + attrs["gen_ai.usage.output_tokens"]
        else:
            assert row["total_tokens"] is None
        if kind == "TOOL":
            assert row["tool_name"] == attrs["gen_ai.tool.name"]
            assert row["tool_arguments"] == attrs["gen_ai.tool.args"]
        else:
            assert row["tool_name"] is None and row["tool_arguments"] is None
        assert row["agent_name"] == (attrs["gen_ai.agent.name"] if kind == "AGENT" else None)
        assert row["session_id"] is None


@pytest.mark.parametrize(("path", "loader"), ALL_FIXTURES, ids=lambda v: getattr(v, "name", ""))
def test_semantic_kind_counts_per_file(path: Path, loader: Any) -> None:
    spans = loader(path)
    expected: Counter[str] = Counter()
    for span in spans:
        attrs = span["attributes"]
        if "openinference.span.kind" in attrs:
            expected[attrs["openinference.span.kind"].upper()] += 1
        else:
            expected[ANY_AGENT_KINDS[attrs["gen_ai.operation.name"]]] += 1
    batch = normalize_request(build_request(spans), "otlp")
    assert Counter(batch.spans.column("semantic_kind").to_pylist()) == expected
    assert "UNKNOWN" not in expected and sum(expected.values()) == len(spans)


# ------------------------------------------------------------------ variants on real attribute sets


def first_span(path: Path, loader: Any, predicate: Any) -> dict[str, Any]:
    return next(span for span in loader(path) if predicate(span["attributes"]))


def normalize_one(span: dict[str, Any]) -> dict[str, Any]:
    batch = normalize_request(build_request([span]), "otlp")
    assert batch.num_spans == 1
    row: dict[str, Any] = batch.spans.to_pylist()[0]
    return row


@pytest.fixture
def halo_llm() -> dict[str, Any]:
    return first_span(HALO_FILES[0], load_halo, lambda a: a["openinference.span.kind"] == "LLM")


@pytest.fixture
def halo_tool() -> dict[str, Any]:
    return first_span(HALO_FILES[0], load_halo, lambda a: a["openinference.span.kind"] == "TOOL")


@pytest.fixture
def agent_llm() -> dict[str, Any]:
    return first_span(ANY_AGENT_FILES[0], load_any_agent, lambda a: a["gen_ai.operation.name"] == "call_llm")


def test_session_id_sources_in_priority_order(halo_llm: dict[str, Any], agent_llm: dict[str, Any]) -> None:
    halo_llm["attributes"]["inference.session_id"] = "halo-session"
    assert normalize_one(halo_llm)["session_id"] == "halo-session"
    halo_llm["attributes"]["session.id"] = "oi-session"
    assert normalize_one(halo_llm)["session_id"] == "oi-session"
    agent_llm["attributes"]["gen_ai.conversation.id"] = "conv-42"
    assert normalize_one(agent_llm)["session_id"] == "conv-42"
    halo_llm["attributes"]["inference.user_id"] = "u-1"
    assert normalize_one(halo_llm)["user_id"] == "u-1"


def test_model_name_sources(halo_llm: dict[str, Any], agent_llm: dict[str, Any]) -> None:
    halo_llm["attributes"]["inference.llm.model_name"] = "gpt-4.1"
    assert normalize_one(halo_llm)["model_name"] == "gpt-4.1"
    halo_llm["attributes"]["llm.model_name"] = "gpt-4.1-2025-04-14"
    assert normalize_one(halo_llm)["model_name"] == "gpt-4.1-2025-04-14"
    # the model that answered beats the model that was asked for
    agent_llm["attributes"]["gen_ai.response.model"] = "mistral-small-2503"
    assert normalize_one(agent_llm)["model_name"] == "mistral-small-2503"


def test_tool_arguments_sources(halo_tool: dict[str, Any], halo_llm: dict[str, Any]) -> None:
    halo_tool["attributes"]["tool.parameters"] = '{"subdir": "src"}'
    row = normalize_one(halo_tool)
    assert row["tool_arguments"] == '{"subdir": "src"}'  # tool.parameters wins over input.value
    assert row["input_text"] == halo_tool["attributes"]["input.value"]
    # the input.value fallback is for TOOL spans only
    halo_llm["attributes"]["input.value"] = "hello"
    row = normalize_one(halo_llm)
    assert (row["input_text"], row["tool_arguments"]) == ("hello", None)


def test_token_variants(halo_llm: dict[str, Any], agent_llm: dict[str, Any]) -> None:
    attrs = halo_llm["attributes"]
    del attrs["llm.token_count.total"]
    row = normalize_one(halo_llm)
    assert row["total_tokens"] == attrs["llm.token_count.prompt"] + attrs["llm.token_count.completion"]
    del attrs["llm.token_count.completion"]
    row = normalize_one(halo_llm)
    # completion falls back to the HALO exporter's inference.llm.output_tokens
    assert row["completion_tokens"] == attrs["inference.llm.output_tokens"]
    del attrs["inference.llm.output_tokens"]
    row = normalize_one(halo_llm)
    assert (row["completion_tokens"], row["total_tokens"]) == (None, None)  # no total from one side
    # tokens sent as strings or doubles are still numbers
    agent = agent_llm["attributes"]
    agent["gen_ai.usage.input_tokens"] = "120"
    agent["gen_ai.usage.output_tokens"] = 30.0
    row = normalize_one(agent_llm)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (120, 30, 150)
    agent["gen_ai.usage.input_tokens"] = "many"
    assert normalize_one(agent_llm)["prompt_tokens"] is None


def test_semantic_kind_precedence_and_unknown(halo_tool: dict[str, Any], agent_llm: dict[str, Any]) -> None:
    halo_tool["attributes"]["gen_ai.operation.name"] = "chat"
    assert normalize_one(halo_tool)["semantic_kind"] == "TOOL"  # openinference.span.kind wins
    halo_tool["attributes"]["openinference.span.kind"] = "tool"
    assert normalize_one(halo_tool)["semantic_kind"] == "TOOL"  # case-insensitive
    halo_tool["attributes"]["openinference.span.kind"] = "NOT_A_KIND"
    assert normalize_one(halo_tool)["semantic_kind"] == "LLM"  # falls through to gen_ai.operation.name
    del agent_llm["attributes"]["gen_ai.operation.name"]
    assert normalize_one(agent_llm)["semantic_kind"] == "UNKNOWN"
    agent_llm["attributes"]["traceloop.span.kind"] = "workflow"
    assert normalize_one(agent_llm)["semantic_kind"] == "CHAIN"


def test_non_string_text_attributes_are_json_text(agent_llm: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    agent_llm["attributes"]["gen_ai.input.messages"] = messages
    row = normalize_one(agent_llm)
    assert json.loads(row["input_text"]) == messages


def test_attribute_values_of_every_type_round_trip(halo_llm: dict[str, Any]) -> None:
    extras = {
        "test.string": "naïve ☃ \"quoted\" \\ back",
        "test.int": -(2**63),
        "test.int.max": 2**63 - 1,
        "test.double": 0.1 + 0.2,
        "test.double.neg": -1.5e-300,
        "test.bool.true": True,
        "test.bool.false": False,
        "test.bytes": b"\x00\xffbinary\x10",
        "test.array.strings": ["a", "b", ""],
        "test.array.mixed": [1, 2.5, "x", True, None, [1, [2]], {"k": "v"}],
        "test.array.empty": [],
        "test.kvlist": {"nested": {"deeper": [1, 2, {"deepest": b"\x01"}]}, "flag": False},
        "test.kvlist.empty": {},
        "test.null": None,
    }
    halo_llm["attributes"].update(extras)
    halo_llm["resource"] = {**halo_llm["resource"], "host.arch": ["amd64"], "process.pid": 4242}
    row = normalize_one(halo_llm)
    stored = json.loads(row["attributes"])
    assert stored == as_json(halo_llm["attributes"])
    assert stored["test.bytes"] == base64.b64encode(b"\x00\xffbinary\x10").decode()
    assert isinstance(stored["test.int"], int) and isinstance(stored["test.double"], float)
    assert stored["test.bool.true"] is True and stored["test.null"] is None
    assert json.loads(row["resource_attributes"]) == halo_llm["resource"]
    # typed columns are untouched by the extras
    assert row["prompt_tokens"] == halo_llm["attributes"]["llm.token_count.prompt"]


def test_events_links_flags_trace_state_and_dropped_counts(halo_llm: dict[str, Any]) -> None:
    request = build_request([halo_llm])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.trace_state = "vendor=abc,other=1"
    span.flags = 0x301
    span.dropped_attributes_count = 3
    span.dropped_links_count = 1
    event = span.events.add(name="exception", time_unix_nano=span.start_time_unix_nano + 5)
    event.attributes.extend(key_values({"exception.type": "ValueError", "exception.escaped": False,
                                        "exception.lines": ["a", "b"]}))
    span.events.add(name="empty", time_unix_nano=span.end_time_unix_nano)
    link = span.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(9, 17)), trace_state="k=v")
    link.attributes.extend(key_values({"link.kind": "follows_from", "weight": 2}))
    span.links.add(trace_id=bytes(range(17, 33)), span_id=bytes(range(1, 9)))
    (row,) = normalize_request(request, "otlp").spans.to_pylist()
    assert row["trace_state"] == "vendor=abc,other=1"
    assert row["flags"] == 0x301
    assert json.loads(row["dropped_counts"]) == {"attributes": 3, "events": 0, "links": 1}
    assert json.loads(row["events"]) == [
        {"name": "exception", "time_ns": span.start_time_unix_nano + 5,
         "attributes": {"exception.type": "ValueError", "exception.escaped": False, "exception.lines": ["a", "b"]}},
        {"name": "empty", "time_ns": span.end_time_unix_nano, "attributes": {}},
    ]
    assert json.loads(row["links"]) == [
        {"trace_id": bytes(range(1, 17)).hex(), "span_id": bytes(range(9, 17)).hex(), "trace_state": "k=v",
         "attributes": {"link.kind": "follows_from", "weight": 2}},
        {"trace_id": bytes(range(17, 33)).hex(), "span_id": bytes(range(1, 9)).hex(), "trace_state": None,
         "attributes": {}},
    ]


def test_missing_service_name_and_odd_enums_and_reversed_times(agent_llm: dict[str, Any]) -> None:
    agent_llm["resource"] = {"telemetry.sdk.language": "python"}
    request = build_request([agent_llm])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    span.kind = 42  # an enum value from the future
    span.status.code = 7
    span.end_time_unix_nano = span.start_time_unix_nano - 1
    (row,) = normalize_request(request, "otlp").spans.to_pylist()
    assert row["service_name"] == "unknown_service"
    assert (row["kind"], row["status_code"]) == ("UNSPECIFIED", "UNSET")
    assert row["duration_ns"] is None
    assert row["scope_name"] is None


# -------------------------------------------------------------------------------------- invalid ids


def test_spans_with_invalid_ids_are_rejected_not_the_request(halo_llm: dict[str, Any]) -> None:
    good = dict(halo_llm)
    variants = {
        "zero trace": {**halo_llm, "trace_id": bytes(16), "span_id": b"\x01" * 8},
        "short trace": {**halo_llm, "trace_id": b"\x01" * 8, "span_id": b"\x02" * 8},
        "zero span": {**halo_llm, "span_id": bytes(8)},
        "long span": {**halo_llm, "span_id": b"\x03" * 16},
        "bad parent": {**halo_llm, "span_id": b"\x04" * 8, "parent_span_id": b"\x05" * 4},
    }
    zero_parent = {**halo_llm, "span_id": b"\x06" * 8, "parent_span_id": bytes(8)}
    batch = normalize_request(build_request([good, *variants.values(), zero_parent]), "otlp")
    assert batch.rejected == len(variants)
    assert batch.rejection_reason == "trace_id must be 16 bytes and not all zero"
    rows = rows_by_span_id(batch)
    assert set(rows) == {good["span_id"].hex(), (b"\x06" * 8).hex()}
    assert rows[(b"\x06" * 8).hex()]["parent_span_id"] is None  # an all-zero parent means no parent
    only_bad_parent = normalize_request(build_request([variants["bad parent"]]), "otlp")
    assert (only_bad_parent.num_spans, only_bad_parent.rejected) == (0, 1)
    assert only_bad_parent.rejection_reason == "parent_span_id must be empty or 8 bytes"


def test_protobuf_wire_round_trip_gives_the_same_rows() -> None:
    spans = load_halo(HALO_FILES[-1])
    request = build_request(spans)
    direct = normalize_request(request, "otlp").spans
    decoded = normalize_request(otlp.decode_protobuf(request.SerializeToString()), "otlp").spans
    assert decoded.equals(direct)
    with pytest.raises(InvalidPayload):
        otlp.decode_protobuf(b"\xff\xff\xff not protobuf")


# ------------------------------------------------------------------------------------------ OTLP/JSON


def otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """The request as OTLP/JSON: protobuf's JSON mapping with ids as hex instead of base64."""
    document: dict[str, Any] = json_format.MessageToDict(request)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def snake_case(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in key)
            # attribute keys live under "key" values, never as dict keys, so renaming keys is safe
            out[snake] = snake_case(item)
        return out
    if isinstance(value, list):
        return [snake_case(item) for item in value]
    return value


def test_decode_json_hex_ids_camel_case_enum_names() -> None:
    request = build_request(load_halo(HALO_FILES[-1]))
    document = otlp_json(request)
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(first["traceId"]) == 32 and first["kind"].startswith("SPAN_KIND_")
    decoded = otlp.decode_json(json.dumps(document).encode())
    assert normalize_request(decoded, "otlp").spans.equals(normalize_request(request, "otlp").spans)
    # str and already-parsed dict bodies are accepted too
    assert otlp.decode_json(json.dumps(document)) == decoded
    assert otlp.decode_json(otlp_json(request)) == decoded


def test_decode_json_snake_case_keys_and_enum_ints() -> None:
    request = build_request(load_any_agent(ANY_AGENT_FILES[0]))
    document = snake_case(otlp_json(request))
    spans = document["resource_spans"][0]["scope_spans"][0]["spans"]
    for span in spans:
        span["kind"] = Span.SpanKind.Value(span["kind"])
        if "status" in span and "code" in span["status"]:
            span["status"]["code"] = Status.StatusCode.Value(span["status"]["code"])
        span["start_time_unix_nano"] = int(span["start_time_unix_nano"])  # numbers as well as strings
    assert "trace_id" in spans[0] and isinstance(spans[0]["kind"], int)
    decoded = otlp.decode_json(json.dumps(document))
    assert normalize_request(decoded, "otlp").spans.equals(normalize_request(request, "otlp").spans)


def test_decode_json_invalid_hex_id_rejects_that_span_only() -> None:
    request = build_request(load_halo(HALO_FILES[-1]))
    document = otlp_json(request)
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    bad_ids = {spans[0]["spanId"], spans[1]["spanId"]}
    spans[0]["spanId"] = "zz" + spans[0]["spanId"][2:]
    spans[1]["traceId"] = "not hex at all"
    batch = normalize_request(otlp.decode_json(json.dumps(document)), "otlp")
    total = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert (batch.rejected, batch.num_spans) == (2, total - 2)
    assert not bad_ids & set(batch.spans.column("span_id").to_pylist())


@pytest.mark.parametrize(
    "body",
    [b"[]", b'"resourceSpans"', b"42", b"null", b"true", b"{", b"", b"\xff\xfe", '[{"resourceSpans": []}]'],
    ids=["array", "string", "number", "null", "bool", "truncated", "empty", "not utf8", "array str"],
)
def test_decode_json_non_object_body_is_invalid_payload(body: bytes | str) -> None:
    with pytest.raises(InvalidPayload) as info:
        otlp.decode_json(body)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize(
    "document",
    [
        {"resourceSpans": {"not": "a list"}},
        {"resourceSpans": [{"scopeSpans": "nope"}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"attributes": "key=value"}]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "yesterday"}]}]}]},
    ],
    ids=["resourceSpans object", "scopeSpans string", "name int", "attributes string", "bad time"],
)
def test_decode_json_structural_errors_are_invalid_payload(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayload):
        otlp.decode_json(json.dumps(document))


def test_decode_json_reads_every_otlp_field_back() -> None:
    """OTLP/JSON written from a request with every field and every AnyValue type set decodes to the
    same request (decode_json builds messages field by field; this keeps it complete)."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "svc"
    resource_spans.resource.dropped_attributes_count = 2
    scope_spans = resource_spans.scope_spans.add(schema_url="scope-schema")
    scope_spans.scope.name, scope_spans.scope.version = "scope", "1.0"
    scope_spans.scope.attributes.add(key="scope.attr").value.bool_value = False
    span = scope_spans.spans.add(
        trace_id=bytes(range(16)), span_id=bytes(range(8)), parent_span_id=bytes(range(8, 16)),
        trace_state="vendor=1", flags=257, name="everything", kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=2**62 + 1, end_time_unix_nano=2**62 + 999, dropped_attributes_count=3,
        dropped_events_count=4, dropped_links_count=5,
    )
    values = {
        "s": AnyValue(string_value="text"), "empty": AnyValue(string_value=""), "i": AnyValue(int_value=-(2**63)),
        "d": AnyValue(double_value=0.25), "b": AnyValue(bool_value=True), "bytes": AnyValue(bytes_value=b"\x00\xff"),
        "unset": AnyValue(),
    }
    for key, value in values.items():
        span.attributes.add(key=key).value.CopyFrom(value)
    nested = span.attributes.add(key="nested").value
    nested.array_value.values.add().kvlist_value.values.add(key="k").value.int_value = 7
    nested.array_value.values.add().array_value.SetInParent()
    event = span.events.add(time_unix_nano=2**62 + 5, name="exception", dropped_attributes_count=1)
    event.attributes.add(key="exception.message").value.string_value = "boom"
    link = span.links.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), trace_state="t", flags=1,
                          dropped_attributes_count=6)
    link.attributes.add(key="link.attr").value.double_value = 1.5
    span.status.code, span.status.message = Status.STATUS_CODE_ERROR, "failed"

    assert otlp.decode_json(otlp.encode_json_request(request)) == request
    # enum names and 64-bit integers as numbers are read too
    document = json.loads(otlp.encode_json_request(request))
    first = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    first["kind"], first["status"]["code"] = "SPAN_KIND_CLIENT", "STATUS_CODE_ERROR"
    first["startTimeUnixNano"] = int(first["startTimeUnixNano"])
    assert otlp.decode_json(json.dumps(document)) == request


def test_decode_json_empty_object_is_an_empty_request() -> None:
    assert normalize_request(otlp.decode_json(b"{}"), "otlp").num_spans == 0


def test_decode_by_content_type() -> None:
    request = build_request(load_halo(HALO_FILES[-1]))
    assert otlp.decode(request.SerializeToString(), "application/x-protobuf") == request
    assert otlp.decode(json.dumps(otlp_json(request)).encode(), "application/json; charset=utf-8") == request
    with pytest.raises(InvalidPayload) as info:
        otlp.decode(b"", "text/plain")
    assert info.value.reason == "media_type"


# ----------------------------------------------------------------------------------------------- gzip


def test_gunzip_round_trip_and_exact_limit() -> None:
    payload = build_request(load_halo(HALO_FILES[-1])).SerializeToString()
    assert otlp.gunzip(gzip.compress(payload), len(payload)) == payload


def test_gunzip_bomb_is_refused_as_too_large() -> None:
    bomb = gzip.compress(b"\0" * (64 * 2**20))  # 64 MiB of zeros, ~64 KiB compressed
    assert len(bomb) < 2**20
    with pytest.raises(InvalidPayload) as info:
        otlp.gunzip(bomb, 2**20)
    assert info.value.reason == "too_large"
    with pytest.raises(InvalidPayload) as info:
        otlp.gunzip(gzip.compress(b"x" * 101), 100)  # one byte over
    assert info.value.reason == "too_large"


def test_gunzip_truncated_and_garbage_are_malformed() -> None:
    compressed = gzip.compress(b"some OTLP bytes " * 1000)
    for broken in (compressed[:-4], compressed[: len(compressed) // 2], compressed[:5]):
        with pytest.raises(InvalidPayload) as info:
            otlp.gunzip(broken, 2**20)
        assert info.value.reason == "malformed"
    with pytest.raises(InvalidPayload) as info:
        otlp.gunzip(b"definitely not gzip", 2**20)
    assert info.value.reason == "malformed"
    corrupt = bytearray(compressed)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(InvalidPayload):
        otlp.gunzip(bytes(corrupt), 2**20)


def test_gunzip_data_after_the_stream_is_refused_not_dropped() -> None:
    # a second gzip member (pigz, concatenated streams) or trailing garbage must not be silently
    # ignored: the spans it carries would be lost while the client is told all went well
    for body in (gzip.compress(b"first member, ") + gzip.compress(b"second member"),
                 gzip.compress(b"payload") + b"trailing garbage"):
        with pytest.raises(InvalidPayload) as info:
            otlp.gunzip(body, 2**20)
        assert info.value.reason == "malformed"
        assert "after the end of the gzip stream" in info.value.message


def test_gunzip_rejects_raw_deflate() -> None:
    with pytest.raises(InvalidPayload):
        otlp.gunzip(zlib.compress(b"zlib, not gzip"), 2**20)


# ----------------------------------------------------------------------------------------------- docs


def test_semconv_doc_is_generated_from_the_mapping() -> None:
    doc = REPO / "docs" / "semconv.md"
    assert doc.read_text(encoding="utf-8") == mapping_markdown(), (
        "docs/semconv.md is stale: python -m halod.normalize --markdown > docs/semconv.md")


def test_an_empty_string_attribute_does_not_shadow_the_next_key() -> None:
    """First present wins, and an empty value is not present (61 of the 65 halo-engine fixture spans
    carry inference.agent_name = "")."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="agent"
    )
    for key, value in (("agent.name", ""), ("gen_ai.agent.name", "booker"), ("llm.model_name", "")):
        span.attributes.add(key=key).value.string_value = value
    row = normalize_request(request, "test").spans.to_pylist()[0]
    assert row["agent_name"] == "booker"
    assert row["model_name"] is None
    assert json.loads(row["attributes"]) == {"agent.name": "", "gen_ai.agent.name": "booker", "llm.model_name": ""}


def test_a_time_beyond_int64_nanoseconds_rejects_that_span_only() -> None:
    """OTLP times are fixed64; the store keeps signed 64-bit nanoseconds. A span past the year 2262
    is rejected (partial success) and the rest of the request is kept."""
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="ok",
              start_time_unix_nano=1, end_time_unix_nano=2)
    spans.add(trace_id=bytes(range(1, 17)), span_id=bytes(range(2, 10)), name="far future",
              start_time_unix_nano=1, end_time_unix_nano=2**64 - 1)
    batch = normalize_request(request, "test")
    assert batch.spans.column("name").to_pylist() == ["ok"]
    assert batch.rejected == 1
    assert "2262" in batch.rejection_reason
