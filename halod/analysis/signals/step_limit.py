"""`step_limit`: the run was cut off by a turn / step / iteration / recursion limit.

Rule: one finding per trace (severity `error`), at the first place (in this order) that says so:

1. **errors**: a span with ERROR status whose status message, or any span's `exception` event
   (`exception.type`, `exception.message`), or `error.type` attribute, matches `patterns`
   (`details.source = "error"`);
2. **outputs**: the first `scan_chars` (300) characters of the output of the root, AGENT or CHAIN
   spans (LangChain's AgentExecutor returns "Agent stopped due to iteration limit or time limit."
   as its output) match `patterns` (`details.source = "output"`); LLM and TOOL outputs are not
   read (a model or a tool may talk about limits). As a cheap pre-check, an output is searched only
   when it contains one of `output_keywords` (default max, limit, recursion, iteration: every default
   pattern contains one);
3. **outcome**: a root attribute named in `outcome_keys` (e.g. `outcome.ended_by`,
   `outcome.stop_reason`) has a value matching `patterns` or `outcome_values`
   (`details.source = "outcome"`);
4. **count**: `max_llm_calls` is set, the trace made at least that many LLM calls, and it ends on a
   tool call (the last LLM call requested tools or TOOL spans follow it; see `no_final_answer`):
   the agent loop ran out of steps (`details.source = "llm_calls"`).

`details = {source, pattern, text}` (text: the first 200 characters of what matched) or, for the
count rule, `{source, llm_calls, max_llm_calls}`.

Default patterns (case-insensitive): MaxTurnsExceeded (OpenAI Agents SDK), max turns / steps /
iterations exceeded or reached, "maximum number of steps", GraphRecursionError and "Recursion limit"
(LangGraph), `max_iterations`, `max_turns`, `max_steps`, "Agent stopped due to iteration limit" / "max
iterations" (LangChain), iteration / step / turn limit, MaxStepsError / AgentMaxStepsError (smolagents),
"Reached max iterations" (LlamaIndex), `request_limit` (Pydantic AI's UsageLimitExceeded). Add
framework-specific ones with `extra_patterns`.

tau-bench records no explicit limit: a run that hits its 30 steps just stops, and `info.source`
(our `outcome.ended_by`) names the last tool called. Set `max_llm_calls: 30` for such runs (the
rule 4 above); it is off by default because the limit is a property of the agent, not of the trace.

Knobs: `enabled`, `patterns`, `extra_patterns`, `outcome_keys`, `outcome_values`, `output_keywords`,
`scan_chars`, `max_chars`, `max_llm_calls`.

Example: an AGENT root with an `exception` event `{exception.type: "MaxTurnsExceeded",
exception.message: "Max turns (10) exceeded"}` -> one finding `step_limit` at the root with
`details["source"] == "error"`.
"""

from __future__ import annotations

import re

from pydantic import Field

from halod.analysis.signals._outputs import ending, exceptions
from halod.analysis.signals.base import DetectContext, Finding, Patterns, as_text
from halod.analysis.trace import SpanView, TraceSpans
from halod.security import StrictModel

