"""The spans of one completed trace, as detectors read them.

A `TraceSpans` is built from the store's rows (an Arrow table with the `spans` columns) and holds
`SpanView`s in start-time order. Typed columns are plain attributes; the JSON columns are parsed on
first use only (most detectors never need the full attribute map), so building a view is cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa

# The `spans` columns detectors and features read (docs/schema.md); the others are never read back.
EVALUATED_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "name", "semantic_kind", "service_name", "start_ns", "end_ns",
    "duration_ns", "status_code", "status_message", "model_name", "tool_name", "tool_arguments", "output_text",
    "prompt_tokens", "completion_tokens", "total_tokens", "session_id", "agent_name", "attributes", "events",
)
# Filled on first read by SpanView.__getattr__ (3.11's cached_property takes a lock on every first read).
_LAZY = frozenset({"attrs", "event_list", "memo"})


@functools.lru_cache(maxsize=4096)
def _needle(key: str) -> str | None:
    """How `key` appears in the attributes' JSON text: verbatim and quoted when it is plain printable
    ASCII without quotes or backslashes (JSON writes those unescaped); None when it may be escaped."""
    if key.isascii() and key.isprintable() and '"' not in key and "\\" not in key:
        return f'"{key}"'
    return None


class SpanView:
    """One stored span: its typed columns as attributes (docs/schema.md), the JSON ones parsed on use.

    A column the view was built without (or a test's partial row) reads as None."""

    attrs: dict[str, Any]
    """Every span attribute (the `attributes` JSON object), parsed on first read."""
    event_list: list[dict[str, Any]]
    """Span events as [{name, time_ns, attributes}], parsed on first read."""
    memo: dict[str, Any]
    """Results detectors derive from this span and share (e.g. the tool calls it requested), so the
    first detector that needs one computes it for all; gone with the view."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__ = row  # plain attributes (detectors read them millions of times); the row is not copied

    def __getattr__(self, name: str) -> Any:
        # Only reached when the instance has no such attribute: a missing column, or a lazy one not yet read.
        if name not in _LAZY:
            return None
        if name == "memo":
            value: Any = {}
        else:
            text = self.__dict__.get("attributes" if name == "attrs" else "events")
            value = orjson.loads(text) if text else {} if name == "attrs" else []
        self.__dict__[name] = value
        return value

    @property
    def row(self) -> dict[str, Any]:
        """The columns as a dict (to build a modified copy: SpanView({**span.row, ...}))."""
        return {key: value for key, value in self.__dict__.items() if key not in _LAZY}

    @property
    def is_error(self) -> bool:
        return self.__dict__.get("status_code") == "ERROR"

    def get(self, key: str, default: Any = None) -> Any:
        """A span attribute by its full key (e.g. "llm.tools.0.tool.json_schema"). Until the attributes
        are parsed, a key absent from their JSON text is answered without parsing them (most spans
        lack most of the keys detectors probe)."""
        attrs = self.__dict__.get("attrs")
        if attrs is None:
            text = self.__dict__.get("attributes")
            if not text:
                return default
            needle = _needle(key)
            if needle is not None and needle not in text:
                return default
            attrs = self.attrs
        return attrs.get(key, default)

    def __repr__(self) -> str:
        return f"SpanView({self.semantic_kind} {self.name!r} {self.span_id})"


class TraceSpans:
    """All spans of one trace, ordered by start time (then span id, for a stable order)."""

    def __init__(self, trace_id: str, spans: list[SpanView]) -> None:
        self.trace_id = trace_id
        self.spans = sorted(spans, key=lambda s: (s.start_ns or 0, s.span_id))
        self.by_id = {span.span_id: span for span in self.spans}
        self.memo: dict[str, Any] = {}
        """Results detectors derive from the whole trace and share (e.g. its resolved tool calls)."""
        # What every detector asks for, in one pass (a view does not change after it is built).
        self.root: SpanView | None = None
        """The span without a parent (the earliest if several); None when the root never arrived."""
        self.llm_spans: list[SpanView] = []
        self.tool_spans: list[SpanView] = []
        services: set[str] = set()
        self.start_ns = self.end_ns = 0
        for span in self.spans:
            if not span.parent_span_id and self.root is None:
                self.root = span
            if span.semantic_kind == "LLM":
                self.llm_spans.append(span)
            elif span.semantic_kind == "TOOL":
                self.tool_spans.append(span)
            if span.service_name:
                services.add(span.service_name)
            self.end_ns = max(self.end_ns, span.end_ns or 0)
        if self.spans:
            self.start_ns = self.spans[0].start_ns or 0  # sorted by start time
        self.services = sorted(services)

    @classmethod
    def from_table(cls, table: pa.Table) -> list[TraceSpans]:
        """One view per trace in `table` (rows of any number of traces)."""
        names = [name for name in EVALUATED_COLUMNS if name in table.column_names]
        groups: dict[str, list[SpanView]] = {}
        # Column by column, then zipped: several times faster than Table.to_pylist's dict per row.
        for values in zip(*(table.column(name).to_pylist() for name in names), strict=True):
            groups.setdefault(values[0], []).append(SpanView(dict(zip(names, values, strict=True))))
        return [cls(trace_id, spans) for trace_id, spans in groups.items()]

    def __iter__(self) -> Iterator[SpanView]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)
