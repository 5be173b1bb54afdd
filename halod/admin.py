"""The local HTTP listener: /metrics, /healthz, /readyz and the admin API under /api/v1/.

DuckDB lets one process open the database file, so the CLI talks to a running daemon through this
API (and opens the file itself only when no daemon answers). Later features add their endpoints
with `AdminServer.add_route` (import, flush, inspection commands).

Auth: when `service.telemetry.metrics.auth.bearer_token` is set, /metrics and /api/* require it;
/healthz and /readyz stay open for probes (they reveal nothing).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from halod import __version__
from halod.components import listen_failed
from halod.config import MetricsConfig
from halod.store import QueryError, SpanStore
from halod.telemetry import Telemetry
from halod.units import split_endpoint

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ReadinessCheck = Callable[[], list[str]]  # returns the reasons the daemon is not ready (empty: ready)
MAX_QUERY_ROWS = 100_000


def json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | datetime.date | datetime.time):
        return str(value)
    return str(value)


def json_response(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, default=json_default, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


class AdminServer:
    def __init__(
        self, config: MetricsConfig, telemetry: Telemetry, store: SpanStore, status: Callable[[], dict[str, Any]]
    ) -> None:
        self._config = config
        self._telemetry = telemetry
        self._store = store
        self._status = status
        self._readiness: list[ReadinessCheck] = []
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._auth_middleware], client_max_size=2**20)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/api/v1/status", self._api_status)
        self.app.router.add_post("/api/v1/query", self._api_query)
        self.bound_port: int | None = None

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        """Register an admin endpoint (under /api/v1/ so it is behind the bearer token)."""
        if not path.startswith("/api/v1/"):
            raise ValueError("admin routes live under /api/v1/")
        self.app.router.add_route(method, path, handler)

    def add_readiness_check(self, check: ReadinessCheck) -> None:
        self._readiness.append(check)

    async def start(self) -> None:
        host, port = split_endpoint(self._config.address)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ssl_context = self._config.tls.server_context() if self._config.tls else None
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise listen_failed("admin/metrics listener", self._config.address, exc) from None
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else port
        self._telemetry.log.info("admin listening", address=f"{host}:{self.bound_port}",
                                 tls=self._config.tls is not None,
                                 auth=self._config.auth.bearer_token is not None)

    async def shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz") or self._config.auth.check(request.headers.get("Authorization")):
            return await handler(request)
        return web.Response(status=401, text="missing or wrong bearer token\n",
                            headers={"WWW-Authenticate": 'Bearer realm="halod"'})

    async def _healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok", "version": __version__})

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = [reason for check in self._readiness for reason in check()]
        if reasons:
            return json_response({"status": "not ready", "reasons": reasons}, 503)
        return json_response({"status": "ready"})

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _api_status(self, request: web.Request) -> web.Response:
        return json_response(self._status())

    async def _api_query(self, request: web.Request) -> web.Response:
        try:
            payload = await request.json(loads=orjson.loads)
        except (orjson.JSONDecodeError, ValueError):
            return error_response(400, 'body must be JSON: {"sql": "SELECT ...", "max_rows": 1000}')
        if not isinstance(payload, dict) or not isinstance(payload.get("sql"), str):
            return error_response(400, 'body must be JSON: {"sql": "SELECT ...", "max_rows": 1000}')
        max_rows = payload.get("max_rows", 10_000)
        if not isinstance(max_rows, int) or not 0 < max_rows <= MAX_QUERY_ROWS:
            return error_response(400, f"max_rows must be an integer between 1 and {MAX_QUERY_ROWS}")
        try:
            result = await asyncio.to_thread(self._store.query, payload["sql"], max_rows)
        except QueryError as exc:
            return error_response(400, str(exc))
        return json_response({
            "columns": result.columns, "types": result.types, "rows": result.rows, "truncated": result.truncated,
        })
