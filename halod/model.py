"""The data that flows through halod: normalized span batches, commit results and commit events.

A `SpanBatch` is what receivers hand to a pipeline: an Arrow table of normalized spans (columns in
`SPAN_COLUMNS`, the same order as the store's `spans` table minus the three columns the store adds
at commit) plus the spans the decoder rejected. After hand-off the caller no longer touches it.

Errors are classified the way OTLP clients act on them: `Refused` is retryable (gRPC UNAVAILABLE,
HTTP 503 + Retry-After; nothing of the request was stored), `InvalidPayload` is permanent (gRPC
INVALID_ARGUMENT, HTTP 400; nothing stored).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

# (column, Arrow type, description). The description is the column's documentation: docs/schema.md
# and the store's column comments are generated from it.
SPAN_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("trace_id", pa.string(), "32 lower-case hex characters"),
    ("span_id", pa.string(), "16 lower-case hex characters"),
    ("parent_span_id", pa.string(), "16 hex characters; NULL for a root span"),
    ("trace_state", pa.string(), "W3C trace state, NULL when empty"),
    ("name", pa.string(), "span name"),
    ("kind", pa.string(), "OTel span kind: INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER or UNSPECIFIED"),
    ("semantic_kind", pa.string(), "LLM, TOOL, AGENT, CHAIN, ... or UNKNOWN (docs/semconv.md)"),
    ("service_name", pa.string(), "resource service.name (unknown_service when absent)"),
    ("start_ns", pa.int64(), "start time, Unix epoch nanoseconds"),
    ("end_ns", pa.int64(), "end time, Unix epoch nanoseconds"),
    ("duration_ns", pa.int64(), "end_ns - start_ns; NULL when the end precedes the start"),
    ("status_code", pa.string(), "UNSET, OK or ERROR"),
    ("status_message", pa.string(), "status description, NULL when empty"),
    ("model_name", pa.string(), "model that served an LLM span"),
    ("tool_name", pa.string(), "tool executed by a TOOL span"),
    ("tool_arguments", pa.string(), "arguments of a TOOL span (JSON text as sent)"),
    ("input_text", pa.string(), "input of the span (text, or JSON text of messages)"),
    ("output_text", pa.string(), "output of the span (text, or JSON text of messages)"),
    ("prompt_tokens", pa.int64(), "input tokens of an LLM span"),
    ("completion_tokens", pa.int64(), "output tokens of an LLM span"),
    ("total_tokens", pa.int64(), "total tokens (prompt + completion when not reported)"),
    ("session_id", pa.string(), "conversation or session the span belongs to"),
    ("user_id", pa.string(), "end user the span acts for"),
    ("agent_name", pa.string(), "agent that produced the span"),
    ("attributes", pa.string(), "every span attribute, JSON object"),
    ("resource_attributes", pa.string(), "every resource attribute, JSON object"),
    ("scope_name", pa.string(), "instrumentation scope name"),
    ("scope_version", pa.string(), "instrumentation scope version"),
    ("events", pa.string(), "span events, JSON array of {name, time_ns, attributes}; NULL when none"),
    ("links", pa.string(), "span links, JSON array of {trace_id, span_id, trace_state, attributes}; NULL when none"),
    ("flags", pa.int64(), "W3C trace flags and OTLP span flags"),
    ("dropped_counts", pa.string(), "JSON {attributes, events, links} counts the SDK dropped; NULL when all zero"),
]

# Added by the store when it commits a batch (not produced by decoders).
STORE_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("source", pa.string(), "component id that received the span, e.g. otlp or otlp/edge"),
    ("ingest_seq", pa.int64(), "commit order of the request that carried the span (post-commit cursors use it)"),
    ("ingested_ns", pa.int64(), "wall-clock time of the commit, Unix epoch nanoseconds"),
]

SPAN_SCHEMA = pa.schema([(name, dtype) for name, dtype, _ in SPAN_COLUMNS])


@dataclass(slots=True)
class SpanBatch:
    """Spans decoded from one request (or one file chunk), ready to be committed.

    `spans` follows `SPAN_SCHEMA`. `rejected` counts spans the decoder refused (invalid ids and the
    like) and `rejection_reason` says why; the rest of the request is still stored and the client is
    told through OTLP partial success.

    `cursor` is where a pulling source (a file position, an API page cursor) resumes after this batch.
    The store commits it in the same transaction as the spans, under `source`, so after a crash the
    source resumes exactly after what was stored (`SpanStore.source_cursor`).
    """

    spans: pa.Table
    source: str
    rejected: int = 0
    rejection_reason: str = ""
    cursor: str | None = None

    @property
    def num_spans(self) -> int:
        return int(self.spans.num_rows)

    @property
    def nbytes(self) -> int:
        return int(self.spans.nbytes)


@dataclass(slots=True, frozen=True)
class CommitResult:
    """What the store says of one committed batch: how many spans were new, how many it already had."""

    ingest_seq: int
    stored: int
    duplicates: int


@dataclass(slots=True, frozen=True)
class ImportResult:
    """What an import request (`Daemon.ingest`, POST /api/v1/import) did: the commit's figures plus
    the spans normalization rejected (invalid ids or times) and why."""

    ingest_seq: int
    stored: int
    duplicates: int
    rejected: int
    rejection_reason: str


@dataclass(slots=True)
class CommitEvent:
    """Published after a commit, off the acknowledgement path, to whatever consumes committed spans.

    `spans` holds only the spans that were new (redelivered ones are filtered out), with the store
    columns added. `ingest_seq` lets a consumer that missed events re-read them from the store
    (`SELECT ... FROM spans WHERE ingest_seq > last_seen`).
    """

    pipeline: str
    source: str
    ingest_seq: int
    spans: pa.Table


@dataclass(slots=True)
class Refused(Exception):
    """Retryable refusal: nothing of the request was stored; the client should retry after a delay."""

    reason: str
    message: str
    retry_after_s: float = 1.0

    def __str__(self) -> str:
        return self.message


@dataclass(slots=True)
class InvalidPayload(Exception):
    """Permanent rejection of a whole request (undecodable, wrong content type): retrying won't help."""

    message: str
    reason: str = "malformed"
    details: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message
