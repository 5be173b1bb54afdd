"""Phoenix span records (GET /v1/projects/{project}/spans) -> an OTLP `ExportTraceServiceRequest`.

What Phoenix keeps of a span, and so what halod can get back (Phoenix 20.x, checked against its
source and a running server):

| Phoenix record              | OTLP span                                                          |
|-----------------------------|--------------------------------------------------------------------|
| context.trace_id / span_id  | trace_id / span_id (hex -> bytes)                                  |
| parent_id                   | parent_span_id (None: a root)                                      |
| name                        | name                                                               |
| span_kind                   | attribute `openinference.span.kind` (Phoenix moves it out of the   |
|                             | attributes; put back unless UNKNOWN, Phoenix's word for "none")    |
| start_time / end_time (ISO) | start/end_time_unix_nano (Phoenix keeps microseconds only)         |
| status_code / status_message| status (OK, ERROR, UNSET)                                          |
| attributes (dotted keys)    | attributes; see below                                              |
| events[] name/timestamp/attr| events (nested attribute objects flattened to dotted keys)         |

Phoenix does not keep the OTel span kind, the resource, the instrumentation scope, trace state,
links, flags or dropped counts: spans come back with kind UNSPECIFIED, no scope, and one resource per
project whose `service.name` (and `openinference.project.name`) is the Phoenix project name.

Attributes: Phoenix stores them as nested objects and the REST API flattens them again to the dotted
OpenInference keys (`llm.input_messages.0.message.role`). At ingestion it also parses the values of
`tool.parameters`, `metadata`, `llm.prompt_template.variables` and `document.metadata` (any key
ending so) from JSON text into objects, which the flattening then spreads over sub-keys
(`tool.parameters.city`). These are folded back into one JSON text value under the original key, as
the instrumentors sent them (same JSON value; spacing and, on Postgres, key order may differ; an empty
object `{}`, which the flattening drops, cannot come back). Phoenix
also adds OpenInference attributes it derives from `gen_ai.*` ones (`llm.model_name`, token counts);
they arrive like any other attribute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

# Phoenix's JSON_STRING_ATTRIBUTES (phoenix/trace/attributes.py): keys ending with these are parsed from
# JSON text at ingestion (`key.endswith(suffix)`, so `user_metadata` too).
JSON_STRING_SUFFIXES = ("document.metadata", "llm.prompt_template.variables", "metadata", "tool.parameters")
SPAN_KIND_KEY = "openinference.span.kind"
_STATUS = {"UNSET": Status.STATUS_CODE_UNSET, "OK": Status.STATUS_CODE_OK, "ERROR": Status.STATUS_CODE_ERROR}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = (-(2**63), 2**63 - 1)


class BadRecord(ValueError):
    """A span record that cannot be converted; the message says what is wrong with it."""


def project_request(project_name: str) -> ExportTraceServiceRequest:
    """An empty request with the one resource (and scope) a project's spans are added to."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for key in ("service.name", "openinference.project.name"):
        resource_spans.resource.attributes.add(key=key).value.string_value = project_name
    resource_spans.scope_spans.add()
    return request


def add_spans(request: ExportTraceServiceRequest, records: Iterable[Any]) -> list[str]:
    """Convert `records` into the request's first scope; returns one problem line per record skipped."""
    spans = request.resource_spans[0].scope_spans[0].spans
    problems = []
    for record in records:
        span = spans.add()
        try:
            convert_span(record, span)
        except (BadRecord, KeyError, TypeError, ValueError, AttributeError) as exc:
            del spans[-1]
            problems.append(f"span {record_name(record)}: {exc if isinstance(exc, BadRecord) else repr(exc)}")
    return problems


def record_name(record: Any) -> str:
    """How a problem line names a record: its span id, else Phoenix's row id, else '?'."""
    if isinstance(record, Mapping):
        context = record.get("context")
        if isinstance(context, Mapping) and context.get("span_id"):
            return str(context["span_id"])
        if record.get("id"):
            return f"(Phoenix id {record['id']})"
    return "?"


