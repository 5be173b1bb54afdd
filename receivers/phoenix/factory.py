"""Factory of the `phoenix` receiver. aiohttp and the conversion load only when the receiver is created."""

from __future__ import annotations

from typing import Any

from halod.components import Consumer, CreateSettings, Factory, Kind
from halod.receivers.phoenix.config import PhoenixReceiverConfig


def create(settings: CreateSettings, config: PhoenixReceiverConfig, next_consumer: Consumer) -> Any:
    from halod.receivers.phoenix.receiver import PhoenixReceiver

    return PhoenixReceiver(settings, config, next_consumer)


FACTORY: Factory[PhoenixReceiverConfig] = Factory(
    kind=Kind.RECEIVER,
    type="phoenix",
    config_model=PhoenixReceiverConfig,
    create=create,
    description="Pulls the spans of one Arize Phoenix project through its REST API (GET "
    "/v1/projects/{project}/spans, in insertion order), incrementally: each page is committed with a "
    "cursor, so polls and restarts resume after the last span stored. Phoenix keeps no OTel span kind, "
    "resource or scope: spans arrive with kind UNSPECIFIED and service.name set to the project name "
    "(conversion details in receivers/phoenix/convert.py).",
    example="""
receivers:
  phoenix:
    base_url: http://127.0.0.1:6006
    project: default                  # name or id
    api_key: ${env:PHOENIX_API_KEY:-} # only when Phoenix runs with auth
    poll_interval: 10s
  phoenix/prod:
    base_url: https://phoenix.internal.example:443
    project: support-agent
    api_key: ${env:PHOENIX_PROD_API_KEY}
    tls:
      ca_file: /etc/halod/phoenix-ca.pem
    retry_on_failure:
      max_interval: 2m
service:
  pipelines:
    traces:
      receivers: [phoenix, phoenix/prod]
""",
)
