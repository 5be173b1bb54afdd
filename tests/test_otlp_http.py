"""End to end: OTLP/HTTP into a running halod, read back through `halod query`.

The real OpenTelemetry SDK HTTP exporter (protobuf, plain and gzip) and hand-written requests
(OTLP/JSON, malformed bodies, wrong media types, size limits, gzip bombs, bad tokens) against a
daemon on free 127.0.0.1 ports; refusals are checked in the response, the store and /metrics.
"""

from __future__ import annotations

import gzip
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.conftest import Daemon
from tests.spans import any_agent_attributes, hex_ids, sdk_spans

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip()

    def rpc_status(self) -> status_pb2.Status:
        """The google.rpc.Status of an error reply, decoded by the reply's own content type."""
        if self.content_type == JSON:
            document = json.loads(self.body)
            return status_pb2.Status(code=document.get("code", 0), message=document.get("message", ""))
        assert self.content_type == PROTOBUF, self.headers
        return status_pb2.Status.FromString(self.body)


def post(url: str, body: bytes, content_type: str | None, headers: dict[str, str] | None = None,
         compress: bool = False) -> Reply:
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    if compress:
        body = gzip.compress(body)
        all_headers["Content-Encoding"] = "gzip"
    request = urllib.request.Request(url, data=body, method="POST", headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


# -- request builders ------------------------------------------------------------------------------------


def raw_request(names: list[str], service: str = "e2e-http", payload: str = "") -> ExportTraceServiceRequest:
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    scope = resource_spans.scope_spans.add()
    for name in names:
        span = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=name, start_time_unix_nano=now - 1000,
                    end_time_unix_nano=now)
        if payload:
            span.attributes.append(KeyValue(key="input.value", value=AnyValue(string_value=payload)))
        scope.spans.append(span)
    return request


def json_span(name: str, trace_id: str | None = None, span_id: str | None = None, **extra: Any) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "traceId": trace_id if trace_id is not None else os.urandom(16).hex(),
        "spanId": span_id if span_id is not None else os.urandom(8).hex(),
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(now - 5_000_000),
        "endTimeUnixNano": str(now),
        **extra,
    }


def json_request(spans: list[dict[str, Any]], service: str = "e2e-json") -> dict[str, Any]:
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "json-client", "version": "0.9"}, "spans": spans}],
    }]}


# -- tests -------------------------------------------------------------------------------------------------


def test_sdk_http_exporter_protobuf_plain_and_gzip(daemon: Daemon) -> None:
    call_llm = any_agent_attributes("call_llm", framework="LANGCHAIN")
    execute_tool = any_agent_attributes("execute_tool", framework="LANGCHAIN")
    first = sdk_spans([("call_llm", call_llm)], service="langchain-agent")
    second = sdk_spans([("execute_tool", execute_tool)], service="langchain-agent")
    plain = OTLPSpanExporter(endpoint=daemon.http_url)
    zipped = OTLPSpanExporter(endpoint=daemon.http_url, compression=Compression.Gzip)
    try:
        assert plain.export(first) == SpanExportResult.SUCCESS
        assert zipped.export(second) == SpanExportResult.SUCCESS
    finally:
        plain.shutdown()
        zipped.shutdown()
    rows = {r["span_id"]: r for r in daemon.query(
        "SELECT span_id, service_name, semantic_kind, model_name, prompt_tokens, completion_tokens, tool_name, "
        "tool_arguments, output_text, source FROM spans")}
    assert set(rows) == {hex_ids(first[0])[1], hex_ids(second[0])[1]}
    llm, tool = rows[hex_ids(first[0])[1]], rows[hex_ids(second[0])[1]]
    assert llm["service_name"] == "langchain-agent" and llm["source"] == "otlp"
    assert (llm["semantic_kind"], llm["model_name"]) == ("LLM", call_llm["gen_ai.request.model"])
    assert (llm["prompt_tokens"], llm["completion_tokens"]) == (
        call_llm["gen_ai.usage.input_tokens"], call_llm["gen_ai.usage.output_tokens"])
    assert (tool["semantic_kind"], tool["tool_name"]) == ("TOOL", execute_tool["gen_ai.tool.name"])
    assert tool["tool_arguments"] == execute_tool["gen_ai.tool.args"]
    assert tool["output_text"] == execute_tool["gen_ai.output"]
    assert daemon.metric("halod_receiver_accepted_spans_total", receiver="otlp", transport="http") == 2


def test_protobuf_reply_is_protobuf(daemon: Daemon) -> None:
    request = raw_request(["pb-1", "pb-2"])
    for compress in (False, True):
        reply = post(daemon.http_url, request.SerializeToString(), PROTOBUF, compress=compress)
        assert reply.status == 200, reply
        assert reply.content_type == PROTOBUF
        response = ExportTraceServiceResponse.FromString(reply.body)
        assert not response.HasField("partial_success")
    # The same request twice: the retry is acknowledged and stored once.
    rows = daemon.query("SELECT name, count(*) AS n FROM spans GROUP BY name ORDER BY name")
    assert rows == [{"name": "pb-1", "n": 1}, {"name": "pb-2", "n": 1}]


