"""Ingest benchmark: sustained OTLP/gRPC spans/s that halod acknowledges after the durable commit.

    python bench/ingest.py [--duration 20] [--clients 8] [--spans-per-request 512] [--warmup 3] [--json]
    python bench/ingest.py --normalize-only          # decode + normalize_request alone, in this process

What it does:

1. Builds a pool of distinct, realistic ExportTraceServiceRequest payloads *before* the clock starts
   (OpenInference agent traces of 8-16 spans with proper parent links: an AGENT root, CHAIN steps,
   LLM calls with input/output messages and token counts, TOOL calls; ~1 KB serialized per span).
2. Starts halod as a subprocess (``python -m halod run --config <tmp yaml>``) on free 127.0.0.1
   ports with a temporary storage folder, and waits for ``/readyz``.
3. Drives it with ``--clients`` concurrent gRPC clients for ``--warmup`` + ``--duration`` seconds and
   reports acknowledged spans/s, Export latency p50/p99 (measured window only), halod's peak RSS
   (VmHWM) and the CPU both sides used.
4. Stops halod (SIGTERM: graceful drain + checkpoint) and checks with
   ``halod query "SELECT count(*) FROM spans"`` that the stored count equals the acknowledged count.

Client design (chosen to load the shared 2 vCPUs as little as possible): every client is an asyncio
task in ONE process, with its own grpc.aio channel (its own HTTP/2 connection), sending raw bytes
through ``channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)``; no
SDK and no protobuf work on the send path. Payloads are never rebuilt: each send copies a pooled
payload and overwrites 4 bytes of every trace id in place (a per-send "generation" number at byte
offsets found once when the pool is built), so every request carries new (trace_id, span_id) keys and
the store's dedup never turns a request into a no-op. That costs ~0.1 ms of client CPU per 512-span
request. ``--client-procs N`` spreads the clients over N forked processes instead, for comparison;
the report prints the client CPU either way.

Profiling: ``--halod-prefix "py-spy record -o prof.txt -f raw --threads --"`` starts halod under a
profiler (py-spy from PyPI); ``--keep`` keeps the workdir (config, halod.log, database).

Exit status: 0 when the run completed and stored == acknowledged, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
GEN_BYTES = 4  # the last 4 bytes of every trace id hold the per-send generation number

# ----------------------------------------------------------------------------------- span content

_WORDS = """
    order refund shipping address customer account payment invoice delivery status tracking update
    cancel exchange warranty product catalog inventory price discount coupon subscription renewal
    policy return window damaged item replacement support ticket escalation agent tool search lookup
    database record confirm verify identity email phone number reservation flight booking seat hotel
    room night date change fee baggage loyalty points balance transfer receipt summary please thanks
    the a to of and for with your my is are was will can could would should please need want
