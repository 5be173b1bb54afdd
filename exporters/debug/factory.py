"""Factory of the `debug` exporter."""

from __future__ import annotations

from typing import Any

from halod.components import CreateSettings, Factory, Kind
from halod.exporters.debug.config import DebugConfig


def create(settings: CreateSettings, config: DebugConfig) -> Any:
    from halod.exporters.debug.exporter import DebugExporter

    return DebugExporter(settings, config)


FACTORY: Factory[DebugConfig] = Factory(
    kind=Kind.EXPORTER,
    type="debug",
    config_model=DebugConfig,
    create=create,
    description="Logs every commit (and, detailed, every span) of its pipelines.",
    example="""
exporters:
  debug:
    verbosity: detailed
service:
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
""",
)