def test_otlp_json_plain_and_gzip(daemon: Daemon) -> None:
    trace_id = os.urandom(16).hex()
    root_id, child_id = os.urandom(8).hex(), os.urandom(8).hex()
    root = json_span("agent-run", trace_id.upper(), root_id.upper(), kind=2,
                     attributes=[{"key": "openinference.span.kind", "value": {"stringValue": "AGENT"}},
                                 {"key": "agent.name", "value": {"stringValue": "planner"}}])
    child = json_span(
        "llm-call", trace_id, child_id, parentSpanId=root_id, kind=3,
        status={"code": 2, "message": "rate limited"},
        attributes=[
            {"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
            {"key": "llm.model_name", "value": {"stringValue": "claude-test"}},
            {"key": "llm.token_count.prompt", "value": {"intValue": "120"}},
            {"key": "llm.token_count.completion", "value": {"intValue": 30}},
            {"key": "llm.temperature", "value": {"doubleValue": 0.25}},
            {"key": "llm.stream", "value": {"boolValue": True}},
            {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
        ],
        events=[{"timeUnixNano": str(time.time_ns()), "name": "retry",
                 "attributes": [{"key": "attempt", "value": {"intValue": "1"}}]}],
    )
    plain = post(daemon.http_url, json.dumps(json_request([root])).encode(), JSON)
    zipped = post(daemon.http_url, json.dumps(json_request([child])).encode(), "application/json; charset=utf-8",
                  compress=True)
    for reply in (plain, zipped):
        assert reply.status == 200, reply
        assert reply.content_type == JSON
        assert json.loads(reply.body) == {}  # no partialSuccess: everything was stored
    rows = {r["span_id"]: r for r in daemon.query(
        "SELECT trace_id, span_id, parent_span_id, name, kind, semantic_kind, service_name, scope_name, "
        "scope_version, agent_name, model_name, prompt_tokens, completion_tokens, total_tokens, status_code, "
        "status_message, attributes, events, duration_ns FROM spans")}
    assert set(rows) == {root_id, child_id}
    stored_root, stored_child = rows[root_id], rows[child_id]
    assert stored_root["trace_id"] == stored_child["trace_id"] == trace_id  # upper-case hex stored lower-case
    assert stored_root["parent_span_id"] is None and stored_child["parent_span_id"] == root_id
    assert (stored_root["kind"], stored_root["semantic_kind"], stored_root["agent_name"]) == ("SERVER", "AGENT",
                                                                                              "planner")
    assert (stored_child["service_name"], stored_child["scope_name"], stored_child["scope_version"]) == (
        "e2e-json", "json-client", "0.9")
    assert (stored_child["kind"], stored_child["semantic_kind"], stored_child["model_name"]) == ("CLIENT", "LLM",
                                                                                                 "claude-test")
    assert (stored_child["prompt_tokens"], stored_child["completion_tokens"], stored_child["total_tokens"]) == (
        120, 30, 150)
    assert (stored_child["status_code"], stored_child["status_message"]) == ("ERROR", "rate limited")
    assert stored_child["duration_ns"] == 5_000_000
    attributes = json.loads(stored_child["attributes"])
    assert attributes["llm.temperature"] == 0.25 and attributes["llm.stream"] is True
    assert attributes["tags"] == ["a", 2]
    [event] = json.loads(stored_child["events"])
    assert event["name"] == "retry" and event["attributes"] == {"attempt": 1}


def test_malformed_and_unsupported_bodies(daemon: Daemon) -> None:
    valid = raw_request(["control"]).SerializeToString()
    bad_protobuf = post(daemon.http_url, b"\x0a\x05abc", PROTOBUF)
    assert bad_protobuf.status == 400
    assert bad_protobuf.content_type == PROTOBUF
    status = bad_protobuf.rpc_status()
    assert status.code == 3 and "protobuf" in status.message

    for body, words in ((b'{"resourceSpans": [', "JSON"), (b'{"resourceSpans": 5}', "resourceSpans"),
                        (b"[1, 2]", "object")):
        reply = post(daemon.http_url, body, JSON)
        assert reply.status == 400, (body, reply)
        assert reply.content_type == JSON
        status = reply.rpc_status()
        assert status.code == 3 and words in status.message, (body, status.message)

    bad_gzip = post(daemon.http_url, b"not gzip at all", PROTOBUF, headers={"Content-Encoding": "gzip"})
    assert bad_gzip.status == 400 and "gzip" in bad_gzip.rpc_status().message

    unsupported = post(daemon.http_url, valid, "text/plain")
    assert unsupported.status == 415
    assert "content type" in unsupported.rpc_status().message

    assert post(daemon.http_url, valid, PROTOBUF).status == 200
    assert [r["name"] for r in daemon.query("SELECT name FROM spans")] == ["control"]
    assert daemon.metric("halod_receiver_refused_requests_total", transport="http", reason="malformed") == 5
    assert daemon.metric("halod_receiver_refused_requests_total", transport="http", reason="media_type") == 1
    assert daemon.metric("halod_receiver_accepted_spans_total", receiver="otlp", transport="http") == 1


def test_body_size_limit_and_gzip_bomb(make_daemon: Any) -> None:
    daemon = make_daemon({"receivers": {"otlp": {"protocols": {"http": {"max_request_body_size": 1024}}}}})
    oversize = raw_request(["too-big"], payload="x" * 2000).SerializeToString()
    assert len(oversize) > 1024
    reply = post(daemon.http_url, oversize, PROTOBUF)
    assert reply.status == 413, reply
    assert "1024" in reply.rpc_status().message

    # Under 1 KiB of gzip that inflates to a 700 kB protobuf: refused while inflating, nothing decoded.
    bomb = raw_request(["bomb"], payload="A" * 700_000).SerializeToString()
    assert len(gzip.compress(bomb)) < 1024
    reply = post(daemon.http_url, bomb, PROTOBUF, compress=True)
    assert reply.status == 413, reply
    assert "decompressed" in reply.rpc_status().message

    # Compressed below the limit but above it once inflated: the limit applies to the inflated size.
    inflated = raw_request(["inflates-past"], payload="y" * 1500).SerializeToString()
    assert len(gzip.compress(inflated)) < 1024 < len(inflated)
    assert post(daemon.http_url, inflated, PROTOBUF, compress=True).status == 413

    fits = raw_request(["fits"], payload="z" * 500).SerializeToString()
    assert len(fits) < 1024
    assert post(daemon.http_url, fits, PROTOBUF).status == 200
    assert post(daemon.http_url, raw_request(["fits-gzip"], payload="w" * 500).SerializeToString(), PROTOBUF,
                compress=True).status == 200
    assert sorted(r["name"] for r in daemon.query("SELECT name FROM spans")) == ["fits", "fits-gzip"]
    assert daemon.metric("halod_receiver_refused_requests_total", transport="http", reason="too_large") == 3


def test_json_partial_success_for_invalid_ids(daemon: Daemon) -> None:
    good = [json_span(f"good-{i}") for i in range(2)]
    bad = [
        json_span("zero-trace", trace_id="0" * 32),
        json_span("short-span", span_id=os.urandom(7).hex()),
        json_span("not-hex", span_id="zz" * 8),
    ]
    reply = post(daemon.http_url, json.dumps(json_request([bad[0], good[0], bad[1], good[1], bad[2]])).encode(), JSON)
    assert reply.status == 200, reply
    assert reply.content_type == JSON
    partial = json.loads(reply.body)["partialSuccess"]
    assert int(partial["rejectedSpans"]) == len(bad)
    assert partial["errorMessage"]
    rows = daemon.query("SELECT span_id, name FROM spans")
    assert {(r["span_id"], r["name"]) for r in rows} == {(s["spanId"], s["name"]) for s in good}
    assert daemon.metric("halod_receiver_refused_spans_total", transport="http", reason="invalid_span") == len(bad)


def test_bearer_token(make_daemon: Any) -> None:
    token = "http-e2e-token-91c2"
    daemon = make_daemon({"receivers": {"otlp": {"protocols": {"http": {"auth": {"bearer_token": token}}}}}})
    body = raw_request(["unauthenticated"]).SerializeToString()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        reply = post(daemon.http_url, body, PROTOBUF, headers=headers)
        assert reply.status == 401, (headers, reply)
        assert reply.headers.get("WWW-Authenticate", "").startswith("Bearer")
        assert reply.rpc_status().code == 16
    json_reply = post(daemon.http_url, json.dumps(json_request([json_span("json-unauthenticated")])).encode(), JSON)
    assert json_reply.status == 401 and json_reply.content_type == JSON

    rejected = sdk_spans([("sdk-wrong-token", {})], service="auth")
    accepted = sdk_spans([("sdk-right-token", {})], service="auth")
    wrong = OTLPSpanExporter(endpoint=daemon.http_url, headers={"Authorization": "Bearer nope"})
    right = OTLPSpanExporter(endpoint=daemon.http_url, headers={"Authorization": f"Bearer {token}"},
                             compression=Compression.Gzip)
    try:
        assert wrong.export(rejected) == SpanExportResult.FAILURE
        assert right.export(accepted) == SpanExportResult.SUCCESS
    finally:
        wrong.shutdown()
        right.shutdown()
    assert post(daemon.http_url, raw_request(["raw-right-token"]).SerializeToString(), PROTOBUF,
                headers={"Authorization": f"Bearer {token}"}).status == 200
    assert sorted(r["name"] for r in daemon.query("SELECT name FROM spans")) == ["raw-right-token", "sdk-right-token"]
    assert daemon.metric("halod_receiver_refused_requests_total", transport="http", reason="unauthenticated") == 5
