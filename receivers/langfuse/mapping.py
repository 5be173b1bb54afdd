"""Langfuse records -> OTLP spans with OpenInference attributes (halod.normalize then fills the typed
columns from them).

| Langfuse                         | span                                                                  |
|----------------------------------|-----------------------------------------------------------------------|
| trace                            | root span, `openinference.span.kind` AGENT, start `timestamp`, end    |
|                                  | `timestamp + latency`; `input.value`, `output.value`, `session.id`,   |
|                                  | `user.id`, `tag.tags`, `langfuse.url` (its page in Langfuse), ...     |
| observation GENERATION           | LLM: `llm.model_name`, `llm.token_count.prompt/completion/total`      |
|                                  | (usageDetails, else usage), `llm.invocation_parameters`               |
|                                  | (modelParameters), `llm.input_messages.*` / `llm.output_messages.*`   |
|                                  | (with tool calls) when input/output are chat messages                 |
| observation TOOL                 | TOOL: `tool.name` = name, `tool.parameters` = input (JSON text)       |
| AGENT, CHAIN, RETRIEVER,         | the OpenInference kind of the same name (AGENT also sets `agent.name`)|
| EMBEDDING, EVALUATOR, GUARDRAIL  |                                                                       |
| SPAN                             | CHAIN                                                                 |
| EVENT                            | a span of zero duration (start = end = startTime) under its parent,   |
|                                  | with no OpenInference kind: one record stays one span, so an event    |
|                                  | never waits for (or rewrites) a parent that came in another page      |
| level ERROR                      | status ERROR with statusMessage                                       |
| metadata                         | flattened into `langfuse.metadata.<key>[.<key>...]`                   |

Parents: an observation's parent is the span of `parentObservationId`, else its trace's root span.
Ids: Langfuse ids are arbitrary strings (UUIDs from the v2 SDKs, OTel hex ids from OTel ingestion),
mapped as halod.formats.ids does for every source: 32 / 16 hex digits stay that id, anything else
becomes the first 16 / 8 bytes of sha256 of its text. A trace's root span id is the first 8 bytes of
sha256("langfuse.trace:" + trace id) (an observation may reuse its trace's id). The originals are kept
in `langfuse.trace.id` / `langfuse.observation.id`.

service.name: the record's metadata `service.name` / `service_name` / `resourceAttributes."service.name"`
(Langfuse keeps OTel resource attributes there), else the trace's (observations), else `langfuse`.
`release` becomes the resource's service.version, `environment` its deployment.environment.name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from halod import __version__
from halod.formats import ids
from halod.receivers.langfuse.api import Observation, Trace

DEFAULT_SERVICE = "langfuse"
SCOPE_NAME = "halod.receivers.langfuse"

# Langfuse observation type -> OpenInference span kind (EVENT and unknown types get none).
OBSERVATION_KINDS = {
    "GENERATION": "LLM",
    "TOOL": "TOOL",
    "AGENT": "AGENT",
    "CHAIN": "CHAIN",
    "SPAN": "CHAIN",
    "RETRIEVER": "RETRIEVER",
    "EMBEDDING": "EMBEDDING",
    "EVALUATOR": "EVALUATOR",
    "GUARDRAIL": "GUARDRAIL",
}
_MODEL_CALLS = frozenset({"GENERATION", "EMBEDDING"})
_MAX_METADATA_ATTRIBUTES = 128
_MAX_METADATA_DEPTH = 4
_MAX_MESSAGES = 64
_INT64 = 2**63


class RecordError(ValueError):
    """A record that cannot be converted; the message says which field and why."""


# -- ids ------------------------------------------------------------------------------------------
# halod.formats.ids is the mapping file imports use too, so a trace imported from a Langfuse export file
# and the same trace pulled here get the same ids.


def trace_id_of(text: str) -> bytes:
    return ids.map_id(text, ids.TRACE_ID_BYTES)[0]


def span_id_of(text: str) -> bytes:
    return ids.map_id(text, ids.SPAN_ID_BYTES)[0]


def root_span_id_of(trace_text: str) -> bytes:
    return ids.hashed_id("langfuse.trace:" + trace_text, ids.SPAN_ID_BYTES)


# -- times -----------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def time_ns(value: Any, field: str) -> int:
    """Unix nanoseconds of an ISO 8601 time as Langfuse writes them ("2024-05-01T12:00:00.123Z")."""
    if not isinstance(value, str) or not value:
        raise RecordError(f"{field} is missing or not a string: {value!r}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise RecordError(f"{field} is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:  # Langfuse times are UTC
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def iso_ms(ms: int) -> str:
    """The query form of a time: ISO 8601, UTC, millisecond precision (Langfuse stores milliseconds)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- values ----------------------------------------------------------------------------------------


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _text(value: Any) -> str:
    """Input/output as span text: strings as they are, anything else as JSON text."""
    return value if isinstance(value, str) else json_text(value)


