"""The part of Langfuse's public API the receiver uses: response shapes and a small HTTP client.

Sources (field names exactly as documented there):
- API reference https://api.reference.langfuse.com, OpenAPI https://cloud.langfuse.com/generated/api/openapi.yml;
- the Fern definitions it is generated from (github.com/langfuse/langfuse, fern/apis/server/definition/:
  trace.yml, observations.yml / legacy/observations-v1.yml, commons.yml, utils/pagination.yml);
- the generated Python SDK types (github.com/langfuse/langfuse-python, langfuse/api/commons/types/:
  trace.py, trace_with_details.py, observation.py, observations_view.py, usage.py).

Endpoints:
- ``GET /api/public/traces`` -> ``{"data": [TraceWithDetails], "meta": MetaResponse}`` with query
  parameters ``page`` (from 1), ``limit``, ``fromTimestamp`` (timestamp on or after, ISO 8601),
  ``toTimestamp`` (before), ``orderBy`` (``timestamp.desc``, ...);
- ``GET /api/public/observations`` -> ``{"data": [ObservationsView], "meta": MetaResponse}`` with
  ``page``, ``limit``, ``fromStartTime`` (startTime on or after), ``toStartTime`` (before).

Authentication is HTTP Basic with the project's public key as user and secret key as password.
Errors: 401 bad keys, 403 access denied, 429 rate limited (Retry-After), 5xx server faults.
"""

from __future__ import annotations

import base64
import email.utils
import json
import ssl as ssl_
import time
from typing import Any, Literal, TypedDict

import aiohttp
from pydantic import SecretStr

from halod import __version__


class MetaResponse(TypedDict):
    """utils/pagination.yml: page numbers start at 1; totalPages = ceil(totalItems / limit)."""

    page: int
    limit: int
    totalItems: int
    totalPages: int


class Usage(TypedDict, total=False):
    """commons.Usage (deprecated in favour of usageDetails, still returned)."""

    input: int | None
    output: int | None
    total: int | None
    unit: str | None
    inputCost: float | None
    outputCost: float | None
    totalCost: float | None


class Trace(TypedDict, total=False):
    """commons.TraceWithDetails, an item of GET /api/public/traces."""

    id: str
    timestamp: str  # ISO 8601
    name: str | None
    input: Any
    output: Any
    sessionId: str | None
    release: str | None
    version: str | None
    userId: str | None
    metadata: Any
    tags: list[str] | None
    public: bool | None
    environment: str | None
    htmlPath: str
    latency: float  # seconds; -1 when the metrics fields were not selected
    totalCost: float
    observations: list[str]  # observation ids
    scores: list[str]


ObservationType = Literal[
    "SPAN", "GENERATION", "EVENT", "AGENT", "TOOL", "CHAIN", "RETRIEVER", "EVALUATOR", "EMBEDDING", "GUARDRAIL"
]
ObservationLevel = Literal["DEBUG", "DEFAULT", "WARNING", "ERROR"]


class Observation(TypedDict, total=False):
    """commons.ObservationsView, an item of GET /api/public/observations."""

    id: str
    traceId: str | None
    type: str  # an ObservationType; unknown newer types are kept as they are
    name: str | None
    startTime: str
    endTime: str | None
    completionStartTime: str | None
    model: str | None
    modelParameters: dict[str, Any] | None
    input: Any
    output: Any
    version: str | None
    metadata: Any
    usage: Usage | None
    usageDetails: dict[str, int] | None  # e.g. {"input": 10, "output": 5, "total": 15, "input_cached_tokens": 2}
    costDetails: dict[str, float] | None
    level: str  # an ObservationLevel
    statusMessage: str | None
    parentObservationId: str | None
    promptId: str | None
    promptName: str | None
    promptVersion: int | None
    environment: str | None
    modelId: str | None
    calculatedTotalCost: float | None
    latency: float | None
    timeToFirstToken: float | None
    # Older Langfuse versions returned token counts at the top level.
    promptTokens: int
    completionTokens: int
    totalTokens: int


class ListResponse(TypedDict):
    data: list[Any]
    meta: MetaResponse


TRACES_PATH = "/api/public/traces"
OBSERVATIONS_PATH = "/api/public/observations"


class LangfuseError(Exception):
    """A request failed as a whole (the page is retried by the pulling loop)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(LangfuseError):
    """401/403: the keys are wrong or lack access. Retried, because keys can be fixed without a restart
    of Langfuse's side (a rotated key becomes valid, an environment variable is corrected)."""


class RateLimited(LangfuseError):
    """429. `retry_after_s` is the server's Retry-After (None when it sent none). The attribute name is
    the one `halod.model.Refused` uses, so a backoff can honour either the same way."""

    def __init__(self, message: str, retry_after_s: float | None) -> None:
        super().__init__(message, 429)
        self.retry_after_s = retry_after_s


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class LangfuseClient:
    """GET requests against one Langfuse project. The keys go into the Authorization header only; no
    message, log line or exception built here contains them."""

    def __init__(self, host: str, public_key: SecretStr, secret_key: SecretStr, timeout: float,
                 ssl: ssl_.SSLContext | bool = True) -> None:
        self.host = host
        self._ssl = ssl
        credentials = f"{public_key.get_secret_value()}:{secret_key.get_secret_value()}".encode()
        # Built by hand: aiohttp.BasicAuth is deprecated, and its replacement is missing from older aiohttp.
        self._authorization = "Basic " + base64.b64encode(credentials).decode()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=self._ssl),
                headers={"Authorization": self._authorization, "Accept": "application/json",
                         "User-Agent": f"halod/{__version__}"},
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def list(self, path: str, params: dict[str, str]) -> ListResponse:
        """One page of a list endpoint; raises `LangfuseError` (or a subclass) for anything but a
        well-formed 200 answer."""
        await self.open()
        assert self._session is not None
        url = self.host + path
        where = f"{url}?{'&'.join(f'{k}={v}' for k, v in params.items())}"
        async with self._session.get(url, params=params) as response:
            status = response.status
            text = await response.text(errors="replace")
            if status in (401, 403):
                raise AuthError(
                    f"{status} {response.reason} from {url}: check public_key/secret_key "
                    f"(a project's API keys, from its settings page)", status)
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise RateLimited(f"429 rate limited by {url} (Retry-After: {retry_after})", retry_after)
            if status != 200:
                raise LangfuseError(f"{status} {response.reason} from {where}: {text[:200]}", status)
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise LangfuseError(f"answer of {where} is not JSON: {exc}", status) from None
        problem = _envelope_problem(body)
        if problem:
            raise LangfuseError(f"unexpected answer of {where}: {problem}", status)
        result: ListResponse = body
        return result


def _envelope_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "not a JSON object"
    if not isinstance(body.get("data"), list):
        return "no `data` list"
    meta = body.get("meta")
    if not isinstance(meta, dict):
        return "no `meta` object"
    for key in ("page", "limit", "totalItems", "totalPages"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool):
            return f"meta.{key} is not an integer"
    return None
