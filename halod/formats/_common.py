"""Shared machinery of the format readers: the public value types, chunk building, and the conversion
of plain JSON values (attributes, times, kinds, status codes, events, links) into OTLP protobuf.

Every reader turns its input into spans one record at a time and hands them to a `ChunkBuilder`,
which packs them into `ExportTraceServiceRequest` chunks of at most `max_spans_per_chunk` spans and
yields each chunk as soon as it is full, so a reader never holds more than one chunk of converted
spans.
"""

from __future__ import annotations

import calendar
import datetime
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from halod.formats import ids

# 2025-01-01T00:00:00Z: where the synthetic timeline of transcripts starts by default.
DEFAULT_TRANSCRIPT_START_NS = calendar.timegm((2025, 1, 1, 0, 0, 0)) * 1_000_000_000
MAX_TIME_NS = 2**63 - 1  # the store keeps times as signed 64-bit nanoseconds
_INT64 = range(-(2**63), 2**63)

Warn = Callable[[str], None]


class FormatError(ValueError):
    """A file whose format cannot be told, or a format name or argument that does not apply."""


class RecordError(Exception):
    """One input record (a line, a list element, a protobuf record) cannot be converted; says why."""


@dataclass(frozen=True)
class Damaged:
    """An element salvaged from a JSON document that does not parse as a whole, which did not parse
    itself: converting it reports `message` (see `reject_damaged`)."""

    message: str


def reject_damaged(document: Any) -> None:
    """Raise the RecordError of a `Damaged` element; every converter calls this first."""
    if isinstance(document, Damaged):
        raise RecordError(document.message)


@dataclass(frozen=True)
class Problem:
    """Something wrong in the input, reported where it was found; the rest of the file is still read.

    `location` is "line N" (1-based) for line formats, "record N" (0-based element of a JSON list, the
    same number as a transcript's `halod.run.index`), "byte N" for protobuf files, or "file".
    """

    file: str
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.location}: {self.message}"


@dataclass(frozen=True)
class LineState:
    """Where a line reader stands, so that reading can resume at a chunk's `position` with the same results.

    `line` is the number of the next line (1-based), `record` the index of the next record (every
    non-blank line is one record), `clock_ns` the start of the next transcript run's timeline
    (None: `ReadOptions.transcript_start_ns`; only transcripts use it).
    """

    line: int = 1
    record: int = 0
    clock_ns: int | None = None


@dataclass
class Chunk:
    """Up to `max_spans_per_chunk` converted spans, with the problems found while reading them.

    `position` is the byte offset after the last input fully consumed: a reader restarted there
    (`read_file(start=position)`, line formats) reads what follows. Line formats never split a line
    across chunks (a line holding more spans than `max_spans_per_chunk` makes one bigger chunk of its
    own), so every chunk of a line reader ends at a line end and its position moves forward. Other
    formats may split one input (a protobuf record): such a chunk carries the offset before that input.
    For single-document files the position is 0 until the last chunk, which carries the file size.
    `state` is the line reader's `LineState` at `position` (None for other formats).
    """

    request: ExportTraceServiceRequest
    spans: int
    problems: list[Problem]
    position: int
    state: LineState | None = None


@dataclass(frozen=True)
class ReadOptions:
    """How files are converted.

    - `max_spans_per_chunk`: spans per yielded chunk (at least 1; a single line holding more is one
      chunk of its own).
    - `tools`: OpenAI tool definitions (e.g. a dataset's tools.json) written on every transcript LLM
      span as `llm.tools.N.tool.json_schema`.
    - `transcript_start_ns`, `transcript_step_ns`: the synthetic timeline of transcripts (the first run
      starts at `transcript_start_ns`, each message takes `transcript_step_ns`).
    - `service_name`: `service.name` for spans whose source carries none (transcripts always; SDK dumps
      and HALO JSONL when the resource has no `service.name` or the SDK default `unknown_service...`).
      Default: the dataset name. OTLP files are never changed.
    - `dataset`: the name used in transcript ids and attributes. Default: the file name without its
      last suffix (`gpt-4o-airline` for gpt-4o-airline.json).
    """

    max_spans_per_chunk: int = 2048
    tools: list[dict[str, Any]] | None = None
    transcript_start_ns: int = DEFAULT_TRANSCRIPT_START_NS
    transcript_step_ns: int = 1_000_000_000
    service_name: str | None = None
    dataset: str | None = None