def _any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value) if -_INT64 <= value < _INT64 else AnyValue(string_value=str(value))
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=item) for item in value]))
    return AnyValue(string_value=json_text(value))


class _Attributes:
    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def set(self, key: str, value: Any) -> None:
        if value is not None and value != "":
            self.items[key] = value

    def key_values(self) -> list[KeyValue]:
        return [KeyValue(key=key, value=_any_value(value)) for key, value in self.items.items()]


def _flatten(prefix: str, value: Any, out: dict[str, Any], depth: int = 0) -> None:
    if isinstance(value, dict) and value and depth < _MAX_METADATA_DEPTH:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}", item, out, depth + 1)
    else:
        out[prefix] = value


def _metadata(attributes: _Attributes, metadata: Any) -> None:
    """Metadata under langfuse.metadata.*; when it is not an object, or too large to flatten, as JSON text."""
    if metadata is None or metadata == {}:
        return
    flat: dict[str, Any] = {}
    if isinstance(metadata, dict):
        _flatten("langfuse.metadata", metadata, flat)
    if not flat or len(flat) > _MAX_METADATA_ATTRIBUTES:
        attributes.set("langfuse.metadata", metadata if isinstance(metadata, str) else json_text(metadata))
        return
    for key, value in flat.items():
        attributes.set(key, value)


def service_name_of(metadata: Any) -> str | None:
    if not isinstance(metadata, dict):
        return None
    resource = metadata.get("resourceAttributes")
    if isinstance(resource, str):
        try:
            resource = json.loads(resource)
        except ValueError:
            resource = None
    candidates = [metadata.get("service.name"), metadata.get("service_name")]
    if isinstance(resource, dict):
        candidates.append(resource.get("service.name"))
    return next((name for name in candidates if isinstance(name, str) and name), None)


def _io(attributes: _Attributes, record: Mapping[str, Any]) -> None:
    for field, prefix in (("input", "input"), ("output", "output")):
        value = record.get(field)
        if value is None:
            continue
        attributes.set(f"{prefix}.value", _text(value))
        attributes.set(f"{prefix}.mime_type", "text/plain" if isinstance(value, str) else "application/json")


def _as_messages(value: Any) -> list[dict[str, Any]] | None:
    """Chat messages in a generation's input or output, in the shapes SDKs record: a list of
    {role, content, ...}, one such message, {"messages": [...]}, or an OpenAI {"choices": [...]}."""
    if isinstance(value, dict):
        if isinstance(value.get("role"), str):
            return [value]
        if isinstance(value.get("messages"), list):
            value = value["messages"]
        elif isinstance(value.get("choices"), list):
            value = [choice.get("message") for choice in value["choices"] if isinstance(choice, dict)]
    if isinstance(value, list) and value and all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 for m in value):
        return value
    return None


def _message_attributes(attributes: _Attributes, prefix: str, value: Any) -> None:
    messages = _as_messages(value)
    if messages is None:
        return
    for i, message in enumerate(messages[:_MAX_MESSAGES]):
        base = f"{prefix}.{i}.message"
        attributes.set(f"{base}.role", message.get("role"))
        content = message.get("content")
        if content is not None:
            attributes.set(f"{base}.content", _text(content))
        if isinstance(message.get("name"), str):
            attributes.set(f"{base}.name", message["name"])
        if isinstance(message.get("tool_call_id"), str):
            attributes.set(f"{base}.tool_call_id", message["tool_call_id"])
        calls = message.get("tool_calls")
        if not isinstance(calls, list):
            continue
        for j, call in enumerate(calls):
            if not isinstance(call, dict):
                continue
            function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
            call_base = f"{base}.tool_calls.{j}.tool_call"
            attributes.set(f"{call_base}.id", call.get("id") if isinstance(call.get("id"), str) else None)
            attributes.set(f"{call_base}.function.name", function.get("name"))
            arguments = function.get("arguments", function.get("args"))
            if arguments is not None:
                attributes.set(f"{call_base}.function.arguments", _text(arguments))


