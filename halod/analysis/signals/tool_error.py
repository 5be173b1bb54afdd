"""`tool_error`: a tool call that failed.

**Rule.** One `tool_error` finding (severity `error`) per TOOL span (`semantic_kind = TOOL`) for which
at least one of these holds, each rule named in `details.rules` (in this order):
- `status`: the span's status is ERROR (when `error_status`);
- `error_type`: the span carries a non-empty `error.type` attribute (OTel GenAI sets it on a failed
  `execute_tool`), when `error_type_attribute`;
- a pattern of `patterns` (name -> regex, case-insensitive, `re.search` on the first `scan_chars`
  characters of the result `output_text`) matches. The defaults are anchored at the start of the
  result (`\\A`) so that ordinary text that merely mentions an error is not flagged:
  `error_prefix` (`Error: ...`, `ERROR - ...`, `[error] ...`, `Exception: ...`, `Error code: 429`),
  `error_occurred` (`An error occurred while ...`, `Error executing tool ...`; not `No error ...`),
  `traceback` (`Traceback (most recent call last)`), `exception_name` (`ValueError: ...`,
  `httpx.ConnectError(...)`: a capitalised dotted name ending in Error/Exception/Fault, then `:`,
  `(` or the end), `failed_to` (`Failed to ...`, `Failed: ...`, `Unable to ...`, `Could not ...`,
  `Cannot ...`), `http_status` (`HTTP/1.1 404 ...`, `404 Client Error ...`, `HTTP Error 500`,
  `Status code: 503`), `denied` (`Permission denied`, `Access denied`, `Unauthorized`, `Forbidden`),
  `timed_out` (`Timed out ...`, `Request timed out`);
- `json_error`: the result is a JSON object (at most `json_max_chars` characters) with a key of
  `json_error_keys` whose value is truthy (`{"error": "not found"}`; not `{"error": null}` or
  `{"errors": []}`), or a key of `json_failure_flags` holding one of its listed values (`{"success":
  false}`, `{"ok": false}`, MCP's `{"isError": true}`; compared with JSON types, so `0` is not `false`).

`tool` is the tool name (`tool_name`, else the span name); details hold `rules`, `rule` (the first),
`pattern` (the first pattern that matched, if any), the status message and a result excerpt.

**Knobs:** `enabled`, `error_status` (True), `error_type_attribute` (True), `patterns`,
`scan_chars` (2048), `json_error_keys` (`error`, `errors`, `exception`, `error_message`,
`errorMessage`), `json_failure_flags` (`success: [false]`, `ok: [false]`, `isError: [true]`,
`is_error: [true]`), `json_max_chars` (65536), `ignore_tools` ([]).

**Example.** A TOOL span `book_reservation` with status UNSET whose result is
`Error: not enough seats on flight HAT290` gives one finding at that span: `tool =
"book_reservation"`, `details = {"rule": "error_prefix", "rules": ["error_prefix"], "pattern":
"error_prefix", "result": "Error: not enough seats on flight HAT290"}`. A result `No error occurred;
3 rows written` or `{"error": null, "rows": 3}` gives none.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from halod.analysis.signals._outputs import tool_name_of
from halod.analysis.signals.base import (
    MAX_SCAN_CHARS,
    NOT_JSON,
    DetectContext,
    Finding,
    NamedPatterns,
    compile_named,
    excerpt,
    first_match,
    parse_json,
)
from halod.analysis.trace import SpanView, TraceSpans
from halod.security import StrictModel

SIGNAL = "tool_error"

DEFAULT_PATTERNS: dict[str, str] = {
    "error_prefix": r"\A\s*(?:\[\s*(?:error|exception|fatal)\s*\]|\**(?:fatal\s+)?(?:error|exception)(?:\s+code)?\**"
                    r"\s*(?:[:!\-\u2013(#]|\d|\Z))",
    "error_occurred": r"\A\s*(?!(?:no|without|zero)\b)(?:an?\s+)?(?:\w+\s+){0,2}?error\s+(?:occurred|occured|"
                      r"has occurred|was raised|happened|while|when|during|executing|running|calling|invoking|"
                      r"in tool)\b",
    "traceback": r"\A\s*Traceback \(most recent call last\)",
    "exception_name": r"\A\s*(?-i:(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Fault))\s*(?::|\(|\Z)",
    "failed_to": r"\A\W{0,3}(?:failed(?:\s+to\b|\s*[:!]|\s+with\b|\s+due\b|\s+because\b)|unable to\b|could not\b|"
                 r"couldn't\b|cannot\b|can't\b)",
    "http_status": r"\A\s*(?:HTTP/\d(?:\.\d)?\s+[45]\d\d\b|(?:HTTP\s+)?(?:status(?:\s+code)?|response code)\s*[:=]?\s*"
                   r"[45]\d\d\b|[45]\d\d\s+(?:Client|Server)\s+Error\b|HTTP\s+(?:Error\s+)?[45]\d\d\b)",
    "denied": r"\A\W{0,3}(?:permission denied|access denied|unauthori[sz]ed|forbidden)\b",
    "timed_out": r"\A\W{0,3}(?:(?:the\s+)?(?:request|operation|connection|call|tool)\s+)?timed out\b",
}


class Config(StrictModel):
    """Knobs of the `tool_error` detector."""

    enabled: bool = Field(default=True, description="Run this detector.")
    error_status: bool = Field(default=True, description="A TOOL span with ERROR status is a tool error.")
    error_type_attribute: bool = Field(
        default=True, description="A TOOL span with a non-empty `error.type` attribute is a tool error."
    )
    patterns: NamedPatterns = Field(
        default_factory=lambda: dict(DEFAULT_PATTERNS),
        description="Name -> regular expression (case-insensitive, searched in the head of the result) for "
        "results that look like errors. Anchor them (\\A) to avoid flagging text that mentions an error.",
    )
    scan_chars: int = Field(default=2048, ge=1, le=MAX_SCAN_CHARS,
                            description="How many leading characters of a result the patterns see.")
    json_error_keys: list[str] = Field(
        default_factory=lambda: ["error", "errors", "exception", "error_message", "errorMessage"],
        description="A JSON-object result with one of these keys holding a truthy value is an error.",
    )
    json_failure_flags: dict[str, list[Any]] = Field(
        default_factory=lambda: {"success": [False], "ok": [False], "isError": [True], "is_error": [True]},
        description="A JSON-object result whose key holds one of the listed values (same JSON type) is an error.",
    )
    json_max_chars: int = Field(default=MAX_SCAN_CHARS, ge=0, le=MAX_SCAN_CHARS,
                                description="Longest result parsed as JSON for the json_error rule.")
    ignore_tools: list[str] = Field(default_factory=list, description="Tool names never reported.")



def _same_json(a: Any, b: Any) -> bool:
    """JSON equality that keeps booleans and numbers apart (Python has True == 1)."""
    return (type(a) is type(b) and a == b) or (
        isinstance(a, int | float) and isinstance(b, int | float)
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b
    )


class Detector:
    """`tool_error` (module docstring)."""

    name = SIGNAL

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._patterns = compile_named(self.config.patterns)
        self._ignore = frozenset(self.config.ignore_tools)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        findings: list[Finding] = []
        for span in trace.tool_spans:
            tool = tool_name_of(span)
            if tool in self._ignore:
                continue
            finding = self._check(span, tool)
            if finding is not None:
                findings.append(finding)
        return findings

    def _check(self, span: SpanView, tool: str | None) -> Finding | None:
        config = self.config
        rules: list[str] = []
        if config.error_status and span.is_error:
            rules.append("status")
        if config.error_type_attribute:
            error_type = span.get("error.type")
            if error_type is not None and error_type != "":
                rules.append("error_type")
        output = span.output_text
        text = output if isinstance(output, str) else ""
        pattern: str | None = None
        if text:
            head = text[: config.scan_chars]
            pattern = first_match(self._patterns, head)
            if pattern is not None:
                rules.append(pattern)
            if self._json_error(text):
                rules.append("json_error")
        if not rules:
            return None
        details: dict[str, Any] = {"rule": rules[0], "rules": rules}
        if pattern is not None:
            details["pattern"] = pattern
        if span.status_message:
            details["status_message"] = excerpt(span.status_message)
        if "error_type" in rules:
            details["error_type"] = excerpt(span.get("error.type"))
        if text:
            details["result"] = excerpt(text)
        return Finding.at(SIGNAL, "error", span, tool=tool, **details)

    def _json_error(self, text: str) -> bool:
        if len(text) > self.config.json_max_chars or not text[:256].lstrip().startswith("{"):
            return False
        value = parse_json(text, self.config.json_max_chars)
        if value is NOT_JSON or not isinstance(value, dict):
            return False
        for key in self.config.json_error_keys:
            if value.get(key):
                return True
        for key, flagged in self.config.json_failure_flags.items():
            if key in value and any(_same_json(value[key], item) for item in flagged):
                return True
        return False