# ------------------------------------------------------------------------------------------ context


@dataclass(eq=False)
class Origin:
    """The resource and instrumentation scope a span belongs to (compared by identity)."""

    resource: Resource
    scope: InstrumentationScope
    resource_schema_url: str = ""
    scope_schema_url: str = ""


_ORIGIN_CACHE_LIMIT = 1024  # distinct resources remembered per read; a file with more just rebuilds them


@dataclass
class Context:
    """What every converter of one read needs: names, options and the resources seen so far."""

    file: str
    options: ReadOptions
    dataset: str
    service_name: str
    _origins: dict[bytes, Origin] = field(default_factory=dict)

    @classmethod
    def create(cls, file: str, options: ReadOptions) -> Context:
        if options.max_spans_per_chunk < 1:
            raise FormatError("max_spans_per_chunk must be at least 1")
        if options.transcript_step_ns < 0:
            raise FormatError("transcript_step_ns must not be negative")
        dataset = options.dataset or Path(file).stem or "halod-import"
        return cls(file=file, options=options, dataset=dataset, service_name=options.service_name or dataset)

    def origin(self, resource: Mapping[str, Any], scope_name: str = "", scope_version: str = "",
               resource_schema_url: str = "", scope_schema_url: str = "") -> Origin:
        """The `Origin` of these resource attributes and scope, with `service.name` filled in when the
        resource has none (absent, empty, or the SDK default `unknown_service...`)."""
        service = resource.get("service.name")
        if not isinstance(service, str) or not service or service.startswith("unknown_service"):
            resource = {**resource, "service.name": self.service_name}
        key = orjson.dumps([resource, scope_name, scope_version, resource_schema_url, scope_schema_url],
                           option=orjson.OPT_SORT_KEYS, default=str)
        origin = self._origins.get(key)
        if origin is None:
            if len(self._origins) >= _ORIGIN_CACHE_LIMIT:
                self._origins.clear()
            proto = Resource()
            set_attributes(proto.attributes, resource)
            origin = Origin(proto, InstrumentationScope(name=scope_name, version=scope_version),
                            resource_schema_url, scope_schema_url)
            self._origins[key] = origin
        return origin


# ------------------------------------------------------------------------------------------ chunks


