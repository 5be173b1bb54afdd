"""A stand-in for Langfuse's public API on 127.0.0.1, for tests (no Langfuse server can run here).

It serves the two list endpoints the `langfuse` receiver uses, the way Langfuse documents them
(https://api.reference.langfuse.com; fern/apis/server/definition/trace.yml, observations.yml,
commons.yml and utils/pagination.yml in github.com/langfuse/langfuse), and nothing the receiver
happens to need beyond that:

- HTTP Basic auth with the project's public key as user and secret key as password; 401 otherwise;
- ``GET /api/public/traces``: ``page`` (from 1), ``limit`` (default 50, at most 100), ``fromTimestamp``
  (timestamp on or after), ``toTimestamp`` (before), ``userId``, ``name``, ``sessionId``, ``orderBy``
  (``field.asc|desc``; default ``timestamp.desc``); items are TraceWithDetails (`htmlPath`, `latency`,
  `totalCost`, `observations` ids and `scores` ids are derived here, as the server derives them);
- ``GET /api/public/observations``: ``page``, ``limit``, ``fromStartTime`` (startTime on or after),
  ``toStartTime`` (before), ``traceId``, ``type``, ``level``, ``name``, ``parentObservationId``; newest
  first; items are ObservationsView;
- answers ``{"data": [...], "meta": {"page", "limit", "totalItems", "totalPages"}}`` with
  totalPages = ceil(totalItems / limit).

Tests add and update records while it runs, inject faults (`fail_next`: a 500 once, a 429 with
Retry-After, ...), and read the requests it got (`requests`). A record can be served malformed: its
filter time is then given separately (the real server would file it under its stored time).
"""

from __future__ import annotations

import asyncio
import base64
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

MAX_LIMIT = 100
DEFAULT_LIMIT = 50