def _count(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            return int(value)
    return None


def _tokens(attributes: _Attributes, observation: Observation, model_call: bool) -> None:
    details = observation.get("usageDetails") or {}
    usage = observation.get("usage") or {}
    if not isinstance(details, dict):
        raise RecordError(f"usageDetails is not an object: {details!r}")
    if not isinstance(usage, dict):
        raise RecordError(f"usage is not an object: {usage!r}")
    counts = {
        "prompt": _count(details.get("input"), details.get("prompt_tokens"), usage.get("input"),
                         observation.get("promptTokens")),
        "completion": _count(details.get("output"), details.get("completion_tokens"), usage.get("output"),
                             observation.get("completionTokens")),
        "total": _count(details.get("total"), usage.get("total"), observation.get("totalTokens")),
    }
    for name, count in counts.items():
        # Langfuse reports zero usage for every observation; only model calls (or real counts) carry it.
        if count is not None and (model_call or count > 0):
            attributes.set(f"llm.token_count.{name}", count)
    for key, value in details.items():
        attributes.set(f"langfuse.usage_details.{key}", value)
    costs = observation.get("costDetails") or {}
    if isinstance(costs, dict):
        for key, value in costs.items():
            attributes.set(f"langfuse.cost_details.{key}", value)
        total_cost = costs.get("total", observation.get("calculatedTotalCost"))
        if isinstance(total_cost, int | float) and not isinstance(total_cost, bool) and total_cost:
            attributes.set("llm.cost.total", float(total_cost))


# -- records -> spans ------------------------------------------------------------------------------


def _required_id(record: Mapping[str, Any], field: str = "id") -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise RecordError(f"{field} is missing or not a string: {value!r}")
    return value


def trace_span(trace: Trace, host: str = "") -> Span:
    """The root span of a Langfuse trace; `host` makes `langfuse.url`, the trace's page in Langfuse."""
    if not isinstance(trace, dict):
        raise RecordError(f"not a JSON object: {trace!r}")
    trace_text = _required_id(trace)
    start = time_ns(trace.get("timestamp"), "timestamp")
    latency = trace.get("latency")
    end = start + int(latency * 1e9) if isinstance(latency, int | float) and latency > 0 else start
    attributes = _Attributes()
    attributes.set("openinference.span.kind", "AGENT")
    attributes.set("langfuse.trace.id", trace_text)
    _io(attributes, trace)
    attributes.set("session.id", trace.get("sessionId"))
    attributes.set("user.id", trace.get("userId"))
    tags = trace.get("tags")
    if isinstance(tags, list) and tags:
        attributes.set("tag.tags", [str(tag) for tag in tags])
    attributes.set("langfuse.release", trace.get("release"))
    attributes.set("langfuse.version", trace.get("version"))
    attributes.set("langfuse.environment", trace.get("environment"))
    attributes.set("langfuse.public", trace.get("public"))
    html_path = trace.get("htmlPath")
    attributes.set("langfuse.html_path", html_path)
    if host and isinstance(html_path, str) and html_path.startswith("/"):
        attributes.set("langfuse.url", host + html_path)
    total_cost = trace.get("totalCost")
    if isinstance(total_cost, int | float) and not isinstance(total_cost, bool) and total_cost > 0:
        attributes.set("llm.cost.total", float(total_cost))
    _metadata(attributes, trace.get("metadata"))
    return Span(
        trace_id=trace_id_of(trace_text), span_id=root_span_id_of(trace_text),
        name=trace.get("name") or "langfuse.trace", kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=start, end_time_unix_nano=end, attributes=attributes.key_values(),
    )


def is_unfinished_trace(trace: Trace) -> bool:
    """No output yet: SDKs set a trace's output (and, over OTel, its name and input) when its root ends."""
    return trace.get("output") is None


def is_unfinished_observation(observation: Observation) -> bool:
    return observation.get("type") != "EVENT" and not observation.get("endTime")


def observation_span(observation: Observation, held_too_long: bool = False) -> Span:
    """The span of a Langfuse observation; `held_too_long`: stored unfinished (marked langfuse.unfinished)."""
    if not isinstance(observation, dict):
        raise RecordError(f"not a JSON object: {observation!r}")
    observation_text = _required_id(observation)
    obs_type = observation.get("type")
    if not isinstance(obs_type, str) or not obs_type:
        raise RecordError(f"type is missing or not a string: {obs_type!r}")
    obs_type = obs_type.upper()
    start = time_ns(observation.get("startTime"), "startTime")
    end_text = observation.get("endTime")
    end = time_ns(end_text, "endTime") if end_text is not None and obs_type != "EVENT" else start
    trace_text = observation.get("traceId")
    if trace_text is not None and (not isinstance(trace_text, str) or not trace_text):
        raise RecordError(f"traceId is not a string: {trace_text!r}")
    parent_text = observation.get("parentObservationId")
    if parent_text is not None and (not isinstance(parent_text, str) or not parent_text):
        raise RecordError(f"parentObservationId is not a string: {parent_text!r}")
    name = observation.get("name") or obs_type.lower()
    if not isinstance(name, str):
        raise RecordError(f"name is not a string: {name!r}")

    attributes = _Attributes()
    kind = OBSERVATION_KINDS.get(obs_type)
    attributes.set("openinference.span.kind", kind)
    attributes.set("langfuse.observation.id", observation_text)
    attributes.set("langfuse.observation.type", obs_type)
    attributes.set("langfuse.trace.id", trace_text)
    attributes.set("langfuse.parent_observation.id", parent_text)
    _io(attributes, observation)
    if kind == "TOOL":
        attributes.set("tool.name", name)
        if observation.get("input") is not None:
            attributes.set("tool.parameters", _text(observation.get("input")))
    elif kind == "AGENT":
        attributes.set("agent.name", name)
    model_call = obs_type in _MODEL_CALLS
    attributes.set("llm.model_name", observation.get("model"))
    parameters = observation.get("modelParameters")
    if parameters:
        attributes.set("llm.invocation_parameters", json_text(parameters))
    if model_call:
        _message_attributes(attributes, "llm.input_messages", observation.get("input"))
        _message_attributes(attributes, "llm.output_messages", observation.get("output"))
    _tokens(attributes, observation, model_call)
    level = observation.get("level")
    attributes.set("langfuse.level", level)
    status_message = observation.get("statusMessage")
    attributes.set("langfuse.status_message", status_message)
    attributes.set("langfuse.version", observation.get("version"))
    attributes.set("langfuse.environment", observation.get("environment"))
    attributes.set("langfuse.prompt.name", observation.get("promptName"))
    attributes.set("langfuse.prompt.version", observation.get("promptVersion"))
    attributes.set("langfuse.completion_start_time", observation.get("completionStartTime"))
    if held_too_long:
        attributes.set("langfuse.unfinished", True)
    _metadata(attributes, observation.get("metadata"))

    if trace_text is not None:
        trace_id = trace_id_of(trace_text)
        parent = span_id_of(parent_text) if parent_text else root_span_id_of(trace_text)
    else:  # an observation outside any trace becomes the root of a trace of its own
        trace_id = trace_id_of("langfuse.observation:" + observation_text)
        parent = span_id_of(parent_text) if parent_text else b""
    status = Status()
    if level == "ERROR":
        status = Status(code=Status.STATUS_CODE_ERROR, message=status_message or "")
    return Span(
        trace_id=trace_id, span_id=span_id_of(observation_text), parent_span_id=parent, name=name,
        kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=start, end_time_unix_nano=end,
        attributes=attributes.key_values(), status=status,
    )


def resource_of(service: str, release: Any = None, environment: Any = None) -> tuple[tuple[str, str], ...]:
    """The resource attributes of a span, as a hashable key for grouping."""
    items = [("service.name", service)]
    if isinstance(release, str) and release:
        items.append(("service.version", release))
    if isinstance(environment, str) and environment:
        items.append(("deployment.environment.name", environment))
    return tuple(items)


def export_request(spans: Iterable[tuple[tuple[tuple[str, str], ...], Span]]) -> ExportTraceServiceRequest:
    """One request with a ResourceSpans per distinct resource."""
    request = ExportTraceServiceRequest()
    groups: dict[tuple[tuple[str, str], ...], Any] = {}
    for resource, span in spans:
        scope_spans = groups.get(resource)
        if scope_spans is None:
            resource_spans = request.resource_spans.add()
            resource_spans.resource.attributes.extend(
                KeyValue(key=key, value=AnyValue(string_value=value)) for key, value in resource)
            scope_spans = resource_spans.scope_spans.add()
            scope_spans.scope.name = SCOPE_NAME
            scope_spans.scope.version = __version__
            groups[resource] = scope_spans
        scope_spans.spans.append(span)
    return request