""".split()  # noqa: SIM905 (a word list reads better as text)
_MODELS = ("gpt-4o-2024-08-06", "gpt-4o-mini", "claude-3-5-sonnet-20241022", "llama-3.1-70b-instruct")
_TOOLS = (
    ("get_order_details", ("order_id",)),
    ("search_products", ("query", "max_results")),
    ("get_user_details", ("user_id",)),
    ("cancel_pending_order", ("order_id", "reason")),
    ("exchange_delivered_order_items", ("order_id", "item_ids", "new_item_ids", "payment_method_id")),
    ("calculate", ("expression",)),
    ("transfer_to_human_agents", ("summary",)),
)
_SYSTEM_PROMPT = (
    "You are a customer service agent for an online retail store. Authenticate the user first, then "
    "help them with orders, returns and exchanges. Use the tools; never invent order details. Ask for "
    "explicit confirmation (yes) before any action that changes an order."
)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


@dataclass
class _TraceBuilder:
    """Builds one agent trace (8-16 spans) as protobuf Span messages, parents before children."""

    rng: random.Random
    trace_id: bytes
    session_id: str
    user_id: str
    start_ns: int
    spans: list[Span] = field(default_factory=list)
    clock: int = 0

    def _span_id(self) -> bytes:
        while True:
            span_id = self.rng.randbytes(8)
            if any(span_id):
                return span_id

    def span(self, name: str, kind: str, parent: Span | None, attributes: dict[str, Any],
             duration_ms: int, error: bool = False) -> Span:
        start = self.start_ns + self.clock
        self.clock += duration_ms * 1_000_000 // 4
        span = Span(
            trace_id=self.trace_id,
            span_id=self._span_id(),
            parent_span_id=parent.span_id if parent is not None else b"",
            name=name,
            kind=Span.SPAN_KIND_INTERNAL if kind != "LLM" else Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=start,
            end_time_unix_nano=start + duration_ms * 1_000_000,
            attributes=[_kv("openinference.span.kind", kind), _kv("session.id", self.session_id),
                        *(_kv(k, v) for k, v in attributes.items())],
            status=Status(code=Status.STATUS_CODE_ERROR, message="tool raised an exception")
            if error else Status(code=Status.STATUS_CODE_OK),
            flags=0x100,
        )
        self.spans.append(span)
        return span

    def llm(self, parent: Span, question: str) -> None:
        rng = self.rng
        reply = _sentence(rng, rng.randint(25, 60))
        prompt, completion = rng.randint(400, 3000), rng.randint(20, 300)
        self.span("ChatCompletion", "LLM", parent, {
            "llm.model_name": rng.choice(_MODELS),
            "llm.provider": "openai",
            "llm.invocation_parameters": json.dumps({"temperature": 0.0, "max_tokens": 1024}),
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": _SYSTEM_PROMPT,
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": question,
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.content": reply,
            "llm.token_count.prompt": prompt,
            "llm.token_count.completion": completion,
            "llm.token_count.total": prompt + completion,
            "output.value": reply,
        }, rng.randint(300, 4000))

    def tool(self, parent: Span) -> None:
        rng = self.rng
        name, params = rng.choice(_TOOLS)
        arguments = json.dumps({p: f"#W{rng.randint(1000000, 9999999)}" for p in params})
        result = json.dumps({"status": rng.choice(("pending", "delivered", "cancelled")),
                             "items": [_sentence(rng, 6) for _ in range(rng.randint(2, 4))]})
        self.span(name, "TOOL", parent, {
            "tool.name": name,
            "tool.description": f"{name.replace('_', ' ').capitalize()}.",
            "tool.parameters": arguments,
            "input.value": arguments,
            "input.mime_type": "application/json",
            "output.value": result,
        }, rng.randint(5, 400), error=rng.random() < 0.04)

    def build(self, target_spans: int) -> list[Span]:
        rng = self.rng
        question = _sentence(rng, rng.randint(12, 30))
        answer = _sentence(rng, rng.randint(15, 40))
        root = self.span("Agent workflow", "AGENT", None, {
            "agent.name": "retail-agent", "user.id": self.user_id,
            "input.value": question, "output.value": answer,
        }, rng.randint(5000, 30000))
        while len(self.spans) < target_spans - 1:
            # One turn: a CHAIN step wrapping an LLM call and (usually) a TOOL call.
            step = self.span("Agent step", "CHAIN", root, {
                "input.value": question, "output.value": _sentence(rng, rng.randint(10, 30)),
            }, rng.randint(500, 5000))
            self.llm(step, question)
            if len(self.spans) < target_spans - 1:
                self.tool(step)
        self.llm(root, question)
        return self.spans


def build_request(rng: random.Random, spans_per_request: int, now_ns: int) -> tuple[bytes, list[int], int]:
    """One serialized request of exactly `spans_per_request` spans, the byte offsets of the
    generation bytes of every trace id in it (the last GEN_BYTES bytes, zero in the pool copy), and
    how many traces it holds."""
    spans: list[Span] = []
    trace_ids: list[bytes] = []
    while len(spans) < spans_per_request:
        trace_id = rng.randbytes(16 - GEN_BYTES) + bytes(GEN_BYTES)
        builder = _TraceBuilder(rng, trace_id, f"sess-{rng.randbytes(6).hex()}", f"user-{rng.randint(1, 5000)}",
                                now_ns - rng.randint(10**9, 60 * 10**9))
        target = min(rng.randint(8, 16), spans_per_request - len(spans))
        spans += builder.build(target)[:target]  # a truncated last trace keeps parents before children
        trace_ids.append(trace_id)
    resource = [_kv("service.name", f"retail-agent-{rng.randint(1, 4)}"), _kv("service.version", "1.4.2"),
                _kv("deployment.environment", "prod"), _kv("telemetry.sdk.language", "python"),
                _kv("telemetry.sdk.name", "opentelemetry"), _kv("telemetry.sdk.version", "1.27.0")]
    scope = InstrumentationScope(name="openinference.instrumentation.openai_agents", version="0.1.12")
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource=Resource(attributes=resource), scope_spans=[ScopeSpans(scope=scope, spans=spans)],
    )])
    payload = request.SerializeToString()
    # Every span starts with field 1 (trace_id): tag 0x0a, length 0x10, then the 16 id bytes.
    offsets = []
    for trace_id in trace_ids:
        needle = b"\x0a\x10" + trace_id
        position = payload.find(needle)
        while position >= 0:
            offsets.append(position + 2 + 16 - GEN_BYTES)
            position = payload.find(needle, position + 1)
    if len(offsets) != len(spans):
        raise RuntimeError(f"found {len(offsets)} trace ids for {len(spans)} spans (random collision): rebuild")
    return payload, offsets, len(trace_ids)


class RequestPool:
    """Pre-serialized requests; `take(generation)` returns fresh-keyed copies without protobuf work."""

    def __init__(self, size: int, spans_per_request: int, seed: int = 7) -> None:
        rng = random.Random(seed)
        now_ns = time.time_ns()
        self.payloads: list[bytes] = []
        self.offsets: list[list[int]] = []
        self.traces = 0  # distinct traces over the pool (every request holds whole traces)
        for _ in range(size):
            payload, offsets, traces = build_request(rng, spans_per_request, now_ns)
            self.payloads.append(payload)
            self.offsets.append(offsets)
            self.traces += traces
        self.spans_per_request = spans_per_request

    def __len__(self) -> int:
        return len(self.payloads)

    @property
    def nbytes(self) -> int:
        return sum(map(len, self.payloads))

    def take(self, sequence: int) -> bytes:
        """Request number `sequence` (0, 1, ...): pool entry sequence % size, generation
        sequence // size + 1, so no two sequence numbers produce the same (trace_id, span_id)."""
        index, generation = sequence % len(self.payloads), sequence // len(self.payloads) + 1
        buffer = bytearray(self.payloads[index])
        stamp = generation.to_bytes(GEN_BYTES, "big")
        for offset in self.offsets[index]:
            buffer[offset:offset + GEN_BYTES] = stamp
        return bytes(buffer)


