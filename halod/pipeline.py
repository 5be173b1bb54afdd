"""The pipeline graph: components built from config, wired, started and stopped in order.

Per pipeline, the acknowledgement path is

    receiver -> processor 1 -> ... -> processor N -> store commit -> (response to the client)

and, off that path, every commit event of the pipeline goes to each of its exporters through the
exporter's own bounded `SendingQueue`. Later stages (trace assembly, signals, windows, triggers) plug
in the same way as exporters: as consumers of commit events, never on the acknowledgement path.

Order: exporters start first and receivers last; shutdown runs in reverse, so nothing is handed to a
component that is not running, and receivers stop taking requests before anything below them stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from halod.components import ComponentID, Consumer, CreateSettings, Kind
from halod.config import HalodConfig
from halod.model import CommitEvent, CommitResult, InvalidPayload, Refused, SpanBatch
from halod.sending_queue import SendingQueue, SendingQueueConfig
from halod.store import SpanStore
from halod.telemetry import Telemetry


class StoreSink:
    """The end of a pipeline's acknowledgement path: the store commit."""

    def __init__(self, store: SpanStore, pipeline: str) -> None:
        self._store = store
        self._pipeline = pipeline

    async def consume(self, batch: SpanBatch) -> CommitResult:
        return await self._store.write(batch, self._pipeline)


class ProcessorGuard:
    """Counts and logs a processor's unexpected failure before it reaches the receiver."""

    def __init__(self, processor_id: str, processor: Any, telemetry: Telemetry) -> None:
        self._id = processor_id
        self.processor = processor
        self._telemetry = telemetry

    async def consume(self, batch: SpanBatch) -> CommitResult:
        try:
            result: CommitResult = await self.processor.consume(batch)
        except Exception as exc:
            if not isinstance(exc, Refused | InvalidPayload):
                self._telemetry.processor_failed(self._id, exc)
            raise
        return result


@dataclass
class ExporterRunner:
    """One exporter instance and its sending queue; shared by every pipeline that lists it."""

    id: ComponentID
    exporter: Any
    queue: SendingQueue[CommitEvent]


@dataclass
class Graph:
    """Every component instance of a daemon, in start order."""

    exporters: dict[ComponentID, ExporterRunner] = field(default_factory=dict)
    processors: list[tuple[str, Any]] = field(default_factory=list)  # (pipeline/processor id, instance)
    receivers: list[tuple[ComponentID, Any]] = field(default_factory=list)
    extensions: list[tuple[ComponentID, Any]] = field(default_factory=list)
    routes: dict[str, list[ExporterRunner]] = field(default_factory=dict)  # pipeline -> its exporters
    entries: dict[str, Consumer] = field(default_factory=dict)  # pipeline -> head of its ack path (imports)

    def route(self, event: CommitEvent) -> None:
        """Store commit listener: hand the event to the pipeline's exporters (never blocks)."""
        for runner in self.routes.get(event.pipeline, ()):
            runner.queue.offer(event)


def build_graph(config: HalodConfig, store: SpanStore, telemetry: Telemetry) -> Graph:
    graph = Graph()

    def settings(cid: ComponentID, pipeline: str) -> CreateSettings:
        return CreateSettings(id=cid, pipeline=pipeline, telemetry=telemetry)

    for name in config.service.extensions:
        spec = config.component(Kind.EXTENSION, name)
        graph.extensions.append((spec.id, spec.factory.create(settings(spec.id, ""), spec.config)))

    for pipeline_name, pipeline in config.service.pipelines.items():
        runners = []
        for name in pipeline.exporters:
            spec = config.component(Kind.EXPORTER, name)
            if spec.id not in graph.exporters:
                exporter = spec.factory.create(settings(spec.id, pipeline_name), spec.config)
                graph.exporters[spec.id] = ExporterRunner(spec.id, exporter, _exporter_queue(spec, exporter, telemetry))
            runners.append(graph.exporters[spec.id])
        graph.routes[pipeline_name] = runners

        # Build the ack path back to front: each processor gets the next stage as its consumer.
        next_consumer: Consumer = StoreSink(store, pipeline_name)
        for name in reversed(pipeline.processors):
            spec = config.component(Kind.PROCESSOR, name)
            processor = spec.factory.create(settings(spec.id, pipeline_name), spec.config, next_consumer)
            graph.processors.insert(0, (f"{pipeline_name}/{spec.id}", processor))
            next_consumer = ProcessorGuard(str(spec.id), processor, telemetry)
        graph.entries[pipeline_name] = next_consumer
        for name in pipeline.receivers:
            spec = config.component(Kind.RECEIVER, name)
            receiver = spec.factory.create(settings(spec.id, pipeline_name), spec.config, next_consumer)
            graph.receivers.append((spec.id, receiver))
    return graph


def _exporter_queue(spec: Any, exporter: Any, telemetry: Telemetry) -> SendingQueue[CommitEvent]:
    name = str(spec.id)
    queue_config = getattr(spec.config, "sending_queue", None) or SendingQueueConfig()
    return SendingQueue(
        queue_config,
        handle=exporter.consume,
        on_drop=lambda event: telemetry.exporter_dropped(name, event.ingest_seq),
        on_error=lambda event, error: telemetry.exporter_failed(name, error),
        on_size=telemetry.exporter_queue_size.labels(name).set,
    )
