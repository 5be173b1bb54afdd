"""What LLM and TOOL spans say, read the same way by every detector that needs it.

The readers: `llm_text` (what the model
wrote), `requested_tools` (the tool calls it asked for), `records_output`, `refusal_text`,
`tool_name_of`, `ending` (the last LLM call and what follows it), and the pattern helpers
`compile_patterns`, `glob_matcher`. They read
`output_text` first and `span.attrs` (parsed once per span, shared with every detector) only when
needed, with direct key lookups; output JSON over `MAX_JSON_CHARS` is taken as text, not parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

import orjson

from halod.analysis.trace import SpanView, TraceSpans

MAX_JSON_CHARS = 262_144
"""Output JSON longer than this is not parsed (taken as text): keeps per-span work bounded."""
_MAX_ITEMS = 256
_NOT_JSON: Any = object()
_OUTPUT_PREFIX = "llm.output_messages."


def column(span: SpanView, name: str) -> Any:
    """A typed column of the span, None when the row lacks it."""
    return getattr(span, name, None)


def compile_patterns(patterns: list[str]) -> re.Pattern[str]:
    """One case-insensitive regex matching any of `patterns` (which must be valid regexes)."""
    if not patterns:
        return re.compile(r"(?!x)x")  # matches nothing
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)


def glob_matcher(globs: list[str]) -> re.Pattern[str]:
    """One case-insensitive regex for shell-style name patterns: `.match(name)` tells if any matches."""
    if not globs:
        return re.compile(r"(?!x)x")
    return re.compile("|".join(f"(?:{translate(glob)})" for glob in globs), re.IGNORECASE)


def _parse_json(text: str) -> Any:
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{" or len(stripped) > MAX_JSON_CHARS:
        return _NOT_JSON
    try:
        return orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _call_name(item: dict[str, Any]) -> str | None:
    """The tool name when `item` looks like one requested tool call, else None."""
    function = item.get("function")
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return str(function["name"])
    for key in ("tool.name", "tool_name"):
        if isinstance(item.get(key), str):
            return str(item[key])
    name = item.get("name")
    if not isinstance(name, str) or "role" in item:
        return None
    if item.get("type") in ("tool_call", "function_call", "tool_use", "function"):
        return name
    if any(key in item for key in ("arguments", "args", "tool.args", "input", "parameters")):
        return name
    return None


@dataclass(slots=True)
class _Output:
    texts: list[str]
    calls: list[str]


def _content_parts(content: Any, out: _Output) -> None:
    if isinstance(content, str):
        if content:
            out.texts.append(content)
        return
    if not isinstance(content, list):
        return
    for part in content[:_MAX_ITEMS]:
        if isinstance(part, str):
            out.texts.append(part)
        elif isinstance(part, dict):
            name = _call_name(part)
            if name is not None:
                out.calls.append(name)
            elif part.get("type") in (None, "text", "output_text"):
                text = part.get("text", part.get("content"))
                if isinstance(text, str) and text:
                    out.texts.append(text)


def _interpret(value: Any) -> _Output | None:
    """Text and tool calls of a structured model output (message list, call list, API response);
    None when the JSON is something else (then the JSON itself is the answer)."""
    if isinstance(value, dict) and isinstance(value.get("choices"), list):
        value = [choice.get("message") for choice in value["choices"][:_MAX_ITEMS] if isinstance(choice, dict)]
    items = value if isinstance(value, list) else [value]
    out = _Output([], [])
    if not items:
        return out
    for item in items[:_MAX_ITEMS]:
        if not isinstance(item, dict):
            return None
        name = _call_name(item)
        if name is not None:
            out.calls.append(name)
        elif isinstance(item.get("parts"), list):
            _content_parts(item["parts"], out)
        elif "role" in item or "tool_calls" in item:
            _content_parts(item.get("content"), out)
            calls = item.get("tool_calls")
            if isinstance(calls, list):
                out.calls.extend(n for c in calls[:_MAX_ITEMS] if isinstance(c, dict) and (n := _call_name(c)))
        else:
            return None
    return out


def _from_attributes(attrs: dict[str, Any], texts: bool = True) -> _Output | None:
    """Output messages recorded as OpenInference attributes (`llm.output_messages.N.message.*`,
    N = 0, 1, ... contiguous, as the convention flattens lists); None when there are none.
    Direct key lookups, not a walk over every attribute (LLM spans carry many)."""
    out = _Output([], [])
    found = False
    for i in range(_MAX_ITEMS):
        base = f"{_OUTPUT_PREFIX}{i}.message."
        content = attrs.get(base + "content")
        first_call = attrs.get(base + "tool_calls.0.tool_call.function.name")
        first_part = attrs.get(base + "contents.0.message_content.text")
        if content is None and first_call is None and first_part is None and base + "role" not in attrs:
            break
        found = True
        if texts and isinstance(content, str) and content:
            out.texts.append(content)
        if texts and first_part is not None:
            for j in range(_MAX_ITEMS):
                part = attrs.get(f"{base}contents.{j}.message_content.text")
                if part is None:
                    break
                if isinstance(part, str) and part:
                    out.texts.append(part)
        if first_call is not None:
            for j in range(_MAX_ITEMS):
                name = attrs.get(f"{base}tool_calls.{j}.tool_call.function.name")
                if name is None:
                    break
                if isinstance(name, str):
                    out.calls.append(name)
    return out if found else None


def _output(span: SpanView, calls: bool = True) -> _Output | None:
    """What the model produced on this span; None when the span records no output at all.

    The `output_text` column when it is plain text (tool calls then come from the OpenInference
    output-message attributes, when asked for); else the output-message attributes; else the
    output JSON interpreted (message lists, call lists, API responses), or taken as the answer.
    Reads `span.attrs`, which is parsed once per span and shared by every detector."""
    text = column(span, "output_text")
    has_text = isinstance(text, str) and bool(text.strip())
    if has_text and text.lstrip()[:1] not in ("[", "{"):
        recorded = _from_attributes(span.attrs, texts=False) if calls else None
        return _Output([text], recorded.calls if recorded is not None else [])
    recorded = _from_attributes(span.attrs)
    if recorded is not None:
        return recorded
    if not has_text:
        return None
    parsed = _parse_json(text)
    interpreted = None if parsed is _NOT_JSON else _interpret(parsed)
    return interpreted if interpreted is not None else _Output([text], [])


def llm_text(span: SpanView) -> str:
    """The text an LLM span's model wrote (message contents joined; tool-call JSON is not text)."""
    out = _output(span, calls=False)
    return "\n".join(out.texts) if out is not None else ""


