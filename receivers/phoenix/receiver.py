"""The `phoenix` receiver: pulls the spans of one Arize Phoenix project through its REST API.

Endpoints (Phoenix 20.x): ``GET /v1/projects/{project}`` resolves the configured name or id to the
project's name and id, then ``GET /v1/projects/{project}/spans?sort=id&order=asc&limit=N[&cursor=C]``
lists spans in insertion order (Phoenix's row id). That cursor is an inclusive lower bound: "spans
whose row id is >= C", where C is Phoenix's global id ``base64("Span:<rowid>")``. Phoenix's
OTLP-shaped ``/spans/otlpv1`` endpoint is not used: it lists newest first only (a growing list cannot
be read incrementally that way), its records carry no row id to resume from, its times go through a
float (off by up to ~0.5 us) and it holds nothing more than the plain listing (Phoenix keeps no OTel
span kind, resource or scope to return).

The cursor halod commits with each page (`halod.pull`) is JSON text::

    {"base_url": "http://127.0.0.1:6006", "project_id": "UHJvamVjdDoy", "next_rowid": 42}

`next_rowid` is the first row id not yet stored: Phoenix's `next_cursor` when it said there is more,
else the last span's row id + 1. So the next poll asks exactly for the spans written after the last one
stored, whether or not Phoenix had announced a next page, and a restart resumes there: nothing is
fetched twice in normal operation, nothing skipped. Row ids only grow, in the order Phoenix commits
spans (one writer task a Phoenix process), so a span written later never lands behind the cursor.

Safety nets, all of which err towards fetching again (the store drops spans it already has) rather
than skipping:
- a cursor committed for another base_url or project (the config changed) is ignored: reading starts
  from the project's first span;
- when a poll finds nothing new but Phoenix's newest span is behind the cursor, Phoenix's database was
  reset or its newest spans deleted: reading starts again from the first span.
Known limit: several Phoenix replicas writing one Postgres database may commit row ids out of order;
a span committed late with a row id behind the cursor is then missed.

Errors: unreachable server, timeouts and 5xx are raised and retried by `PullReceiver` with backoff
(`halod_receiver_pull_errors`); 401/403 and an unknown project are retried too (the key may be fixed,
the project created when its first span arrives) but are also logged once at error level with the URL
and what to change. A record that cannot be converted is skipped and reported (`Page.problems`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod import __version__
from halod.components import Consumer, CreateSettings
from halod.pull import Page, PullReceiver
from halod.receivers.phoenix.config import PhoenixReceiverConfig
from halod.receivers.phoenix.convert import add_spans, project_request


class PhoenixError(Exception):
    """A fetch failed; the message names the URL, what Phoenix said and (for config faults) what to fix."""


class PhoenixConfigError(PhoenixError):
    """A fault the config must fix (wrong key, unknown project): logged at error level once, then retried."""


@dataclass(frozen=True)
class Project:
    id: str
    name: str


@dataclass(frozen=True)
class Cursor:
    base_url: str
    project_id: str
    next_rowid: int

    def encode(self) -> str:
        return orjson.dumps(
            {"base_url": self.base_url, "project_id": self.project_id, "next_rowid": self.next_rowid}
        ).decode()

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        try:
            data = orjson.loads(text)
            return cls(str(data["base_url"]), str(data["project_id"]), int(data["next_rowid"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def span_global_id(rowid: int) -> str:
    """Phoenix's global id of the span row `rowid` (what its cursors are)."""
    return base64.b64encode(f"Span:{rowid}".encode()).decode()


def span_rowid(global_id: Any) -> int | None:
    """The row id inside a Phoenix span global id (``base64("Span:42")`` -> 42), None if it is not one."""
    if not isinstance(global_id, str):
        return None
    try:
        kind, _, rowid = base64.b64decode(global_id, validate=True).decode().partition(":")
        return int(rowid) if kind == "Span" else None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


