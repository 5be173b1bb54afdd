"""What LLM and TOOL spans say, read the same way by every detector that needs it.

- `model_output(span)`: the texts an LLM span's model wrote and the tool calls it requested
  (`RequestedCall`: name, arguments, call id), whichever way the instrumentation recorded them;
  `llm_text`, `requested_calls`, `requested_tools` and `records_output` read it;
- `refusal_text(span)`: OpenAI's structured refusal;
- `tool_name_of(span)`: the tool a TOOL span ran;
- `exceptions(span)`: the (type, message) of its `exception` events;
- `ending(trace)`: the last LLM call and what follows it.

A span's output is read once (`span.memo`) and shared by every detector.

**Where an LLM span's output is read from**, first found wins, for the texts and the calls apart
(OpenInference output messages, when the span has them, alone say which calls were made: a call
in their text content was written, not made):
1. `output_text` when it is plain text (not JSON): the text;
2. OpenInference output messages (`llm.output_messages.N.message.*`, N = 0, 1, ... contiguous, as
   the convention flattens lists): texts from `...content` and `...contents.M.message_content.text`,
   calls from `...tool_calls.M.tool_call.function.name|arguments` and `...tool_call.id`; probed by
   index, never found by a scan of every attribute;
3. the JSON documents `gen_ai.output.messages` (OTel GenAI), the `output_text` column and
   `gen_ai.output` (any-agent), in that order, interpreted as a chat message or list of messages
   (OpenAI `content` / `tool_calls` / `function_call`, GenAI `parts`, Anthropic content blocks,
   OpenAI Responses output items), an API response (`choices`), or a list of typed call items: the
   texts of the first that is a model output at all, the calls of the first holding any (JSON over
   `MAX_JSON_CHARS` is not parsed);
4. `output_text` itself, JSON that is no model output (the JSON is then the answer): the text.

An object like `{"name": "f", "arguments": {...}}` with no `type` is not a call: it is what a model
prints when it writes a tool call as text (`text_tool_call` looks for those).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from halod.analysis.signals.base import NOT_JSON, as_text, parse_json
from halod.analysis.trace import SpanView, TraceSpans

MAX_JSON_CHARS = 262_144
"""Output JSON longer than this is not parsed (taken as text): keeps per-span work bounded."""
_MAX_ITEMS = 256
_OUTPUT_PREFIX = "llm.output_messages."
_CALL_TYPES = frozenset({"tool_call", "function_call", "tool_use", "function"})
_ARGUMENT_KEYS = ("arguments", "input", "args", "parameters")
_TEXT_PART_TYPES = (None, "text", "output_text")


@dataclass(frozen=True, slots=True)
class RequestedCall:
    """A tool call an LLM span asked for."""

    name: str
    arguments: Any  # JSON text or an already structured value; None when absent
    call_id: str | None
    position: int  # its index among the span's requested calls


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What an LLM span's model produced: `texts` (message contents, in order) and `calls`."""

    texts: tuple[str, ...]
    calls: tuple[RequestedCall, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


def text_or_none(value: Any) -> str | None:
    """`value` when it is a non-empty string, else None (ids read from traces)."""
    return value if isinstance(value, str) and value else None


def _call_of(item: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """(name, arguments, id) when `item` is one requested call: an OpenAI tool call
    (`{"function": {name, arguments}}`), a typed item (GenAI `tool_call`, Anthropic `tool_use`,
    Responses `function_call`), or any-agent's `{"tool.name", "tool.args"}`."""
    function = item.get("function")
    if isinstance(function, dict) and "role" not in item:
        name = function.get("name")
        return (name, function.get("arguments"), item.get("id")) if isinstance(name, str) and name else None
    name = item.get("tool.name")
    if isinstance(name, str) and name:
        return name, item.get("tool.args"), None
    name = item.get("name")
    if item.get("type") in _CALL_TYPES and isinstance(name, str) and name:
        arguments = next((item[key] for key in _ARGUMENT_KEYS if key in item), None)
        return name, arguments, item.get("call_id") or item.get("id")
    return None


class _Collected:
    """Texts and calls read so far from one source."""

    __slots__ = ("calls", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.calls: list[RequestedCall] = []

    def call(self, name: Any, arguments: Any, call_id: Any) -> None:
        if isinstance(name, str) and name:
            self.calls.append(RequestedCall(name, arguments, text_or_none(call_id), len(self.calls)))

    def content(self, content: Any) -> None:
        """A message's content: a string, or a list of parts (text parts, typed call parts)."""
        if isinstance(content, str):
            if content:
                self.texts.append(content)
            return
        for part in content[:_MAX_ITEMS] if isinstance(content, list) else ():
            if isinstance(part, str):
                if part:
                    self.texts.append(part)
            elif isinstance(part, dict):
                call = _call_of(part)
                if call is not None:
                    self.call(*call)
                elif part.get("type") in _TEXT_PART_TYPES:
                    text = part.get("text", part.get("content"))
                    if isinstance(text, str) and text:
                        self.texts.append(text)


def _interpret(value: Any) -> _Collected | None:
    """Texts and calls of a structured model output (the shapes in the module docstring); None when
    the JSON is something else."""
    if isinstance(value, dict) and isinstance(value.get("choices"), list):
        value = [choice.get("message") for choice in value["choices"][:_MAX_ITEMS] if isinstance(choice, dict)]
    elif isinstance(value, dict) and value.get("object") == "response" and isinstance(value.get("output"), list):
        value = value["output"]
    out = _Collected()
    for item in (value if isinstance(value, list) else [value])[:_MAX_ITEMS]:
        if not isinstance(item, dict):
            return None
        call = _call_of(item)
        if call is not None:
            out.call(*call)
            continue
        if not ("role" in item or "tool_calls" in item or "parts" in item or item.get("type") == "message"):
            return None
        out.content(item["parts"] if isinstance(item.get("parts"), list) else item.get("content"))
        calls = item.get("tool_calls")
        for entry in calls[:_MAX_ITEMS] if isinstance(calls, list) else ():
            if isinstance(entry, dict) and (call := _call_of(entry)) is not None:
                out.call(*call)
        legacy = item.get("function_call")  # OpenAI's pre-tools function calling
        if isinstance(legacy, dict):
            out.call(legacy.get("name"), legacy.get("arguments"), None)
    return out


def _openinference(attrs: dict[str, Any]) -> _Collected | None:
    """The OpenInference output messages; None when the span has none. Direct key lookups, not a walk
    over every attribute (LLM spans carry many)."""
    out = _Collected()
    for message in range(_MAX_ITEMS):
        base = f"{_OUTPUT_PREFIX}{message}.message."
        content = attrs.get(base + "content")
        first_call = attrs.get(base + "tool_calls.0.tool_call.function.name")
        first_part = attrs.get(base + "contents.0.message_content.text")
        if content is None and first_call is None and first_part is None and base + "role" not in attrs:
            return out if message else None
        if isinstance(content, str) and content:
            out.texts.append(content)
        if first_part is not None:
            for part in range(_MAX_ITEMS):
                text = attrs.get(f"{base}contents.{part}.message_content.text")
                if text is None:
                    break
                if isinstance(text, str) and text:
                    out.texts.append(text)
        if first_call is not None:
            for index in range(_MAX_ITEMS):
                call = f"{base}tool_calls.{index}.tool_call."
                name = attrs.get(call + "function.name")
                if name is None:
                    break
                out.call(name, attrs.get(call + "function.arguments"), attrs.get(call + "id"))
    return out


def _documents(span: SpanView, output: Any) -> Iterator[Any]:
    """The parsed JSON documents that may hold the output, in order, each read once."""
    seen: list[Any] = []
    for value in (span.get("gen_ai.output.messages"), output, span.get("gen_ai.output")):
        if value is None or any(value is other or value == other for other in seen):
            continue
        seen.append(value)
        if isinstance(value, str):
            stripped = value.strip()
            if not stripped or stripped[0] not in "[{":
                continue
            value = parse_json(stripped, MAX_JSON_CHARS)
            if value is NOT_JSON:
                continue
        yield value


def model_output(span: SpanView) -> ModelOutput:
    """What the model produced on this span (module docstring); computed once per span view."""
    found: ModelOutput | None = span.memo.get("output")
    if found is None:
        found = span.memo["output"] = _read_output(span)
    return found


def _read_output(span: SpanView) -> ModelOutput:
    output = span.output_text
    has_text = isinstance(output, str) and bool(output.strip())
    texts: list[str] | None = [output] if has_text and output.lstrip()[0] not in "[{" else None
    recorded = _openinference(span.attrs)
    calls = recorded.calls if recorded is not None else []
    if recorded is not None and recorded.texts:
        texts = texts or recorded.texts
    want_calls = recorded is None  # OpenInference messages, when present, say which calls were made
    if texts is None or want_calls:
        for document in _documents(span, output):
            interpreted = _interpret(document)
            if interpreted is None:
                continue
            if texts is None:
                texts = interpreted.texts
            if want_calls and interpreted.calls:
                calls, want_calls = interpreted.calls, False
            if not want_calls and texts is not None:
                break
    if texts is None:
        texts = [output] if has_text else []
    return ModelOutput(tuple(texts), tuple(calls))


def llm_text(span: SpanView) -> str:
    """The text an LLM span's model wrote (message contents joined; tool-call JSON is not text)."""
    return model_output(span).text


def requested_calls(span: SpanView) -> tuple[RequestedCall, ...]:
    """The tool calls an LLM span requested, in order."""
    return model_output(span).calls


def requested_tools(span: SpanView) -> list[str]:
    """Names of the tool calls an LLM span requested, in order."""
    return [call.name for call in model_output(span).calls]


def records_output(span: SpanView) -> bool:
    """Whether the span carries any output (text or tool calls)."""
    output = model_output(span)
    return bool(output.texts or output.calls)


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


def exceptions(span: SpanView) -> list[tuple[str, str]]:
    """(`exception.type`, `exception.message`) of each `exception` event of the span, as text ("" when
    absent), in order; the events JSON is parsed only when its text mentions an exception."""
    raw = span.events
    if not isinstance(raw, str) or '"exception' not in raw:
        return []
    found: list[tuple[str, str]] = []
    for event in span.event_list:
        if not isinstance(event, dict) or event.get("name") != "exception":
            continue
        attributes = event.get("attributes")
        if not isinstance(attributes, dict):
            attributes = {}
        found.append((as_text(attributes.get("exception.type")), as_text(attributes.get("exception.message"))))
    return found


def tool_name_of(span: SpanView) -> str | None:
    """The tool a TOOL span ran: `tool_name`, else its span name without a leading `execute_tool `
    (the OTel GenAI span name)."""
    name = span.tool_name
    if isinstance(name, str) and name.strip():
        return name.strip()
    name = span.name
    if isinstance(name, str) and name.strip():
        return name.strip().removeprefix("execute_tool ").strip() or None
    return None


@dataclass(frozen=True, slots=True)
class Ending:
    """How a trace ends: the last LLM span and the TOOL spans (or requested calls) after it."""

    last_llm: SpanView
    tools_after: list[SpanView]
    requested: list[str]

    @property
    def tool_names(self) -> list[str]:
        return [tool_name_of(span) or "" for span in self.tools_after] if self.tools_after else self.requested


def ending(trace: TraceSpans) -> Ending | None:
    """The trace's ending, None without LLM spans."""
    llms = trace.llm_spans
    if not llms:
        return None
    last = llms[-1]
    start = last.start_ns or 0
    after = [span for span in trace.tool_spans if (span.start_ns or 0) > start]
    return Ending(last, after, [] if after else requested_tools(last))
