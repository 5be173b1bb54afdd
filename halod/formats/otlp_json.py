"""OTLP/JSON: `ExportTraceServiceRequest`s as the OpenTelemetry Collector's file exporter writes them.

Two layouts: one request per line (JSON Lines, what the file exporter writes), or one JSON document for
the whole file (a request, possibly pretty-printed, or an array of requests). Requests are decoded by
`halod.otlp.decode_json` (hex ids, camelCase or snake_case keys, enums as integers or names); a line
or element that does not decode is a Problem and is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from halod.formats._common import Chunk, ChunkBuilder, Context, RecordError, reject_damaged, type_name
from halod.model import InvalidPayload
from halod.otlp import decode_json


def emit(document: Any, where: str, record: int, clock_ns: int, ctx: Context, builder: ChunkBuilder) -> Iterator[Chunk]:
    """Convert one request (a parsed line or array element)."""
    reject_damaged(document)
    if not isinstance(document, dict):
        raise RecordError(f"an OTLP/JSON request must be an object with resourceSpans, not {type_name(document)}")
    try:
        request = decode_json(document)
    except InvalidPayload as exc:
        raise RecordError(str(exc)) from None
    yield from builder.reserve(sum(len(scope.spans) for resource in request.resource_spans
                                   for scope in resource.scope_spans))
    yield from builder.add_request(request)


def read_document(document: Any, ctx: Context, builder: ChunkBuilder) -> Iterator[Chunk]:
    """A whole-file document: one request, or an array of requests (located as "record N")."""
    if isinstance(document, list):
        for index, item in enumerate(document):
            try:
                yield from emit(item, f"record {index}", index, 0, ctx, builder)
            except RecordError as exc:
                builder.problem(f"record {index}", str(exc))
    else:
        try:
            yield from emit(document, "file", 0, 0, ctx, builder)
        except RecordError as exc:
            builder.problem("file", str(exc))