class ChunkBuilder:
    """Packs spans into chunks of at most `max_spans` spans.

    Converters call `reserve` with the number of spans an input will add, then `add_span` /
    `add_resource_spans` (generators: they yield a full chunk before adding past the limit),
    `problem` for what they report; the reader calls `consumed` after each complete input (which also
    yields a chunk when it is full or the problems alone reach the limit). `finish` yields the last
    chunk when it holds anything or the position moved since the last chunk.

    With `whole_inputs` (line readers) an input is never split: `reserve` flushes the chunk first
    when the input would not fit, and an input bigger than `max_spans` makes one chunk of its own.
    """

    def __init__(self, file: str, max_spans: int, position: int = 0, state: LineState | None = None,
                 whole_inputs: bool = False) -> None:
        self.file = file
        self.max_spans = max_spans
        self.position = position
        self.state = state
        self.whole_inputs = whole_inputs
        self._yielded_position: int | None = position
        self._reset()

    def _reset(self) -> None:
        self._request = ExportTraceServiceRequest()
        self._spans = 0
        self._problems: list[Problem] = []
        self._groups: dict[Origin, ScopeSpans] = {}

    def problem(self, location: str, message: str) -> None:
        self._problems.append(Problem(self.file, location, message))

    def reserve(self, count: int) -> Iterator[Chunk]:
        """Announce that the next input adds `count` spans (only whole-input building acts on it)."""
        if self.whole_inputs and self._spans and self._spans + count > self.max_spans:
            yield self._flush()

    def add_span(self, span: Span, origin: Origin) -> Iterator[Chunk]:
        if self._spans >= self.max_spans and not self.whole_inputs:
            yield self._flush()
        group = self._groups.get(origin)
        if group is None:
            resource_spans = self._request.resource_spans.add(schema_url=origin.resource_schema_url)
            resource_spans.resource.CopyFrom(origin.resource)
            group = resource_spans.scope_spans.add(schema_url=origin.scope_schema_url)
            group.scope.CopyFrom(origin.scope)
            self._groups[origin] = group
        group.spans.append(span)
        self._spans += 1

    def add_resource_spans(self, resource_spans: ResourceSpans) -> Iterator[Chunk]:
        count = sum(len(scope_spans.spans) for scope_spans in resource_spans.scope_spans)
        if self._spans + count <= self.max_spans or self.whole_inputs:  # the common case: it fits whole
            self._request.resource_spans.append(resource_spans)
            self._spans += count
            return
        for scope_spans in resource_spans.scope_spans:
            origin = Origin(resource_spans.resource, scope_spans.scope, resource_spans.schema_url,
                            scope_spans.schema_url)
            for span in scope_spans.spans:
                yield from self.add_span(span, origin)

    def add_request(self, request: ExportTraceServiceRequest) -> Iterator[Chunk]:
        for resource_spans in request.resource_spans:
            yield from self.add_resource_spans(resource_spans)

    def consumed(self, position: int, state: LineState | None = None) -> Iterator[Chunk]:
        """Record that the input up to `position` is converted; yield a chunk if it is full."""
        self.position = position
        self.state = state
        if self._spans >= self.max_spans or len(self._problems) >= self.max_spans:
            yield self._flush()

    def finish(self) -> Iterator[Chunk]:
        if self._spans or self._problems or self.position != self._yielded_position:
            yield self._flush()

    def _flush(self) -> Chunk:
        chunk = Chunk(self._request, self._spans, self._problems, self.position, self.state)
        self._yielded_position = self.position
        self._reset()
        return chunk


# ------------------------------------------------------------------------------------------ values


