"""OTLP trace payload codec shared by every receiver (OTLP gRPC/HTTP now; Kafka and files later).

Decoding turns bytes into an `ExportTraceServiceRequest`; anything undecodable raises
`InvalidPayload` naming what was wrong. OTLP/JSON differs from protobuf's canonical JSON mapping in
one way that matters: trace and span ids are hex strings, not base64. They are converted before
parsing; an id that is not valid hex becomes an invalid-length id, so that span (not the request) is
rejected through partial success, like a protobuf span with a bad id.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from halod.model import InvalidPayload

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def gunzip(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body, refusing to expand past `limit` bytes (a decompression bomb guard).

    Only single-member bodies are accepted: anything after the first gzip member (a second member,
    garbage) is refused rather than silently dropped with the spans it may carry.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidPayload(f"invalid gzip body: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise InvalidPayload(f"decompressed body exceeds the limit of {limit} bytes", reason="too_large")
    if not inflater.eof:
        raise InvalidPayload("invalid gzip body: truncated")
    if inflater.unused_data:
        raise InvalidPayload(
            f"invalid gzip body: {len(inflater.unused_data)} byte(s) after the end of the gzip stream "
            "(multi-member gzip is not supported)"
        )
    return data


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    try:
        request: ExportTraceServiceRequest = ExportTraceServiceRequest.FromString(body)
        return request
    except DecodeError as exc:
        raise InvalidPayload(f"body is not a valid OTLP ExportTraceServiceRequest protobuf: {exc}") from None


def decode_json(body: bytes | str | dict[str, Any]) -> ExportTraceServiceRequest:
    """Parse OTLP/JSON (hex ids, camelCase or snake_case keys, enums as ints or names, 64-bit integers
    as numbers or strings). Built field by field (protobuf's generic json_format costs ~10x more per
    span, the bulk of an OTLP/JSON import); unknown fields are ignored, as the OTLP spec asks."""
    if isinstance(body, dict):
        document = body
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidPayload(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidPayload("OTLP/JSON body must be an object with resourceSpans")
    request = ExportTraceServiceRequest()
    where = "resourceSpans"
    try:
        for r, resource_json in enumerate(_list(document, "resourceSpans", "resource_spans")):
            where = f"resourceSpans[{r}]"
            resource_spans = request.resource_spans.add()
            resource = _object(resource_json, "resource")
            if resource:
                _attributes(resource_spans.resource.attributes, resource)
                resource_spans.resource.dropped_attributes_count = _int(
                    _field(resource, "droppedAttributesCount", "dropped_attributes_count", 0))
            resource_spans.schema_url = _field(resource_json, "schemaUrl", "schema_url", "")
            for s, scope_json in enumerate(_list(resource_json, "scopeSpans", "scope_spans")):
                where = f"resourceSpans[{r}].scopeSpans[{s}]"
                scope_spans = resource_spans.scope_spans.add()
                scope = _object(scope_json, "scope")
                if scope:
                    scope_spans.scope.name = scope.get("name", "")
                    scope_spans.scope.version = scope.get("version", "")
                    _attributes(scope_spans.scope.attributes, scope)
                scope_spans.schema_url = _field(scope_json, "schemaUrl", "schema_url", "")
                for n, span_json in enumerate(_list(scope_json, "spans")):
                    where = f"resourceSpans[{r}].scopeSpans[{s}].spans[{n}]"
                    _span(scope_spans.spans.add(), span_json)
    except InvalidPayload:
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise InvalidPayload(f"body is not a valid OTLP/JSON ExportTraceServiceRequest: at {where}: "
                             f"{type(exc).__name__}: {exc}") from None
    return request


def _span(span: Any, data: Any) -> None:
    if not isinstance(data, dict):
        raise TypeError("a span must be an object")
    get = data.get
    span.trace_id = _id(_field(data, "traceId", "trace_id", ""))
    span.span_id = _id(_field(data, "spanId", "span_id", ""))
    span.parent_span_id = _id(_field(data, "parentSpanId", "parent_span_id", ""))
    span.trace_state = _field(data, "traceState", "trace_state", "")
    span.flags = _int(get("flags", 0))
    span.name = get("name", "")
    kind = get("kind", 0)
    span.kind = Span.SpanKind.Value(kind) if isinstance(kind, str) else kind
    span.start_time_unix_nano = _int(_field(data, "startTimeUnixNano", "start_time_unix_nano", 0))
    span.end_time_unix_nano = _int(_field(data, "endTimeUnixNano", "end_time_unix_nano", 0))
    _attributes(span.attributes, data)
    span.dropped_attributes_count = _int(_field(data, "droppedAttributesCount", "dropped_attributes_count", 0))
    for event_json in _list(data, "events"):
        event = span.events.add()
        event.time_unix_nano = _int(_field(event_json, "timeUnixNano", "time_unix_nano", 0))
        event.name = event_json.get("name", "")
        _attributes(event.attributes, event_json)
        event.dropped_attributes_count = _int(
            _field(event_json, "droppedAttributesCount", "dropped_attributes_count", 0))
    span.dropped_events_count = _int(_field(data, "droppedEventsCount", "dropped_events_count", 0))
    for link_json in _list(data, "links"):
        link = span.links.add()
        link.trace_id = _id(_field(link_json, "traceId", "trace_id", ""))
        link.span_id = _id(_field(link_json, "spanId", "span_id", ""))
        link.trace_state = _field(link_json, "traceState", "trace_state", "")
        link.flags = _int(link_json.get("flags", 0))
        _attributes(link.attributes, link_json)
        link.dropped_attributes_count = _int(
            _field(link_json, "droppedAttributesCount", "dropped_attributes_count", 0))
    span.dropped_links_count = _int(_field(data, "droppedLinksCount", "dropped_links_count", 0))
    status = _object(data, "status")
    if status:
        span.status.message = status.get("message", "")
        code = status.get("code", 0)
        span.status.code = Status.StatusCode.Value(code) if isinstance(code, str) else code


def _attributes(target: Any, holder: dict[str, Any]) -> None:
    for kv in _list(holder, "attributes"):
        if not isinstance(kv, dict):
            raise TypeError("an attribute must be an object with key and value")
        attribute = target.add(key=kv["key"])
        value = kv.get("value")
        if value is not None:
            attribute.value.SetInParent()  # present but empty ({}) is kept as such, as protobuf's parser does
            _any_value(attribute.value, value)


def _any_value(target: Any, value: Any) -> None:
    """One AnyValue; `value` is its JSON object, e.g. {"stringValue": "x"} (an empty one stays unset)."""
    if not isinstance(value, dict):
        raise TypeError(f"an AnyValue must be an object, not {type(value).__name__}")
    for key, item in value.items():
        if key in ("stringValue", "string_value"):
            target.string_value = item
        elif key in ("intValue", "int_value"):
            target.int_value = _int(item)
        elif key in ("boolValue", "bool_value"):
            if not isinstance(item, bool):
                raise TypeError("boolValue must be true or false")
            target.bool_value = item
        elif key in ("doubleValue", "double_value"):
            target.double_value = _double(item)
        elif key in ("arrayValue", "array_value"):
            target.array_value.SetInParent()
            for element in _list(item, "values"):
                _any_value(target.array_value.values.add(), element)
        elif key in ("kvlistValue", "kvlist_value"):
            target.kvlist_value.SetInParent()
            _attributes_from(target.kvlist_value.values, _list(item, "values"))
        elif key in ("bytesValue", "bytes_value"):
            target.bytes_value = base64.b64decode(item, validate=True)


def _attributes_from(target: Any, items: list[Any]) -> None:
    _attributes(target, {"attributes": items})


def _field(holder: dict[str, Any], camel: str, snake: str, default: Any) -> Any:
    value = holder.get(camel)
    if value is None:
        value = holder.get(snake)
    return default if value is None else value


def _object(holder: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = holder.get(key)
    if value is not None and not isinstance(value, dict):
        raise TypeError(f"{key} must be an object")
    return value


def _int(value: Any) -> int:
    """A 64-bit integer field: a JSON number or a decimal string (OTLP/JSON allows both)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {value!r}")


