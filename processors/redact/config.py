"""Config of the `redact` processor."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from halod.security import StrictModel

DEFAULT_PATTERNS = [
    r"sk-[A-Za-z0-9_\-]{20,}",  # OpenAI-style API keys
    r"AKIA[0-9A-Z]{16}",  # AWS access key ids
    r"(?i)bearer\s+[A-Za-z0-9._\-]{16,}",  # bearer tokens copied into prompts or tool arguments
]


class RedactConfig(StrictModel):
    patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        description="RE2 regular expressions; every match in a text column or attribute value is replaced.",
    )
    attributes: list[str] = Field(
        default_factory=list,
        description="Attribute keys whose whole string value is replaced; * matches any run of characters "
        "except '.', e.g. llm.input_messages.*.message.content.",
    )
    replacement: str = Field(default="[REDACTED]", description="What replaces redacted text.")

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"patterns[{index}]: invalid regular expression {pattern!r}: {exc}") from None
        return patterns

    @field_validator("replacement")
    @classmethod
    def _plain(cls, replacement: str) -> str:
        if any(char in replacement for char in '"\\'):
            raise ValueError("the replacement may not contain quotes or backslashes (it is written into JSON)")
        return replacement
