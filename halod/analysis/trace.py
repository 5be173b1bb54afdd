"""The spans of one completed trace, as detectors read them.

A `TraceSpans` is built from the store's rows (an Arrow table with the `spans` columns) and holds
`SpanView`s in start-time order. Typed columns are plain attributes; the JSON columns are parsed on
first use only (most detectors never need the full attribute map), so building a view is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from typing import Any

import orjson
import pyarrow as pa

# Columns detectors never read: left out of the views (converting them to Python costs time).
_UNREAD_COLUMNS = ("resource_attributes", "links", "dropped_counts", "scope_version", "trace_state", "flags")


class SpanView:
    """One stored span: its typed columns as attributes (docs/schema.md), the JSON ones parsed on use."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.__dict__.update(row)  # plain attributes: detectors read them millions of times

    @cached_property
    def attrs(self) -> dict[str, Any]:
        """Every span attribute (the `attributes` JSON object), parsed once."""
        text = self.__dict__.get("attributes")
        return orjson.loads(text) if text else {}

    @cached_property
    def event_list(self) -> list[dict[str, Any]]:
        """Span events as [{name, time_ns, attributes}], parsed once."""
        text = self.__dict__.get("events")
        return orjson.loads(text) if text else []

    @cached_property
    def memo(self) -> dict[str, Any]:
        """Results detectors derive from this span and share (e.g. the tool calls it requested), so
        the first detector that needs one computes it for all; gone with the view."""
        return {}

    @property
    def row(self) -> dict[str, Any]:
        """The columns as a dict (to build a modified copy: SpanView({**span.row, ...}))."""
        return {key: value for key, value in self.__dict__.items() if key not in ("attrs", "event_list", "memo")}

    @property
    def is_error(self) -> bool:
        return self.__dict__.get("status_code") == "ERROR"

    def get(self, key: str, default: Any = None) -> Any:
        """A span attribute by its full key (e.g. "llm.tools.0.tool.json_schema")."""
        return self.attrs.get(key, default)

    def __getattr__(self, name: str) -> Any:
        return None  # a column the view was built without (or a test's partial row) reads as NULL

    def __repr__(self) -> str:
        return f"SpanView({self.semantic_kind} {self.name!r} {self.span_id})"


class TraceSpans:
    """All spans of one trace, ordered by start time (then span id, for a stable order)."""

    def __init__(self, trace_id: str, spans: list[SpanView]) -> None:
        self.trace_id = trace_id
        self.spans = sorted(spans, key=lambda s: (s.start_ns or 0, s.span_id))
        self.by_id = {span.span_id: span for span in self.spans}

    @classmethod
    def from_table(cls, table: pa.Table) -> list[TraceSpans]:
        """One view per trace in `table` (rows of any number of traces)."""
        groups: dict[str, list[SpanView]] = {}
        table = table.drop_columns([name for name in _UNREAD_COLUMNS if name in table.column_names])
        for row in table.to_pylist():
            groups.setdefault(row["trace_id"], []).append(SpanView(row))
        return [cls(trace_id, spans) for trace_id, spans in groups.items()]

    @cached_property
    def memo(self) -> dict[str, Any]:
        """Results detectors derive from the whole trace and share (e.g. its resolved tool calls)."""
        return {}

    def __iter__(self) -> Iterator[SpanView]:
        return iter(self.spans)

    def __len__(self) -> int:
        return len(self.spans)

    @cached_property
    def root(self) -> SpanView | None:
        """The span without a parent (the earliest if several); None when the root never arrived."""
        roots = [span for span in self.spans if not span.parent_span_id]
        return roots[0] if roots else None

    def of_kind(self, semantic_kind: str) -> list[SpanView]:
        return [span for span in self.spans if span.semantic_kind == semantic_kind]

    @cached_property
    def llm_spans(self) -> list[SpanView]:
        return self.of_kind("LLM")

    @cached_property
    def tool_spans(self) -> list[SpanView]:
        return self.of_kind("TOOL")

    def children(self, span: SpanView) -> list[SpanView]:
        return [child for child in self.spans if child.parent_span_id == span.span_id]

    @cached_property
    def services(self) -> list[str]:
        return sorted({span.service_name for span in self.spans if span.service_name})

    @cached_property
    def end_ns(self) -> int:
        return max((span.end_ns or 0) for span in self.spans) if self.spans else 0

    @cached_property
    def start_ns(self) -> int:
        return min((span.start_ns or 0) for span in self.spans) if self.spans else 0