def iso(moment: datetime | float) -> str:
    """ISO 8601 in UTC with milliseconds, as Langfuse writes times (`moment`: a datetime or Unix seconds)."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass
class Fault:
    status: int
    headers: dict[str, str]
    path: str | None
    times: int


@dataclass
class Request:
    path: str
    params: dict[str, str]
    status: int
    at: float  # time.monotonic()


@dataclass
class _Record:
    body: dict[str, Any]
    filter_time: datetime  # timestamp / startTime the server filters and sorts by


@dataclass
class FakeLangfuse:
    public_key: str = "pk-lf-test"
    secret_key: str = "sk-lf-test"
    traces: dict[str, _Record] = field(default_factory=dict)
    observations: dict[str, _Record] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- data ---------------------------------------------------------------------------------------

    def add_trace(self, trace: dict[str, Any], filter_time: str | None = None) -> None:
        with self.lock:
            self.traces[trace["id"]] = _Record(dict(trace), _parse_time(filter_time or trace["timestamp"]))

    def add_observation(self, observation: dict[str, Any], filter_time: str | None = None) -> None:
        body = {"level": "DEFAULT", **observation}
        with self.lock:
            self.observations[observation["id"]] = _Record(
                body, _parse_time(filter_time or observation["startTime"]))

    def update_trace(self, trace_id: str, **fields: Any) -> None:
        with self.lock:
            self.traces[trace_id].body.update(fields)

    def update_observation(self, observation_id: str, **fields: Any) -> None:
        with self.lock:
            self.observations[observation_id].body.update(fields)

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None,
                  path: str | None = None) -> None:
        """The next `times` requests (to `path` only, when given) get `status` instead of an answer."""
        with self.lock:
            self.faults.append(Fault(status, headers or {}, path, times))

    def requests_to(self, path: str) -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.path == path]

    # -- server -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLangfuse:
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def serve() -> None:
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_get("/api/public/traces", self._traces)
            app.router.add_get("/api/public/observations", self._observations)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-langfuse", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake Langfuse did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeLangfuse:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers -----------------------------------------------------------------------------------

    def _check(self, request: web.Request) -> web.Response | None:
        """Auth and injected faults: the answer to give instead of data, or None."""
        params = dict(request.query)
        expected = "Basic " + base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        with self.lock:
            fault = next((f for f in self.faults if f.path in (None, request.path)), None)
            if fault is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                status, headers = fault.status, fault.headers
            elif request.headers.get("Authorization") != expected:
                status, headers = 401, {}
            else:
                status, headers = 200, {}
            self.requests.append(Request(request.path, params, status, time.monotonic()))
        if status == 401:
            return web.json_response({"message": "Invalid credentials. Confirm that you've configured the correct "
                                                 "host."}, status=401, headers=headers)
        if status != 200:
            return web.json_response({"message": f"injected fault {status}"}, status=status, headers=headers)
        return None

    @staticmethod
    def _paging(request: web.Request) -> tuple[int, int] | web.Response:
        try:
            page = int(request.query.get("page", "1"))
            limit = int(request.query.get("limit", str(DEFAULT_LIMIT)))
        except ValueError:
            return web.json_response({"message": "page and limit must be integers"}, status=400)
        if page < 1 or not 1 <= limit <= MAX_LIMIT:
            return web.json_response({"message": f"page must be >= 1 and limit 1..{MAX_LIMIT}"}, status=400)
        return page, limit

    @staticmethod
    def _window(request: web.Request, records: list[_Record], from_key: str, to_key: str) -> list[_Record]:
        if from_key in request.query:
            since = _parse_time(request.query[from_key])
            records = [r for r in records if r.filter_time >= since]
        if to_key in request.query:
            until = _parse_time(request.query[to_key])
            records = [r for r in records if r.filter_time < until]
        return records

    @staticmethod
    def _page(items: list[dict[str, Any]], page: int, limit: int) -> web.Response:
        total = len(items)
        return web.json_response({
            "data": items[(page - 1) * limit: page * limit],
            "meta": {"page": page, "limit": limit, "totalItems": total, "totalPages": math.ceil(total / limit)},
        })

    async def _traces(self, request: web.Request) -> web.Response:
        if (refusal := self._check(request)) is not None:
            return refusal
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        with self.lock:
            records = self._window(request, list(self.traces.values()), "fromTimestamp", "toTimestamp")
            for key, param in (("userId", "userId"), ("name", "name"), ("sessionId", "sessionId")):
                if param in request.query:
                    records = [r for r in records if r.body.get(key) == request.query[param]]
            field_name, _, direction = request.query.get("orderBy", "timestamp.desc").partition(".")
            if field_name == "timestamp":
                records.sort(key=lambda r: r.filter_time, reverse=direction != "asc")
            else:
                records.sort(key=lambda r: str(r.body.get(field_name) or ""), reverse=direction == "desc")
            items = [self._trace_with_details(r.body) for r in records]
        return self._page(items, *paging)

    def _trace_with_details(self, trace: dict[str, Any]) -> dict[str, Any]:
        children = [r for r in self.observations.values() if r.body.get("traceId") == trace["id"]]
        starts = [r.filter_time for r in children]
        ends = [_parse_time(r.body["endTime"]) for r in children if r.body.get("endTime")]
        latency = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
        return {
            "name": None, "input": None, "output": None, "sessionId": None, "release": None, "version": None,
            "userId": None, "metadata": None, "tags": [], "public": False, "environment": "default",
            **trace,
            "htmlPath": f"/project/test/traces/{trace['id']}",
            "latency": latency,
            "totalCost": 0.0,
            "observations": [r.body["id"] for r in children],
            "scores": [],
        }

    async def _observations(self, request: web.Request) -> web.Response:
        if (refusal := self._check(request)) is not None:
            return refusal
        paging = self._paging(request)
        if isinstance(paging, web.Response):
            return paging
        with self.lock:
            records = self._window(request, list(self.observations.values()), "fromStartTime", "toStartTime")
            for param in ("traceId", "type", "level", "name", "parentObservationId"):
                if param in request.query:
                    records = [r for r in records if r.body.get(param) == request.query[param]]
            records.sort(key=lambda r: r.filter_time, reverse=True)
            items = [dict(r.body) for r in records]
        return self._page(items, *paging)
