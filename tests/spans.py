"""Span material shared by the end-to-end tests: real attribute sets from the recorded fixtures,
and finished OpenTelemetry SDK spans to hand to the real OTLP exporters."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import FIXTURES

HALO = FIXTURES / "halo-engine" / "realistic_traces.jsonl"


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """Attributes an SDK span accepts (the recorded files carry JSON nulls, which OTel has no value for)."""
    return {key: value for key, value in attributes.items() if value is not None}


def halo_spans() -> list[dict[str, Any]]:
    return [json.loads(line) for line in HALO.read_text().splitlines() if line.strip()]


def halo_attributes(kind: str, *, with_output: bool = False) -> dict[str, Any]:
    """The attributes of the first OpenInference span of `kind` in the halo-engine recording."""
    for span in halo_spans():
        attributes = span["attributes"]
        if attributes.get("openinference.span.kind") == kind and (not with_output or "output.value" in attributes):
            return _clean(attributes)
    raise AssertionError(f"no {kind} span in {HALO}")


def any_agent_attributes(operation: str, index: int = 0, framework: str = "OPENAI") -> dict[str, Any]:
    """The attributes of the `index`-th span whose gen_ai.operation.name is `operation` in the
    any-agent recording of `framework` (OPENAI, LANGCHAIN, AGNO, ...)."""
    path = FIXTURES / "any-agent" / f"{framework}_trace.json"
    spans = [span for span in json.loads(path.read_text())["spans"]
             if span["attributes"].get("gen_ai.operation.name") == operation]
    return _clean(spans[index]["attributes"])


def sdk_spans(specs: list[tuple[str, dict[str, Any]]], service: str = "e2e") -> list[ReadableSpan]:
    """Finished SDK spans of one trace: the first spec is the root, the others its children."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("halod-e2e", "1.2.3")
    (root_name, root_attributes), *children = specs
    root = tracer.start_span(root_name, kind=trace_api.SpanKind.INTERNAL, attributes=root_attributes)
    context = trace_api.set_span_in_context(root)
    for name, attributes in children:
        tracer.start_span(name, context=context, kind=trace_api.SpanKind.CLIENT, attributes=attributes).end()
    root.end()
    *ended_children, ended_root = memory.get_finished_spans()  # in end order: the root ends last
    provider.shutdown()
    assert len(ended_children) == len(children)
    return [ended_root, *ended_children]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """(trace_id, span_id) of an SDK span, as halod stores them."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
