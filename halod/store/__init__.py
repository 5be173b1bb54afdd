"""The DuckDB store: the single source of truth (spans now; traces, signals, findings later)."""

from halod.store.query import QueryError, QueryResult, check_read_only, run_query
from halod.store.schema import LATEST_VERSION, SchemaError, migrate
from halod.store.store import SpanStore, StoreClosed, connect

__all__ = [
    "LATEST_VERSION",
    "QueryError",
    "QueryResult",
    "SchemaError",
    "SpanStore",
    "StoreClosed",
    "check_read_only",
    "connect",
    "migrate",
    "run_query",
]
