"""Factory of the `otlp` receiver. The gRPC/HTTP servers load only when the receiver is created."""

from __future__ import annotations

from typing import Any

from halod.components import Consumer, CreateSettings, Factory, Kind
from halod.receivers.otlp.config import OTLPReceiverConfig


def create(settings: CreateSettings, config: OTLPReceiverConfig, next_consumer: Consumer) -> Any:
    from halod.receivers.otlp.receiver import OTLPReceiver

    return OTLPReceiver(settings, config, next_consumer)


FACTORY: Factory[OTLPReceiverConfig] = Factory(
    kind=Kind.RECEIVER,
    type="otlp",
    config_model=OTLPReceiverConfig,
    create=create,
    description="OTLP traces over gRPC (TraceService/Export) and HTTP (POST /v1/traces, protobuf or JSON, "
    "gzip or not). Answers only after the spans are committed to the store.",
    example="""
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
        auth:
          bearer_token: ${env:HALOD_TOKEN}
      http:
        endpoint: 0.0.0.0:4318          # every interface: turn on TLS and auth
        tls:
          cert_file: /etc/halod/tls.crt
          key_file: /etc/halod/tls.key
        auth:
          bearer_token: ${env:HALOD_TOKEN}
service:
  pipelines:
    traces:
      receivers: [otlp]
""",
)
