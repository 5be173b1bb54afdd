"""Read-only SQL over the store, shared by the daemon's admin API and the CLI's local fallback.

Only one statement, of type SELECT (which includes WITH, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN, is
accepted, and it runs inside a READ ONLY transaction, so a query can never write to the store. The
connections it runs on have external access disabled, so SQL cannot read or write other files.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import duckdb

_ALLOWED = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(Exception):
    """The query was refused or failed; the message is meant for the user."""


@dataclass
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool


def check_read_only(sql: str) -> None:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    if len(statements) != 1:
        raise QueryError(f"expected exactly one SQL statement, got {len(statements)}")
    if statements[0].type not in _ALLOWED:
        kind = str(statements[0].type).rsplit(".", 1)[-1]
        raise QueryError(f"only read-only queries (SELECT, WITH, DESCRIBE, SHOW, EXPLAIN) are allowed, not {kind}")


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 10_000, timeout_s: float | None = 60.0
) -> QueryResult:
    """Run one read-only statement on its own cursor; at most `max_rows` rows are returned."""
    check_read_only(sql)
    cursor = con.cursor()
    timer = threading.Timer(timeout_s, cursor.interrupt) if timeout_s else None
    try:
        if timer:
            timer.start()
        cursor.execute("BEGIN TRANSACTION READ ONLY")
        try:
            cursor.execute(sql)
            description = cursor.description or []
            rows = cursor.fetchmany(max_rows + 1)
        finally:
            cursor.execute("ROLLBACK")
    except duckdb.InterruptException:
        raise QueryError(f"query cancelled after {timeout_s:g} s") from None
    except duckdb.Error as exc:
        raise QueryError(str(exc)) from None
    finally:
        if timer:
            timer.cancel()
        cursor.close()
    return QueryResult(
        columns=[column[0] for column in description],
        types=[str(column[1]) for column in description],
        rows=rows[:max_rows],
        truncated=len(rows) > max_rows,
    )
