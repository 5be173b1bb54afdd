"""The `redact` processor and the `debug` exporter in a real halod, fed by the real OpenTelemetry SDK
OTLP/HTTP exporter; results are read back through `halod query` and the daemon's log."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from halod.components import ComponentID, CreateSettings, Kind, default_registry
from halod.config import StorageConfig
from halod.normalize import normalize_request
from halod.pipeline import StoreSink
from halod.store import SpanStore
from halod.telemetry import Telemetry
from tests.conftest import FIXTURES, Daemon

REPLACEMENT = "[REDACTED]"
HALO = [json.loads(line) for line in (FIXTURES / "halo-engine" / "realistic_traces.jsonl").read_text().splitlines()]


def fixture_attributes(kind: str) -> dict[str, Any]:
    """A real OpenInference attribute set of the given kind (nulls dropped: the SDK cannot send them)."""
    raw = next(span["attributes"] for span in HALO if span["attributes"]["openinference.span.kind"] == kind)
    return {key: value for key, value in raw.items() if value is not None}


def record(spans: list[tuple[str, dict[str, Any], Callable[[Any], None] | None]],
           service: str = "redact-test") -> list[ReadableSpan]:
    """Spans produced by the real SDK (ids, times, resource), captured for export."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("halod-tests", "1.0")
    with tracer.start_as_current_span("agent-turn"):
        for name, attributes, extra in spans:
            with tracer.start_as_current_span(name, attributes=attributes) as span:
                if extra is not None:
                    extra(span)
    provider.shutdown()
    return [span for span in memory.get_finished_spans() if span.name != "agent-turn"]


def export(daemon: Daemon, spans: list[ReadableSpan]) -> None:
    exporter = OTLPSpanExporter(endpoint=daemon.http_url)
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def hex_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.span_id, "016x")


# ------------------------------------------------------------------------------------------------ redact


