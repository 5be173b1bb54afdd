"""`unknown_tool`: a hallucinated tool call — the model asked for (or the agent ran) a tool that was
never offered to it, or the tool runtime answered that no such tool exists.

The tool calls and their declared tool sets are read as `_tools` describes (`tool_calls`,
`declarations`); no declared set found for a call: it is not judged by the `undeclared` rule.

**Rule.** One `unknown_tool` finding (severity `error`) per call when
- `undeclared`: a declared set is known for the call and the call's name is not in it; or
- `result`: the call ran (TOOL span) and the first `scan_chars` characters of its result
  (`output_text`) match one of `result_patterns` (case-insensitive `re.search`), e.g. `unknown tool`,
  `no such tool`, `X is not a valid tool`, `tool X not found`, `Action 'X' don't exist`; only heads
  where one of `result_keywords` starts a word (lower-cased: `action` in "no action", not in
  "transaction") are searched, a pre-filter that keeps the regexes off ordinary results.
Tools named in `ignore_tools` are never reported. The finding points at the TOOL span when the call
ran, else at the LLM span that requested it; `tool` is the requested name; details give the rules
that matched, where the declaration came from, its size, close declared names (`did_you_mean`), the
pattern name and a result excerpt.

**Knobs:** `enabled`, `use_agent_tools` (True), `result_patterns` (name -> regex), `scan_chars`
(1024), `result_keywords` (`tool`, `action`, `function`), `ignore_tools` ([]).

**Example.** An LLM span declares `llm.tools.0.tool.json_schema =
{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}` and requests
`tool_calls.0.tool_call.function.name = "get_forecast"` with id `c1`; the TOOL span `get_forecast`
(`tool_call.id = c1`) answers `Error: unknown tool get_forecast`. One finding at the TOOL span:
`tool = "get_forecast"`, `details = {"rules": ["undeclared", "result"], "declared_from": "llm.tools",
"declared_count": 1, "did_you_mean": ["get_weather"], "pattern": "unknown_tool", ...}`.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import Field

from halod.analysis.signals._tools import declarations, tool_calls
from halod.analysis.signals.base import (
    MAX_SCAN_CHARS,
    DetectContext,
    Finding,
    NamedPatterns,
    compile_named,
    excerpt,
    first_match,
)
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

SIGNAL = "unknown_tool"

# --- the detector ------------------------------------------------------------------------------

DEFAULT_RESULT_PATTERNS: dict[str, str] = {
    "unknown_tool": r"\bunknown (?:tool|function)\b",
    "no_such_tool": r"\bno such tool\b|\bno tool (?:named|called|with (?:the )?name)\b",
    "not_a_valid_tool": r"\bis not a valid tool\b|\binvalid tool(?: name)?\b",
    "tool_not_found": r"\btool\s+['\"`]?[\w.\-]+['\"`]?\s+(?:was\s+)?(?:not found|does not exist|doesn't exist|"
                      r"is not (?:available|registered|defined|supported)|not (?:available|registered|defined))",
    "tool_not_found_plain": r"\btool not found\b",
    "action_does_not_exist": r"\baction\s+['\"`][^'\"`\n]{1,100}['\"`]\s+(?:don't|doesn't|does not) exist",
}


class Config(StrictModel):
    """Knobs of the `unknown_tool` detector."""

    enabled: bool = Field(default=True, description="Run this detector.")
    use_agent_tools: bool = Field(
        default=True,
        description="Take the `agent.tools` name list of the nearest ancestor span as the declared set when "
        "the LLM span declares no tools.",
    )
    result_patterns: NamedPatterns = Field(
        default_factory=lambda: dict(DEFAULT_RESULT_PATTERNS),
        description="Name -> regular expression (case-insensitive, searched in the head of a tool result) "
        "for results saying the tool does not exist.",
    )
    scan_chars: int = Field(default=1024, ge=1, le=MAX_SCAN_CHARS,
                            description="How many leading characters of a tool result are searched.")
    result_keywords: list[str] = Field(
        default_factory=lambda: ["tool", "action", "function"],
        description="Cheap pre-filter: a result is searched only when its lower-cased head has one of these "
        "words at the start of a word (empty: always search). Keep it in step with result_patterns.",
    )
    ignore_tools: list[str] = Field(
        default_factory=list, description="Tool names never reported (framework-internal tools)."
    )


def _word_start(text: str, word: str) -> bool:
    """Whether `word` occurs in `text` at the start of a word (`action` in "no action", not in "transaction")."""
    start = text.find(word)
    while start != -1:
        if start == 0 or not (text[start - 1].isalnum() or text[start - 1] == "_"):
            return True
        start = text.find(word, start + 1)
    return False


class Detector:
    """`unknown_tool` (module docstring)."""

    name = SIGNAL

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._patterns = compile_named(self.config.result_patterns)
        self._ignore = frozenset(self.config.ignore_tools)
        self._keywords = [word.lower() for word in self.config.result_keywords]

    def _may_match(self, head: str) -> bool:
        if not self._keywords:
            return True
        lowered = head.lower()
        return any(_word_start(lowered, word) for word in self._keywords)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        declared_sets = declarations(trace, context, self.config.use_agent_tools)
        findings: list[Finding] = []
        for call in tool_calls(trace):
            if call.name in self._ignore:
                continue
            rules: list[str] = []
            details: dict[str, Any] = {}
            declared = declared_sets.for_call(call)
            if declared is not None and call.name not in declared.tools:
                rules.append("undeclared")
                details["declared_from"] = declared.source
                details["declared_count"] = len(declared.tools)
                details["did_you_mean"] = difflib.get_close_matches(call.name, list(declared.tools), n=3)
            if call.executed:
                output = call.span.output_text
                head = output[: self.config.scan_chars] if isinstance(output, str) else ""
                if head and self._may_match(head):
                    pattern = first_match(self._patterns, head)
                    if pattern is not None:
                        rules.append("result")
                        details["pattern"] = pattern
                        details["result"] = excerpt(head)
            if rules:
                findings.append(Finding.at(SIGNAL, "error", call.span, tool=call.name, rules=rules, **details))
        return findings