# ------------------------------------------------------------------------------------ the daemon

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Halod:
    workdir: Path
    prefix: list[str]
    analysis: bool = False
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.grpc_port, self.admin_port = free_port(), free_port()
        self.config = {
            "storage": {"path": str(self.workdir / "data" / "halod.duckdb")},
            "analysis": {"enabled": self.analysis},
            "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"}}}},
            "service": {
                "pipelines": {"traces": {"receivers": ["otlp"]}},
                "telemetry": {"metrics": {"address": f"127.0.0.1:{self.admin_port}"},
                              "logs": {"encoding": "json", "level": "warning"}},
                "shutdown_timeout": "60s",
            },
        }
        self.config_path = self.workdir / "halod.yaml"
        self.log_path = self.workdir / "halod.log"

    def start(self, timeout: float = 60.0) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "halod", "run", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"halod exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"halod not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metric_total(self, name: str, label: str = "") -> float:
        """Sum of a metric's samples on /metrics (every label set, or those with `label`, e.g.
        'completion="evicted"')."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if (line.startswith(name + "{") or line.startswith(name + " ")) and label in line)

    @property
    def pid(self) -> int:
        """The daemon's pid (with a profiler prefix, the python child of the profiler)."""
        assert self.proc is not None
        if not self.prefix:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else self.proc.pid

    def status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """CPU seconds of the daemon and its live child processes (the analysis worker)."""
        pids = [self.pid, *map(int, Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split())]
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def query_count(self) -> int:
        result = subprocess.run(
            [sys.executable, "-m", "halod", "query", "SELECT count(*) AS n FROM spans", "--json",
             "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=120, cwd=self.workdir,
        )
        if result.returncode != 0:
            raise RuntimeError(f"halod query failed ({result.returncode}): {result.stderr}")
        return int(json.loads(result.stdout.splitlines()[0])["n"])


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores) since boot, from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------- the clients

@dataclass
class Call:
    started: float  # time.monotonic()
    ended: float
    spans: int  # spans acknowledged (0 when refused or failed)
    status: str  # "OK" or the gRPC status name