class PhoenixReceiver(PullReceiver):
    def __init__(self, settings: CreateSettings, config: PhoenixReceiverConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, config, next_consumer)
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._project: Project | None = None
        self._reported: str | None = None  # the config fault last logged at error level

    # -- lifecycle -----------------------------------------------------------------------------------

    async def open(self) -> None:
        verify = self.config.tls.client_ssl()
        if verify is False:
            self.telemetry.log.warning("TLS certificate verification is off", receiver=self.id,
                                       base_url=self.config.base_url)
        headers = {"Accept": "application/json", "User-Agent": f"halod/{__version__}"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=verify, limit=2),
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            raise_for_status=False,
        )
        self._project = None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # -- fetching ------------------------------------------------------------------------------------

    async def fetch(self, cursor: str | None) -> Page:
        try:
            page = await self._fetch(cursor)
        except PhoenixConfigError as exc:
            self._project = None  # resolve it again next time: it may have been created or replaced
            if str(exc) != self._reported:
                self._reported = str(exc)
                self.telemetry.log.error("phoenix receiver cannot read spans", receiver=self.id, error=str(exc))
            raise
        except BaseException:
            self._project = None
            raise
        self._reported = None
        return page

    async def _fetch(self, cursor: str | None) -> Page:
        base_url = self.config.base_url
        if self._project is None:
            self._project = await self._resolve_project()
        project = self._project
        position = Cursor.decode(cursor)
        if position is not None and (position.base_url, position.project_id) != (base_url, project.id):
            self.telemetry.log.warning(
                "cursor belongs to another Phoenix base_url or project: reading from the first span",
                receiver=self.id, cursor=cursor, base_url=base_url, project=project.name)
            position = None
        next_rowid = position.next_rowid if position is not None else None

        body = await self._spans(project, next_rowid, self.config.page_size, "asc")
        records = self._records(body)
        if not records and next_rowid is not None and next_rowid > 1:
            newest = self._records(await self._spans(project, None, 1, "desc"))
            newest_rowid = span_rowid(newest[0].get("id")) if newest and isinstance(newest[0], dict) else None
            if newest_rowid is None or newest_rowid < next_rowid - 1:
                self.telemetry.log.warning(
                    "Phoenix's newest span is behind the cursor (database reset or spans deleted): "
                    "reading from the first span again", receiver=self.id, next_rowid=next_rowid,
                    newest_rowid=newest_rowid, project=project.name)
                next_rowid = None
                body = await self._spans(project, None, self.config.page_size, "asc")
                records = self._records(body)
        if not records:
            # Nothing new: the same cursor (no commit), or none when reading (re)starts from the first span.
            return Page(ExportTraceServiceRequest(), cursor if next_rowid is not None else None)

        request = project_request(project.name)
        problems = add_spans(request, records)
        if not request.resource_spans[0].scope_spans[0].spans:
            request = ExportTraceServiceRequest()  # every record was bad: commit just the cursor
        following = span_rowid(body.get("next_cursor"))
        if following is None:
            rowids = [rowid for record in records
                      if isinstance(record, dict) and (rowid := span_rowid(record.get("id"))) is not None]
            if not rowids:
                raise PhoenixError(f"{self._spans_url(project)} returned spans without Phoenix ids: cannot page "
                                   "through them (is this a supported Phoenix version?)")
            following = max(rowids) + 1
        more = body.get("next_cursor") is not None
        return Page(request, Cursor(base_url, project.id, following).encode(), more=more, problems=problems)

    def _records(self, body: dict[str, Any]) -> list[Any]:
        records = body.get("data")
        if records is None:
            return []
        if not isinstance(records, list):
            raise PhoenixError(f"{self.config.base_url} answered a span listing whose data is not a list "
                               "(is this a supported Phoenix version?)")
        return records

    def _spans_url(self, project: Project) -> str:
        return f"{self.config.base_url}/v1/projects/{quote(project.id, safe='')}/spans"

    async def _spans(self, project: Project, from_rowid: int | None, limit: int, order: str) -> dict[str, Any]:
        params = {"sort": "id", "order": order, "limit": str(limit)}
        if from_rowid is not None:
            params["cursor"] = span_global_id(from_rowid)
        return await self._get(self._spans_url(project), params)

    async def _resolve_project(self) -> Project:
        url = f"{self.config.base_url}/v1/projects/{quote(self.config.project, safe='')}"
        data = (await self._get(url, {})).get("data")
        if not isinstance(data, dict) or not data.get("id") or not data.get("name"):
            raise PhoenixError(f"{url} did not describe a project (is this a Phoenix server?)")
        return Project(str(data["id"]), str(data["name"]))

    async def _get(self, url: str, params: dict[str, str]) -> dict[str, Any]:
        if self._session is None:
            raise PhoenixError("the receiver is not started")
        try:
            async with self._session.get(url, params=params) as response:
                payload = await response.read()
                status = response.status
        except aiohttp.ClientError as exc:
            raise PhoenixError(f"cannot reach Phoenix at {url}: {exc or type(exc).__name__}") from exc
        if status != 200:
            raise self._http_error(url, status, payload)
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise PhoenixError(f"{url} answered {status} with a body that is not JSON "
                               f"(is {self.config.base_url} a Phoenix server?)") from None
        if not isinstance(body, dict):
            raise PhoenixError(f"{url} answered JSON that is not an object (is this a Phoenix server?)")
        return body

    def _http_error(self, url: str, status: int, payload: bytes) -> PhoenixError:
        said = _detail(payload)
        if status in (401, 403):
            fix = ("set api_key to a valid Phoenix API key (e.g. api_key: ${env:PHOENIX_API_KEY})"
                   if self.config.api_key is None else "the api_key configured was refused: check it is a valid, "
                   "unexpired Phoenix API key with access to the project")
            return PhoenixConfigError(f"{url} answered {status} ({said}): {fix}")
        if status == 404:
            return PhoenixConfigError(
                f"{url} answered 404 ({said}): set project to an existing Phoenix project name or id "
                f"(GET {self.config.base_url}/v1/projects lists them), and base_url to the Phoenix base URL; "
                "a project is also created when its first span arrives")
        return PhoenixError(f"{url} answered {status} ({said})")


def _detail(payload: bytes) -> str:
    """Phoenix's explanation of an error: FastAPI's {"detail": ...}, else the start of the body."""
    try:
        body = orjson.loads(payload)
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])[:300]
    except orjson.JSONDecodeError:
        pass
    return payload[:300].decode(errors="replace").strip() or "no body"
