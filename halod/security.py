"""Shared security settings for every listener: optional bearer-token auth and optional TLS.

Both are off by default because halod listens on 127.0.0.1 unless told otherwise; anything bound to
another interface should turn them on. Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class AuthConfig(StrictModel):
    bearer_token: SecretStr | None = Field(
        default=None,
        description="When set, requests must carry `Authorization: Bearer <token>`. "
        "Use ${env:VAR} rather than writing the token into the file.",
    )

    @field_validator("bearer_token")
    @classmethod
    def _empty_is_unset(cls, token: SecretStr | None) -> SecretStr | None:
        # `${env:HALOD_TOKEN:-}` turns auth on exactly when the variable is set and non-empty.
        return token if token is not None and token.get_secret_value().strip() else None

    def check(self, authorization: str | None) -> bool:
        """True when no token is configured or ``authorization`` carries the right one."""
        if self.bearer_token is None:
            return True
        if not authorization or not authorization.startswith("Bearer "):
            return False
        supplied = authorization[len("Bearer ") :].strip().encode()
        return hmac.compare_digest(supplied, self.bearer_token.get_secret_value().encode())


class TLSConfig(StrictModel):
    cert_file: Path = Field(description="PEM certificate chain presented by the server.")
    key_file: Path = Field(description="PEM private key of the certificate.")
    client_ca_file: Path | None = Field(
        default=None, description="When set, clients must present a certificate signed by this CA (mTLS)."
    )

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        # A field validator, so every missing file is reported under its own path (tls.key_file: ...).
        if path is not None and not path.is_file():
            raise ValueError(f"file {str(path)!r} does not exist")
        return path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(self.client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


class ClientTLSConfig(StrictModel):
    """TLS of an https URL a component calls (the system's CAs are trusted by default)."""

    ca_file: Path | None = Field(
        default=None, description="PEM file of the CA(s) that signed the server's certificate, instead of the "
        "system's trust store."
    )
    insecure_skip_verify: bool = Field(
        default=False, description="Accept any server certificate (no verification at all): for tests only."
    )

    @field_validator("ca_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file {str(path)!r} does not exist")
        return path

    def client_ssl(self) -> ssl.SSLContext | bool:
        """What aiohttp's `ssl=` takes: a context trusting `ca_file`, False (no verification) or True."""
        if self.insecure_skip_verify:
            return False
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True