class Pacer:
    """Spaces the requests of one process's clients to `requests_per_s` (None: as fast as answered)."""

    def __init__(self, requests_per_s: float | None) -> None:
        self.interval = 1.0 / requests_per_s if requests_per_s else 0.0
        self.next_slot = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(now, self.next_slot)  # single-threaded asyncio: reserving a slot cannot race
        self.next_slot = slot + self.interval
        await asyncio.sleep(slot - now)


async def _client_loop(channel: Any, pool: RequestPool, sequences: Any, stop_at: float,
                       calls: list[Call], pacer: Pacer) -> None:
    export = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
    while time.monotonic() < stop_at:
        await pacer.wait()
        payload = pool.take(next(sequences))
        started = time.monotonic()
        try:
            reply = await export(payload, timeout=60)
        except grpc.aio.AioRpcError as exc:
            calls.append(Call(started, time.monotonic(), 0, exc.code().name))
            await asyncio.sleep(0.05)  # refused (UNAVAILABLE): back off a little, send new ids
            continue
        ended = time.monotonic()
        rejected = ExportTraceServiceResponse.FromString(reply).partial_success.rejected_spans if reply else 0
        calls.append(Call(started, ended, pool.spans_per_request - rejected, "OK" if not rejected else "PARTIAL"))


async def _run_clients(target: str, pool: RequestPool, clients: int, first_sequence: int, stride: int,
                       stop_at: float, requests_per_s: float | None) -> list[Call]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 64 * 2**20)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(clients)]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        sequences = itertools.count(first_sequence, stride)  # shared: asyncio tasks never interleave next()
        calls: list[Call] = []
        pacer = Pacer(requests_per_s)
        await asyncio.gather(*(_client_loop(channel, pool, sequences, stop_at, calls, pacer)
                               for channel in channels))
        return calls
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def _client_process(args: tuple[str, RequestPool, int, int, int, float, float | None]) -> tuple[list[Call], float]:
    calls = asyncio.run(_run_clients(*args))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return calls, usage.ru_utime + usage.ru_stime


def drive(target: str, pool: RequestPool, clients: int, procs: int, stop_at: float,
          spans_per_s: float | None = None) -> tuple[list[Call], float]:
    """Run the clients until `stop_at` (monotonic), at most `spans_per_s` in all when given; returns
    every call and the client CPU seconds."""
    requests_per_s = spans_per_s / pool.spans_per_request / max(1, procs) if spans_per_s else None
    if procs <= 1:
        before = resource.getrusage(resource.RUSAGE_SELF)
        calls = asyncio.run(_run_clients(target, pool, clients, 0, 1, stop_at, requests_per_s))
        after = resource.getrusage(resource.RUSAGE_SELF)
        return calls, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # Forked workers inherit the pool; worker k sends sequence numbers k, k + procs, k + 2*procs, ...
    per_proc = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    with multiprocessing.get_context("fork").Pool(procs) as workers:
        results = workers.map(_client_process,
                              [(target, pool, n, k, procs, stop_at, requests_per_s) for k, n in enumerate(per_proc)])
    return [call for calls, _ in results for call in calls], sum(cpu for _, cpu in results)


# ------------------------------------------------------------------------------------------ modes

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def normalize_only(pool: RequestPool, rounds: int) -> dict[str, Any]:
    """Single-thread throughput of the receiver's CPU work alone: protobuf decode + normalize_request."""
    from halod import otlp
    from halod.normalize import normalize_request

    payloads = [pool.take(i) for i in range(len(pool))]
    decoded = [otlp.decode_protobuf(payload) for payload in payloads]
    normalize_request(decoded[0], "otlp")  # warm imports and caches
    spans = len(payloads) * pool.spans_per_request * rounds

    started = time.perf_counter()
    for _ in range(rounds):
        for payload in payloads:
            otlp.decode_protobuf(payload)
    decode_s = time.perf_counter() - started

    started = time.perf_counter()
    for _ in range(rounds):
        for request in decoded:
            normalize_request(request, "otlp")
    normalize_s = time.perf_counter() - started
    return {
        "mode": "normalize-only",
        "requests": len(payloads) * rounds,
        "spans": spans,
        "decode_spans_per_s": round(spans / decode_s),
        "normalize_spans_per_s": round(spans / normalize_s),
        "decode_plus_normalize_spans_per_s": round(spans / (decode_s + normalize_s)),
        "normalize_us_per_span": round(normalize_s / spans * 1e6, 2),
    }


