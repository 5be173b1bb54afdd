"""Factory of the `file` receiver."""

from __future__ import annotations

from typing import Any

from halod.components import Consumer, CreateSettings, Factory, Kind
from halod.receivers.file.config import FileReceiverConfig


def create(settings: CreateSettings, config: FileReceiverConfig, next_consumer: Consumer) -> Any:
    from halod.receivers.file.receiver import FileReceiver

    return FileReceiver(settings, config, next_consumer)


FACTORY: Factory[FileReceiverConfig] = Factory(
    kind=Kind.RECEIVER,
    type="file",
    config_model=FileReceiverConfig,
    create=create,
    description="Watches files and folders of traces in any importable format (docs/formats.md): new files and "
    "appended lines are picked up; each file's position is committed with its spans, so after a restart "
    "nothing is read twice or skipped.",
    example="""
receivers:
  file:
    include: [/var/log/agents/**/*.jsonl, /data/exports/*.otlp.json]
    exclude: [/var/log/agents/tmp/*]
    start_at: beginning
    poll_interval: 1s
  file/transcripts:
    include: [/data/transcripts/*.json]
    format: transcript
    tools: /data/transcripts/tools.json
service:
  pipelines:
    traces:
      receivers: [otlp, file, file/transcripts]
""",
)
