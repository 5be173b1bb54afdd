"""Backpressure end to end: a full store queue refuses requests retryably, and retries lose nothing.

With `storage.queue.queue_size: 1` a request that arrives while another one already waits for the
writer is refused at once (gRPC UNAVAILABLE + RetryInfo, HTTP 503 + Retry-After) with nothing of it
stored. Many concurrent requests of thousands of spans keep the real writer thread busy enough for
that to happen; the client then retries what was refused until everything is acknowledged, and the
store must hold every span exactly once. Resending acknowledged requests stores nothing twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import Daemon

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PROTOBUF = "application/x-protobuf"
CONCURRENT = 30
SPANS_PER_REQUEST = 2000
MAX_ROUNDS = 4  # bursts sent until one is refused; a working queue limit refuses in the first
QUEUE = {"storage": {"queue": {"queue_size": 1, "max_inflight_bytes": "4MiB", "retry_after": "1s"}}}


def request_body(tag: str, spans: int = SPANS_PER_REQUEST) -> tuple[bytes, set[str]]:
    """A serialized request of `spans` LLM-like spans, and the trace_id||span_id keys it carries."""
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=tag)))
    scope = resource_spans.scope_spans.add()
    keys = set()
    trace_id = os.urandom(16)
    for i in range(spans):
        if i % 50 == 0:
            trace_id = os.urandom(16)
        span_id = os.urandom(8)
        keys.add(trace_id.hex() + span_id.hex())
        scope.spans.append(Span(
            trace_id=trace_id, span_id=span_id, name=f"{tag}-{i}", start_time_unix_nano=now - 1_000_000,
            end_time_unix_nano=now,
            attributes=[
                KeyValue(key="openinference.span.kind", value=AnyValue(string_value="LLM")),
                KeyValue(key="llm.model_name", value=AnyValue(string_value="gpt-4o-mini")),
                KeyValue(key="llm.token_count.prompt", value=AnyValue(int_value=i)),
                KeyValue(key="input.value", value=AnyValue(string_value=f"prompt {i} " + "lorem ipsum " * 20)),
            ],
        ))
    return request.SerializeToString(), keys


def count_stored(daemon: Daemon) -> tuple[int, int]:
    [row] = daemon.query("SELECT count(*) AS n, count(DISTINCT trace_id || span_id) AS d FROM spans")
    return row["n"], row["d"]


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay carried in grpc-status-details-bin (asserting it is there)."""
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(details, bytes), error.trailing_metadata()
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1, status
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9


async def retry_until_acknowledged(send: Callable[[bytes], Awaitable[bool]], bodies: list[bytes],
                                   delay: float, attempts: int = 30) -> None:
    """Send each body in turn, again after `delay` while it is refused (what an OTLP client does)."""
    for body in bodies:
        for _ in range(attempts):
            if await send(body):
                break
            await asyncio.sleep(delay)
        else:
            raise AssertionError(f"a request was still refused after {attempts} attempts")


async def test_grpc_unavailable_then_retries_store_everything_once(make_daemon: Any) -> None:
    daemon = make_daemon(QUEUE)
    bodies: list[bytes] = []
    sent: set[str] = set()
    refusals: list[grpc.aio.AioRpcError] = []
    channel = grpc.aio.insecure_channel(daemon.grpc_endpoint)
    export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)

    async def send(body: bytes) -> bool:
        """True when acknowledged, False when refused with UNAVAILABLE (anything else fails the test)."""
        try:
            reply = await export(body, timeout=60)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            refusals.append(error)
            return False
        assert not ExportTraceServiceResponse.FromString(reply).HasField("partial_success")
        return True

    try:
        pending: list[bytes] = []
        for burst in range(MAX_ROUNDS):
            batch = [request_body(f"g{burst}-{i}") for i in range(CONCURRENT)]
            for body, keys in batch:
                bodies.append(body)
                sent |= keys
            results = await asyncio.gather(*(send(body) for body, _ in batch))
            pending += [body for (body, _), ok in zip(batch, results, strict=True) if not ok]
            if refusals:
                break
        assert refusals, f"{MAX_ROUNDS} bursts of {CONCURRENT} concurrent requests and none was refused"
        delay = retry_delay(refusals[0])
        assert delay == 1.0
        assert "queue" in (refusals[0].details() or "")
        # Nothing of a refused request was stored: exactly the acknowledged requests' spans are there.
        acknowledged = len(bodies) - len(pending)
        assert count_stored(daemon) == (acknowledged * SPANS_PER_REQUEST,) * 2

        # Retry each refused request, after the suggested delay, until it is acknowledged.
        await asyncio.sleep(delay)
        await retry_until_acknowledged(send, pending, delay)

        stored, distinct = count_stored(daemon)
        assert stored == len(sent)
        assert distinct == stored

        # Redelivering acknowledged requests (a client that missed the answer) stores nothing twice.
        await retry_until_acknowledged(send, bodies[:3], delay)
    finally:
        await channel.close()
    assert count_stored(daemon) == (len(sent), len(sent))
    metrics = daemon.metrics()
    assert f"halod_store_duplicate_spans_total {float(3 * SPANS_PER_REQUEST)}" in metrics
    assert 'halod_receiver_refused_requests_total{reason="queue_full",receiver="otlp",transport="grpc"}' in metrics


