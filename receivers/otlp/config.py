"""Config of the `otlp` receiver (names follow the Collector's otlpreceiver)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from halod.security import AuthConfig, StrictModel, TLSConfig
from halod.units import ByteSize, Duration, Endpoint


class GRPCConfig(StrictModel):
    endpoint: Endpoint = Field(default="127.0.0.1:4317", description="host:port to listen on.")
    max_recv_msg_size_mib: int = Field(default=16, ge=1, le=2047, description="Largest request accepted, MiB.")
    max_concurrent_streams: int | None = Field(default=None, ge=1, description="HTTP/2 streams per connection.")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tls: TLSConfig | None = None


class HTTPConfig(StrictModel):
    endpoint: Endpoint = Field(default="127.0.0.1:4318", description="host:port to listen on.")
    max_request_body_size: ByteSize = Field(
        default=20 * 2**20, ge=1, description="Largest body accepted, after gzip decompression (bytes or 20MiB)."
    )
    traces_url_path: str = Field(default="/v1/traces", pattern=r"^/", description="Path of the traces endpoint.")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tls: TLSConfig | None = None


class ProtocolsConfig(StrictModel):
    """Only the protocols listed are enabled; ``grpc:`` with no value enables it with defaults."""

    grpc: GRPCConfig | None = None
    http: HTTPConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: ({} if value is None else value) for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _at_least_one(self) -> ProtocolsConfig:
        if self.grpc is None and self.http is None:
            raise ValueError("enable at least one protocol: grpc or http")
        return self


class OTLPReceiverConfig(StrictModel):
    protocols: ProtocolsConfig = Field(
        default_factory=lambda: ProtocolsConfig(grpc=GRPCConfig(), http=HTTPConfig()),
        description="Both gRPC (127.0.0.1:4317) and HTTP (127.0.0.1:4318) when omitted.",
    )
    grace_period: Duration = Field(
        default=10.0, description="On shutdown, how long requests in flight may take to finish."
    )