def type_name(value: Any) -> str:
    """A JSON reader's name for the type of `value` (for problem messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def json_text(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def fill_any_value(out: AnyValue, value: Any) -> None:
    """Set an OTLP AnyValue from plain JSON data. None leaves it empty (OTLP has no null: halod.normalize
    reads an empty value back as null); integers beyond 64 bits become their decimal text."""
    if value is None:
        return
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        if value in _INT64:
            out.int_value = value
        else:
            out.string_value = str(value)
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list | tuple):
        out.array_value.SetInParent()  # an empty array is still an array
        for item in value:
            fill_any_value(out.array_value.values.add(), item)
    elif isinstance(value, dict):
        out.kvlist_value.SetInParent()
        for key, item in value.items():
            fill_any_value(out.kvlist_value.values.add(key=str(key)).value, item)
    else:
        out.string_value = str(value)


def set_attributes(target: Any, attributes: Mapping[str, Any]) -> None:
    """Append `attributes` to a repeated KeyValue field (`span.attributes`, `resource.attributes`, ...)."""
    for key, value in attributes.items():
        kv: KeyValue = target.add(key=key)
        fill_any_value(kv.value, value)


def object_field(holder: Mapping[str, Any], key: str, where: str = "") -> dict[str, Any]:
    """`holder[key]` as a dict: absent or null gives {}, another type is a RecordError."""
    value = holder.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecordError(f"{where}{key} must be an object, not {type_name(value)}")
    return value


def text_field(holder: Mapping[str, Any], key: str, where: str = "") -> str:
    """`holder[key]` as a string: absent or null gives "", another type is a RecordError."""
    value = holder.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"{where}{key} must be a string, not {type_name(value)}")
    return value


_ISO_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def parse_time(value: Any, key: str) -> int:
    """A timestamp as Unix nanoseconds.

    Integers are nanoseconds since the epoch. Strings are ISO-8601 date-times
    (`2026-04-24T18:12:13.315189000Z`; any number of fraction digits, nanoseconds kept; a `Z` or
    `+HH:MM` offset; none means UTC). Anything else, or a time before 1970 or after 2262, is a
    RecordError.
    """
    if isinstance(value, bool) or value is None:
        raise RecordError(f"{key} must be an ISO-8601 time or integer nanoseconds, not {type_name(value)}")
    if isinstance(value, int):
        nanos = value
    elif isinstance(value, str):
        match = _ISO_TIME.fullmatch(value.strip())
        if match is None:
            raise RecordError(f"{key} {value!r} is not an ISO-8601 date-time")
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        try:  # datetime() checks the fields (month 13, February 30, ...); timegm() gives exact seconds
            moment = datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
        except ValueError:
            raise RecordError(f"{key} {value!r} is not a valid date-time") from None
        seconds = calendar.timegm(moment.timetuple())
        if zone and zone not in "Zz":
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60)
        nanos = seconds * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))
    else:
        raise RecordError(f"{key} must be an ISO-8601 time or integer nanoseconds, not {type_name(value)}")
    if not 0 <= nanos <= MAX_TIME_NS:
        raise RecordError(f"{key} {value!r} is before 1970 or after 2262")
    return nanos


_KINDS = {"unspecified": 0, "internal": 1, "server": 2, "client": 3, "producer": 4, "consumer": 5}
_STATUS = {"unset": 0, "ok": 1, "error": 2}


def _enum(value: Any, key: str, names: dict[str, int], prefixes: tuple[str, ...], warn: Warn) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RecordError(f"{key} must be a string or an integer, not {type_name(value)}")
    if isinstance(value, int):
        if value in names.values():
            return value
    else:
        name = value.strip().lower()
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        if name in names:
            return names[name]
    warn(f"unknown {key} {value!r}; kept as {next(iter(names)).upper()}")
    return 0


def parse_kind(value: Any, warn: Warn, key: str = "kind") -> int:
    """OTel span kind from `SPAN_KIND_CLIENT`, `client`, `SpanKind.CLIENT` or 0-5; unknown names warn
    and give UNSPECIFIED; other types are a RecordError."""
    return _enum(value, key, _KINDS, ("span_kind_", "spankind."), warn)


def parse_status_code(value: Any, warn: Warn, key: str = "status code") -> int:
    """OTel status code from `STATUS_CODE_ERROR`, `error`, `StatusCode.ERROR` or 0-2 (see parse_kind)."""
    return _enum(value, key, _STATUS, ("status_code_", "statuscode."), warn)


def trace_state_text(value: Any) -> str:
    """W3C trace state from a string, `{"entries": {k: v}}` (any-agent), a dict or a list of pairs."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "" if value.strip() in ("", "[]", "{}") else value
    if isinstance(value, dict):
        entries = value.get("entries", value)
        if isinstance(entries, dict):
            return ",".join(f"{key}={item}" for key, item in entries.items())
    if isinstance(value, list):
        return ",".join(f"{pair[0]}={pair[1]}" for pair in value if isinstance(pair, list | tuple) and len(pair) == 2)
    raise RecordError(f"trace_state must be a string, not {type_name(value)}")