async def test_http_503_with_retry_after_then_retries_store_everything_once(make_daemon: Any) -> None:
    daemon = make_daemon(QUEUE)
    sent: set[str] = set()
    refusals: list[tuple[int, dict[str, str], bytes]] = []

    async with aiohttp.ClientSession(headers={"Content-Type": PROTOBUF}) as session:

        async def send(body: bytes) -> bool:
            async with session.post(daemon.http_url, data=body) as response:
                payload = await response.read()
                if response.status == 200:
                    assert response.content_type == PROTOBUF
                    assert not ExportTraceServiceResponse.FromString(payload).HasField("partial_success")
                    return True
                assert response.status == 503, (response.status, payload)
                refusals.append((response.status, dict(response.headers), payload))
                return False

        pending: list[bytes] = []
        first: list[bytes] = []
        for burst in range(MAX_ROUNDS):
            batch = [request_body(f"h{burst}-{i}") for i in range(CONCURRENT)]
            for _, keys in batch:
                sent |= keys
            first += [body for body, _ in batch]
            results = await asyncio.gather(*(send(body) for body, _ in batch))
            pending += [body for (body, _), ok in zip(batch, results, strict=True) if not ok]
            if refusals:
                break
        assert refusals, f"{MAX_ROUNDS} bursts of {CONCURRENT} concurrent requests and none was refused"
        _, headers, payload = refusals[0]
        assert headers.get("Retry-After") == "1"
        status = status_pb2.Status.FromString(payload)
        assert status.code == 14 and "queue" in status.message
        acknowledged = len(first) - len(pending)
        assert count_stored(daemon) == (acknowledged * SPANS_PER_REQUEST,) * 2

        await asyncio.sleep(int(headers["Retry-After"]))
        await retry_until_acknowledged(send, pending, int(headers["Retry-After"]))
        assert count_stored(daemon) == (len(sent), len(sent))

        await retry_until_acknowledged(send, first[:2], 1)
    assert count_stored(daemon) == (len(sent), len(sent))
    assert 'halod_receiver_refused_requests_total{reason="queue_full",receiver="otlp",transport="http"}' in (
        daemon.metrics())


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_unrefused_load_is_stored_once(make_daemon: Any, transport: str) -> None:
    """The default queue absorbs the same kind of burst without refusing anything (control case)."""
    daemon = make_daemon()
    batch = [request_body(f"{transport}-ok-{i}", spans=500) for i in range(10)]
    sent = set().union(*(keys for _, keys in batch))
    if transport == "grpc":
        async with grpc.aio.insecure_channel(daemon.grpc_endpoint) as channel:
            export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
            await asyncio.gather(*(export(body, timeout=60) for body, _ in batch))
    else:
        async with aiohttp.ClientSession(headers={"Content-Type": PROTOBUF}) as session:

            async def send(body: bytes) -> int:
                async with session.post(daemon.http_url, data=body) as response:
                    await response.read()
                    return response.status

            assert await asyncio.gather(*(send(body) for body, _ in batch)) == [200] * len(batch)
    assert count_stored(daemon) == (len(sent), len(sent))
