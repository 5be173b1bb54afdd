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
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod.model import InvalidPayload

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_INVALID_ID = base64.b64encode(b"\x00").decode()  # decodes to 1 byte: rejected as a bad id


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
    """Parse OTLP/JSON (hex ids, camelCase or snake_case keys, enums as ints or names)."""
    if isinstance(body, dict):
        document = body
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidPayload(f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidPayload("OTLP/JSON body must be an object with resourceSpans")
    try:
        _hex_ids_to_base64(document)
        request = ExportTraceServiceRequest()
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
        return request
    except (json_format.ParseError, TypeError, AttributeError, ValueError) as exc:
        raise InvalidPayload(f"body is not a valid OTLP/JSON ExportTraceServiceRequest: {exc}") from None


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    def convert(holder: dict[str, Any], *keys: str) -> None:
        for key in keys:
            value = holder.get(key)
            if isinstance(value, str):
                try:
                    holder[key] = base64.b64encode(bytes.fromhex(value)).decode() if value else ""
                except ValueError:
                    holder[key] = _INVALID_ID

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
