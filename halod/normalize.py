"""OTLP protobuf -> normalized span rows (the `SpanBatch` Arrow table every receiver produces).

This is the hot path of ingestion: per-span Python work is the bottleneck of the whole daemon
(GUIDE section 6), so the loop below does one pass over each span's attributes, one JSON encoding
(orjson) and a handful of dict lookups, and builds column lists that become one Arrow table.

Typed columns are read from both OpenInference and OTel GenAI conventions, including the variants
real frameworks emit. `SEMANTIC_FIELDS` is the mapping (first key present wins); docs/semconv.md is
generated from it (`python -m halod.normalize --markdown`), and a test keeps the two in sync.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from halod.model import SPAN_SCHEMA, SpanBatch

SPAN_KINDS = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODES = ("UNSET", "OK", "ERROR")
UNKNOWN_SERVICE = "unknown_service"

# Typed column -> attribute keys, in priority order (OpenInference first, then OTel GenAI, then the
# variants frameworks really emit: any-agent's gen_ai.tool.args / gen_ai.output, the HALO exporter's
# inference.*, OpenLLMetry's legacy gen_ai.prompt / gen_ai.completion).
SEMANTIC_FIELDS: dict[str, tuple[str, ...]] = {
    "model_name": (
        "llm.model_name", "gen_ai.response.model", "gen_ai.request.model", "inference.llm.model_name",
    ),
    "tool_name": ("tool.name", "gen_ai.tool.name"),
    "tool_arguments": ("tool.parameters", "gen_ai.tool.call.arguments", "gen_ai.tool.args"),
    "input_text": ("input.value", "gen_ai.input.messages", "gen_ai.prompt"),
    "output_text": (
        "output.value", "gen_ai.output.messages", "gen_ai.tool.call.result", "gen_ai.output", "gen_ai.completion",
    ),
    "prompt_tokens": (
        "llm.token_count.prompt", "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens",
        "inference.llm.input_tokens",
    ),
    "completion_tokens": (
        "llm.token_count.completion", "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens",
        "inference.llm.output_tokens",
    ),
    "total_tokens": ("llm.token_count.total", "gen_ai.usage.total_tokens"),
    "session_id": ("session.id", "gen_ai.conversation.id", "inference.session_id"),
    "user_id": ("user.id", "enduser.id", "inference.user_id"),
    "agent_name": ("agent.name", "gen_ai.agent.name", "inference.agent_name"),
}
_TOKEN_FIELDS = frozenset({"prompt_tokens", "completion_tokens", "total_tokens"})

# gen_ai.operation.name (and OpenLLMetry's traceloop.span.kind) -> semantic kind, used when a span
# has no openinference.span.kind. any-agent emits call_llm where the GenAI spec says chat.
GENAI_OPERATION_KINDS: dict[str, str] = {
    "chat": "LLM",
    "text_completion": "LLM",
    "generate_content": "LLM",
    "call_llm": "LLM",
    "completion": "LLM",
    "execute_tool": "TOOL",
    "invoke_agent": "AGENT",
    "create_agent": "AGENT",
    "embeddings": "EMBEDDING",
    "embedding": "EMBEDDING",
    "retrieval": "RETRIEVER",
}
TRACELOOP_KINDS: dict[str, str] = {"tool": "TOOL", "agent": "AGENT", "workflow": "CHAIN", "task": "CHAIN"}
SEMANTIC_KINDS = frozenset(
    {"LLM", "TOOL", "AGENT", "CHAIN", "RETRIEVER", "EMBEDDING", "RERANKER", "GUARDRAIL", "EVALUATOR", "PROMPT"}
)


def any_value(value: AnyValue) -> Any:
    """An OTLP AnyValue as plain JSON data (bytes become base64, as in OTLP JSON)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return value.string_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bool_value":
        return value.bool_value
    if which == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None


def attributes_dict(attributes: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in attributes}


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _integer(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def semantic_kind(attributes: dict[str, Any]) -> str:
    kind = attributes.get("openinference.span.kind")
    if isinstance(kind, str) and kind.upper() in SEMANTIC_KINDS:
        return kind.upper()
    operation = attributes.get("gen_ai.operation.name")
    if isinstance(operation, str) and operation.lower() in GENAI_OPERATION_KINDS:
        return GENAI_OPERATION_KINDS[operation.lower()]
    traceloop = attributes.get("traceloop.span.kind")
    if isinstance(traceloop, str) and traceloop.lower() in TRACELOOP_KINDS:
        return TRACELOOP_KINDS[traceloop.lower()]
    return "UNKNOWN"


_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)


