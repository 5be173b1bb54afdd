"""Every registered component follows the lifecycle contract of halod.components.

One parametrized test runs over `default_registry().all()`, so a component added later is checked
without writing a test for it: its default config validates, it can be created and shut down without
being started (twice), and started on free ports against a real store and shut down (twice).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import BaseModel

from halod import components
from halod.components import ComponentID, CreateSettings, Factory, Kind, default_registry
from halod.config import parse_config
from halod.daemon import Daemon
from halod.model import CommitEvent, CommitResult
from halod.normalize import normalize_request
from halod.pipeline import StoreSink
from tests.conftest import free_port

FACTORIES = default_registry().all()


def factory_id(factory: Factory[Any]) -> str:
    return f"{factory.kind}/{factory.type}"


def daemon_config(tmp_path: Path) -> Any:
    return parse_config({
        "storage": {"path": str(tmp_path / "data" / "halod.duckdb")},
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{free_port()}"},
                                             "http": {"endpoint": f"127.0.0.1:{free_port()}"}}}},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"]}},
                    "telemetry": {"metrics": {"address": f"127.0.0.1:{free_port()}"}}},
    })


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Daemon]:
    """A real Daemon (the Host components get) whose real store is open; the daemon itself is not started."""
    daemon = Daemon(daemon_config(tmp_path))
    await asyncio.to_thread(daemon.store.open)
    yield daemon
    await daemon.shutdown()


def with_free_endpoints(value: Any) -> Any:
    """The dumped default config with every `endpoint` moved to a free 127.0.0.1 port."""
    if isinstance(value, dict):
        return {key: (f"127.0.0.1:{free_port()}" if key == "endpoint" else with_free_endpoints(item))
                for key, item in value.items()}
    if isinstance(value, list):
        return [with_free_endpoints(item) for item in value]
    return value


def endpoints(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == "endpoint" and isinstance(v, str)] + [
            e for item in value.values() for e in endpoints(item)]
    if isinstance(value, list):
        return [e for item in value for e in endpoints(item)]
    return []


def port_is_open(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, int(port))) == 0


def create(factory: Factory[Any], config: BaseModel, host: Daemon) -> Any:
    settings = CreateSettings(id=ComponentID(factory.type), pipeline="traces", telemetry=host.telemetry)
    if factory.kind in (Kind.RECEIVER, Kind.PROCESSOR):
        return factory.create(settings, config, StoreSink(host.store, "traces"))
    return factory.create(settings, config)


def one_span_request(span_id: int) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    span.span_id = span_id.to_bytes(8, "big")
    span.name = "conformance"
    span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_001_000_000_000
    return request


@pytest.mark.parametrize("factory", FACTORIES, ids=factory_id)
async def test_component_conformance(factory: Factory[Any], host: Daemon) -> None:
    assert factory.type and factory.description
    assert default_registry().get(factory.kind, factory.type) is factory

    # 1. the default config validates, from the model and from an empty mapping, and they agree
    default = factory.config_model()
    assert factory.config_model.model_validate({}) == default == factory.default_config()
    assert factory.config_model.model_validate(default.model_dump()) == default
    # ... and a YAML section holding the component with no settings is a valid config
    section: dict[str, Any] = {kind.section: {} for kind in Kind}
    section[factory.kind.section] = {factory.type: None}
    pipeline: dict[str, Any]
    if factory.kind is Kind.RECEIVER:
        pipeline = {"receivers": [factory.type]}
    else:
        section["receivers"]["otlp/rx"] = None
        pipeline = {"receivers": ["otlp/rx"]}
        if factory.kind is Kind.PROCESSOR:
            pipeline["processors"] = [factory.type]
        elif factory.kind is Kind.EXPORTER:
            pipeline["exporters"] = [factory.type]
    service: dict[str, Any] = {"pipelines": {"traces": pipeline}}
    if factory.kind is Kind.EXTENSION:
        service["extensions"] = [factory.type]
    parsed = parse_config({**section, "service": service}, environ={})
    assert parsed.warnings == []
    assert parsed.component(factory.kind, factory.type).config == default

    # 2. create -> shutdown without start, twice
    idle = create(factory, default, host)
    await idle.shutdown()
    await idle.shutdown()

    # 3. start -> shutdown (twice), listening only on free ports
    config = factory.config_model.model_validate(with_free_endpoints(default.model_dump()))
    listen = endpoints(config.model_dump())
    component = create(factory, config, host)
    await component.start(host)
    try:
        for endpoint in listen:
            assert port_is_open(endpoint), f"{factory_id(factory)} started but does not listen on {endpoint}"
        if factory.kind is Kind.PROCESSOR:
            # its data plane works while started: the batch goes on to the store
            result = await component.consume(normalize_request(one_span_request(1), "otlp/rx"))
            assert result == CommitResult(ingest_seq=result.ingest_seq, stored=1, duplicates=0)
        if factory.kind is Kind.EXPORTER:
            batch = normalize_request(one_span_request(2), "otlp/rx")
            result = await host.store.write(batch)
            assert result.stored == 1
            await component.consume(CommitEvent("traces", "otlp/rx", result.ingest_seq, batch.spans))
    finally:
        await component.shutdown()
    await component.shutdown()
    for endpoint in listen:
        assert not port_is_open(endpoint), f"{factory_id(factory)} still listens on {endpoint} after shutdown"


def test_registry_lists_the_builtin_components() -> None:
    assert {(f.kind, f.type) for f in FACTORIES} >= {
        (Kind.RECEIVER, "otlp"), (Kind.PROCESSOR, "redact"), (Kind.EXPORTER, "debug")}
    with pytest.raises(ValueError, match="registered twice"):
        default_registry().register(FACTORIES[0])


async def test_daemon_shutdown_without_start_is_safe_twice(tmp_path: Path) -> None:
    config = daemon_config(tmp_path)
    daemon = Daemon(config)
    await daemon.shutdown()
    await daemon.shutdown()
    assert not daemon.store.is_open
    # nothing was opened: no database file was created
    assert not config.storage.path.exists()


async def test_daemon_start_then_shutdown_twice_releases_everything(tmp_path: Path) -> None:
    config = daemon_config(tmp_path)
    otlp = config.component(Kind.RECEIVER, "otlp").config.protocols
    listeners = [otlp.grpc.endpoint, otlp.http.endpoint, config.service.telemetry.metrics.address]
    daemon = Daemon(config)
    await daemon.start()
    try:
        assert daemon.store.is_open
        assert daemon.status()["ready"] is True
        for endpoint in listeners:
            assert port_is_open(endpoint)
    finally:
        await daemon.shutdown()
    await daemon.shutdown()
    assert not daemon.store.is_open
    for endpoint in listeners:
        assert not port_is_open(endpoint)
    # the store was closed cleanly: the file opens again in this process
    reopened = Daemon(config)
    await asyncio.to_thread(reopened.store.open)
    await reopened.shutdown()


async def test_stop_tasks_ends_a_task_that_swallowed_its_first_cancellation(monkeypatch: pytest.MonkeyPatch) -> None:
    # What 3.11's asyncio.wait_for does when a cancellation races with its inner task's completion
    # (CPython gh-86296): the task goes on running. A shutdown must still end.
    monkeypatch.setattr(components, "RECANCEL_S", 0.05)
    cancellations = 0

    async def loop_that_swallows_once() -> None:
        nonlocal cancellations
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancellations += 1
                if cancellations > 1:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    async def failing() -> None:
        raise RuntimeError("already failed")

    swallowing, failed = asyncio.create_task(loop_that_swallows_once()), asyncio.create_task(failing())
    await asyncio.sleep(0)
    await asyncio.wait_for(components.stop_tasks(swallowing, failed, None), 5)
    assert swallowing.cancelled() and cancellations == 2
    assert isinstance(failed.exception(), RuntimeError)
