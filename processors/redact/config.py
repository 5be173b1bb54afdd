"""Config of the `redact` processor."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from halod.security import StrictModel


def _re2(pattern: str) -> str:
    """Compile with RE2 (Arrow's regex engine, which applies the patterns), not Python's re: a pattern
    only Python accepts (lookaround, backreferences) would otherwise fail every batch at run time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        pc.replace_substring_regex(pa.array([""], pa.string()), pattern=pattern, replacement="")
    except pa.ArrowInvalid as exc:
        reason = str(exc).removeprefix("Invalid regular expression: ")
        raise ValueError(f"invalid regular expression {pattern!r}: {reason}") from None
    return pattern


RE2Pattern = Annotated[str, AfterValidator(_re2)]

DEFAULT_PATTERNS = [
    r"sk-[A-Za-z0-9_\-]{20,}",  # OpenAI-style API keys
    r"AKIA[0-9A-Z]{16}",  # AWS access key ids
    r"(?i)bearer\s+[A-Za-z0-9._\-]{16,}",  # bearer tokens copied into prompts or tool arguments
]


class RedactConfig(StrictModel):
    patterns: list[RE2Pattern] = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        description="RE2 regular expressions; every match in a text column or attribute value is replaced.",
    )
    attributes: list[str] = Field(
        default_factory=list,
        description="Attribute keys whose whole string value is replaced; * matches any run of characters "
        "except '.', e.g. llm.input_messages.*.message.content.",
    )
    replacement: str = Field(default="[REDACTED]", description="What replaces redacted text.")

    @field_validator("replacement")
    @classmethod
    def _plain(cls, replacement: str) -> str:
        if any(char in replacement for char in '"\\'):
            raise ValueError("the replacement may not contain quotes or backslashes (it is written into JSON)")
        return replacement