def requested_tools(span: SpanView) -> list[str]:
    """Names of the tool calls an LLM span requested, in order."""
    out = _output(span)
    return out.calls if out is not None else []


def records_output(span: SpanView) -> bool:
    """Whether the span carries any output (text or tool calls)."""
    out = _output(span)
    return out is not None and bool(out.texts or out.calls)


def refusal_text(span: SpanView) -> str:
    """OpenAI's structured refusal (`llm.output_messages.N.message.refusal`), or ""."""
    attrs = span.attrs
    for i in range(_MAX_ITEMS):
        base = f"{_OUTPUT_PREFIX}{i}.message."
        refusal = attrs.get(base + "refusal")
        if isinstance(refusal, str) and refusal:
            return refusal
        if refusal is None and base + "role" not in attrs and base + "content" not in attrs:
            return ""
    return ""


def tool_name_of(span: SpanView) -> str:
    name = column(span, "tool_name") or column(span, "name") or ""
    return str(name)


@dataclass(frozen=True, slots=True)
class Ending:
    """How a trace ends: the last LLM span and the TOOL spans (or requested calls) after it."""

    last_llm: SpanView
    tools_after: list[SpanView]
    requested: list[str]

    @property
    def tool_names(self) -> list[str]:
        return [tool_name_of(span) for span in self.tools_after] if self.tools_after else self.requested


def ending(trace: TraceSpans) -> Ending | None:
    """The trace's ending, None without LLM spans."""
    llms = trace.llm_spans
    if not llms:
        return None
    last = llms[-1]
    start = last.start_ns or 0
    after = [span for span in trace.tool_spans if (span.start_ns or 0) > start]
    return Ending(last, after, [] if after else requested_tools(last))
