"""`refusal` and `refusal_loop`: the model declined.

Rule: for every LLM span (`semantic_kind == "LLM"`, in start order), take the text the model wrote
(`_outputs.model_output`: message contents; tool calls are not text), keep its first
`scan_chars` characters (default 300, so a refusal quoted deep inside a long answer does not count),
turn typographic apostrophes into `'` and search it with `patterns` (regexes, case-sensitive: the
defaults match how models write, "I'm sorry, but I can't", "Unfortunately, I cannot"; prefix a
pattern with `(?i)` to ignore case, at some cost in speed).
A match, or a non-empty structured refusal (`llm.output_messages.N.message.refusal`, OpenAI's
`refusal` field), is one `refusal` finding (severity `warning`) at that span, `details = {pattern,
text}` (`pattern` is the matching default/configured regex, or "refusal field"; `text` the
first 200 characters scanned).

When a trace has `loop_min` (default 2) or more refusals, one `refusal_loop` finding (severity
`error`) is added at the last refusing span, `details = {count, span_ids}` (up to 20 ids).

The defaults are general declines, not only safety refusals: a customer-service agent that
answers "I'm sorry, but I cannot cancel this reservation" refused, even if its policy says it
must (tau-bench airline agents do this often, so `refusal` fires on a large share of those runs;
raise the bar by editing `patterns`).

Knobs: `enabled`, `patterns`, `scan_chars`, `loop_min`.

Example: an LLM span whose output is "I'm sorry, but I can't help with that request." and a later
LLM span answering "As an AI, I cannot browse the web." -> two `refusal` findings (one per span)
and one `refusal_loop` at the second span with `details={"count": 2, "span_ids": [first, second]}`.
"""

from __future__ import annotations

import re

from pydantic import Field

from halod.analysis.signals._outputs import llm_text, refusal_text
from halod.analysis.signals.base import DetectContext, Finding, Patterns
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

# Case-sensitive, and each starts with a literal (a word-start check follows it as a lookbehind):
# Python's regex engine then skips ahead to candidate positions, about 0.3 us per pattern on 300
# characters instead of 5 us with a leading \b or IGNORECASE.
_I = r"I(?<!\wI)"
_CANT = r"(?:can't|cannot|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to)"
DEFAULT_PATTERNS = [
    _I + r"(?:'m| am) sorry,? but I " + _CANT,
    _I + r" (?:can't|cannot|can not) (?:help|assist)\b",
    _I + r"(?:'m| am) (?:unable|not able) to\b",
    _I + r" won't be able to\b",
    _I + r" (?:must|have to|need to) (?:respectfully )?decline\b",
    _I + r"(?:'m| am) not (?:allowed|permitted|authorized) to\b",
    _I + r" (?:can't|cannot|can not|won't) (?:comply|fulfill|do that|provide that)\b",
    _I + r"'m afraid,? I " + _CANT,
    r"nfortunately(?<=\b[Uu]nfortunately),? I " + _CANT,
    r"As an AI\b",
    r"as an AI\b",
]
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    patterns: Patterns = Field(
        default_factory=lambda: list(DEFAULT_PATTERNS),
        description="Refusal regexes, searched in the head of each LLM output (case-sensitive: write (?i) for "
        "case-insensitive; a pattern starting with a literal is much faster).",
    )
    scan_chars: int = Field(
        default=300, ge=1, le=100_000,
        description="Only the first N characters of an output are searched (a refusal opens an answer).",
    )
    loop_min: int = Field(default=2, ge=2, description="Refusals in one trace that make a refusal_loop.")



class Detector:
    name = "refusal"
    names = ("refusal", "refusal_loop")

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._compiled = [re.compile(pattern) for pattern in self.config.patterns]

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        findings: list[Finding] = []
        for span in trace.llm_spans:
            matched = self._match(llm_text(span)[: self.config.scan_chars].translate(_APOSTROPHES))
            if matched is None:
                refusal = refusal_text(span)
                if refusal:
                    matched = ("refusal field", refusal)
            if matched is not None:
                findings.append(Finding.at("refusal", "warning", span, pattern=matched[0], text=matched[1][:200]))
        if len(findings) >= self.config.loop_min:
            last = findings[-1]
            findings.append(Finding("refusal_loop", "error", last.span_id,
                                    {"count": len(findings), "span_ids": [f.span_id for f in findings[:20]]}))
        return findings

    def _match(self, head: str) -> tuple[str, str] | None:
        if not head:
            return None
        for pattern in self._compiled:
            if pattern.search(head):
                return pattern.pattern, head
        return None
