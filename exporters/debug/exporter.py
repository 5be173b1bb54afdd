"""The `debug` exporter: logs what was committed (like the Collector's debug exporter)."""

from __future__ import annotations

from halod.components import CreateSettings, Host
from halod.exporters.debug.config import DebugConfig
from halod.model import CommitEvent

_SPAN_FIELDS = ("trace_id", "span_id", "name", "semantic_kind", "service_name", "status_code")


class DebugExporter:
    def __init__(self, settings: CreateSettings, config: DebugConfig) -> None:
        self._id = str(settings.id)
        self._config = config
        self._log = settings.telemetry.log.bind(exporter=self._id)

    async def start(self, host: Host) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def consume(self, event: CommitEvent) -> None:
        self._log.info("committed spans", pipeline=event.pipeline, source=event.source,
                       ingest_seq=event.ingest_seq, spans=event.spans.num_rows)
        if self._config.verbosity == "detailed":
            for row in event.spans.select(list(_SPAN_FIELDS)).to_pylist():
                self._log.info("span", **row)
