"""End to end: OTLP/gRPC into a running halod, read back through `halod query`.

The real OpenTelemetry SDK exporter (plain, gzip, bearer token, TLS) and raw gRPC calls (malformed
and oversize payloads, invalid ids) against a daemon on free 127.0.0.1 ports. Span attributes come
from the recorded fixtures under shared/datasets/otel-fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import Compression, OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.conftest import Daemon
from tests.spans import any_agent_attributes, halo_attributes, hex_ids, sdk_spans

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TYPED = ("span_id, trace_id, parent_span_id, name, kind, semantic_kind, service_name, scope_name, model_name, "
         "tool_name, tool_arguments, input_text, output_text, prompt_tokens, completion_tokens, total_tokens, "
         "agent_name, status_code, attributes")


# -- fixture data -------------------------------------------------------------------------------------


# -- raw requests ---------------------------------------------------------------------------------------


def raw_span(name: str = "raw", trace_id: bytes | None = None, span_id: bytes | None = None,
             attributes: dict[str, str] | None = None) -> Span:
    now = time.time_ns()
    return Span(
        trace_id=os.urandom(16) if trace_id is None else trace_id,
        span_id=os.urandom(8) if span_id is None else span_id,
        name=name, kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=now - 1_000_000, end_time_unix_nano=now,
        attributes=[KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in (attributes or {}).items()],
    )


def raw_request(spans: list[Span], service: str = "e2e-raw") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans: ResourceSpans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    scope: ScopeSpans = resource_spans.scope_spans.add()
    scope.scope.name = "raw-client"
    scope.spans.extend(spans)
    return request


def raw_export(daemon: Daemon, body: bytes, metadata: tuple[tuple[str, str], ...] = (),
               channel: grpc.Channel | None = None) -> ExportTraceServiceResponse:
    """Call Export with `body` as is; raises grpc.RpcError on a non-OK status."""
    own = channel is None
    channel = channel or grpc.insecure_channel(daemon.grpc_endpoint)
    try:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        reply = call(body, metadata=metadata or None, timeout=30)
        return ExportTraceServiceResponse.FromString(reply)
    finally:
        if own:
            channel.close()


def rpc_error(daemon: Daemon, body: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        raw_export(daemon, body, metadata)
    return info.value


def stored_ids(daemon: Daemon) -> set[str]:
    return {row["span_id"] for row in daemon.query("SELECT span_id FROM spans")}


# -- the SDK exporter ------------------------------------------------------------------------------------


def test_sdk_exporter_plain_and_gzip_fill_typed_columns(daemon: Daemon) -> None:
    # OpenInference (halo-engine recording). Its LLM spans carry tokens but no model name or messages, so
    # those three OpenInference keys are added; one TOOL span gets tool.parameters, the other keeps only
    # input.value (the fallback the normalizer documents).
    agent = halo_attributes("AGENT")
    llm = {**halo_attributes("LLM"), "llm.model_name": "gpt-4.1-mini",
           "input.value": '[{"role": "user", "content": "List the python files"}]',
           "output.value": "I will call list_files."}
    tool_params = {**halo_attributes("TOOL", with_output=True), "tool.parameters": '{"pattern": "*.py"}'}
    tool_plain = halo_attributes("TOOL", with_output=True)
    openinference = sdk_spans([("agent.HaloCodeHelper", agent), ("response", llm), ("function.list_files", tool_params),
                               ("function.list_files.2", tool_plain)], service="halo-openai-agents-demo")
    # OTel GenAI (any-agent recording).
    invoke = any_agent_attributes("invoke_agent")
    call_llm = any_agent_attributes("call_llm")
    execute_tool = any_agent_attributes("execute_tool")
    genai = sdk_spans([("invoke_agent [any_agent]", invoke), ("call_llm mistral", call_llm),
                       ("execute_tool get_current_time", execute_tool)], service="any-agent-demo")

    gzip_exporter = OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=True, compression=Compression.Gzip)
    plain_exporter = OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=True)
    try:
        assert gzip_exporter.export(openinference) == SpanExportResult.SUCCESS
        assert plain_exporter.export(genai) == SpanExportResult.SUCCESS
    finally:
        gzip_exporter.shutdown()
        plain_exporter.shutdown()

    rows = {row["span_id"]: row for row in daemon.query(f"SELECT {TYPED} FROM spans")}
    sent = {hex_ids(span)[1]: span for span in [*openinference, *genai]}
    assert set(rows) == set(sent)
    for span_id, span in sent.items():
        row = rows[span_id]
        trace_id, _ = hex_ids(span)
        assert row["trace_id"] == trace_id
        assert row["name"] == span.name
        assert row["parent_span_id"] == (f"{span.parent.span_id:016x}" if span.parent else None)
        assert row["scope_name"] == "halod-e2e"
        assert json.loads(row["attributes"]) == json.loads(json.dumps(dict(span.attributes or {})))

    def row_of(spans: list[ReadableSpan], index: int) -> dict[str, Any]:
        return rows[hex_ids(spans[index])[1]]

    root = row_of(openinference, 0)
    assert root["semantic_kind"] == "AGENT"
    assert root["service_name"] == "halo-openai-agents-demo"
    assert root["parent_span_id"] is None
    assert root["agent_name"] == agent["agent.name"]

    row = row_of(openinference, 1)
    assert row["semantic_kind"] == "LLM"
    assert row["kind"] == "CLIENT"
    assert row["model_name"] == "gpt-4.1-mini"
    assert row["prompt_tokens"] == llm["llm.token_count.prompt"]
    assert row["completion_tokens"] == llm["llm.token_count.completion"]
    assert row["total_tokens"] == llm["llm.token_count.total"]
    assert row["input_text"] == llm["input.value"]
    assert row["output_text"] == "I will call list_files."

    row = row_of(openinference, 2)
    assert row["semantic_kind"] == "TOOL"
    assert row["tool_name"] == tool_params["tool.name"]
    assert row["tool_arguments"] == '{"pattern": "*.py"}'
    assert row["input_text"] == tool_params["input.value"]
    assert row["output_text"] == tool_params["output.value"]

    row = row_of(openinference, 3)
    assert row["tool_name"] == tool_plain["tool.name"]
    assert row["tool_arguments"] == tool_plain["input.value"]

    row = row_of(genai, 0)
    assert row["semantic_kind"] == "AGENT"
    assert row["service_name"] == "any-agent-demo"
    assert row["agent_name"] == invoke["gen_ai.agent.name"]
    assert row["model_name"] == invoke["gen_ai.request.model"]

    row = row_of(genai, 1)
    assert row["semantic_kind"] == "LLM"
    assert row["model_name"] == call_llm["gen_ai.request.model"]
    assert row["prompt_tokens"] == call_llm["gen_ai.usage.input_tokens"]
    assert row["completion_tokens"] == call_llm["gen_ai.usage.output_tokens"]
    assert row["total_tokens"] == call_llm["gen_ai.usage.input_tokens"] + call_llm["gen_ai.usage.output_tokens"]
    assert row["input_text"] == call_llm["gen_ai.input.messages"]
    assert row["output_text"] == call_llm["gen_ai.output"]

    row = row_of(genai, 2)
    assert row["semantic_kind"] == "TOOL"
    assert row["tool_name"] == execute_tool["gen_ai.tool.name"]
    assert row["tool_arguments"] == execute_tool["gen_ai.tool.args"]
    assert row["output_text"] == execute_tool["gen_ai.output"]
    assert row["model_name"] is None and row["prompt_tokens"] is None


# -- refusals ----------------------------------------------------------------------------------------------


def test_malformed_protobuf_is_invalid_argument_and_stores_nothing(daemon: Daemon) -> None:
    valid = raw_request([raw_span("control")]).SerializeToString()
    for body in (
        b"this is not a protobuf",  # wire type 6 in the first tag
        b"\x0a\x05abc",  # field 1, length 5, only 3 bytes follow
        valid[:-3],  # a real request cut short
    ):
        error = rpc_error(daemon, body)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert "protobuf" in (error.details() or "")
    # The daemon still stores a well-formed request afterwards, and only that one.
    control = ExportTraceServiceRequest.FromString(valid)
    assert not raw_export(daemon, valid).HasField("partial_success")
    assert stored_ids(daemon) == {control.resource_spans[0].scope_spans[0].spans[0].span_id.hex()}


def test_oversize_message_is_resource_exhausted_and_stores_nothing(make_daemon: Any) -> None:
    daemon = make_daemon({"receivers": {"otlp": {"protocols": {"grpc": {"max_recv_msg_size_mib": 1}}}}})
    big = raw_request([raw_span(f"big-{i}", attributes={"input.value": "x" * 100_000}) for i in range(12)])
    body = big.SerializeToString()
    assert len(body) > 2**20
    error = rpc_error(daemon, body)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    # Just under the limit is accepted: the limit is the configured 1 MiB, not something smaller.
    fits = raw_request([raw_span(f"fits-{i}", attributes={"input.value": "x" * 100_000}) for i in range(9)])
    assert len(fits.SerializeToString()) < 2**20
    raw_export(daemon, fits.SerializeToString())
    names = {row["name"] for row in daemon.query("SELECT name FROM spans")}
    assert names == {f"fits-{i}" for i in range(9)}


def test_invalid_ids_are_rejected_through_partial_success(daemon: Daemon) -> None:
    good = [raw_span(f"good-{i}") for i in range(3)]
    bad = [
        raw_span("zero-trace-id", trace_id=bytes(16)),
        raw_span("short-span-id", span_id=os.urandom(7)),
    ]
    request = raw_request([good[0], bad[0], good[1], bad[1], good[2]])
    response = raw_export(daemon, request.SerializeToString())
    assert response.partial_success.rejected_spans == len(bad)
    assert response.partial_success.error_message
    rows = daemon.query("SELECT trace_id, span_id, name FROM spans")
    assert {(r["trace_id"], r["span_id"], r["name"]) for r in rows} == {
        (s.trace_id.hex(), s.span_id.hex(), s.name) for s in good
    }


def test_bearer_token(make_daemon: Any) -> None:
    token = "grpc-e2e-token-7f3a"
    daemon = make_daemon({"receivers": {"otlp": {"protocols": {"grpc": {"auth": {"bearer_token": token}}}}}})
    body = raw_request([raw_span("raw-unauthenticated")]).SerializeToString()
    for metadata in ((), (("authorization", "Bearer wrong-token"),), (("authorization", token),)):
        error = rpc_error(daemon, body, metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (metadata, error)

    rejected = sdk_spans([("sdk-wrong-token", {"openinference.span.kind": "CHAIN"})])
    accepted = sdk_spans([("sdk-right-token", {"openinference.span.kind": "CHAIN"})])
    wrong = OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=True,
                             headers={"authorization": "Bearer not-the-token"})
    right = OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=True, compression=Compression.Gzip,
                             headers={"authorization": f"Bearer {token}"})
    try:
        assert wrong.export(rejected) == SpanExportResult.FAILURE
        assert right.export(accepted) == SpanExportResult.SUCCESS
    finally:
        wrong.shutdown()
        right.shutdown()
    rows = daemon.query("SELECT span_id, name FROM spans")
    assert {(r["span_id"], r["name"]) for r in rows} == {(hex_ids(accepted[0])[1], "sdk-right-token")}


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1/localhost (openssl: the cryptography package is not installed)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_tls(make_daemon: Any, tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    daemon = make_daemon({"receivers": {"otlp": {"protocols": {"grpc": {
        "tls": {"cert_file": str(cert), "key_file": str(key)}}}}}})
    spans = sdk_spans([("over-tls", {"openinference.span.kind": "LLM", "llm.model_name": "tls-model"})])
    exporter = OTLPSpanExporter(endpoint=daemon.grpc_endpoint, insecure=False, compression=Compression.Gzip,
                                credentials=grpc.ssl_channel_credentials(root_certificates=cert.read_bytes()))
    try:
        assert exporter.export(spans) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    # A plaintext client gets no answer from the TLS listener.
    with grpc.insecure_channel(daemon.grpc_endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as info:
            call(raw_request([raw_span("plaintext")]).SerializeToString(), timeout=5)
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    rows = daemon.query("SELECT span_id, name, model_name FROM spans")
    assert rows == [{"span_id": hex_ids(spans[0])[1], "name": "over-tls", "model_name": "tls-model"}]
