"""Factory of the `langfuse` receiver. The HTTP client and the mapping load only when it is created."""

from __future__ import annotations

from typing import Any

from halod.components import Consumer, CreateSettings, Factory, Kind
from halod.receivers.langfuse.config import LangfuseReceiverConfig


def create(settings: CreateSettings, config: LangfuseReceiverConfig, next_consumer: Consumer) -> Any:
    from halod.receivers.langfuse.receiver import LangfuseReceiver

    return LangfuseReceiver(settings, config, next_consumer)


FACTORY: Factory[LangfuseReceiverConfig] = Factory(
    kind=Kind.RECEIVER,
    type="langfuse",
    config_model=LangfuseReceiverConfig,
    create=create,
    description="Pulls a Langfuse project's traces and observations through its public API (GET "
    "/api/public/traces and /api/public/observations, Basic auth with the project's keys) and stores them as "
    "OpenInference spans: a trace becomes an AGENT root span, a GENERATION an LLM span, a TOOL a TOOL span. "
    "Incremental: each poll lists what is new since the committed cursor, and checks the last `overlap` for "
    "records that arrived late with one count request, listing only the ranges whose counts changed.",
    example="""
receivers:
  langfuse:
    host: https://cloud.langfuse.com          # or https://us.cloud.langfuse.com, or self-hosted
    public_key: ${env:LANGFUSE_PUBLIC_KEY}
    secret_key: ${env:LANGFUSE_SECRET_KEY}
    poll_interval: 30s
    initial_lookback: 7d                       # first start only; later starts resume from the cursor
    overlap: 15m                               # re-check window for records that reach the API late
    hold_unfinished: 5m                        # wait this long for an observation's end / a trace's output
    retry_on_failure:
      max_interval: 5m
service:
  pipelines:
    traces:
      receivers: [langfuse]
# How it pulls (receivers/langfuse/receiver.py has the details). Per stream (traces by `timestamp`,
# observations by `startTime`), each poll lists the new window [mark, now) page by page, then counts the
# look-back [mark - overlap, mark) with one `limit=1` request (meta.totalItems) and lists only the
# sub-ranges whose count differs from the ids already stored: the records that reached the API late.
# Nothing is listed twice in normal operation; after a restart the look-back is listed once more (the
# store drops the duplicates).
# The cursor, committed with each page (times in Unix ms; "scan" is a window still being paged):
#   {"v":1,"traces":{"mark":1717171717000,"scan":null},
#    "observations":{"mark":1717171700000,"scan":{"from":1717171700000,"to":1717171717000,"page":3}}}
# Inspect it with: halod query "SELECT cursor FROM source_cursors WHERE source = 'langfuse'"
""",
)