def run(args: argparse.Namespace, pool: RequestPool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="halod-bench-", dir=args.storage_dir))
    prefix = args.halod_prefix.split() if args.halod_prefix else []
    halod = Halod(workdir, prefix, analysis=args.analysis)
    try:
        halod.start()
        target = f"127.0.0.1:{halod.grpc_port}"
        started = time.monotonic()
        measure_from = started + args.warmup
        measure_to = measure_from + args.duration
        # The measured window's CPU (halod's, the machine's) and analysis counters: sampled at its
        # edges by a helper thread.
        edges: dict[str, dict[str, float]] = {"from": {}, "to": {}}

        def sample() -> dict[str, float]:
            values = {"cpu": halod.cpu_seconds(), "machine": machine_busy_seconds()}
            if args.analysis:
                values["traces"] = halod.metric_total("halod_traces_completed_total")
                values["evicted"] = halod.metric_total("halod_traces_completed_total", 'completion="evicted"')
                values["open"] = halod.metric_total("halod_open_traces")
            return values

        def sample_cpu() -> None:
            time.sleep(max(0.0, measure_from - time.monotonic()))
            edges["from"] = sample()
            time.sleep(max(0.0, measure_to - time.monotonic()))
            edges["to"] = sample()

        sampler = threading.Thread(target=sample_cpu, daemon=True)
        sampler.start()
        calls, client_cpu = drive(target, pool, args.clients, args.client_procs, measure_to, args.rate)
        finished = time.monotonic()
        sampler.join()
        peak_rss_kib = halod.status_kib("VmHWM")
        rss_kib = halod.status_kib("VmRSS")
        stop_started = time.monotonic()
        exit_code = halod.stop()
        stop_s = time.monotonic() - stop_started
        stored = halod.query_count()
    except BaseException:
        if halod.proc is not None and halod.proc.poll() is None:
            halod.proc.kill()
        sys.stderr.write(halod.log()[-4000:])
        raise
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    window = [c for c in calls if c.status in ("OK", "PARTIAL") and measure_from <= c.ended <= measure_to]
    latencies_ms = [(c.ended - c.started) * 1000 for c in window]
    acked_total = sum(c.spans for c in calls)
    acked_window = sum(c.spans for c in window)
    failures: dict[str, int] = {}
    for call in calls:
        if call.status != "OK":
            failures[call.status] = failures.get(call.status, 0) + 1
    def per_s(key: str) -> float:
        """Change of a sampled value over the measured window, per second."""
        return (edges["to"].get(key, 0.0) - edges["from"].get(key, 0.0)) / args.duration

    total_s = finished - started
    client_cores = client_cpu / total_s
    return {
        "mode": "ingest",
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "clients": args.clients,
        "offered_spans_per_s": args.rate,
        "client_procs": args.client_procs,
        "spans_per_request": pool.spans_per_request,
        "pool_requests": len(pool),
        "bytes_per_span": round(pool.nbytes / (len(pool) * pool.spans_per_request)),
        "spans_per_s": round(acked_window / args.duration),
        "requests_per_s": round(len(window) / args.duration, 1),
        "mb_per_s": round(len(window) * pool.nbytes / len(pool) / args.duration / 1e6, 1),
        "latency_p50_ms": round(percentile(latencies_ms, 50), 1),
        "latency_p99_ms": round(percentile(latencies_ms, 99), 1),
        "latency_max_ms": round(max(latencies_ms, default=float("nan")), 1),
        "halod_peak_rss_mib": round(peak_rss_kib / 1024, 1),
        "halod_rss_at_end_mib": round(rss_kib / 1024, 1),
        "halod_cpu_cores": round(per_s("cpu"), 2),
        "client_cpu_cores": round(client_cores, 2),
        # Everything else that ran on the machine meanwhile (other jobs skew the figures when > ~0.1).
        "other_cpu_cores": round(max(0.0, per_s("machine") - per_s("cpu") - client_cores), 2),
        "nproc": os.cpu_count(),
        "failed_requests": failures,
        "requests_total": len(calls),
        "acked_spans_total": acked_total,
        "stored_spans": stored,
        "stored_equals_acked": stored == acked_total,
        "halod_exit_code": exit_code,
        "halod_stop_s": round(stop_s, 2),
        "analysis": args.analysis,
        "traces_arrived_per_s": round(len(window) * pool.traces / len(pool) / args.duration, 1),
        "traces_completed_per_s": round(per_s("traces"), 1),
        "traces_evicted_per_s": round(per_s("evicted"), 1),
        "open_traces_at_end": edges["to"].get("open"),
        # Open traces grow by this much a second when the analysis falls behind; ~0 when it keeps up.
        "open_traces_growth_per_s": round(per_s("open"), 1),
    }


