"""The real DuckDB `SpanStore` on a temporary file, driven from asyncio: commit results, dedup and
commit events, ingest_seq, schema migrations, read-only queries, retention and admission.

Batches are built with `normalize_request` from requests carrying real attribute sets (the
halo-engine fixture), with ids and end times chosen by each test.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod.config import StorageConfig
from halod.model import CommitEvent, CommitResult, InvalidPayload, Refused, SpanBatch
from halod.normalize import normalize_request
from halod.store import LATEST_VERSION, QueryError, SchemaError, SpanStore, StoreClosed, connect, migrate
from halod.store.schema import expected_columns
from halod.telemetry import Telemetry
from tests.conftest import FIXTURES

FIXTURE_ATTRIBUTES = [
    json.loads(line)["attributes"]
    for line in (FIXTURES / "halo-engine" / "realistic_traces.jsonl").read_text().splitlines()
]
TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
HOUR_NS = 3600 * 10**9


def make_request(keys: list[int], end_ns: int | list[int] | None = None, pad: int = 0) -> ExportTraceServiceRequest:
    """One request with a span per key (span id = key), each with a real fixture attribute set."""
    now = time.time_ns()
    ends = end_ns if isinstance(end_ns, list) else [end_ns or now] * len(keys)
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "store-test"
    scope_spans = resource_spans.scope_spans.add()
    for key, end in zip(keys, ends, strict=True):
        span = scope_spans.spans.add()
        span.trace_id = TRACE
        span.span_id = key.to_bytes(8, "big")
        span.name = f"span-{key}"
        span.start_time_unix_nano, span.end_time_unix_nano = end - 1000, end
        for name, value in FIXTURE_ATTRIBUTES[key % len(FIXTURE_ATTRIBUTES)].items():
            any_value = span.attributes.add(key=name).value
            if isinstance(value, str):
                any_value.string_value = value
            elif isinstance(value, int):
                any_value.int_value = value
        if pad:
            span.attributes.add(key="pad").value.string_value = f"{key:012d}" * (pad // 12)
    return request


def batch(keys: list[int], **kwargs: Any) -> SpanBatch:
    return normalize_request(make_request(keys, **kwargs), "otlp")


def span_id(key: int) -> str:
    return key.to_bytes(8, "big").hex()


StoreFactory = Callable[..., SpanStore]


@pytest.fixture
async def make_store(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """make_store(**storage_config) -> an unopened SpanStore on tmp_path/halod.duckdb; all closed at the end."""
    stores: list[SpanStore] = []

    def make(**storage: Any) -> SpanStore:
        config = StorageConfig.model_validate({"path": str(tmp_path / "data" / "halod.duckdb"), **storage})
        store = SpanStore(config, Telemetry())
        stores.append(store)
        return store

    yield make
    for store in stores:
        await asyncio.to_thread(store.close)


async def opened(store: SpanStore) -> SpanStore:
    await asyncio.to_thread(store.open)
    return store


async def query(store: SpanStore, sql: str) -> list[tuple[Any, ...]]:
    return (await asyncio.to_thread(store.query, sql)).rows


def metric(store: SpanStore, name: str, **labels: str) -> float:
    return store.telemetry.registry.get_sample_value(name, labels) or 0.0


async def wait_for(condition: Callable[[], Any], what: str, deadline_s: float = 30.0) -> None:
    """Poll `condition` (sync or async) until it is true; fail with `what` when the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------- commit and dedup


