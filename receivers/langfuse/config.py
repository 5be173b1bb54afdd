"""Config of the `langfuse` receiver: where the Langfuse API is, its project keys, and how to pull.

The keys belong to one Langfuse project (Project settings -> API keys), so there is no project
setting. Write them as ``${env:LANGFUSE_PUBLIC_KEY}`` / ``${env:LANGFUSE_SECRET_KEY}`` rather than
into the file. With no keys the receiver still starts (a daemon must not fail because one source is
not configured yet): it logs a clear error on every attempt and keeps retrying with backoff.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator, model_validator

from halod.pull import PullConfig
from halod.security import ClientTLSConfig
from halod.units import BaseURL, Duration

MAX_PAGE_SIZE = 100  # the largest `limit` Langfuse's list endpoints accept


class LangfuseReceiverConfig(PullConfig):
    """Pulls traces and observations from one Langfuse project through its public API."""

    poll_interval: Duration = Field(
        default=30.0, gt=0,
        description="Wait between two polls once everything new is stored. An idle poll costs 4 requests (a "
        "listing and a count per stream); Langfuse Cloud allows 30 API requests a minute per organization on "
        "the Hobby plan, 100 on Core, 1000 on Pro (a 429's Retry-After is honoured).",
    )
    host: BaseURL = Field(
        default="https://cloud.langfuse.com",
        description="Base URL of the Langfuse server (https://us.cloud.langfuse.com for the US region, or a "
        "self-hosted URL); the receiver calls <host>/api/public/...",
    )
    public_key: SecretStr | None = Field(
        default=None,
        description="Project public key (pk-lf-...), the Basic auth user name. Use ${env:LANGFUSE_PUBLIC_KEY}. "
        "Unset or empty: the receiver logs an error on every attempt and pulls nothing.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Project secret key (sk-lf-...), the Basic auth password; never logged. "
        "Use ${env:LANGFUSE_SECRET_KEY}.",
    )
    tls: ClientTLSConfig = Field(default_factory=ClientTLSConfig, description="TLS of an https `host`.")
    page_size: int = Field(
        default=MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE,
        description="Records per API request (`limit`); Langfuse allows at most 100.",
    )
    initial_lookback: Duration | None = Field(
        default=None, gt=0,
        description="First pull only (no committed cursor yet): fetch records whose time is within this long "
        "before the start (e.g. 7d). null fetches the project's whole history.",
    )
    overlap: Duration = Field(
        default=900.0, gt=0,
        description="How far back each poll looks again for records that reached the API late (Langfuse ingests "
        "asynchronously, and an observation is listed by its start time, often long after it started). "
        "Checked with one count request per poll while nothing arrived late. Records that show up later "
        "than this are missed.",
    )
    hold_unfinished: Duration = Field(
        default=300.0, ge=0,
        description="How long a record that looks unfinished (an observation without endTime, a trace without "
        "output) is held back waiting for its update, counted from its start; after that it is stored as it "
        "is. 0 stores every record as soon as it is seen. Must be shorter than overlap.",
    )

    @field_validator("public_key", "secret_key")
    @classmethod
    def _empty_is_unset(cls, key: SecretStr | None) -> SecretStr | None:
        # `${env:LANGFUSE_SECRET_KEY:-}` leaves the key unset when the variable is empty or missing.
        return key if key is not None and key.get_secret_value().strip() else None

    @model_validator(mode="after")
    def _hold_within_overlap(self) -> LangfuseReceiverConfig:
        # A held record must be looked at again before it leaves the look-back window, or it would be lost.
        if self.hold_unfinished and self.hold_unfinished >= self.overlap:
            raise ValueError("hold_unfinished must be shorter than overlap")
        return self
