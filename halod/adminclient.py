"""How the CLI reaches the store: through a running daemon's admin API, else by opening the file.

DuckDB allows one process per database file (even read-only opens fail while the daemon holds it),
so every CLI command first asks the daemon at the configured admin address, and opens the file
itself only when nothing answers there.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from halod.config import HalodConfig
from halod.model import ImportResult, InvalidPayload, Refused
from halod.store import QueryError, QueryResult, connect, run_query


class AdminError(Exception):
    """The daemon answered with an error, or the store could not be reached; the message is for the user.
    `status` is the HTTP status the daemon answered with, when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AdminClient:
    base_url: str
    token: str | None = None
    timeout: float = 60.0

    @classmethod
    def from_config(cls, config: HalodConfig) -> AdminClient:
        metrics = config.service.telemetry.metrics
        host, _, port = metrics.address.rpartition(":")
        host = host or "127.0.0.1"
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        scheme = "https" if metrics.tls else "http"
        token = metrics.auth.bearer_token.get_secret_value() if metrics.auth.bearer_token else None
        return cls(f"{scheme}://{host}:{port}", token)

    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None,
                 content_type: str = "application/json") -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        context = ssl.create_default_context() if self.base_url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout, context=context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace").strip()
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            message = f"halod at {self.base_url} answered {exc.code}: {detail}"
            if exc.code == 503:  # the store is busy: retryable, as for an OTLP client
                raise Refused("queue_full", message, float(exc.headers.get("Retry-After") or 1)) from None
            raise AdminError(message, exc.code) from None

    def is_up(self) -> bool:
        """True when a daemon answers /healthz; False when nothing listens there."""
        try:
            self._request("GET", "/healthz", timeout=2.0)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False
        return True

    def import_request(self, body: bytes, pipeline: str | None = None) -> ImportResult:
        """Send one serialized OTLP ExportTraceServiceRequest to POST /api/v1/import."""
        path = "/api/v1/import" + (f"?{urllib.parse.urlencode({'pipeline': pipeline})}" if pipeline else "")
        try:
            result = self._request("POST", path, body, content_type="application/x-protobuf")
        except AdminError as exc:
            if exc.status == 400:  # the pipeline refused this request's data for good
                raise InvalidPayload(str(exc)) from None
            raise
        return ImportResult(**result)

    def flush(self) -> dict[str, Any]:
        """POST /api/v1/flush: complete every open trace, close every window, evaluate the triggers."""
        result: dict[str, Any] = self._request("POST", "/api/v1/flush", {}, timeout=600)
        return result

    def query(self, sql: str, max_rows: int) -> QueryResult:
        result = self._request("POST", "/api/v1/query", {"sql": sql, "max_rows": max_rows})
        return QueryResult(result["columns"], result["types"], [tuple(row) for row in result["rows"]],
                           result["truncated"])


def query_store(config: HalodConfig, sql: str, max_rows: int) -> tuple[QueryResult, str]:
    """Run a read-only query via the daemon when one is up, else on the file; returns (result, where)."""
    client = AdminClient.from_config(config)
    if client.is_up():
        try:
            return client.query(sql, max_rows), client.base_url
        except AdminError as exc:
            raise QueryError(str(exc)) from None
    path: Path = config.storage.path
    if not path.exists():
        raise AdminError(f"no halod answers at {client.base_url} and there is no store at {path}")
    try:
        con = connect(path, read_only=True)
    except duckdb.IOException as exc:
        raise AdminError(
            f"no halod answers at {client.base_url} and {path} is locked by another process "
            f"(a halod with another admin address?): {exc}"
        ) from None
    try:
        return run_query(con, sql, max_rows), str(path)
    finally:
        con.close()