async def test_commit_counts_redelivery_and_commit_events(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    events: list[CommitEvent] = []
    store.subscribe(events.append)

    first = await store.write(batch(list(range(1, 21))))
    assert (first.stored, first.duplicates) == (20, 0)
    assert len(events) == 1 and events[0].ingest_seq == first.ingest_seq
    assert sorted(events[0].spans.column("span_id").to_pylist()) == sorted(span_id(k) for k in range(1, 21))
    assert (events[0].pipeline, events[0].source) == ("traces", "otlp")
    # the event carries the store columns too
    assert events[0].spans.column("ingest_seq").to_pylist() == [first.ingest_seq] * 20
    assert set(events[0].spans.column("source").to_pylist()) == {"otlp"}
    assert events[0].spans.column("ingested_ns")[0].as_py() > 0

    # the same spans again (a client retry): nothing new is stored, and no event is published
    again = await store.write(batch(list(range(1, 21))))
    assert (again.stored, again.duplicates) == (0, 20)
    assert again.ingest_seq > first.ingest_seq
    assert len(events) == 1

    # half old, half new: only the new half is stored and only it is in the event
    mixed = await store.write(batch(list(range(11, 31)), end_ns=time.time_ns()), "traces/other")
    assert (mixed.stored, mixed.duplicates) == (10, 10)
    assert len(events) == 2
    assert events[1].pipeline == "traces/other"
    assert sorted(events[1].spans.column("span_id").to_pylist()) == sorted(span_id(k) for k in range(21, 31))

    assert await query(store, "SELECT count(*), count(DISTINCT span_id) FROM spans") == [(30, 30)]
    # redelivered spans keep the ingest_seq of the request that first stored them
    assert await query(store, f"SELECT count(*) FROM spans WHERE ingest_seq = {first.ingest_seq}") == [(20,)]
    assert metric(store, "halod_store_committed_spans_total") == 30
    assert metric(store, "halod_store_duplicate_spans_total") == 30


async def test_stored_rows_are_the_normalized_rows(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    sent = batch([5, 6, 7])
    expected = sent.spans.to_pylist()
    result = await store.write(sent)
    rows = (await asyncio.to_thread(store.query, "SELECT * FROM spans ORDER BY span_id"))
    stored = [dict(zip(rows.columns, row, strict=True)) for row in rows.rows]
    assert len(stored) == 3
    for row, want in zip(stored, sorted(expected, key=lambda r: r["span_id"]), strict=True):
        for column, value in want.items():
            if column in ("attributes", "resource_attributes"):
                assert json.loads(row[column]) == json.loads(value)
            else:
                assert row[column] == value, column
        assert (row["source"], row["ingest_seq"]) == ("otlp", result.ingest_seq)


async def test_span_repeated_within_one_request_is_new_once(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    events: list[CommitEvent] = []
    store.subscribe(events.append)
    result = await store.write(batch([1, 1, 2]))
    assert (result.stored, result.duplicates) == (2, 1)
    (event,) = events
    assert sorted(event.spans.column("span_id").to_pylist()) == [span_id(1), span_id(2)]


async def test_concurrent_identical_requests_store_once(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    events: list[CommitEvent] = []
    store.subscribe(events.append)
    keys = list(range(100, 150))
    results = await asyncio.gather(*(store.write(batch(keys)) for _ in range(4)))
    assert sum(r.stored for r in results) == 50
    assert sum(r.duplicates for r in results) == 150
    assert len({r.ingest_seq for r in results}) == 4
    assert sum(e.spans.num_rows for e in events) == 50
    assert sorted(s for e in events for s in e.spans.column("span_id").to_pylist()) == sorted(map(span_id, keys))


async def test_ingest_seq_increases_per_request_and_survives_reopen(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    seqs = [(await store.write(batch([key]))).ingest_seq for key in (1, 2, 3)]
    empty = await store.write(batch([]))  # an empty request still gets its own seq
    seqs.append(empty.ingest_seq)
    seqs.append((await store.write(batch([4]))).ingest_seq)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    assert (empty.stored, empty.duplicates) == (0, 0)
    rows = await query(store, "SELECT span_id, ingest_seq FROM spans ORDER BY ingest_seq")
    assert [seq for _, seq in rows] == [seqs[0], seqs[1], seqs[2], seqs[4]]
    await asyncio.to_thread(store.close)

    reopened = await opened(make_store())
    after = await reopened.write(batch([5]))
    assert after.ingest_seq > seqs[-1]
    assert await query(reopened, "SELECT count(*) FROM spans") == [(5,)]


# ------------------------------------------------------------------------------------------------ schema


async def test_schema_version_recorded_and_reopen_migrates_nothing(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    await store.write(batch([1]))
    before = await query(store, "SELECT version, description, applied_ns FROM halod_schema ORDER BY version")
    assert [row[0] for row in before] == list(range(1, LATEST_VERSION + 1))
    assert all(row[1] and row[2] > 0 for row in before)
    await asyncio.to_thread(store.close)

    reopened = await opened(make_store())
    assert await query(reopened, "SELECT version, description, applied_ns FROM halod_schema ORDER BY version") == before
    assert await query(reopened, "SELECT count(*) FROM spans") == [(1,)]
    await asyncio.to_thread(reopened.close)

    con = connect(reopened.config.path)
    try:
        assert migrate(con) == []
    finally:
        con.close()


async def test_a_schema_1_file_migrates_keeping_its_spans(make_store: StoreFactory) -> None:
    """A file written by the first release (JSON-typed columns) is brought to the latest schema on
    open: the spans are kept, the columns match what the store inserts, JSON operators still work."""
    store = make_store()
    store.config.path.parent.mkdir(parents=True, exist_ok=True)
    con = connect(store.config.path)
    try:
        assert migrate(con, target=1) == [1]
        old = batch([1, 2]).spans
        con.register("old", old)
        con.execute("INSERT INTO spans SELECT *, 'otlp', 1, 0 FROM old")
    finally:
        con.close()

    await opened(store)
    columns = await query(store, "SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'spans' ORDER BY ordinal_position")
    assert columns == expected_columns()
    rows = await query(store, "SELECT span_id, json_keys(attributes) FROM spans ORDER BY span_id")
    assert rows == [(span_id(key), list(json.loads(attributes)))
                    for key, attributes in zip((1, 2), old.column("attributes").to_pylist(), strict=True)]
    comments = await query(store, "SELECT comment FROM duckdb_columns() WHERE table_name = 'spans' "
                                  "AND column_name = 'attributes'")
    assert comments == [("every span attribute, JSON object",)]
    assert (await store.write(batch([2, 3]))).stored == 1  # the primary key survived the migration


async def test_newer_schema_version_is_refused(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    await store.write(batch([1]))
    await asyncio.to_thread(store.close)
    con = connect(store.config.path)
    con.execute("INSERT INTO halod_schema VALUES (?, 'from a future halod', 0)", [LATEST_VERSION + 1])
    con.close()

    newer = make_store()
    with pytest.raises(SchemaError, match=f"schema version {LATEST_VERSION + 1}"):
        await asyncio.to_thread(newer.open)
    assert not newer.is_open
    with pytest.raises(Refused):  # refused at once, not queued for a writer that never started
        await newer.write(batch([2]))
    await asyncio.to_thread(newer.close)
    # the refused file was not modified
    con = connect(store.config.path, read_only=True)
    try:
        assert con.execute("SELECT max(version) FROM halod_schema").fetchall() == [(LATEST_VERSION + 1,)]
        assert con.execute("SELECT count(*) FROM spans").fetchall() == [(1,)]
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------ queries


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM spans",
        "INSERT INTO spans (trace_id, span_id, ingest_seq) VALUES ('a', 'b', 1)",
        "UPDATE spans SET name = 'x'",
        "DROP TABLE spans",
        "CREATE TABLE evil (x INT)",
        "COPY spans TO '/tmp/halod-test-exfiltrate.csv'",
        "ATTACH '/tmp/halod-test-other.duckdb' AS other",
        "SELECT 1; DELETE FROM spans",
        "SELECT 1; SELECT 2",
        "PRAGMA enable_external_access",
        "SET enable_external_access = true",
        "INSTALL httpfs",
        "CHECKPOINT",
        "",
    ],
)
async def test_query_refuses_anything_but_one_read(make_store: StoreFactory, sql: str) -> None:
    store = await opened(make_store())
    await store.write(batch([1, 2]))
    with pytest.raises(QueryError):
        await asyncio.to_thread(store.query, sql)
    assert await query(store, "SELECT count(*) FROM spans") == [(2,)]
    assert not Path("/tmp/halod-test-exfiltrate.csv").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM glob('/etc/*')",
    ],
)
async def test_query_cannot_read_other_files(make_store: StoreFactory, sql: str) -> None:
    store = await opened(make_store())
    with pytest.raises(QueryError):
        await asyncio.to_thread(store.query, sql)


async def test_read_only_queries_work_while_writes_happen(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    writes = 25

    async def writer() -> list[CommitResult]:
        return [await store.write(batch(list(range(i * 40 + 1, i * 40 + 41)))) for i in range(writes)]

    async def reader() -> list[int]:
        counts = []
        for _ in range(writes):
            result = await asyncio.to_thread(store.query, "SELECT count(*) FROM spans WHERE kind IS NOT NULL")
            counts.append(result.rows[0][0])
            await asyncio.sleep(0)
        return counts

    results, counts_a, counts_b = await asyncio.gather(writer(), reader(), reader())
    assert sum(r.stored for r in results) == writes * 40
    for counts in (counts_a, counts_b):
        # each reader sees a growing store, in whole commits
        assert counts == sorted(counts) and all(c % 40 == 0 and 0 <= c <= writes * 40 for c in counts)
    assert await query(store, "SELECT count(*) FROM spans") == [(writes * 40,)]


async def test_query_max_rows_truncates(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    await store.write(batch(list(range(1, 11))))
    result = await asyncio.to_thread(store.query, "SELECT span_id FROM spans ORDER BY span_id", 4)
    assert (len(result.rows), result.truncated, result.columns) == (4, True, ["span_id"])
    result = await asyncio.to_thread(store.query, "SELECT span_id FROM spans", 10)
    assert (len(result.rows), result.truncated) == (10, False)


# ---------------------------------------------------------------------------------------------- retention


async def test_age_retention_drops_spans_that_ended_and_were_stored_too_long_ago(make_store: StoreFactory) -> None:
    store = await opened(make_store(retention={"max_age": "1s", "check_interval": 0.1}))
    now = time.time_ns()
    old = list(range(1, 31))
    recent = list(range(31, 51))
    # old and recent spans mixed in the same requests; "recent" ones end an hour ahead (clock skew)
    await store.write(batch(old[:15] + recent[:10], end_ns=[now - 2 * HOUR_NS] * 15 + [now + HOUR_NS] * 10))
    await store.write(batch(old[15:] + recent[10:], end_ns=[now - 25 * HOUR_NS] * 15 + [now + HOUR_NS] * 10))

    await wait_for(lambda: metric(store, "halod_store_retention_dropped_spans_total", reason="age") >= len(old),
                   "age retention to drop the old spans")
    assert metric(store, "halod_store_retention_dropped_spans_total", reason="age") == len(old)
    remaining = await query(store, "SELECT span_id FROM spans ORDER BY span_id")
    assert [row[0] for row in remaining] == [span_id(k) for k in recent]
    # the store still takes writes after retention ran
    assert (await store.write(batch([99]))).stored == 1


async def test_imported_history_is_kept_max_age_after_its_import(make_store: StoreFactory) -> None:
    """Spans that ended long ago but were just stored (an import of last month's traces) stay."""
    store = await opened(make_store(retention={"max_age": "1h", "check_interval": 0.05}))
    await store.write(batch([1, 2], end_ns=time.time_ns() - 30 * 24 * HOUR_NS))
    for key in range(3, 8):  # several retention checks, using commits as the clock
        await asyncio.sleep(0.06)
        await store.write(batch([key]))
    assert await query(store, "SELECT count(*) FROM spans") == [(7,)]
    assert metric(store, "halod_store_retention_dropped_spans_total", reason="age") == 0


async def test_no_retention_when_max_age_is_null(make_store: StoreFactory) -> None:
    store = await opened(make_store(retention={"max_age": None, "check_interval": 0.05}))
    events: list[CommitEvent] = []
    store.subscribe(events.append)
    await store.write(batch([1], end_ns=1_000_000_000))  # ended in 1970
    # let several retention checks pass, using commits as the clock
    for key in range(2, 12):
        await asyncio.sleep(0.06)
        await store.write(batch([key]))
    assert await query(store, "SELECT count(*) FROM spans") == [(11,)]
    assert metric(store, "halod_store_retention_dropped_spans_total", reason="age") == 0


async def test_size_retention_drops_oldest_first_and_keeps_newest(make_store: StoreFactory) -> None:
    # fill the store (no size limit), in requests whose end times are shuffled
    store = await opened(make_store(retention={"max_age": None, "check_interval": 3600}))
    now = time.time_ns()
    total = 3000
    order = [(i * 7919) % total for i in range(total)]  # a permutation of 0..total-1
    for start in range(0, total, 300):
        keys = [k + 1 for k in order[start:start + 300]]
        await store.write(batch(keys, end_ns=[now - (total - k) * 10**6 for k in keys], pad=1200))
    await asyncio.to_thread(store.close)
    sizing = await opened(make_store(retention={"max_age": None, "check_interval": 3600}))
    ((used,),) = await query(sizing, "SELECT block_size * used_blocks FROM pragma_database_size()")
    await asyncio.to_thread(sizing.close)
    assert used > 0

    # reopen with a limit of half the data: the oldest spans go, the newest stay
    limited = await opened(make_store(retention={"max_age": None, "max_size": used // 2, "check_interval": 0.1}))

    def dropped() -> float:
        return metric(limited, "halod_store_retention_dropped_spans_total", reason="size")

    await wait_for(lambda: dropped() > 0, "size retention to drop spans")
    # wait until retention is done: the count stays the same over several check intervals
    stable, last = 0, dropped()
    deadline = time.monotonic() + 60
    while stable < 10:
        assert time.monotonic() < deadline, "size retention never settled"
        await asyncio.sleep(0.1)
        stable, last = (stable + 1, last) if dropped() == last else (0, dropped())
    rows = await query(limited, "SELECT end_ns FROM spans ORDER BY end_ns")
    remaining = [row[0] for row in rows]
    all_ends = sorted(now - (total - k) * 10**6 for k in range(1, total + 1))
    assert len(remaining) + int(last) == total
    assert remaining, f"size retention with max_size={used // 2} (half the data) dropped every span"
    assert remaining == all_ends[-len(remaining):], "retention did not drop the oldest spans first"


# ------------------------------------------------------------------------------------------ admission


async def test_queue_full_refuses_and_accepted_requests_are_stored(make_store: StoreFactory) -> None:
    store = await opened(make_store(queue={"queue_size": 1, "retry_after": "2s"}))
    batches = [batch(list(range(i * 300 + 1, i * 300 + 301))) for i in range(40)]
    results = await asyncio.gather(*(store.write(b) for b in batches), return_exceptions=True)
    refused = [r for r in results if isinstance(r, Refused)]
    accepted = [r for r in results if isinstance(r, CommitResult)]
    assert len(refused) + len(accepted) == len(batches), [r for r in results if isinstance(r, BaseException)]
    assert refused, "no request was refused with queue_size=1"
    assert accepted
    assert {(r.reason, r.retry_after_s) for r in refused} == {("queue_full", 2.0)}
    assert all(r.stored == 300 for r in accepted)
    stored_ids = {row[0] for row in await query(store, "SELECT span_id FROM spans")}
    assert len(stored_ids) == 300 * len(accepted)
    for result, sent in zip(results, [list(range(i * 300 + 1, i * 300 + 301)) for i in range(40)], strict=True):
        ids = {span_id(k) for k in sent}
        # a refused request stored nothing; an accepted one stored everything
        assert (ids <= stored_ids) if isinstance(result, CommitResult) else not (ids & stored_ids)


async def test_inflight_bytes_limit_refuses(make_store: StoreFactory) -> None:
    store = await opened(make_store(queue={"max_inflight_bytes": 1}))
    # one request is always admitted whatever its size; a second one waiting is over the byte limit
    results = await asyncio.gather(*(store.write(batch([i * 10 + 1, i * 10 + 2])) for i in range(20)),
                                   return_exceptions=True)
    assert any(isinstance(r, Refused) and r.reason == "queue_full" for r in results)
    assert any(isinstance(r, CommitResult) for r in results)


# ------------------------------------------------------------------------------------------ lifecycle


async def test_close_without_open_and_twice_is_safe(make_store: StoreFactory) -> None:
    never_opened = make_store()
    never_opened.close()
    never_opened.close()
    assert not never_opened.config.path.exists()

    store = await opened(make_store())
    await store.write(batch([1]))
    await asyncio.to_thread(store.close)
    await asyncio.to_thread(store.close)
    assert not store.is_open
    with pytest.raises(Refused) as info:
        await store.write(batch([2]))
    assert info.value.reason == "shutting_down"
    with pytest.raises(StoreClosed):
        store.query("SELECT 1")
    reopened = await opened(make_store())
    assert await query(reopened, "SELECT count(*) FROM spans") == [(1,)]


async def test_close_commits_what_is_queued(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    writes = [asyncio.ensure_future(store.write(batch(list(range(i * 50 + 1, i * 50 + 51))))) for i in range(10)]
    await asyncio.sleep(0)  # every write is queued (or refused) before the close starts
    await asyncio.to_thread(store.close)
    results = await asyncio.gather(*writes, return_exceptions=True)
    accepted = [r for r in results if isinstance(r, CommitResult)]
    assert all(isinstance(r, CommitResult | Refused) for r in results)
    reopened = await opened(make_store())
    assert await query(reopened, "SELECT count(*) FROM spans") == [(sum(r.stored for r in accepted),)]
    assert accepted


async def test_a_request_the_store_refuses_fails_alone(make_store: StoreFactory) -> None:
    """A batch whose data DuckDB cannot store (a NULL trace id, as a faulty processor could produce)
    gets a permanent error; the requests committed with it in the same group are stored."""
    store = await opened(make_store())
    bad = batch([900, 901])
    bad.spans = bad.spans.set_column(
        bad.spans.schema.get_field_index("trace_id"), "trace_id", pa.array([None, TRACE.hex()], pa.string())
    )
    good = [batch([910 + i]) for i in range(5)]
    results = await asyncio.gather(*(store.write(b) for b in [good[0], good[1], bad, *good[2:]]),
                                   return_exceptions=True)
    failure = results[2]
    assert isinstance(failure, InvalidPayload), failure
    assert "NOT NULL" in str(failure)
    assert [r.stored for r in results if isinstance(r, CommitResult)] == [1] * 5
    stored = {row[0] for row in await query(store, "SELECT span_id FROM spans")}
    assert stored == {span_id(910 + i) for i in range(5)}


# ------------------------------------------------------------------------------------------------ cursors


async def test_source_cursor_commits_with_its_spans_and_survives_reopen(make_store: StoreFactory) -> None:
    """A pulling source's cursor is stored in the same transaction as its spans: the latest one per
    source wins within a group commit, other sources keep theirs, and a reopened store returns them."""
    store = await opened(make_store())
    assert await asyncio.to_thread(store.source_cursor, "phoenix") is None
    first, second, other = batch([1, 2]), batch([3]), batch([4])
    first.source = second.source = "phoenix"
    other.source = "file/logs"
    first.cursor, second.cursor, other.cursor = "page-1", "page-2", '{"offset": 120}'
    await asyncio.gather(store.write(first), store.write(second), store.write(other))
    assert await asyncio.to_thread(store.source_cursor, "phoenix") == "page-2"
    # a batch without a cursor leaves the source's cursor alone; a redelivered page still moves it
    await store.write(batch([5]))
    again = batch([3])
    again.source, again.cursor = "phoenix", "page-3"
    assert (await store.write(again)).duplicates == 1
    await asyncio.to_thread(store.close)

    reopened = await opened(make_store())
    assert await asyncio.to_thread(reopened.source_cursor, "phoenix") == "page-3"
    assert await asyncio.to_thread(reopened.source_cursor, "file/logs") == '{"offset": 120}'


async def test_a_refused_batch_does_not_move_its_cursor(make_store: StoreFactory) -> None:
    store = await opened(make_store())
    good = batch([1])
    good.source, good.cursor = "phoenix", "page-1"
    await store.write(good)
    bad = batch([2])
    bad.source, bad.cursor = "phoenix", "page-2"
    bad.spans = bad.spans.set_column(bad.spans.schema.get_field_index("trace_id"), "trace_id",
                                     pa.array([None], pa.string()))
    with pytest.raises(InvalidPayload):
        await store.write(bad)
    assert await asyncio.to_thread(store.source_cursor, "phoenix") == "page-1"
    assert await query(store, "SELECT count(*) FROM spans") == [(1,)]


# ------------------------------------------------------------------------------------------- write jobs


async def test_write_jobs_run_in_order_with_commits_in_one_transaction(make_store: StoreFactory) -> None:
    """Derived tables are written by the writer thread: a job sees the spans queued before it, its
    failure rolls back everything it did, and a closing store still runs the jobs queued."""
    store = await opened(make_store())

    def create(con: Any) -> None:
        con.execute("CREATE TABLE derived (n BIGINT)")

    await store.run_write(create)
    write = asyncio.ensure_future(store.write(batch([1, 2, 3])))
    await asyncio.sleep(0)  # the write is queued (not yet committed) before the job below

    def count_spans(con: Any) -> int:
        con.execute("INSERT INTO derived SELECT count(*) FROM spans")
        return int(con.execute("SELECT max(n) FROM derived").fetchall()[0][0])

    assert await store.run_write(count_spans) == 3
    await write

    def half_then_fail(con: Any) -> None:
        con.execute("INSERT INTO derived VALUES (99)")
        raise ValueError("job bug")

    with pytest.raises(ValueError, match="job bug"):
        await store.run_write(half_then_fail)
    assert await asyncio.to_thread(store.read, lambda con: con.execute("SELECT n FROM derived").fetchall()) == [(3,)]

    queued = asyncio.ensure_future(store.run_write(lambda con: con.execute("INSERT INTO derived VALUES (4)")))
    await asyncio.sleep(0)
    await asyncio.to_thread(store.close)
    await queued
    with pytest.raises(StoreClosed):
        await store.run_write(create)
    reopened = await opened(make_store())
    assert await query(reopened, "SELECT n FROM derived ORDER BY n") == [(3,), (4,)]
