"""`escalation`: the agent handed the run to a human or gave up.

Rule (severity `warning`), first of these that finds anything:

1. **tool**: every TOOL span whose tool name (`_outputs.tool_name_of`) matches `tool_names`
   (shell-style patterns, case-insensitive) is one finding at that span, `tool` = its name,
   `details = {via: "tool"}`;
2. **requested**: when no such TOOL span exists (tool executions not traced), every matching tool
   call requested by an LLM span (`_outputs.model_output`) is one finding at that LLM
   span, `details = {via: "tool_call"}`;
3. **text**: when neither exists, the first LLM output whose first `scan_chars` characters match
   `phrases` (regexes, case-sensitive like `refusal`'s) is one finding at that span, `details = {via: "text",
   pattern, text, count}` (`count`: LLM outputs that matched). The default phrases are conservative:
   the agent says it *is* handing over ("I will transfer you to a human agent", "let me connect you
   with a live representative"); offers ("Would you like me to transfer you to a human agent?") and
   advice ("you may contact a human agent") do not count.

So each hand-off call is counted once (tau-bench airline: one finding per
`transfer_to_human_agents` call), and a hand-off announced in text is counted once per trace,
only when no hand-off tool appears.

Knobs: `enabled`, `tool_names`, `phrases`, `scan_chars`.

Example: a TOOL span `transfer_to_human_agents` with arguments `{"summary": "user wants a refund"}`
-> one finding `escalation` at that span, `tool="transfer_to_human_agents"`,
`details={"via": "tool"}`.
"""

from __future__ import annotations

import re

from pydantic import Field

from halod.analysis.signals._outputs import llm_text, requested_tools, tool_name_of
from halod.analysis.signals.base import DetectContext, Finding, Patterns, glob_matcher
from halod.analysis.trace import SpanView, TraceSpans
from halod.security import StrictModel

DEFAULT_TOOL_NAMES = [
    "transfer_to_human_agents", "transfer_to_human*", "transfer_to_live_agent", "escalate*", "handoff_to_human*",
    "hand_off_to_human*", "human_handoff", "ask_human*", "request_human*", "give_up",
]
# Case-sensitive and literal-first, like refusal's patterns (fast on long outputs).
_HANDOFF = (r"(?:now )?(?:transfer|transferring|connect|connecting|escalate|escalating|hand over|handing over|"
            r"hand off|handing off) (?:you|your (?:call|case|request|issue|chat|conversation)|this(?: (?:case|request|"
            r"issue|conversation))?) (?:over )?(?:to|with) (?:a|an|our|the) (?:human|live|real)\b")
DEFAULT_PHRASES = [
    r"I(?<!\wI)(?:'ll| will| am going to|'m going to| am| am now|'m|'m now|'ll need to| will need to|'ll now|"
    r" will now) " + _HANDOFF,
    r"et me(?<=\b[Ll]et me) " + _HANDOFF,
    r"ou(?<=\b[Yy]ou)(?:'re| are) (?:now )?being (?:transferred|connected|escalated) to (?:a|an|our|the) "
    r"(?:human|live|real)\b",
]
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    tool_names: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TOOL_NAMES),
        description="Hand-off / give-up tools (shell-style patterns, case-insensitive).",
    )
    phrases: Patterns = Field(
        default_factory=lambda: list(DEFAULT_PHRASES),
        description="Regexes of LLM outputs announcing a hand-off (case-sensitive: write (?i) to ignore case); "
        "[] turns the text rule off.",
    )
    scan_chars: int = Field(default=2000, ge=1, le=100_000, description="Characters of each LLM output searched.")



class Detector:
    name = "escalation"

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._phrases = [re.compile(p) for p in self.config.phrases]
        self._tools = glob_matcher(self.config.tool_names)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        config = self.config
        if not config.enabled:
            return []
        findings = []
        for span in trace.tool_spans:
            name = tool_name_of(span)
            if name is not None and self._tools.match(name):
                findings.append(Finding.at(self.name, "warning", span, tool=name, via="tool"))
        if findings:
            return findings
        for span in trace.llm_spans:
            for name in requested_tools(span):
                if self._tools.match(name):
                    findings.append(Finding.at(self.name, "warning", span, tool=name, via="tool_call"))
        if findings or not self._phrases:
            return findings
        first: tuple[SpanView, str, str] | None = None
        count = 0
        for span in trace.llm_spans:
            text = llm_text(span)[: config.scan_chars].translate(_APOSTROPHES)
            if not text:
                continue
            for pattern in self._phrases:
                match = pattern.search(text)
                if match is not None:
                    count += 1
                    first = first or (span, pattern.pattern, match.group(0)[:200])
                    break
        if first is None:
            return []
        span, pattern_text, matched = first
        return [Finding.at(self.name, "warning", span, via="text", pattern=pattern_text, text=matched, count=count)]