def _first(holder: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = holder.get(key)
        if value is not None:
            return value
    return None


def fill_event(event: Span.Event, data: Any, default_time: int) -> None:
    """A span event from `{name, timestamp|time|time_unix_nano|timeUnixNano, attributes}`."""
    if not isinstance(data, dict):
        raise RecordError(f"an event must be an object, not {type_name(data)}")
    event.name = text_field(data, "name", "event ")
    moment = _first(data, "timestamp", "time", "time_unix_nano", "timeUnixNano")
    event.time_unix_nano = default_time if moment is None else parse_time(moment, "event time")
    set_attributes(event.attributes, object_field(data, "attributes", "event "))


def fill_link(link: Span.Link, data: Any) -> None:
    """A span link from `{trace_id, span_id, trace_state, attributes}`, the ids possibly under `context`;
    ids map like span ids (ids.py), originals kept in the link's attributes."""
    if not isinstance(data, dict):
        raise RecordError(f"a link must be an object, not {type_name(data)}")
    context = object_field(data, "context", "link ") or data
    attributes = dict(object_field(data, "attributes", "link "))
    try:
        trace_id, original_trace = ids.map_id(context.get("trace_id"), ids.TRACE_ID_BYTES)
        span_id, original_span = ids.map_id(context.get("span_id"), ids.SPAN_ID_BYTES)
    except ids.IdError as exc:
        raise RecordError(f"link {exc}") from None
    link.trace_id, link.span_id = trace_id, span_id
    link.trace_state = trace_state_text(context.get("trace_state"))
    if original_trace is not None:
        attributes[ids.ORIGINAL_TRACE_ID] = original_trace
    if original_span is not None:
        attributes[ids.ORIGINAL_SPAN_ID] = original_span
    set_attributes(link.attributes, attributes)


def build_span(*, trace_id: Any, span_id: Any, parent_span_id: Any, name: Any, kind: Any, start: Any, end: Any,
               status_code: Any, status_message: Any, trace_state: Any, attributes: Any, events: Any, links: Any,
               flags: int, warn: Warn) -> Span:
    """One OTLP span from plain JSON values, checked field by field (RecordError names the first bad one).

    Ids map as ids.py says, keeping originals as `halod.original.*` attributes when changed; a missing
    end time means the span ends when it starts.
    """
    try:
        trace_bytes, original_trace = ids.map_id(trace_id, ids.TRACE_ID_BYTES)
        span_bytes, original_span = ids.map_id(span_id, ids.SPAN_ID_BYTES)
        parent_bytes, original_parent = ids.map_parent_id(parent_span_id)
    except ids.IdError as exc:
        raise RecordError(str(exc)) from None
    if name is not None and not isinstance(name, str):
        raise RecordError(f"name must be a string, not {type_name(name)}")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, dict):
        raise RecordError(f"attributes must be an object, not {type_name(attributes)}")
    if status_message is not None and not isinstance(status_message, str):
        raise RecordError(f"status message must be a string, not {type_name(status_message)}")
    start_ns = parse_time(start, "start_time")
    end_ns = start_ns if end is None else parse_time(end, "end_time")
    span = Span(
        trace_id=trace_bytes, span_id=span_bytes, parent_span_id=parent_bytes, name=name or "",
        kind=cast("Span.SpanKind.ValueType", parse_kind(kind, warn)),
        start_time_unix_nano=start_ns, end_time_unix_nano=end_ns,
        trace_state=trace_state_text(trace_state), flags=flags,
        status=Status(code=cast("Status.StatusCode.ValueType", parse_status_code(status_code, warn)),
                      message=status_message or ""),
    )
    originals = {ids.ORIGINAL_TRACE_ID: original_trace, ids.ORIGINAL_SPAN_ID: original_span,
                 ids.ORIGINAL_PARENT_SPAN_ID: original_parent}
    set_attributes(span.attributes, {**attributes, **{k: v for k, v in originals.items() if v is not None}})
    for key, items in (("events", events), ("links", links)):
        if items is not None and not isinstance(items, list):
            raise RecordError(f"{key} must be an array, not {type_name(items)}")
    for event in events or ():
        fill_event(span.events.add(), event, start_ns)
    for link in links or ():
        fill_link(span.links.add(), link)
    return span
