"""The `otlp` receiver: OTLP/gRPC TraceService/Export and OTLP/HTTP POST /v1/traces.

Both transports share `_export`: cheap admission check (refuse before decoding under overload),
decode, normalize, hand to the pipeline, and answer only after the commit. Response semantics follow
the OTLP specification:

| outcome                        | gRPC                         | HTTP                      | stored |
|--------------------------------|------------------------------|---------------------------|--------|
| committed                      | OK                           | 200                       | all    |
| some spans have invalid ids    | OK + partial_success         | 200 + partial_success     | rest   |
| undecodable / wrong media type | INVALID_ARGUMENT             | 400 / 415                 | none   |
| too large                      | RESOURCE_EXHAUSTED           | 413                       | none   |
| queue full, shutting down      | UNAVAILABLE + RetryInfo      | 503 + Retry-After         | none   |
| bad or missing bearer token    | UNAUTHENTICATED              | 401                       | none   |

Partial success must not be retried by clients; UNAVAILABLE and 503 must be.
"""

from __future__ import annotations

import asyncio
import math

import grpc
from aiohttp import web
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration as DurationProto
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from halod import otlp
from halod.components import Consumer, CreateSettings, Host, listen_failed
from halod.model import InvalidPayload, Refused
from halod.normalize import normalize_request
from halod.receivers.otlp.config import GRPCConfig, HTTPConfig, OTLPReceiverConfig
from halod.units import split_endpoint

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OTLPReceiver:
    def __init__(self, settings: CreateSettings, config: OTLPReceiverConfig, next_consumer: Consumer) -> None:
        self.id = str(settings.id)
        self.config = config
        self._next = next_consumer
        self._telemetry = settings.telemetry
        self._host: Host | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._http_runner: web.AppRunner | None = None
        self.grpc_port: int | None = None
        self.http_port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, host: Host) -> None:
        self._host = host
        protocols = self.config.protocols
        try:
            if protocols.grpc is not None:
                await self._start_grpc(protocols.grpc)
            if protocols.http is not None:
                await self._start_http(protocols.http)
        except BaseException:
            await self.shutdown()  # e.g. the HTTP port is taken: stop the gRPC server already started
            raise

    async def shutdown(self) -> None:
        grace = self.config.grace_period
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace)
            self._grpc_server = None
        if self._http_runner is not None:
            await self._http_runner.shutdown()
            await self._http_runner.cleanup()
            self._http_runner = None

    def is_listening(self) -> bool:
        protocols = self.config.protocols
        return (protocols.grpc is None or self.grpc_port is not None) and (
            protocols.http is None or self.http_port is not None
        )

    async def _start_grpc(self, config: GRPCConfig) -> None:
        max_size = config.max_recv_msg_size_mib * 2**20
        options = [("grpc.max_receive_message_length", max_size), ("grpc.so_reuseport", 0)]
        if config.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", config.max_concurrent_streams))
        server = grpc.aio.server(options=options)
        # Raw bytes in and out: decoding happens in _export so a bad payload gets INVALID_ARGUMENT.
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._grpc_export)}
        )
        server.add_generic_rpc_handlers((handler,))
        if config.tls is not None:
            credentials = grpc.ssl_server_credentials(
                [(config.tls.key_file.read_bytes(), config.tls.cert_file.read_bytes())],
                root_certificates=config.tls.client_ca_file.read_bytes() if config.tls.client_ca_file else None,
                require_client_auth=config.tls.client_ca_file is not None,
            )
        try:
            if config.tls is not None:
                port = server.add_secure_port(config.endpoint, credentials)
            else:
                port = server.add_insecure_port(config.endpoint)
        except RuntimeError as exc:  # grpc's "Failed to bind to address ..."
            raise listen_failed(f"receiver {self.id} (grpc)", config.endpoint, exc) from None
        await server.start()
        self._grpc_server = server
        self.grpc_port = port
        self._telemetry.log.info("otlp grpc listening", receiver=self.id, endpoint=config.endpoint, port=port,
                                 tls=config.tls is not None, auth=config.auth.bearer_token is not None)

    async def _start_http(self, config: HTTPConfig) -> None:
        app = web.Application(client_max_size=config.max_request_body_size)
        app.router.add_post(config.traces_url_path, self._http_export)
        # auto_decompress off: _read_body inflates gzip itself, bounded by max_request_body_size.
        # shutdown_timeout: on shutdown, requests in flight get grace_period to finish (aiohttp's default is 60 s).
        runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                               shutdown_timeout=self.config.grace_period)
        await runner.setup()
        self._http_runner = runner  # set before binding, so shutdown() cleans it up if binding fails
        host, port = split_endpoint(config.endpoint)
        ssl_context = config.tls.server_context() if config.tls else None
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise listen_failed(f"receiver {self.id} (http)", config.endpoint, exc) from None
        sockets = getattr(getattr(site, "_server", None), "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else port
        self._telemetry.log.info("otlp http listening", receiver=self.id, endpoint=config.endpoint,
                                 port=self.http_port, path=config.traces_url_path, tls=config.tls is not None,
                                 auth=config.auth.bearer_token is not None)

    # -- shared export path --------------------------------------------------------------------------

    async def _export(self, request: ExportTraceServiceRequest, transport: str) -> ExportTraceServiceResponse:
        batch = normalize_request(request, self.id)
        response = ExportTraceServiceResponse()
        if batch.rejected:
            message = f"{batch.rejected} span(s) rejected: {batch.rejection_reason}"
            self._telemetry.rejected_spans(self.id, transport, "invalid_span", message, batch.rejected)
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=batch.rejected, error_message=message)
            )
        if batch.num_spans:
            try:
                await self._next.consume(batch)
            except Refused as exc:
                self._telemetry.refused(self.id, transport, exc.reason, exc.message, batch.num_spans)
                raise
            self._telemetry.accepted(self.id, transport, batch.num_spans)
        return response

    def _admit(self, transport: str) -> None:
        assert self._host is not None
        try:
            self._host.admission_check()
        except Refused as exc:
            self._telemetry.refused(self.id, transport, exc.reason, exc.message)
            raise

    # -- gRPC ----------------------------------------------------------------------------------------

    async def _grpc_export(self, body: bytes, context: grpc.aio.ServicerContext) -> bytes:
        grpc_config = self.config.protocols.grpc
        assert grpc_config is not None
        metadata = dict(context.invocation_metadata() or ())
        if not grpc_config.auth.check(metadata.get("authorization")):
            self._telemetry.refused(self.id, "grpc", "unauthenticated", "missing or wrong bearer token")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        try:
            self._admit("grpc")
            request = otlp.decode_protobuf(body)
            response = await self._export(request, "grpc")
        except InvalidPayload as exc:
            self._telemetry.refused(self.id, "grpc", exc.reason, exc.message)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except Refused as exc:
            status = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message=exc.message)
            retry = error_details_pb2.RetryInfo(retry_delay=DurationProto(seconds=math.ceil(exc.retry_after_s)))
            detail = AnyProto()
            detail.Pack(retry)
            status.details.append(detail)
            # The standard place is the status details; opentelemetry-python's exporter reads the
            # RetryInfo only from its own header, so both carry it.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, exc.message,
                trailing_metadata=(
                    ("grpc-status-details-bin", status.SerializeToString()),
                    ("google.rpc.retryinfo-bin", retry.SerializeToString()),
                ),
            )
        return bytes(response.SerializeToString())

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _http_export(self, request: web.Request) -> web.Response:
        http_config = self.config.protocols.http
        assert http_config is not None
        media = (request.content_type or "").lower()
        reply_media = otlp.JSON if media == otlp.JSON else otlp.PROTOBUF
        if not http_config.auth.check(request.headers.get("Authorization")):
            self._telemetry.refused(self.id, "http", "unauthenticated", "missing or wrong bearer token")
            return _status_response(401, "missing or wrong bearer token", reply_media,
                                    {"WWW-Authenticate": 'Bearer realm="halod"'})
        try:
            self._admit("http")
            body = await _read_body(request, http_config.max_request_body_size)
            decoded = otlp.decode(body, media)
            response = await self._export(decoded, "http")
        except InvalidPayload as exc:
            self._telemetry.refused(self.id, "http", exc.reason, exc.message)
            status = {"media_type": 415, "too_large": 413}.get(exc.reason, 400)
            return _status_response(status, exc.message, reply_media)
        except Refused as exc:
            return _status_response(503, exc.message, reply_media,
                                    {"Retry-After": str(math.ceil(exc.retry_after_s))})
        return web.Response(body=otlp.encode(response, reply_media), content_type=reply_media)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The request body, gunzipped when Content-Encoding says so; both sizes bounded by `limit`."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise InvalidPayload(f"request body exceeds the limit of {limit} bytes", reason="too_large") from None
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise InvalidPayload(f"could not read the request body: {exc}") from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding == "gzip":
        return otlp.gunzip(body, limit)
    if encoding not in ("identity", ""):
        raise InvalidPayload(f"unsupported Content-Encoding {encoding!r}: use gzip or none", reason="media_type")
    return body


def _status_response(status: int, message: str, media: str, headers: dict[str, str] | None = None) -> web.Response:
    """An OTLP/HTTP error: a google.rpc.Status in the request's encoding."""
    code = {400: 3, 401: 16, 413: 8, 415: 3, 503: 14}.get(status, 2)
    payload = otlp.encode(status_pb2.Status(code=code, message=message), media)
    return web.Response(status=status, body=payload, content_type=media, headers=headers)