def print_report(result: dict[str, Any]) -> None:
    if result["mode"] == "normalize-only":
        print(f"normalize-only ({result['requests']} requests, {result['spans']} spans, one thread):")
        print(f"  protobuf decode        {result['decode_spans_per_s']:>10,} spans/s")
        print(f"  normalize_request      {result['normalize_spans_per_s']:>10,} spans/s"
              f"  ({result['normalize_us_per_span']} us/span)")
        print(f"  decode + normalize     {result['decode_plus_normalize_spans_per_s']:>10,} spans/s")
        return
    r = result
    offered = f", offered {r['offered_spans_per_s']:,.0f} spans/s" if r["offered_spans_per_s"] else ""
    print(f"halod ingest: {r['clients']} clients ({r['client_procs']} process(es)), {r['spans_per_request']} "
          f"spans/request, ~{r['bytes_per_span']} B/span, {r['duration_s']} s after {r['warmup_s']} s warmup{offered}")
    print(f"  acknowledged (durable)  {r['spans_per_s']:>10,} spans/s   "
          f"({r['requests_per_s']} requests/s, {r['mb_per_s']} MB/s)")
    print(f"  Export latency          p50 {r['latency_p50_ms']} ms   p99 {r['latency_p99_ms']} ms   "
          f"max {r['latency_max_ms']} ms")
    print(f"  halod peak RSS          {r['halod_peak_rss_mib']} MiB (VmHWM; {r['halod_rss_at_end_mib']} MiB at end)")
    print(f"  CPU ({r['nproc']} cores)            halod {r['halod_cpu_cores']}, clients {r['client_cpu_cores']}, "
          f"other processes {r['other_cpu_cores']} (cores busy, measured window)")
    if r["analysis"]:
        print(f"  analysis (all detectors) {r['traces_completed_per_s']:>9,} traces/s completed and evaluated "
              f"({r['traces_evicted_per_s']:,} of them early, evicted); {r['traces_arrived_per_s']:,} traces/s "
              f"arrived; {r['open_traces_at_end']:,.0f} open at the end of the window "
              f"({r['open_traces_growth_per_s']:+,.0f}/s over it)")
    if r["failed_requests"]:
        print(f"  failed requests         {r['failed_requests']}")
    check = "OK" if r["stored_equals_acked"] else "MISMATCH"
    print(f"  stored == acked         {check}: stored {r['stored_spans']:,}, acknowledged {r['acked_spans_total']:,}"
          f" (halod exit {r['halod_exit_code']}, drain+stop {r['halod_stop_s']} s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent gRPC clients (default 8)")
    parser.add_argument("--client-procs", type=int, default=1,
                        help="processes the clients run in (default 1: one asyncio process)")
    parser.add_argument("--spans-per-request", type=int, default=512)
    parser.add_argument("--rate", type=float, default=None,
                        help="offered load in spans/s (default: none, every client sends as fast as it is answered)")
    parser.add_argument("--pool", type=int, default=48, help="distinct pre-built requests (default 48)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--normalize-only", action="store_true",
                        help="measure protobuf decode + normalize_request on the pool, in-process; no daemon")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the pool for --normalize-only")
    parser.add_argument("--storage-dir", default=None, help="parent of the temporary workdir (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir (config, log, database)")
    parser.add_argument("--analysis", action="store_true",
                        help="run the post-commit analysis too (assembly, all detectors, windows, triggers); off by "
                        "default: this benchmark measures the ingest spine")
    parser.add_argument("--halod-prefix", default="",
                        help='command to wrap halod in, e.g. "py-spy record -o prof.svg --" (profiling)')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    built = time.perf_counter()
    pool = RequestPool(args.pool, args.spans_per_request)
    if not args.json:
        print(f"built {len(pool)} requests x {args.spans_per_request} spans "
              f"({pool.nbytes / len(pool) / 1e3:.0f} KB each) in {time.perf_counter() - built:.1f} s", file=sys.stderr)
    result = normalize_only(pool, args.rounds) if args.normalize_only else run(args, pool)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if result.get("stored_equals_acked", True) else 1


if __name__ == "__main__":
    sys.exit(main())
