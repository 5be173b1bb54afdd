"""Durability end to end: an acknowledged span survives `kill -9`, and stays readable with the daemon down.

halod answers an Export only after the DuckDB commit (WAL fsynced), so SIGKILL at any moment may lose
requests still in flight (never acknowledged) but never one that was acknowledged.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import Daemon

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def request_body(tag: str, spans: int) -> tuple[bytes, set[str]]:
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="durable")))
    scope = resource_spans.scope_spans.add()
    trace_id = os.urandom(16)
    keys = set()
    for i in range(spans):
        span_id = os.urandom(8)
        keys.add(span_id.hex())
        scope.spans.append(Span(
            trace_id=trace_id, span_id=span_id, name=f"{tag}-{i}", start_time_unix_nano=now - 1000,
            end_time_unix_nano=now,
            attributes=[KeyValue(key="tool.name", value=AnyValue(string_value=f"tool-{i % 7}"))],
        ))
    return request.SerializeToString(), keys


def export(channel: grpc.Channel, body: bytes) -> None:
    call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    response = ExportTraceServiceResponse.FromString(call(body, timeout=30))
    assert not response.HasField("partial_success")


def span_ids(daemon: Daemon) -> list[str]:
    return [row["span_id"] for row in daemon.query("SELECT span_id FROM spans")]


def test_kill9_loses_no_acknowledged_span(daemon: Daemon) -> None:
    # A client exports request after request; the daemon is SIGKILLed while it is still sending.
    acknowledged: set[str] = set()
    sent: set[str] = set()
    acks = threading.Semaphore(0)
    stop = threading.Event()
    killing = threading.Event()
    failures: list[BaseException] = []

    def client() -> None:
        with grpc.insecure_channel(daemon.grpc_endpoint) as channel:
            n = 0
            while not stop.is_set():
                body, keys = request_body(f"r{n}", 200)
                n += 1
                sent.update(keys)
                try:
                    export(channel, body)
                except grpc.RpcError as exc:
                    if killing.is_set():
                        return  # the daemon is gone: this request was never acknowledged
                    failures.append(exc)
                    return
                acknowledged.update(keys)
                acks.release()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    for _ in range(25):
        assert acks.acquire(timeout=30), f"no acknowledgement from halod:\n{daemon.log()}"
    killing.set()
    daemon.kill9()
    stop.set()
    thread.join(30)
    assert not thread.is_alive() and not failures, failures
    assert len(acknowledged) >= 25 * 200

    # Daemon down: `halod query` opens the file itself (the WAL has not been checkpointed).
    while_down = span_ids(daemon)
    assert acknowledged <= set(while_down)

    # Restarted on the same config and ports: every acknowledged span is there, none twice, nothing invented.
    daemon.start()
    after = span_ids(daemon)
    assert len(after) == len(set(after))
    assert acknowledged <= set(after) <= sent
    assert set(after) == set(while_down)

    # The restarted daemon keeps taking spans, and commit order continues after the recovered rows.
    [before] = daemon.query("SELECT max(ingest_seq) AS seq FROM spans")
    body, keys = request_body("after-restart", 10)
    with grpc.insecure_channel(daemon.grpc_endpoint) as channel:
        export(channel, body)
    rows = daemon.query("SELECT span_id, ingest_seq FROM spans WHERE name LIKE 'after-restart-%'")
    assert {r["span_id"] for r in rows} == keys
    assert all(r["ingest_seq"] > before["seq"] for r in rows)


def test_acknowledged_spans_readable_while_stopped(make_daemon: Any) -> None:
    daemon: Daemon = make_daemon()
    acknowledged: set[str] = set()
    with grpc.insecure_channel(daemon.grpc_endpoint) as channel:
        for n in range(5):
            body, keys = request_body(f"s{n}", 40)
            export(channel, body)
            acknowledged |= keys
    assert daemon.stop() == 0
    rows = daemon.query("SELECT span_id, tool_name FROM spans")  # no daemon answers: the local file path
    assert {r["span_id"] for r in rows} == acknowledged
    assert {r["tool_name"] for r in rows} == {f"tool-{i}" for i in range(7)}

    # Started again, it serves the same data through its admin API.
    daemon.start()
    assert set(span_ids(daemon)) == acknowledged
