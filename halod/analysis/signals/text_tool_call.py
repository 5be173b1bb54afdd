"""`text_tool_call`: the model wrote a tool call as text instead of calling the tool (small local
models do this routinely: the call never runs and the agent stalls or answers with JSON).

**Rule.** For every LLM span that requested no tool call, its output text is read (both as
`_outputs.model_output` describes); only the first 65536 characters. One `text_tool_call` finding
(severity `error`) for the span when either
- `tag`: a pattern of `tag_patterns` matches (case-insensitive): the tool-call markup of chat
  templates — `<tool_call>` (Hermes, Qwen, SmolLM), `<function_call>` / `<functioncall>` /
  `<function_calls>`, Mistral's `[TOOL_CALLS]`, Llama's `<|python_tag|>`, DeepSeek's
  `<|tool▁calls▁begin|>`; or
- `json`: a JSON object in the text (found by decoding at each `{`, at most `max_json_attempts`
  tries; so fenced ```json blocks and JSON embedded in prose count) has a tool-call shape: a key of
  `name_keys` (`name`, `tool`, `tool_name`, `function`, `action`) whose value is
  - a declared tool name, when the span has a declared tool set (`_tools.declarations`), or
  - when no tool set is declared, an identifier-like string (`[A-Za-z_][A-Za-z0-9_.-]{0,63}`) in an
    object that also has a key of `argument_keys` (`arguments`, `parameters`, `args`, `action_input`,
    `input`, `tool_input`);
  or such an object under `function` / `tool_call` / `function_call`, or in a `tool_calls` list.
With `skip_when_executed`, a span is not reported when a TOOL span requested by it (see
`_tools.tool_calls`) ran the tool the text names: the framework parses text calls by design
(ReAct/JSON agents). `tool` is the tool named (None for a bare tag); details: `rule`, `pattern` (for
a tag), `declared` (whether a declared set decided) and an `excerpt` of the text from the match.

**Knobs:** `enabled`, `tag_patterns`, `name_keys`, `argument_keys`, `max_json_attempts` (16),
`skip_when_executed` (True), `use_agent_tools` (True).

**Example.** An LLM span (SmolLM2 through llama.cpp) declares `get_weather` and requests no call;
its output is ```` ```json\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n``` ````.
One finding at that span: `tool = "get_weather"`, `details = {"rule": "json", "declared": true,
"excerpt": "{\\"name\\": \\"get_weather\\", ..."}`. The output `<tool_call>{"name": "get_weather"}
</tool_call>` gives `rule = "tag"`, `pattern = "tool_call"`. The output `The weather in Paris is
sunny.` gives none.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import Field

from halod.analysis.signals._outputs import model_output
from halod.analysis.signals._tools import declarations, tool_calls
from halod.analysis.signals.base import MAX_SCAN_CHARS, DetectContext, Finding, NamedPatterns, compile_named, excerpt
from halod.analysis.trace import TraceSpans
from halod.security import StrictModel

SIGNAL = "text_tool_call"

DEFAULT_TAGS: dict[str, str] = {
    "tool_call": r"<tool_call>",
    "function_call": r"<function[_-]?calls?>",
    "tool_calls_marker": r"\[TOOL_CALLS\]",
    "python_tag": r"<\|python_tag\|>",
    "tool_calls_begin": r"<[|\uFF5C]tool[\u2581_ ]calls?[\u2581_ ]begin[|\uFF5C]>",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")
_DECODER = json.JSONDecoder()


class Config(StrictModel):
    """Knobs of the `text_tool_call` detector."""

    enabled: bool = Field(default=True, description="Run this detector.")
    tag_patterns: NamedPatterns = Field(
        default_factory=lambda: dict(DEFAULT_TAGS),
        description="Name -> regular expression (case-insensitive) for tool-call markup written as text.",
    )
    name_keys: list[str] = Field(
        default_factory=lambda: ["name", "tool", "tool_name", "function", "action"],
        description="Keys whose string value names the tool in a tool-call-shaped JSON object.",
    )
    argument_keys: list[str] = Field(
        default_factory=lambda: ["arguments", "parameters", "args", "action_input", "input", "tool_input"],
        description="Keys holding the arguments; one is required when no tool set is declared.",
    )
    max_json_attempts: int = Field(default=16, ge=0, le=1000,
                                   description="Most `{` positions tried as the start of a JSON object per span.")
    skip_when_executed: bool = Field(
        default=True, description="Do not report a span whose text call was run by a TOOL span it requested."
    )
    use_agent_tools: bool = Field(
        default=True, description="Resolve declared tools from an ancestor's `agent.tools` (as unknown_tool does)."
    )



class Detector:
    """`text_tool_call` (module docstring)."""

    name = SIGNAL

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self._tags = compile_named(self.config.tag_patterns)
        self._name_keys = list(self.config.name_keys)
        self._argument_keys = list(self.config.argument_keys)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        executed: dict[str, set[str]] | None = None
        findings: list[Finding] = []
        for span in trace.llm_spans:
            output = model_output(span)
            if output.calls:
                continue
            text = output.text[:MAX_SCAN_CHARS]
            if not text:
                continue
            tag = self._tag(text)
            if tag is None and "{" not in text:
                continue
            declared = declarations(trace, context, self.config.use_agent_tools).for_span(span, span)
            names = frozenset(declared.tools) if declared is not None else None
            details: dict[str, Any]
            tool: str | None = None
            if tag is not None:
                name, position = tag
                tool = self._name_after(text, position, names)
                details = {"rule": "tag", "pattern": name, "declared": names is not None,
                           "excerpt": excerpt(text[position:])}
            else:
                shaped = self._json_call(text, names)
                if shaped is None:
                    continue
                tool, position = shaped
                details = {"rule": "json", "declared": names is not None, "excerpt": excerpt(text[position:])}
            if self.config.skip_when_executed and tool is not None:
                if executed is None:
                    executed = {}
                    for call in tool_calls(trace):
                        if call.executed and call.requester is not None:
                            executed.setdefault(call.requester.span_id, set()).add(call.name)
                if tool in executed.get(span.span_id, ()):
                    continue
            findings.append(Finding.at(SIGNAL, "error", span, tool=tool, **details))
        return findings

    def _tag(self, text: str) -> tuple[str, int] | None:
        for name, pattern in self._tags:
            match = pattern.search(text)
            if match is not None:
                return name, match.start()
        return None

    def _name_after(self, text: str, position: int, names: frozenset[str] | None) -> str | None:
        """The tool named by the first JSON object after a tag, if any."""
        shaped = self._json_call(text[position:], names, require_arguments=False)
        return shaped[0] if shaped is not None else None

    def _json_call(self, text: str, names: frozenset[str] | None,
                   require_arguments: bool = True) -> tuple[str, int] | None:
        """(tool name, offset) of the first tool-call-shaped JSON object in the text."""
        position = text.find("{")
        attempts = 0
        while position != -1 and attempts < self.config.max_json_attempts:
            attempts += 1
            try:
                value, end = _DECODER.raw_decode(text, position)
            except (ValueError, RecursionError):
                position = text.find("{", position + 1)
                continue
            name = self._shape(value, names, require_arguments, 0)
            if name is not None:
                return name, position
            position = text.find("{", end)
        return None

    def _shape(self, value: Any, names: frozenset[str] | None, require_arguments: bool, depth: int) -> str | None:
        if not isinstance(value, dict) or depth > 2:
            return None
        has_arguments = any(key in value for key in self._argument_keys)
        for key in self._name_keys:
            item = value.get(key)
            if isinstance(item, dict):
                inner = self._shape(item, names, require_arguments, depth + 1)
                if inner is not None:
                    return inner
            elif isinstance(item, str):
                candidate = item.strip()
                if names is not None:
                    if candidate in names:
                        return candidate
                elif (has_arguments or not require_arguments) and _IDENTIFIER.fullmatch(candidate):
                    return candidate
        for key in ("tool_call", "function_call"):
            inner = self._shape(value.get(key), names, require_arguments, depth + 1)
            if inner is not None:
                return inner
        calls = value.get("tool_calls")
        for item in calls[:16] if isinstance(calls, list) else ():
            inner = self._shape(item, names, require_arguments, depth + 1)
            if inner is not None:
                return inner
        return None
