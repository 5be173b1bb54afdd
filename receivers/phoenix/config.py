"""Config of the `phoenix` receiver: where the Phoenix server is, which project, how to authenticate."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator

from halod.pull import PullConfig
from halod.security import ClientTLSConfig
from halod.units import BaseURL

# Phoenix's REST API caps `limit` at 1000 spans a page (GET /v1/projects/{project}/spans answers 422 above).
MAX_PAGE_SIZE = 1000


class PhoenixReceiverConfig(PullConfig):
    base_url: BaseURL = Field(
        default="http://127.0.0.1:6006",
        description="Base URL of the Phoenix server (http or https; a path prefix is kept, for Phoenix "
        "behind a proxy with PHOENIX_HOST_ROOT_PATH).",
    )
    project: str = Field(
        default="default", min_length=1,
        description="Phoenix project to read, by name or by id (as Phoenix shows it, e.g. UHJvamVjdDox).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Phoenix API key, sent as `Authorization: Bearer <key>` (needed when Phoenix runs with "
        "auth). Use ${env:PHOENIX_API_KEY} rather than writing the key into the file; never logged.",
    )
    page_size: int = Field(
        default=MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE,
        description="Spans asked for in one request (Phoenix's limit is 1000). Each page is one store commit.",
    )
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig, description="TLS of an https `base_url`.")

    @field_validator("project")
    @classmethod
    def _path_segment(cls, project: str) -> str:
        # Phoenix's own rule for identifiers in the URL path.
        if any(char in project for char in "/?#"):
            raise ValueError("a Phoenix project name or id cannot contain '/', '?' or '#'")
        return project

    @field_validator("api_key")
    @classmethod
    def _empty_is_unset(cls, key: SecretStr | None) -> SecretStr | None:
        # `${env:PHOENIX_API_KEY:-}` sends a key exactly when the variable is set and non-empty.
        return key if key is not None and key.get_secret_value().strip() else None