_MAX_NS = 2**63 - 1  # the store keeps times as signed 64-bit nanoseconds (up to the year 2262)


def _check_span(trace_id: bytes, span_id: bytes, parent_span_id: bytes, start: int, end: int) -> str | None:
    """Why a span cannot be stored, or None. An all-zero parent is read as "no parent" (some SDKs)."""
    if len(trace_id) != 16 or not any(trace_id):
        return "trace_id must be 16 bytes and not all zero"
    if len(span_id) != 8 or not any(span_id):
        return "span_id must be 8 bytes and not all zero"
    if len(parent_span_id) not in (0, 8):
        return "parent_span_id must be empty or 8 bytes"
    if start > _MAX_NS or end > _MAX_NS:
        return "start or end time is after the year 2262 (beyond 64-bit signed nanoseconds)"
    return None


def normalize_request(request: ExportTraceServiceRequest, source: str) -> SpanBatch:
    """Flatten one ExportTraceServiceRequest into a `SpanBatch`; spans that cannot be stored are rejected.

    Never raises on span content: anything the OTLP schema allows is stored, and what it does not
    (bad ids) is counted in `rejected` with the first reason, for OTLP partial success.

    The per-span loop is the daemon's hottest Python code, so the typed-column rules live inline here
    (no per-span dict or function call in the common case; 11.6 us/span against 16.2 with helper
    functions, docs/benchmarks.md): `SEMANTIC_FIELDS` first-present-wins, token counts parsed as
    integers, other non-string values as JSON text, a TOOL span's arguments falling back to its
    input, and total tokens computed from prompt + completion. bench/ingest.py --normalize-only
    measures it.
    """
    columns: dict[str, list[Any]] = {name: [] for name in SPAN_SCHEMA.names}
    (trace_ids, span_ids, parent_ids, trace_states, names, kinds, semantic_kinds, services, starts, ends,
     durations, status_codes, status_messages, attributes_json, resources_json, scope_names, scope_versions,
     events_json, links_json, flags_col, dropped_col) = (
        columns[name] for name in (
            "trace_id", "span_id", "parent_span_id", "trace_state", "name", "kind", "semantic_kind",
            "service_name", "start_ns", "end_ns", "duration_ns", "status_code", "status_message", "attributes",
            "resource_attributes", "scope_name", "scope_version", "events", "links", "flags", "dropped_counts",
        )
    )
    # The typed columns in SEMANTIC_FIELDS order: (attribute keys by priority, column list, is a token count).
    semantic_plan = [(keys, columns[column], column in _TOKEN_FIELDS) for column, keys in SEMANTIC_FIELDS.items()]
    tool_arguments, input_text = columns["tool_arguments"], columns["input_text"]
    prompt_tokens, completion_tokens, total_tokens = (
        columns["prompt_tokens"], columns["completion_tokens"], columns["total_tokens"]
    )
    rejected = 0
    reason = ""
    for resource_spans in request.resource_spans:
        resource = attributes_dict(resource_spans.resource.attributes)
        service = resource.get("service.name")
        service = service if isinstance(service, str) and service else UNKNOWN_SERVICE
        resource_json = _json(resource)
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name or None
            scope_version = scope_spans.scope.version or None
            for span in scope_spans.spans:
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                # Cheap test of _check_span's rules; _check_span itself runs only for a span that fails it.
                if not (len(trace_id) == 16 and len(span_id) == 8 and (not parent or len(parent) == 8)
                        and trace_id != _ZERO_TRACE_ID and span_id != _ZERO_SPAN_ID
                        and start <= _MAX_NS and end <= _MAX_NS):
                    problem = _check_span(trace_id, span_id, parent, start, end)
                    if problem is not None:
                        rejected += 1
                        reason = reason or problem
                        continue
                # any_value() with a fast path: a non-empty string_value means the oneof holds a
                # string; anything else ("" or another type) goes through any_value().
                attributes = {}
                for kv in span.attributes:
                    value = kv.value
                    text = value.string_value
                    attributes[kv.key] = text if text else any_value(value)
                kind = semantic_kind(attributes)
                trace_ids.append(trace_id.hex())
                span_ids.append(span_id.hex())
                parent_ids.append(parent.hex() if parent and parent != _ZERO_SPAN_ID else None)
                trace_states.append(span.trace_state or None)
                names.append(span.name)
                span_kind = span.kind
                kinds.append(SPAN_KINDS[span_kind] if 0 <= span_kind < len(SPAN_KINDS) else "UNSPECIFIED")
                semantic_kinds.append(kind)
                services.append(service)
                starts.append(start)
                ends.append(end)
                durations.append(end - start if end >= start else None)
                status = span.status
                code = status.code
                status_codes.append(STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else "UNSET")
                status_messages.append(status.message or None)
                # The typed columns, appended straight to their lists (first attribute present wins).
                get = attributes.get
                for keys, values, is_token in semantic_plan:
                    value = None
                    for key in keys:
                        candidate = get(key)
                        if candidate is not None and candidate != "":  # an empty string counts as absent
                            value = candidate
                            break
                    if is_token:
                        values.append(_integer(value))
                    else:  # text columns take strings as they are, other values as JSON text
                        values.append(value if value is None or isinstance(value, str) else _json(value))
                if kind == "TOOL" and tool_arguments[-1] is None:
                    tool_arguments[-1] = input_text[-1]
                if total_tokens[-1] is None and prompt_tokens[-1] is not None and completion_tokens[-1] is not None:
                    total_tokens[-1] = prompt_tokens[-1] + completion_tokens[-1]
                attributes_json.append(_json(attributes))
                resources_json.append(resource_json)
                scope_names.append(scope_name)
                scope_versions.append(scope_version)
                events = span.events
                events_json.append(_events(events) if events else None)
                links = span.links
                links_json.append(_links(links) if links else None)
                flags_col.append(span.flags)
                dropped = (span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count)
                dropped_col.append(
                    _json(dict(zip(("attributes", "events", "links"), dropped, strict=True))) if any(dropped) else None
                )
    table = pa.Table.from_pydict(columns, schema=SPAN_SCHEMA)
    return SpanBatch(spans=table, source=source, rejected=rejected, rejection_reason=reason)


