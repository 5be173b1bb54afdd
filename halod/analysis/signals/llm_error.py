"""`llm_error`: an LLM call failed, classified.

Rule: a span of a kind in `span_kinds` (default LLM) is an error when any of:
- its status is ERROR;
- it has an `exception` event;
- it has an `error.type` attribute (OTel's error convention);
- its finish reason (`gen_ai.response.finish_reasons`, `llm.output_messages.N.message.finish_reason`,
  `llm.finish_reason`) is `content_filter` (the provider withheld the output).

Each such span is one finding, severity `error`, `details = {class, message, exception_type}`.
`class` is the first class of `classes` (in order) with a regex matching the error text: the status
message, every exception event's `exception.type` and `exception.message`, `error.type`,
`error.message`, the HTTP status code (`http.response.status_code` / `http.status_code`, written
as `HTTP <code>`) and the finish reason, joined, each capped at `max_chars` (default 2000). No
class matches: `other`. Default classes (case-insensitive):

- `rate_limit`: 429, rate limit, RateLimitError, too many requests, quota, RESOURCE_EXHAUSTED;
- `context_length`: context length / window, maximum context, too many tokens,
  context_length_exceeded, prompt (input) is too long, reduce the length;
- `timeout`: timeout, timed out, DeadlineExceeded / DEADLINE_EXCEEDED, HTTP 408 / 504;
- `content_filter`: content filter / content_filter, content management policy, content policy,
  safety, ResponsibleAIPolicyViolation.

`message` is the first 300 characters of the error text.

Knobs: `enabled`, `span_kinds`, `classes` (ordered map class -> regexes), `max_chars`.

Example: an LLM span with status ERROR, status message "Error code: 429 - Rate limit reached for
gpt-4o" -> one finding `llm_error` at that span with `details["class"] == "rate_limit"`.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from halod.analysis.signals._outputs import exceptions
from halod.analysis.signals.base import DetectContext, Finding, as_text, check_patterns, compile_any
from halod.analysis.trace import SpanView, TraceSpans
from halod.security import StrictModel

DEFAULT_CLASSES: dict[str, list[str]] = {
    "rate_limit": [r"\b429\b", r"rate[ _-]?limit", r"RateLimitError", r"too many requests", r"\bquota\b",
                   r"RESOURCE_EXHAUSTED"],
    "context_length": [r"context[ _-]?(?:length|window)", r"maximum context", r"too many tokens",
                       r"context_length_exceeded", r"prompt is too long", r"input is too long",
                       r"reduce the length"],
    "timeout": [r"time[ _-]?out", r"timed out", r"deadline[ _-]?exceeded", r"HTTP 408\b", r"HTTP 504\b"],
    "content_filter": [r"content[ _-]?filter", r"content management policy", r"content[ _-]policy", r"\bsafety\b",
                       r"ResponsibleAIPolicyViolation"],
}
_FINISH_KEYS = ("gen_ai.response.finish_reasons", "llm.finish_reason", "llm.output_messages.0.message.finish_reason")
_HTTP_KEYS = ("http.response.status_code", "http.status_code")


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    span_kinds: list[str] = Field(default_factory=lambda: ["LLM"], description="Semantic kinds of LLM calls.")
    classes: dict[str, list[str]] = Field(
        default_factory=lambda: {name: list(patterns) for name, patterns in DEFAULT_CLASSES.items()},
        description="Error classes in order, each with regexes (case-insensitive) matched against the error "
        "text; the first class that matches wins, none: `other`.",
    )
    max_chars: int = Field(default=2000, ge=1, le=100_000, description="Characters kept of each error text.")

    @field_validator("classes")
    @classmethod
    def _check_classes(cls, classes: dict[str, list[str]]) -> dict[str, list[str]]:
        for patterns in classes.values():
            check_patterns(patterns)
        return classes


class Detector:
    name = "llm_error"

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._kinds = frozenset(self.config.span_kinds)
        self._classes = [(name, compile_any(patterns)) for name, patterns in self.config.classes.items()]

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        findings = []
        for span in trace.spans:
            if span.semantic_kind not in self._kinds:
                continue
            error = self._error(span)
            if error is None:
                continue
            texts, exception_type = error
            text = "\n".join(t for t in texts if t)
            found = next((name for name, pattern in self._classes if pattern.search(text)), "other")
            findings.append(Finding.at(self.name, "error", span, **{
                "class": found, "message": text[:300], "exception_type": exception_type,
            }))
        return findings

    def _error(self, span: SpanView) -> tuple[list[str], str | None] | None:
        """The error texts of a failed span (and its first exception type), None when it did not fail."""
        limit = self.config.max_chars
        failed = span.is_error
        texts = [as_text(span.status_message, limit)]
        exception_type = None
        for kind, message in exceptions(span):
            failed = True
            exception_type = exception_type or kind[:limit] or None
            texts += [kind[:limit], message[:limit]]
        attrs = span.attrs
        error_type = attrs.get("error.type")
        if error_type not in (None, ""):
            failed = True
            exception_type = exception_type or as_text(error_type, limit)
            texts += [as_text(error_type, limit), as_text(attrs.get("error.message"), limit)]
        for key in _FINISH_KEYS:
            reason = as_text(attrs.get(key), limit)
            if "content_filter" in reason:
                failed = True
                texts.append(f"finish_reason {reason}")
                break
        if failed:
            for key in _HTTP_KEYS:
                code = attrs.get(key)
                if code not in (None, ""):
                    texts.append(f"HTTP {as_text(code, 16)}")
                    break
        return (texts, exception_type) if failed else None
