"""`repeated_tool_call`: the same tool called again with the same arguments in one trace (a redundant
call: its answer was already there).

**Rule.** Over the trace's tool calls in start-time order (`_tools.tool_calls`: TOOL spans, and
requested calls no TOOL span ran), a call's key is its tool name and its *normalized arguments*: JSON
arguments parsed and re-serialized compactly with sorted keys (so key order and whitespace do not
matter; `1` and `1.0` stay different), empty or blank arguments as `{}`, other text stripped of
leading and trailing whitespace, missing arguments as the empty text. Every call whose key was seen
before in the trace is one `repeated_tool_call` finding (severity `warning`) at that call's span (the
2nd, 3rd, ... occurrence each give one), `tool` = the tool name, details: `first_span_id` (the first
occurrence), `occurrence` (2 for the first repeat), `calls_between` (tool calls since the previous
occurrence) and an `arguments` excerpt. Tools in `ignore_tools` are skipped (idempotent reads you
are happy to see repeated).

**Knobs:** `enabled`, `ignore_tools` ([]), `max_findings` (100 per trace).

**Example.** TOOL spans `search_direct_flight {"origin": "JFK", "date": "2024-05-20"}`, `get_user_details
{"user_id": "u1"}`, `search_direct_flight {"date":"2024-05-20","origin":"JFK"}`: one finding at the
third span, `tool = "search_direct_flight"`, `details = {"first_span_id": <first span>, "occurrence": 2,
"calls_between": 1, "arguments": "{\\"date\\":\\"2024-05-20\\",\\"origin\\":\\"JFK\\"}"}`.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import Field

from halod.analysis.signals._tools import tool_calls
from halod.analysis.signals.base import NOT_JSON, DetectContext, Finding, excerpt, parse_json
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

SIGNAL = "repeated_tool_call"


class Config(StrictModel):
    """Knobs of the `repeated_tool_call` detector."""

    enabled: bool = Field(default=True, description="Run this detector.")
    ignore_tools: list[str] = Field(
        default_factory=list, description="Tool names whose repeats are not reported (idempotent reads)."
    )
    max_findings: int = Field(default=100, ge=1, description="Most findings per trace.")


def normalized_arguments(arguments: Any) -> str:
    """Arguments as a comparison key: JSON re-serialized with sorted keys, else stripped text."""
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        text = arguments.strip()
        if not text:
            return "{}"
        value = parse_json(text)
        if value is NOT_JSON:
            return text
    else:
        value = arguments
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. integers beyond 64 bits
        return arguments.strip() if isinstance(arguments, str) else repr(value)


class Detector:
    """`repeated_tool_call` (module docstring)."""

    name = SIGNAL

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._ignore = frozenset(self.config.ignore_tools)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        seen: dict[tuple[str, str], tuple[str, int, int]] = {}  # key -> (first span, count, last position)
        findings: list[Finding] = []
        for position, call in enumerate(tool_calls(trace)):
            if call.name in self._ignore:
                continue
            key = (call.name, normalized_arguments(call.arguments))
            previous = seen.get(key)
            if previous is None:
                seen[key] = (call.span.span_id, 1, position)
                continue
            first, count, last = previous
            seen[key] = (first, count + 1, position)
            if len(findings) < self.config.max_findings:
                findings.append(Finding.at(
                    SIGNAL, "warning", call.span, tool=call.name, first_span_id=first, occurrence=count + 1,
                    calls_between=position - last - 1, arguments=excerpt(key[1]),
                ))
        return findings