def _events(events: Iterable[Any]) -> str:
    return _json([
        {"name": event.name, "time_ns": event.time_unix_nano, "attributes": attributes_dict(event.attributes)}
        for event in events
    ])


def _links(links: Iterable[Any]) -> str:
    return _json([
        {
            "trace_id": link.trace_id.hex(),
            "span_id": link.span_id.hex(),
            "trace_state": link.trace_state or None,
            "attributes": attributes_dict(link.attributes),
        }
        for link in links
    ])


def mapping_markdown() -> str:
    """docs/semconv.md: the attribute mapping, generated from the tables above."""
    lines = [
        "# Semantic convention mapping",
        "",
        "Generated by `python -m halod.normalize --markdown` from `halod/normalize.py`; a test keeps it in sync.",
        "Every attribute is also kept verbatim in the `attributes` JSON column.",
        "",
        "## Typed columns",
        "",
        "The first attribute present wins.",
        "",
        "| column | attributes, in priority order |",
        "|---|---|",
    ]
    for column, keys in SEMANTIC_FIELDS.items():
        lines.append(f"| `{column}` | {', '.join(f'`{key}`' for key in keys)} |")
    lines += [
        "",
        "An attribute whose value is an empty string counts as absent.",
    "",
    "Fallbacks: a TOOL span with none of the tool-argument attributes takes `input_text` as its arguments",
        "(several OpenInference instrumentors record tool input only as `input.value`); `total_tokens` is",
        "`prompt_tokens + completion_tokens` when only those two are reported. Token values that arrive as",
        "strings are parsed; other non-string values of text columns are stored as JSON text.",
        "",
        "## `semantic_kind`",
        "",
        "1. `openinference.span.kind`, upper-cased, when it is one of "
        + ", ".join(f"`{kind}`" for kind in sorted(SEMANTIC_KINDS)) + ";",
        "2. else `gen_ai.operation.name`:",
        "",
        "| gen_ai.operation.name | semantic_kind |",
        "|---|---|",
    ]
    lines += [f"| `{operation}` | {kind} |" for operation, kind in GENAI_OPERATION_KINDS.items()]
    lines += ["", "3. else OpenLLMetry's `traceloop.span.kind`:", "", "| traceloop.span.kind | semantic_kind |",
              "|---|---|"]
    lines += [f"| `{name}` | {kind} |" for name, kind in TRACELOOP_KINDS.items()]
    lines += ["", "4. else `UNKNOWN`.", "",
              "## Other columns", "",
              "`service_name` is the resource's `service.name` (`unknown_service` when absent). `kind` and",
              "`status_code` are the OTLP enum names without their prefixes. Ids are lower-case hex; a span whose",
              "trace id is not 16 bytes, whose span id is not 8 bytes, either of them all zero, or whose parent id",
              "is neither empty nor 8 bytes, or whose start or end time is past the year 2262 (64-bit signed",
              "nanoseconds), is rejected through OTLP partial success. An all-zero parent id is read as no parent.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(mapping_markdown())
    else:
        sys.exit("usage: python -m halod.normalize --markdown")
