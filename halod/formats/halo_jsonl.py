"""HALO canonical JSONL: one flattened span per line, the format `halo-engine` reads.

Each line is an object:

    {"trace_id": "84559aaf5d124026b1da35a7a66d9e94", "span_id": "79d500bda507440f8a237682",
     "parent_span_id": "5b802fc40c7345058eeed7b7" | "" | null, "trace_state": "", "name": "response",
     "kind": "SPAN_KIND_CLIENT", "start_time": "2026-04-24T18:12:13.315189000Z", "end_time": "...",
     "status": {"code": "STATUS_CODE_OK", "message": ""},
     "resource": {"attributes": {"service.name": "..."}}, "scope": {"name": "...", "version": "..."},
     "attributes": {...}}

optionally with `flags` (integer), `events` ([{name, timestamp, attributes}]) and `links`
([{trace_id, span_id, trace_state, attributes}]). Ids map as halod.formats.ids says (HALO span ids
are 24 hex digits: hashed, originals kept). Kinds and status codes are accepted with or without their
`SPAN_KIND_` / `STATUS_CODE_` prefixes, in any case. A missing end_time means end = start.

A line that is not a JSON object, has a field of the wrong type, misses trace_id / span_id /
start_time, or has an unparseable time is a Problem with its line number and is skipped.
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
    object_field,
    reject_damaged,
    text_field,
    type_name,
)


def emit(document: Any, where: str, record: int, clock_ns: int, ctx: Context, builder: ChunkBuilder) -> Iterator[Chunk]:
    """Convert one flattened span (a parsed line)."""
    reject_damaged(document)
    if not isinstance(document, dict):
        raise RecordError(f"a HALO span must be an object, not {type_name(document)}")
    status = object_field(document, "status")
    resource = object_field(document, "resource")
    scope = object_field(document, "scope")
    flags = document.get("flags") or 0
    if isinstance(flags, bool) or not isinstance(flags, int) or not 0 <= flags < 2**32:
        raise RecordError(f"flags must be an unsigned 32-bit integer, not {flags!r}")
    if document.get("start_time") is None:
        raise RecordError("start_time is missing")
    span = build_span(
        trace_id=document.get("trace_id"), span_id=document.get("span_id"),
        parent_span_id=document.get("parent_span_id"), name=document.get("name"), kind=document.get("kind"),
        start=document.get("start_time"), end=document.get("end_time"), status_code=status.get("code"),
        status_message=status.get("message"), trace_state=document.get("trace_state"),
        attributes=document.get("attributes"), events=document.get("events"), links=document.get("links"),
        flags=flags, warn=partial(builder.problem, where),
    )
    origin = ctx.origin(
        object_field(resource, "attributes", "resource."), text_field(scope, "name", "scope."),
        text_field(scope, "version", "scope."), text_field(resource, "schema_url", "resource."),
        text_field(scope, "schema_url", "scope."),
    )
    yield from builder.reserve(1)
    yield from builder.add_span(span, origin)
