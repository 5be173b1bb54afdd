"""What every detector is: a pure function of a completed trace (plus read-only context) that
returns findings. Detectors never write anything; the signal stage stores their findings in the
`signals` table (trace, span, signal, severity, details) so evidence points at spans.

A detector module (one per signal family, in this package) defines:

- `Config`: a strict pydantic model (`halod.security.StrictModel`) of its knobs, every field with a
  default and a description (docs are generated from it), including `enabled: bool = True`;
- `Detector(config)`: with `name` (the signal name, or `names` for a family emitting several, e.g.
  refusal and refusal_loop), and `detect(trace, context) -> list[Finding]`;
- a module docstring that states the exact rule, the knobs and an example; the example is a test.

Detectors must be cheap (tens of microseconds per span: they run on every completed trace), must
treat every string in the trace as untrusted data (never eval, never build SQL from it), and must be
deterministic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Annotated, Any, Literal, Protocol

import orjson
from pydantic import AfterValidator

from halod.analysis.trace import SpanView, TraceSpans

Severity = Literal["info", "warning", "error"]

MAX_SCAN_CHARS = 65536
"""The longest trace text (arguments, results, outputs) a detector parses or scans."""
_EXCERPT = 200


def check_patterns(patterns: Iterable[str]) -> None:
    """Every regular expression must compile; the error names the bad one (config validation)."""
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None


def _checked_list(patterns: list[str]) -> list[str]:
    check_patterns(patterns)
    return patterns


def _checked_map(patterns: dict[str, str]) -> dict[str, str]:
    check_patterns(patterns.values())
    return patterns


def compile_any(patterns: list[str]) -> re.Pattern[str]:
    """One case-insensitive regex matching any of `patterns` (which must be valid regexes)."""
    if not patterns:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)


def compile_named(patterns: dict[str, str]) -> list[tuple[str, re.Pattern[str]]]:
    """Named case-insensitive regexes, in order (for `first_match`)."""
    return [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in patterns.items()]


def first_match(patterns: Iterable[tuple[str, re.Pattern[str]]], text: str) -> str | None:
    """The name of the first pattern found in `text`."""
    for name, pattern in patterns:
        if pattern.search(text):
            return name
    return None


def glob_matcher(globs: list[str]) -> re.Pattern[str]:
    """One case-insensitive regex for shell-style name patterns: `.match(name)` tells if any matches."""
    if not globs:
        return re.compile(r"(?!x)x")
    return re.compile("|".join(f"(?:{translate(glob)})" for glob in globs), re.IGNORECASE)


class _NotJson:
    """Marker: the text is not JSON (or too long to parse)."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJson()


def parse_json(value: Any, limit: int = MAX_SCAN_CHARS) -> Any:
    """The JSON value of `value` when it is JSON text (at most `limit` characters), `NOT_JSON` when it
    is text that does not parse or is too long; a non-text value is returned as it is (attributes can
    already be structured). Never evaluates anything: orjson, then the standard library for what
    orjson refuses but JSON allows (integers beyond 64 bits)."""
    if not isinstance(value, str):
        return value
    if len(value) > limit:
        return NOT_JSON
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return NOT_JSON


def as_text(value: Any, limit: int | None = None) -> str:
    """An attribute value as text (None: ""; numbers and other values: str()), at most `limit` characters."""
    text = "" if value is None else value if isinstance(value, str) else str(value)
    return text if limit is None else text[:limit]


def excerpt(value: Any, length: int = _EXCERPT) -> str:
    """A short, single-value excerpt of a trace string for finding details."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= length else text[:length] + "…"


# Config field types of detectors' regular expressions: a list, or a map of named patterns (the
# names say in a finding's details which one matched).
Patterns = Annotated[list[str], AfterValidator(_checked_list)]
NamedPatterns = Annotated[dict[str, str], AfterValidator(_checked_map)]


@dataclass(frozen=True, slots=True)
class Finding:
    """One failure signal in one trace. `span_id` is the evidence (None when the whole trace is the
    evidence, e.g. no final answer); `tool` names the tool concerned, if any (breakdowns by tool);
    `details` is a small JSON-able dict saying what matched (pattern, arguments, counts, ...)."""

    signal: str
    severity: Severity
    span_id: str | None
    details: dict[str, Any] = field(default_factory=dict)
    tool: str | None = None

    @classmethod
    def at(cls, signal: str, severity: Severity, span: SpanView | None, tool: str | None = None,
           **details: Any) -> Finding:
        return cls(signal, severity, span.span_id if span is not None else None, details, tool)


@dataclass
class DetectContext:
    """Read-only knowledge beyond the trace itself.

    `declared_tools`: tool definitions configured for a service or agent (name -> OpenAI-style
    definition with its JSON schema), used when the trace does not carry the tools offered to the
    model. `baselines`: trailing statistics for outlier detectors, keyed by (signal, service, agent),
    each the sorted recent values (the signal stage maintains them).
    """

    declared_tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)


class Detector(Protocol):
    name: str

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]: ...
