"""`halod replay`: send trace files over OTLP to a running halod or any OpenTelemetry collector.

The files are read by the same readers as `halod import` (any supported format, same deterministic
ids), and each chunk goes out as one OTLP Export request: gRPC (`TraceService/Export`) or HTTP
(`POST /v1/traces`, protobuf or JSON). `--rate` caps spans per second. Retryable refusals (gRPC
UNAVAILABLE / RESOURCE_EXHAUSTED, HTTP 429 / 502 / 503 / 504) are retried with the shared backoff,
honouring Retry-After; OTLP partial success (spans the server rejected) is counted, never retried,
as the OTLP spec says. Any other failure stops the replay with the error and the figures so far.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from halod import otlp
from halod.formats import Problem, ReadOptions, detect_format, read_file
from halod.retry import Backoff, RetryConfig

_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
_RETRYABLE_HTTP = {429, 502, 503, 504}


class ReplayError(Exception):
    """The endpoint refused for good (or kept refusing); the message says what it answered."""


@dataclass
class ReplaySummary:
    endpoint: str
    spans: int = 0  # spans sent and acknowledged (rejected ones included)
    rejected: int = 0  # spans the server rejected through OTLP partial success
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def spans_per_second(self) -> float:
        return self.spans / self.seconds if self.seconds else 0.0


class _Exporter:
    """One OTLP client; `export(request)` returns the count of rejected spans or raises."""

    def __init__(self, endpoint: str, protocol: str, encoding: str, headers: dict[str, str], timeout: float) -> None:
        self.protocol = protocol
        self.timeout = timeout
        self.headers = headers
        url = endpoint if "://" in endpoint else f"http://{endpoint}"
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"--endpoint {endpoint!r}: give host:port or a URL with a port")
        self.secure = parts.scheme == "https"
        if protocol == "grpc":
            target = f"{parts.hostname}:{parts.port}"
            self._channel = (grpc.aio.secure_channel(target, grpc.ssl_channel_credentials()) if self.secure
                             else grpc.aio.insecure_channel(target))
            self._call = self._channel.unary_unary(_EXPORT_METHOD, request_serializer=None,
                                                   response_deserializer=None)
        else:
            path = parts.path if parts.path not in ("", "/") else "/v1/traces"
            self.url = f"{parts.scheme}://{parts.netloc}{path}"
            self.media = otlp.JSON if encoding == "json" else otlp.PROTOBUF
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def export(self, request: ExportTraceServiceRequest) -> tuple[int, float | None]:
        """(rejected spans, None) on success; (0, retry-after seconds or 0) when retryable."""
        if self.protocol == "grpc":
            try:
                reply = await self._call(request.SerializeToString(), timeout=self.timeout,
                                         metadata=tuple((k.lower(), v) for k, v in self.headers.items()))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _RETRYABLE_GRPC:
                    return 0, 0.0
                raise ReplayError(f"{exc.code().name}: {exc.details()}") from None
            response = ExportTraceServiceResponse.FromString(reply)
        else:
            body = otlp.encode_json_request(request) if self.media == otlp.JSON else request.SerializeToString()
            async with self._session.post(self.url, data=body,
                                          headers={"Content-Type": self.media, **self.headers}) as reply_:
                payload = await reply_.read()
                if reply_.status in _RETRYABLE_HTTP:
                    return 0, float(reply_.headers.get("Retry-After") or 0)
                if reply_.status != 200:
                    raise ReplayError(f"HTTP {reply_.status}: {payload[:500].decode(errors='replace')}")
            response = (otlp.decode_response_json(payload) if reply_.content_type == otlp.JSON
                        else ExportTraceServiceResponse.FromString(payload))
        return int(response.partial_success.rejected_spans), None

    async def close(self) -> None:
        if self.protocol == "grpc":
            await self._channel.close()
        else:
            await self._session.close()


async def replay_files(
    paths: list[Path],
    endpoint: str,
    protocol: str = "grpc",
    encoding: str = "protobuf",
    rate: float | None = None,
    format: str | None = None,
    options: ReadOptions | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    retry: RetryConfig | None = None,
    on_progress: Callable[[ReplaySummary, str], None] = lambda summary, file: None,
    on_problem: Callable[[Problem], None] = lambda problem: None,
) -> ReplaySummary:
    """Send every file's chunks in order, one request at a time, at most `rate` spans/s."""
    summary = ReplaySummary(endpoint)
    exporter = _Exporter(endpoint, protocol, encoding, headers or {}, timeout)
    backoff = Backoff(retry or RetryConfig(max_elapsed_time=120.0))
    started = time.monotonic()
    try:
        for path in paths:
            try:
                chunks = read_file(path, format or detect_format(path), options or ReadOptions())
                for chunk in chunks:
                    for problem in chunk.problems:
                        summary.problems.append(problem)
                        on_problem(problem)
                    if not chunk.spans:
                        continue
                    if rate:  # pace: the spans sent so far may not run ahead of the rate
                        ahead = summary.spans / rate - (time.monotonic() - started)
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                    while True:
                        rejected, retry_after = await exporter.export(chunk.request)
                        if retry_after is None:
                            break
                        wait = backoff.next_wait(at_least=retry_after)
                        if wait is None:
                            raise ReplayError(f"{endpoint} kept refusing (retryable) for {backoff.elapsed:.0f} s")
                        summary.retries += 1
                        await asyncio.sleep(wait)
                    backoff.reset()
                    summary.requests += 1
                    summary.spans += chunk.spans
                    summary.rejected += rejected
                    summary.seconds = time.monotonic() - started
                    on_progress(summary, str(path))
            except (OSError, ValueError) as exc:  # this file cannot be read: report it, go on
                problem = Problem(str(path), "file", str(exc))
                summary.problems.append(problem)
                on_problem(problem)
    finally:
        summary.seconds = time.monotonic() - started
        await exporter.close()
    return summary


def progress_printer(stream: Any = sys.stderr) -> Callable[[ReplaySummary, str], None]:
    """A one-line progress display on a terminal (rewritten in place); silent otherwise."""
    if not stream.isatty():
        return lambda summary, file: None

    def show(summary: ReplaySummary, file: str) -> None:
        stream.write(f"\r{summary.spans:,} spans  {summary.requests:,} requests  "
                     f"{summary.spans_per_second:,.0f} spans/s  {Path(file).name[:40]}\x1b[K")
        stream.flush()

    return show
