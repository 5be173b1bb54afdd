"""The store's schema and its forward-only migrations.

`halod_schema` records every migration applied (version, description, time). Opening a file
applies the missing ones in order, each in its own transaction; a file written by a newer halod
(a version above `LATEST_VERSION`) is refused rather than misread. Add a migration by appending to
`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from halod.model import SPAN_COLUMNS, STORE_COLUMNS

_SQL_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT"}

# Columns holding JSON text (orjson output, always valid). Stored as VARCHAR since schema 2: DuckDB
# validates a JSON column on every insert (~2 us a span, ~20% of the insert), and the JSON functions
# and operators (attributes->>'key') read VARCHAR just the same.
JSON_COLUMNS = ("attributes", "resource_attributes", "events", "links", "dropped_counts")

# The spans table as migration 1 created it. Frozen text, not generated from SPAN_COLUMNS: a shipped
# migration must create the same table forever, and later columns come in their own migrations.
_SPANS_V1 = """CREATE TABLE spans (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    parent_span_id VARCHAR,
    trace_state VARCHAR,
    name VARCHAR,
    kind VARCHAR,
    semantic_kind VARCHAR,
    service_name VARCHAR,
    start_ns BIGINT,
    end_ns BIGINT,
    duration_ns BIGINT,
    status_code VARCHAR,
    status_message VARCHAR,
    model_name VARCHAR,
    tool_name VARCHAR,
    tool_arguments VARCHAR,
    input_text VARCHAR,
    output_text VARCHAR,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    total_tokens BIGINT,
    session_id VARCHAR,
    user_id VARCHAR,
    agent_name VARCHAR,
    attributes JSON,
    resource_attributes JSON,
    scope_name VARCHAR,
    scope_version VARCHAR,
    events JSON,
    links JSON,
    flags BIGINT,
    dropped_counts JSON,
    source VARCHAR,
    ingest_seq BIGINT NOT NULL,
    ingested_ns BIGINT,
    PRIMARY KEY (trace_id, span_id)
)"""


def _column_comments(names: list[str]) -> tuple[str, ...]:
    docs = {name: doc for name, _, doc in (*SPAN_COLUMNS, *STORE_COLUMNS)}
    return tuple(f"COMMENT ON COLUMN spans.{name} IS '{_escape(docs[name])}'" for name in names)


def expected_columns() -> list[tuple[str, str]]:
    """(name, SQL type) of the spans table at `LATEST_VERSION`, in order: the Arrow tables the store
    inserts must match it column for column."""
    return [(name, _SQL_TYPES[dtype]) for name, dtype, _ in (*SPAN_COLUMNS, *STORE_COLUMNS)]


def _escape(text: str) -> str:
    return text.replace("'", "''")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "spans table: complete OTLP data plus typed analysis columns; (trace_id, span_id) is unique",
        (_SPANS_V1, *_column_comments([line.split()[0] for line in _SPANS_V1.splitlines()[1:-2]])),
    ),
    Migration(
        2,
        "JSON text columns stored as VARCHAR (no per-insert JSON validation)",
        tuple(f"ALTER TABLE spans ALTER {name} TYPE VARCHAR" for name in JSON_COLUMNS),
    ),
    Migration(
        3,
        "source_cursors: where each pulling source (file, Phoenix, Langfuse, ...) resumes",
        (
            "CREATE TABLE source_cursors (source VARCHAR PRIMARY KEY, cursor VARCHAR NOT NULL, updated_ns BIGINT)",
            "COMMENT ON TABLE source_cursors IS 'resume position of each pulling source, committed with its spans'",
        ),
    ),
    Migration(
        4,
        "analysis tables: traces (derived features), signals (evidence), window_stats, trips, analysis_state",
        (
            """CREATE TABLE traces (
    trace_id VARCHAR PRIMARY KEY,
    services VARCHAR[],
    agent_names VARCHAR[],
    session_id VARCHAR,
    root_name VARCHAR,
    has_root BOOLEAN,
    start_ns BIGINT,
    end_ns BIGINT,
    duration_ns BIGINT,
    span_count BIGINT,
    kind_counts VARCHAR,
    llm_calls BIGINT,
    tool_calls BIGINT,
    tool_errors BIGINT,
    error_spans BIGINT,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    total_tokens BIGINT,
    models VARCHAR[],
    tools VARCHAR[],
    outcome VARCHAR,
    signals VARCHAR[],
    window_start_ns BIGINT,
    completed_ns BIGINT,
    completion VARCHAR,
    evaluations BIGINT
)""",
            """CREATE TABLE signals (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR,
    signal VARCHAR NOT NULL,
    severity VARCHAR,
    tool VARCHAR,
    details VARCHAR,
    service VARCHAR,
    agent VARCHAR,
    window_start_ns BIGINT,
    detected_ns BIGINT
)""",
            """CREATE TABLE window_stats (
    window_start_ns BIGINT NOT NULL,
    window_end_ns BIGINT NOT NULL,
    dimension VARCHAR NOT NULL,
    value VARCHAR NOT NULL,
    signal VARCHAR NOT NULL,
    traces BIGINT,
    affected_traces BIGINT,
    rate DOUBLE,
    closed BOOLEAN,
    updated_ns BIGINT,
    PRIMARY KEY (window_start_ns, dimension, value, signal)
)""",
            """CREATE TABLE trips (
    trip_id BIGINT PRIMARY KEY,
    rule VARCHAR NOT NULL,
    signal VARCHAR,
    dimension VARCHAR,
    value VARCHAR,
    window_start_ns BIGINT,
    window_end_ns BIGINT,
    observed DOUBLE,
    threshold DOUBLE,
    reason VARCHAR,
    tripped_ns BIGINT
)""",
            "CREATE TABLE analysis_state (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL, updated_ns BIGINT)",
            "COMMENT ON TABLE traces IS 'one row per completed trace: derived features "
            "(re-evaluated when late spans arrive)'",
            "COMMENT ON TABLE signals IS 'failure signals found in completed traces, pointing at the evidence span'",
            "COMMENT ON TABLE window_stats IS 'per tumbling window (by trace end time): traces, affected traces and "
            "rate per signal, overall and by service, agent, tool and model'",
            "COMMENT ON TABLE trips IS 'trigger rules that tripped, each asking for an analysis of its window'",
        ),
    ),
    Migration(
        5,
        "traces: the (service, agent) group a trace belongs to (outlier baselines are rebuilt from it at start)",
        (
            "ALTER TABLE traces ADD COLUMN service VARCHAR",
            "ALTER TABLE traces ADD COLUMN agent VARCHAR",
        ),
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version


class SchemaError(Exception):
    pass


def scalar(con: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any] | None = None) -> Any:
    """First value of the first row. Fetches the whole result: duckdb 2 keeps a connection busy
    while a result is only partly fetched (fetchone), refusing the next statement."""
    rows = con.execute(sql, parameters or []).fetchall()
    return rows[0][0] if rows else None


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    if not scalar(con, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'halod_schema'"):
        return 0
    return int(scalar(con, "SELECT coalesce(max(version), 0) FROM halod_schema"))


def migrate(con: duckdb.DuckDBPyConnection, target: int = LATEST_VERSION) -> list[int]:
    """Bring the schema up to `target` (the latest unless testing a migration); returns the versions
    applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS halod_schema (version INTEGER PRIMARY KEY, description VARCHAR, applied_ns BIGINT)"
    )
    version = current_version(con)
    if version > LATEST_VERSION:
        raise SchemaError(
            f"the database has schema version {version}, newer than this halod supports ({LATEST_VERSION}); "
            "upgrade halod"
        )
    applied = []
    for migration in MIGRATIONS:
        if migration.version <= version or migration.version > target:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            for statement in migration.statements:
                con.execute(statement)
            con.execute(
                "INSERT INTO halod_schema VALUES (?, ?, ?)",
                [migration.version, migration.description, time.time_ns()],
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