def _double(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # "NaN", "Infinity" and numbers as strings, as proto3 JSON allows
        return float(value)
    raise TypeError(f"expected a number, got {value!r}")


def _id(value: Any) -> bytes:
    """A hex id; one that is not valid hex becomes an invalid-length id, so only its span is rejected."""
    if not isinstance(value, str):
        raise TypeError("ids must be hex strings")
    try:
        return bytes.fromhex(value)
    except ValueError:
        return b"\x00"


def encode_json_request(request: ExportTraceServiceRequest) -> bytes:
    """A request in OTLP/JSON (hex ids, enums as integers, camelCase keys, no newline), as a Collector's
    file exporter writes it. protobuf's own JSON mapping (`encode`) writes ids as base64, which OTLP/JSON
    readers do not accept."""
    document = json_format.MessageToDict(request, use_integers_for_enums=True)
    _convert_ids(document, _base64_to_hex)
    return orjson.dumps(document)


def decode_response_json(body: bytes) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    json_format.Parse(body, response, ignore_unknown_fields=True)
    return response


def _base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def _convert_ids(document: dict[str, Any], transform: Callable[[str], str]) -> None:
    def convert(holder: dict[str, Any], *keys: str) -> None:
        for key in keys:
            value = holder.get(key)
            if isinstance(value, str):
                holder[key] = transform(value)

    for resource_spans in _list(document, "resourceSpans", "resource_spans"):
        for scope_spans in _list(resource_spans, "scopeSpans", "scope_spans"):
            for span in _list(scope_spans, "spans"):
                convert(span, "traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")
                for link in _list(span, "links"):
                    convert(link, "traceId", "trace_id", "spanId", "span_id")


def _list(holder: Any, *keys: str) -> list[Any]:
    if not isinstance(holder, dict):
        raise InvalidPayload("OTLP/JSON structure: expected an object")
    for key in keys:
        value = holder.get(key)
        if value is not None:
            if not isinstance(value, list):
                raise InvalidPayload(f"OTLP/JSON field {key} must be an array")
            return [item for item in value if isinstance(item, dict)] if value else []
    return []


def decode(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Decode a body by its media type (parameters such as charset are ignored)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return decode_protobuf(body)
    if media == JSON:
        return decode_json(body)
    raise InvalidPayload(f"unsupported content type {content_type!r}: use {PROTOBUF} or {JSON}", reason="media_type")


def encode(message: Message, media: str) -> bytes:
    """A response (or google.rpc.Status) in the request's encoding."""
    if media == JSON:
        return str(json_format.MessageToJson(message, indent=None)).encode()
    return bytes(message.SerializeToString())