_LIMIT = r"(?:turns?|steps?|iterations?)"
DEFAULT_PATTERNS = [
    r"MaxTurnsExceeded",
    r"\bmax(?:imum)?[ _-]?(?:number[ _-]of[ _-])?" + _LIMIT + r"\b[^.\n]{0,40}?\b(?:exceeded|reached|hit)\b",
    r"\b(?:exceeded|reached|hit)\b[^.\n]{0,40}?\bmax(?:imum)?[ _-]?(?:number[ _-]of[ _-])?" + _LIMIT + r"\b",
    r"\bmaximum number of " + _LIMIT + r"\b",
    r"GraphRecursionError",
    r"\brecursion[ _-]limit\b",
    r"\bmax_iterations\b",
    r"\bmax_turns\b",
    r"\bmax_steps\b",
    r"\bAgent stopped due to (?:max(?:imum)? )?iterations?\b",
    r"\b(?:iteration|step|turn)[ _-]limit\b",
    r"\b(?:Agent)?MaxStepsError\b",
    r"\bMaxIterations(?:Exceeded|Error)\b",
    r"\brequest_limit\b",
]


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    patterns: Patterns = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        description="Regexes (case-insensitive) of step-limit errors and outputs.",
    )
    extra_patterns: Patterns = Field(default_factory=list, description="More regexes, added to `patterns`.")
    outcome_keys: list[str] = Field(
        default_factory=lambda: ["outcome.ended_by", "outcome.stop_reason", "outcome.termination_reason",
                                 "outcome.reason", "stop_reason", "termination_reason"],
        description="Root attributes saying why the run ended.",
    )
    outcome_values: list[str] = Field(
        default_factory=lambda: ["max_turns", "max_steps", "max_iterations", "step_limit", "turn_limit",
                                 "iteration_limit", "recursion_limit"],
        description="Values of those attributes (exact, case-insensitive) that mean a limit ended the run.",
    )
    output_keywords: list[str] = Field(
        default_factory=lambda: ["max", "limit", "recursion", "iteration"],
        description="Outputs are searched only when they contain one of these (case-insensitive substrings; a "
        "cheap pre-check: every default pattern contains one). Add one for an extra pattern that contains none; "
        "[] searches every output.",
    )
    scan_chars: int = Field(default=300, ge=1, le=100_000, description="Characters of each output searched.")
    max_chars: int = Field(default=2000, ge=1, le=100_000, description="Characters of each error text searched.")
    max_llm_calls: int | None = Field(
        default=None, ge=1,
        description="The agent's step limit, when known: a trace with at least this many LLM calls that ends "
        "on a tool call was cut off. None: rule off.",
    )



class Detector:
    name = "step_limit"

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        patterns = [*self.config.patterns, *self.config.extra_patterns]
        # One by one: faster than a single alternation of them all (measured), and names the match.
        self._patterns = [re.compile(p, re.IGNORECASE) for p in patterns]
        self._values = {value.lower() for value in self.config.outcome_values}
        self._keywords = [keyword.lower() for keyword in self.config.output_keywords]

    def _match(self, text: str) -> str | None:
        for pattern in self._patterns:
            if pattern.search(text):
                return pattern.pattern
        return None

    def _found(self, span: SpanView | None, source: str, pattern: str, text: str) -> list[Finding]:
        return [Finding.at(self.name, "error", span, source=source, pattern=pattern, text=text[:200])]

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        config = self.config
        if not config.enabled:
            return []
        for span in trace.spans:
            for text in self._error_texts(span):
                pattern = self._match(text)
                if pattern is not None:
                    return self._found(span, "error", pattern, text)
        root = trace.root
        for span in trace.spans:
            if span is root or span.semantic_kind in ("AGENT", "CHAIN"):
                text = as_text(span.output_text, config.scan_chars)
                if self._keywords and not any(keyword in text.lower() for keyword in self._keywords):
                    continue
                pattern = self._match(text)
                if pattern is not None:
                    return self._found(span, "output", pattern, text)
        if root is not None:
            attrs = root.attrs
            for key in config.outcome_keys:
                if attrs.get(key) in (None, ""):
                    continue
                text = as_text(attrs[key], config.max_chars)
                pattern = "outcome value" if text.lower() in self._values else self._match(text)
                if pattern is not None:
                    return self._found(root, "outcome", pattern, f"{key}={text}")
        if config.max_llm_calls is not None and len(trace.llm_spans) >= config.max_llm_calls:
            end = ending(trace)
            if end is not None and end.tool_names:
                return [Finding.at(self.name, "error", end.last_llm, source="llm_calls",
                                   llm_calls=len(trace.llm_spans), max_llm_calls=config.max_llm_calls)]
        return []

    def _error_texts(self, span: SpanView) -> list[str]:
        limit = self.config.max_chars
        texts = []
        if span.is_error:
            texts.append(as_text(span.status_message, limit))
        for kind, message in exceptions(span):
            texts += [kind[:limit], message[:limit]]
        if texts or span.is_error:  # OTel's error.type accompanies a failure
            texts.append(as_text(span.get("error.type"), limit))
        return [text for text in texts if text]
