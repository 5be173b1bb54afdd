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
_JSON_COLUMNS = {"attributes", "resource_attributes", "events", "links", "dropped_counts"}


def _column_ddl() -> str:
    columns = []
    for name, dtype, _ in (*SPAN_COLUMNS, *STORE_COLUMNS):
        sql_type = "JSON" if name in _JSON_COLUMNS else _SQL_TYPES[dtype]
        not_null = " NOT NULL" if name in {"trace_id", "span_id", "ingest_seq"} else ""
        columns.append(f"    {name} {sql_type}{not_null}")
    return ",\n".join(columns)


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
        (
            f"CREATE TABLE spans (\n{_column_ddl()},\n    PRIMARY KEY (trace_id, span_id)\n)",
            *(
                f"COMMENT ON COLUMN spans.{name} IS '{_escape(doc)}'"
                for name, _, doc in (*SPAN_COLUMNS, *STORE_COLUMNS)
            ),
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


def migrate(con: duckdb.DuckDBPyConnection) -> list[int]:
    """Bring the schema up to `LATEST_VERSION`; returns the versions applied."""
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
        if migration.version <= version:
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
