"""OpenTelemetry SDK span dumps: `{"spans": [...], ...}`, one JSON document per file.

Each element is a span as the Python SDK's `ReadableSpan` serializes it, in either of the shapes seen
in the wild:

- any-agent (pydantic dump): `context: {trace_id: int, span_id: int, trace_flags: {value}, trace_state:
  {entries}}`, `parent: {span_id: int | null, ...} | null`, `kind: "internal"`, `start_time` /
  `end_time` integer nanoseconds, `status: {status_code: "ok", description}`;
- `ReadableSpan.to_json()`: `context: {trace_id: "0x…", span_id: "0x…", trace_state: "[]"}`,
  `parent_id: "0x…" | null`, `kind: "SpanKind.INTERNAL"`, ISO-8601 times, `status: {status_code: "OK"}`;

plus `attributes`, `events` ([{name, timestamp, attributes}]), `links` ([{context, attributes}]),
`resource: {attributes, schema_url}` and `instrumentation_scope` (or `instrumentation_info`):
`{name, version, schema_url}`. Integer ids are the SDK's own ids (kept); other ids map as
halod.formats.ids says. The trace flags go to the span's `flags`.

Every other top-level key of the document (any-agent's `final_output`) is written on the dump's root
spans (those without a parent) as `halod.document.<key>` (scalars as they are, other values as JSON
text). A span that cannot be converted is a Problem located as "record N" (N = its index in `spans`).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

from halod.formats._common import (
    Chunk,
    ChunkBuilder,
    Context,
    RecordError,
    build_span,
    json_text,
    object_field,
    reject_damaged,
    text_field,
    type_name,
)


def read_document(document: Any, ctx: Context, builder: ChunkBuilder) -> Iterator[Chunk]:
    """Convert a parsed dump; each span is one record."""
    spans = document.get("spans") if isinstance(document, dict) else None
    if not isinstance(spans, list):
        builder.problem("file", f"expected an object with a spans array, not {type_name(document)}"
                        + (f" with keys {sorted(document)[:8]}" if isinstance(document, dict) else ""))
        return
    extras = {f"halod.document.{key}": value if isinstance(value, str | int | float | bool) else json_text(value)
              for key, value in document.items() if key != "spans" and value is not None}
    for index, item in enumerate(spans):
        where = f"record {index}"
        try:
            yield from _emit(item, extras, ctx, builder, where)
        except RecordError as exc:
            builder.problem(where, str(exc))


def _emit(item: Any, extras: dict[str, Any], ctx: Context, builder: ChunkBuilder, where: str) -> Iterator[Chunk]:
    reject_damaged(item)
    if not isinstance(item, dict):
        raise RecordError(f"a span must be an object, not {type_name(item)}")
    context = object_field(item, "context")
    parent = item.get("parent")
    if parent is not None and not isinstance(parent, dict):
        raise RecordError(f"parent must be an object, not {type_name(parent)}")
    parent_id = parent.get("span_id") if parent else item.get("parent_id")
    status = object_field(item, "status")
    flags = context.get("trace_flags")
    if isinstance(flags, dict):
        flags = flags.get("value")
    if flags is None:
        flags = 0
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise RecordError(f"context.trace_flags must be an integer, not {type_name(flags)}")
    attributes = item.get("attributes")
    if extras and not parent_id and isinstance(attributes, dict | None):
        attributes = {**(attributes or {}), **extras}
    span = build_span(
        trace_id=context.get("trace_id"), span_id=context.get("span_id"), parent_span_id=parent_id,
        name=item.get("name"), kind=item.get("kind"), start=item.get("start_time"), end=item.get("end_time"),
        status_code=status.get("status_code", status.get("code")),
        status_message=status.get("description", status.get("message")),
        trace_state=context.get("trace_state"), attributes=attributes, events=item.get("events"),
        links=item.get("links"), flags=flags & 0xFF, warn=partial(builder.problem, where),
    )
    resource = object_field(item, "resource")
    scope_key = next((key for key in ("instrumentation_scope", "instrumentation_info", "scope") if key in item), "")
    scope = object_field(item, scope_key) if scope_key else {}
    origin = ctx.origin(
        object_field(resource, "attributes", "resource."), text_field(scope, "name", "scope."),
        text_field(scope, "version", "scope."), text_field(resource, "schema_url", "resource."),
        text_field(scope, "schema_url", "scope."),
    )
    yield from builder.add_span(span, origin)