def test_redact_processor_masks_secrets_before_the_store(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(overrides={
        "processors": {"redact": {"attributes": ["llm.input_messages.*.message.content", "user.email"]}},
        "service": {"pipelines": {"traces": {"processors": ["redact"]}}},
    })
    api_key = "sk-proj" + "A1b2C3d4E5f6G7h8I9j0KlMnOp"
    aws_key = "AKIA" + "ABCDEFGHIJKLMNOP"
    bearer = "Bearer " + "eyJhbGciOiJIUzI1NiJ9.payload.sig"

    llm = fixture_attributes("LLM")
    llm.update({
        "input.value": f"call the API with {api_key} please",
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "my password is hunter2",
        "llm.input_messages.1.message.role": "assistant",
        "llm.input_messages.1.message.content": "noted: correct-horse-battery",
        # near misses of the key glob stay as they are
        "llm.input_messages.0.message.content_type": "text/plain",
        "llm.output_messages.0.message.content": "the answer is 42",
        "llm.input_messages.0.message.contents.extra": "kept",
        "user.email": "alice@example.com",
        "user.email.verified": True,
        "cloud.credentials": f"found {aws_key} in env",
    })
    tool = fixture_attributes("TOOL")
    tool.update({
        "tool.parameters": json.dumps({"headers": {"Authorization": bearer}, "path": "/v1/items"}),
        "input.value": json.dumps({"path": "/v1/items"}),
    })

    def fail_with_secret(span: Any) -> None:
        span.add_event("retry", {"detail": f"retrying with {api_key}", "attempt": 2})
        span.set_status(Status(StatusCode.ERROR, f"401 for key {api_key}"))

    spans = record([("llm-call", llm, None), ("tool-call", tool, fail_with_secret)])
    export(daemon, spans)

    rows = {row["span_id"]: row for row in daemon.query(
        "SELECT span_id, attributes, input_text, output_text, tool_arguments, status_message, events FROM spans")}
    assert set(rows) == {hex_id(span) for span in spans}
    llm_row, tool_row = rows[hex_id(spans[0])], rows[hex_id(spans[1])]

    expected_llm = dict(llm)
    expected_llm["input.value"] = f"call the API with {REPLACEMENT} please"
    expected_llm["llm.input_messages.0.message.content"] = REPLACEMENT
    expected_llm["llm.input_messages.1.message.content"] = REPLACEMENT
    expected_llm["user.email"] = REPLACEMENT
    expected_llm["cloud.credentials"] = f"found {REPLACEMENT} in env"
    assert json.loads(llm_row["attributes"]) == expected_llm  # everything else untouched
    assert llm_row["input_text"] == f"call the API with {REPLACEMENT} please"
    assert llm_row["output_text"] is None

    stored_tool = json.loads(tool_row["attributes"])
    assert json.loads(stored_tool["tool.parameters"]) == {
        "headers": {"Authorization": REPLACEMENT}, "path": "/v1/items"}
    assert {k: v for k, v in stored_tool.items() if k != "tool.parameters"} == {
        k: v for k, v in tool.items() if k != "tool.parameters"}
    assert json.loads(tool_row["tool_arguments"]) == {"headers": {"Authorization": REPLACEMENT}, "path": "/v1/items"}
    assert tool_row["status_message"] == f"401 for key {REPLACEMENT}"
    (event,) = json.loads(tool_row["events"])
    assert event["attributes"] == {"detail": f"retrying with {REPLACEMENT}", "attempt": 2}

    # no secret survives anywhere in the stored rows
    everything = json.dumps(daemon.query("SELECT * FROM spans"))
    for secret in (api_key, aws_key, "hunter2", "correct-horse", "alice@example.com", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in everything


def test_redact_custom_patterns_and_replacement(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(overrides={
        "processors": {"redact/pii": {"patterns": [r"\b\d{3}-\d{2}-\d{4}\b", r"(?i)password=\S+?\b"],
                                      "replacement": "***"}},
        "service": {"pipelines": {"traces": {"processors": ["redact/pii"]}}},
    })
    tool = fixture_attributes("TOOL")
    tool["input.value"] = "lookup ssn 123-45-6789 with PASSWORD=swordfish now"
    tool["output.value"] = "sk-" + "x" * 30  # default patterns are replaced by the configured ones
    (span,) = record([("lookup", tool, None)])
    export(daemon, [span])
    (row,) = daemon.query("SELECT attributes, input_text, output_text, tool_arguments FROM spans")
    assert row["input_text"] == "lookup ssn *** with *** now"
    assert row["tool_arguments"] == row["input_text"]
    assert row["output_text"] == "sk-" + "x" * 30
    assert json.loads(row["attributes"])["input.value"] == "lookup ssn *** with *** now"


async def test_redact_pattern_never_breaks_the_json_columns(tmp_path: Path) -> None:
    """A user pattern that can run past the end of a value (\\S+, .*) must still leave valid JSON:
    otherwise the commit fails and the request is refused as retryable, so the client retries forever."""
    telemetry = Telemetry()
    store = SpanStore(StorageConfig(path=tmp_path / "halod.duckdb"), telemetry)
    await asyncio.to_thread(store.open)
    try:
        factory = default_registry().get(Kind.PROCESSOR, "redact")
        assert factory is not None
        config = factory.config_model.model_validate({"patterns": [r"token=\S+", r"key: .*"]})
        processor = factory.create(CreateSettings(ComponentID("redact"), "traces", telemetry), config,
                                   StoreSink(store, "traces"))
        request = ExportTraceServiceRequest()
        span = request.resource_spans.add().scope_spans.add().spans.add()
        span.trace_id, span.span_id = bytes(range(1, 17)), bytes(range(1, 9))
        span.start_time_unix_nano, span.end_time_unix_nano = 1, 2
        attributes = {**fixture_attributes("TOOL"), "input.value": "call with token=abc123", "note": "key: xyz"}
        for key, value in attributes.items():
            any_value = span.attributes.add(key=key).value
            if isinstance(value, int):
                any_value.int_value = value
            else:
                any_value.string_value = value
        result = await processor.consume(normalize_request(request, "otlp"))
        assert result.stored == 1
        ((stored,),) = (await asyncio.to_thread(store.query, "SELECT attributes FROM spans")).rows
        stored = json.loads(stored)
        assert set(stored) == set(attributes)
        assert "abc123" not in json.dumps(stored) and "xyz" not in json.dumps(stored)
        assert stored["tool.name"] == attributes["tool.name"]
    finally:
        await asyncio.to_thread(store.close)


# ------------------------------------------------------------------------------------------------- debug


def log_events(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    out = []
    for line in daemon.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            out.append(entry)
    return out


def wait_for_log(daemon: Daemon, predicate: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; log:\n{daemon.log()[-5000:]}")


def test_debug_exporter_logs_commits_and_skips_redelivered_spans(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(overrides={
        "exporters": {"debug": {"verbosity": "detailed"}},
        "service": {"pipelines": {"traces": {"exporters": ["debug"]}}},
    })
    first = record([("llm", fixture_attributes("LLM"), None), ("tool", fixture_attributes("TOOL"), None),
                    ("agent", fixture_attributes("AGENT"), None)], service="debug-test")
    export(daemon, first)
    wait_for_log(daemon, lambda: len(log_events(daemon, "committed spans")) >= 1, "the first commit line")
    (commit,) = log_events(daemon, "committed spans")
    assert (commit["spans"], commit["pipeline"], commit["source"], commit["exporter"]) == (3, "traces", "otlp", "debug")
    wait_for_log(daemon, lambda: len(log_events(daemon, "span")) >= 3, "the per-span lines")
    span_lines = {entry["span_id"]: entry for entry in log_events(daemon, "span")}
    assert set(span_lines) == {hex_id(span) for span in first}
    for span in first:
        line = span_lines[hex_id(span)]
        assert line["name"] == span.name and line["service_name"] == "debug-test"
        assert line["semantic_kind"] == span.attributes["openinference.span.kind"]
        assert line["trace_id"] == format(span.context.trace_id, "032x")
        assert line["status_code"] == "UNSET"

    # the same spans again: acknowledged and counted as duplicates, but no commit event
    export(daemon, first)
    # a new span afterwards; events are handled in order, so once its line is there, a line for the
    # redelivery would be there too
    (barrier,) = record([("after", fixture_attributes("CHAIN"), None)], service="debug-test")
    export(daemon, [barrier])
    wait_for_log(daemon, lambda: len(log_events(daemon, "committed spans")) >= 2, "the barrier commit line")
    commits = log_events(daemon, "committed spans")
    assert [entry["spans"] for entry in commits] == [3, 1]
    assert commits[1]["ingest_seq"] > commits[0]["ingest_seq"] + 1  # the redelivery took a seq of its own
    wait_for_log(daemon, lambda: len(log_events(daemon, "span")) >= 4, "the barrier span line")
    assert sorted(entry["span_id"] for entry in log_events(daemon, "span")) == sorted(
        [hex_id(span) for span in first] + [hex_id(barrier)])
    assert "halod_store_duplicate_spans_total 3.0" in daemon.metrics()
    assert daemon.query("SELECT count(*) AS n FROM spans") == [{"n": 4}]


def test_debug_exporter_basic_verbosity_logs_no_span_lines(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(overrides={
        "exporters": {"debug": None},
        "service": {"pipelines": {"traces": {"exporters": ["debug"]}}},
    })
    spans = record([("llm", fixture_attributes("LLM"), None), ("tool", fixture_attributes("TOOL"), None)])
    export(daemon, spans)
    wait_for_log(daemon, lambda: len(log_events(daemon, "committed spans")) >= 1, "the commit line")
    assert [entry["spans"] for entry in log_events(daemon, "committed spans")] == [2]
    assert daemon.stop() == 0  # drains the exporter queue: a span line would be logged by now
    assert log_events(daemon, "span") == []