def convert_span(record: Mapping[str, Any], span: Span) -> None:
    """Fill `span` from one Phoenix span record; raises on a record that cannot be a valid span."""
    if not isinstance(record, Mapping):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    context = record.get("context") or {}
    span.trace_id = _hex_id(context.get("trace_id"), 16, "trace_id")
    span.span_id = _hex_id(context.get("span_id"), 8, "span_id")
    parent = record.get("parent_id")
    if parent:
        span.parent_span_id = _hex_id(parent, 8, "parent_id")
    span.name = str(record.get("name") or "")
    span.start_time_unix_nano = iso_to_ns(record.get("start_time"), "start_time")
    span.end_time_unix_nano = iso_to_ns(record.get("end_time"), "end_time")
    span.status.code = _STATUS.get(str(record.get("status_code") or "UNSET").upper(), Status.STATUS_CODE_UNSET)
    if message := record.get("status_message"):
        span.status.message = str(message)
    attributes = dict(record.get("attributes") or {})
    kind = record.get("span_kind")
    if isinstance(kind, str) and kind and kind.upper() != "UNKNOWN" and SPAN_KIND_KEY not in attributes:
        span.attributes.add(key=SPAN_KIND_KEY).value.string_value = kind
    set_attributes(span.attributes, fold_json_strings(attributes))
    for event in record.get("events") or ():
        otlp_event = span.events.add()
        otlp_event.name = str(event.get("name") or "")
        otlp_event.time_unix_nano = iso_to_ns(event.get("timestamp"), "event timestamp")
        set_attributes(otlp_event.attributes, event.get("attributes") or {})


def _hex_id(value: Any, size: int, field: str) -> bytes:
    if not isinstance(value, str):
        raise BadRecord(f"{field} is missing")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise BadRecord(f"{field} {value!r} is not hex") from None
    if len(raw) != size:
        raise BadRecord(f"{field} {value!r} is not {size} bytes")
    return raw


def iso_to_ns(value: Any, field: str = "time") -> int:
    """Unix nanoseconds of an ISO 8601 time (no zone: UTC), exactly (no float on the way)."""
    if not isinstance(value, str):
        raise BadRecord(f"{field} is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRecord(f"{field} {value!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    nanos = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if nanos < 0:
        raise BadRecord(f"{field} {value!r} is before 1970")
    return nanos


# -- attributes --------------------------------------------------------------------------------------


def flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Dotted keys of a nested attribute object, OpenInference style: a list that holds objects is
    spread over `prefix.N.` keys, a list of plain values stays one array value."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list | tuple) and any(isinstance(item, Mapping) for item in value):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}.{index}")
    else:
        yield prefix, value


def _json_string_root(key: str) -> str | None:
    """The shortest dotted prefix of `key` that Phoenix parsed from JSON text, or None."""
    end = -1
    while True:
        end = key.find(".", end + 1)
        prefix = key if end < 0 else key[:end]
        if prefix.endswith(JSON_STRING_SUFFIXES):
            return prefix
        if end < 0:
            return None


def _unflatten(items: list[tuple[str, Any]]) -> Any:
    """Nested objects from dotted sub-keys; an object whose keys are exactly 0..n-1 becomes a list."""
    tree: dict[str, Any] = {}
    for path, value in items:
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[last] = value
    return _lists(tree)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {key: _lists(value) for key, value in node.items()}
    if converted and sorted(converted) == sorted(str(index) for index in range(len(converted))):
        return [converted[str(index)] for index in range(len(converted))]
    return converted


def fold_json_strings(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """Put the JSON-text attributes Phoenix parsed and spread back together (see the module docstring)."""
    out: dict[str, Any] = {}
    groups: dict[str, list[tuple[str, Any]]] = {}
    for key, value in attributes.items():
        root = _json_string_root(key)
        if root is None:
            out[key] = value
            continue
        if root not in groups:
            groups[root] = []
            out[root] = None  # keeps the attribute's place in the order
        groups[root].append((key[len(root) + 1:], value))
    for root, items in groups.items():
        if len(items) == 1 and items[0][0] == "":
            value = items[0][1]
            # a string stayed a string: Phoenix could not parse it, so it is the text as sent
            out[root] = value if isinstance(value, str) or value is None else _json_text(value)
        else:
            out[root] = _json_text(_unflatten([(path, value) for path, value in items if path]))
    return out


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def set_attributes(target: Any, attributes: Mapping[str, Any]) -> None:
    """Append `attributes` (values may be nested objects: flattened) to a repeated KeyValue field."""
    for key, value in attributes.items():
        for flat_key, flat_value in flatten(value, str(key)):
            if flat_value is None:
                continue  # OTLP has no null attribute value
            keyvalue: KeyValue = target.add(key=flat_key)
            set_any_value(keyvalue.value, flat_value)


def set_any_value(target: AnyValue, value: Any) -> None:
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list | tuple):
        array = target.array_value
        array.SetInParent()  # an empty list is still an (empty) array value
        for item in value:
            set_any_value(array.values.add(), item)
    elif isinstance(value, Mapping):
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        for key, item in value.items():
            set_any_value(kvlist.values.add(key=str(key)).value, item)
    elif value is not None:
        target.string_value = str(value)
