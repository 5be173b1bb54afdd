"""`unknown_tool`: a hallucinated tool call — the model asked for (or the agent ran) a tool that was
never offered to it, or the tool runtime answered that no such tool exists.

This module also holds the reading of tool calls and tool declarations that the other tool
detectors share (`tool_calls`, `Declarations`, `requested_calls`, `parse_json`).

**Tool calls of a trace** (`tool_calls`): every TOOL span is a call (name: `tool_name`, else the span
name without a leading `execute_tool `; arguments: `tool_arguments`). Its *requester* is the LLM span
that asked for it: the latest LLM span starting at or before it whose requested calls carry the TOOL
span's call id (`tool_call.id`, `gen_ai.tool.call.id`), else the latest LLM span starting at or before
it. An LLM span's requested calls are read from `llm.output_messages.N.message.tool_calls.M.tool_call.
function.name|arguments` and `.tool_call.id` (OpenInference), else from the `tool_call` parts (or
OpenAI-style `tool_calls`) of `gen_ai.output.messages` (OTel GenAI), else from a `gen_ai.output` that
is a JSON list of `{"tool.name", "tool.args"}` objects (any-agent). A requested call that no TOOL span
executes (matched by call id, else by name among its requester's calls) is a call of its own, with
the LLM span as its evidence. Calls are in start-time order.

**Declared tools of a call** (`Declarations`), first found wins:
1. the requester's (or, for an unexecuted request, the LLM span's own) `llm.tools.N.tool.json_schema`
   (OpenAI `{"type": "function", "function": {name, parameters}}`, or flat `{name, parameters}` /
   `{name, input_schema}`), or its `gen_ai.tool.definitions` (a JSON list of the same);
2. `agent.tools` (a list of names) on the nearest ancestor span carrying it (OpenAI Agents SDK via
   OpenInference), when `use_agent_tools`; schemas taken from `context.declared_tools` when present;
3. `context.declared_tools` (the configured tools of the service or agent).
No declared set found: the call is not judged (no `undeclared` finding).

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

import bisect
import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import Field

from halod.analysis.signals.base import DetectContext, Finding, NamedPatterns
from halod.analysis.trace import SpanView, TraceSpans
from halod.security import StrictModel

SIGNAL = "unknown_tool"

MAX_SCAN_CHARS = 65536
"""The longest text (arguments, results, outputs) any tool detector parses or scans."""
MAX_TOOLS = 512
"""The most tool declarations read from one span."""
_MAX_DEPTH = 64
_EXCERPT = 200


class _NotJson:
    """Marker: the text is not JSON (or too long to parse)."""

    _instance: _NotJson | None = None

    def __new__(cls) -> _NotJson:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJson()


def parse_json(value: Any, limit: int = MAX_SCAN_CHARS) -> Any:
    """The JSON value of `value` when it is JSON text (at most `limit` characters), `NOT_JSON` when it
    is text that does not parse or is too long; a non-text value is returned as it is (attributes can
    already be structured). Never evaluates anything: orjson, then the standard library for what
    orjson refuses but JSON allows (integers beyond 64 bits)."""
    if not isinstance(value, str):
        return value
    if len(value) > limit:
        return NOT_JSON
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return NOT_JSON


def excerpt(value: Any, length: int = _EXCERPT) -> str:
    """A short, single-value excerpt of a trace string for finding details."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= length else text[:length] + "…"


# --- requested calls ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestedCall:
    """A tool call an LLM span asked for."""

    name: str
    arguments: Any  # usually JSON text; None when absent
    call_id: str | None
    position: int


_MAX_OUTPUT_MESSAGES = 16


def requested_calls(span: SpanView) -> tuple[RequestedCall, ...]:
    """The tool calls an LLM span requested (see the module docstring for the attributes read);
    computed once per span view.

    OpenInference's flattened keys are probed by index (message 0, 1, ... while the message has a
    role, content or first tool call; call 0, 1, ... while it has a name), not found by scanning
    every attribute: this runs for every LLM span."""
    calls: tuple[RequestedCall, ...] | None = span.memo.get("requested_calls")
    if calls is None:
        calls = span.memo["requested_calls"] = tuple(_requested_calls(span))
    return calls


def _requested_calls(span: SpanView) -> list[RequestedCall]:
    attrs = span.attrs
    calls: list[RequestedCall] = []
    for message in range(_MAX_OUTPUT_MESSAGES):
        prefix = f"llm.output_messages.{message}.message."
        if (prefix + "tool_calls.0.tool_call.function.name" not in attrs and prefix + "role" not in attrs
                and prefix + "content" not in attrs):
            break
        for index in range(MAX_TOOLS):
            call = f"{prefix}tool_calls.{index}.tool_call."
            name = attrs.get(call + "function.name")
            if name is None:
                break
            if isinstance(name, str) and name:
                call_id = attrs.get(call + "id")
                calls.append(RequestedCall(name, attrs.get(call + "function.arguments"),
                                           call_id if isinstance(call_id, str) and call_id else None, len(calls)))
    if calls:
        return calls
    messages = attrs.get("gen_ai.output.messages")
    if messages is not None:
        calls = _genai_calls(parse_json(messages))
        if calls:
            return calls
    output = attrs.get("gen_ai.output")
    if (isinstance(output, str) and '"tool.name"' in output[:MAX_SCAN_CHARS]) or isinstance(output, list):
        calls = _anyagent_calls(parse_json(output))
    return calls


def _genai_calls(messages: Any) -> list[RequestedCall]:
    calls: list[RequestedCall] = []
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        return calls
    for message in messages[:MAX_TOOLS]:
        if not isinstance(message, dict):
            continue
        parts = message.get("parts")
        for part in parts[:MAX_TOOLS] if isinstance(parts, list) else ():
            if isinstance(part, dict) and part.get("type") in ("tool_call", "function_call"):
                name = part.get("name")
                if isinstance(name, str) and name:
                    calls.append(RequestedCall(name, part.get("arguments"), _str_or_none(part.get("id")), len(calls)))
        openai_calls = message.get("tool_calls")
        for call in openai_calls[:MAX_TOOLS] if isinstance(openai_calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]:
                calls.append(RequestedCall(function["name"], function.get("arguments"),
                                           _str_or_none(call.get("id")), len(calls)))
    return calls


def _anyagent_calls(output: Any) -> list[RequestedCall]:
    calls: list[RequestedCall] = []
    if not isinstance(output, list):
        return calls
    for item in output[:MAX_TOOLS]:
        if isinstance(item, dict) and isinstance(item.get("tool.name"), str) and item["tool.name"]:
            calls.append(RequestedCall(item["tool.name"], item.get("tool.args"), None, len(calls)))
    return calls


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


# --- declared tools ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeclaredTools:
    """The tools offered to a call: name -> parameters JSON schema (None when only the name is known),
    and where the declaration came from (`llm.tools`, `gen_ai.tool.definitions`, `agent.tools`,
    `context`)."""

    tools: dict[str, dict[str, Any] | None]
    source: str


_Definition = tuple[str, dict[str, Any] | None]
# Parsed tool definitions by their JSON text: every LLM span of an agent repeats the same ones. Bounded
# (entries and text size) and cleared when full; a pure function's memo, so results stay deterministic.
_DEFINITION_CACHE: dict[str, _Definition | None] = {}
_DEFINITION_CACHE_SIZE = 1024
_DEFINITION_CACHE_TEXT = 16384


def tool_definition(value: Any) -> _Definition | None:
    """(name, parameters schema) of one tool definition: OpenAI `{"type": "function", "function":
    {...}}`, or flat `{name, parameters | input_schema | inputSchema}`; None when it has no name."""
    if isinstance(value, str):
        cached = _DEFINITION_CACHE.get(value, NOT_JSON)
        if cached is not NOT_JSON:
            return cached  # type: ignore[no-any-return]
        result = tool_definition(parse_json(value)) if value else None
        if len(value) <= _DEFINITION_CACHE_TEXT:
            if len(_DEFINITION_CACHE) >= _DEFINITION_CACHE_SIZE:
                _DEFINITION_CACHE.clear()
            _DEFINITION_CACHE[value] = result
        return result
    for _ in range(4):  # OpenAI's {"type": "function", "function": {...}} wrapper (never recurse on trace data)
        if not isinstance(value, dict):
            return None
        function = value.get("function")
        if not isinstance(function, dict):
            break
        value = function
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or not name:
        return None
    for key in ("parameters", "input_schema", "inputSchema", "json_schema"):
        schema = value.get(key)
        if isinstance(schema, dict):
            return name, schema
    return name, None




def span_declared_tools(span: SpanView) -> DeclaredTools | None:
    """The tools declared on an LLM span itself (`llm.tools.N.tool.json_schema`, else
    `gen_ai.tool.definitions`); None when it declares none. Computed once per span view."""
    if "declared_tools" not in span.memo:
        span.memo["declared_tools"] = _span_declared_tools(span)
    declared: DeclaredTools | None = span.memo["declared_tools"]
    return declared


def _span_declared_tools(span: SpanView) -> DeclaredTools | None:
    attrs = span.attrs
    tools: dict[str, dict[str, Any] | None] = {}
    for index in range(MAX_TOOLS):
        text = attrs.get(f"llm.tools.{index}.tool.json_schema")
        if text is None:
            break
        definition = tool_definition(text)
        if definition is not None:
            tools[definition[0]] = definition[1]
    if tools:
        return DeclaredTools(tools, "llm.tools")
    definitions = attrs.get("gen_ai.tool.definitions")
    if definitions is not None:
        parsed = parse_json(definitions)
        for item in parsed[:MAX_TOOLS] if isinstance(parsed, list) else ():
            definition = tool_definition(item)
            if definition is not None:
                tools[definition[0]] = definition[1]
        if tools:
            return DeclaredTools(tools, "gen_ai.tool.definitions")
    return None


def _context_tools(context: DetectContext) -> dict[str, dict[str, Any] | None]:
    tools: dict[str, dict[str, Any] | None] = {}
    for name, definition in context.declared_tools.items():
        parsed = tool_definition(definition)
        if parsed is not None and parsed[1] is not None:
            tools[name] = parsed[1]
        elif isinstance(definition, dict) and ("properties" in definition or definition.get("type") == "object"):
            tools[name] = definition  # the schema itself
        else:
            tools[name] = None
    return tools


class Declarations:
    """Resolves the declared tool set of calls and LLM spans of one trace (cached per span)."""

    def __init__(self, trace: TraceSpans, context: DetectContext, use_agent_tools: bool = True) -> None:
        self._trace = trace
        self._use_agent_tools = use_agent_tools
        self._context_tools = _context_tools(context)
        self._own: dict[str, DeclaredTools | None] = {}
        self._agent: dict[str, list[str] | None] = {}

    def own(self, span: SpanView) -> DeclaredTools | None:
        """What an LLM span declares itself."""
        if span.span_id not in self._own:
            self._own[span.span_id] = span_declared_tools(span)
        return self._own[span.span_id]

    def for_call(self, call: ToolCall) -> DeclaredTools | None:
        llm = call.requester
        if llm is None and call.span.semantic_kind == "LLM":
            llm = call.span
        return self.for_span(call.span, llm)

    def for_span(self, span: SpanView, llm: SpanView | None = None) -> DeclaredTools | None:
        """The declared set for `span` (an LLM span, or a TOOL span requested by `llm`)."""
        if llm is not None:
            own = self.own(llm)
            if own is not None:
                return own
        if self._use_agent_tools:
            names = self._agent_tools(span)
            if names is None and llm is not None:
                names = self._agent_tools(llm)
            if names is not None:
                return DeclaredTools({name: self._context_tools.get(name) for name in names}, "agent.tools")
        if self._context_tools:
            return DeclaredTools(self._context_tools, "context")
        return None

    def _agent_tools(self, span: SpanView) -> list[str] | None:
        """`agent.tools` of the nearest span on the parent chain (the span itself first) carrying it."""
        if span.span_id in self._agent:
            return self._agent[span.span_id]
        chain: list[str] = []
        current: SpanView | None = span
        names: list[str] | None = None
        while current is not None and len(chain) < _MAX_DEPTH:
            if current.span_id in self._agent:
                names = self._agent[current.span_id]
                break
            chain.append(current.span_id)
            value = parse_json(current.get("agent.tools"))
            if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
                names = list(value)
                break
            parent = current.parent_span_id
            current = self._trace.by_id.get(parent) if parent else None
        for span_id in chain:
            self._agent[span_id] = names
        return names


# --- tool calls of a trace ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call of a trace: executed by a TOOL span and/or requested by an LLM span.

    `span` is the evidence (the TOOL span when the call ran, else the requesting LLM span);
    `arguments` what ran (the TOOL span's, else the requested ones); `requested_arguments` what the
    model asked for, when known."""

    name: str
    arguments: Any
    span: SpanView
    requester: SpanView | None
    call_id: str | None
    executed: bool
    requested: bool
    requested_arguments: Any = None


def tool_name_of(span: SpanView) -> str | None:
    """The tool a TOOL span ran: `tool_name`, else its span name without a leading `execute_tool `."""
    name = span.tool_name
    if isinstance(name, str) and name.strip():
        return name.strip()
    name = span.name
    if isinstance(name, str) and name.strip():
        name = name.strip()
        return name.removeprefix("execute_tool ").strip() or None
    return None


# tool_calls(trace) by trace: five detectors read the same calls of each trace. Weak keys, so the memo
# lives as long as the trace view does (a TraceSpans does not change after it is built).


def tool_calls(trace: TraceSpans) -> tuple[ToolCall, ...]:
    """Every tool call of the trace, in start-time order (the rule is in the module docstring);
    computed once per trace view."""
    calls: tuple[ToolCall, ...] | None = trace.memo.get("tool_calls")
    if calls is None:
        calls = trace.memo["tool_calls"] = _tool_calls(trace)
    return calls


def _tool_calls(trace: TraceSpans) -> tuple[ToolCall, ...]:
    llms = trace.llm_spans
    llm_starts = [span.start_ns or 0 for span in llms]
    requests = [requested_calls(span) for span in llms]
    by_id: dict[str, list[tuple[int, int]]] = {}
    for index, calls in enumerate(requests):
        for call in calls:
            if call.call_id is not None:
                by_id.setdefault(call.call_id, []).append((index, call.position))
    consumed: set[tuple[int, int]] = set()
    order = {span.span_id: position for position, span in enumerate(trace.spans)}
    found: list[tuple[int, int, int, ToolCall]] = []
    for span in trace.tool_spans:
        name = tool_name_of(span)
        if name is None:
            continue
        start = span.start_ns or 0
        call_id = _str_or_none(span.get("tool_call.id")) or _str_or_none(span.get("gen_ai.tool.call.id"))
        slot: tuple[int, int] | None = None
        if call_id is not None and call_id in by_id:
            candidates = [c for c in by_id[call_id] if c not in consumed]
            before = [c for c in candidates if llm_starts[c[0]] <= start]
            slot = before[-1] if before else (candidates[0] if candidates else None)
        requester_index = slot[0] if slot is not None else bisect.bisect_right(llm_starts, start) - 1
        requester = llms[requester_index] if requester_index >= 0 else None
        if slot is None and requester is not None:
            for call in requests[requester_index]:
                if call.name == name and (requester_index, call.position) not in consumed:
                    slot = (requester_index, call.position)
                    break
        requested_arguments = None
        if slot is not None:
            consumed.add(slot)
            requested = requests[slot[0]][slot[1]]
            requested_arguments = requested.arguments
            call_id = call_id or requested.call_id
        arguments = span.tool_arguments
        if arguments is None or arguments == "":
            arguments = requested_arguments if requested_arguments is not None else arguments
        found.append((start, order[span.span_id], 0, ToolCall(
            name, arguments, span, requester, call_id, True, slot is not None, requested_arguments)))
    for index, calls in enumerate(requests):
        llm = llms[index]
        for call in calls:
            if (index, call.position) not in consumed:
                found.append((llm.start_ns or 0, order[llm.span_id], call.position, ToolCall(
                    call.name, call.arguments, llm, llm, call.call_id, False, True, call.arguments)))
    found.sort(key=lambda item: item[:3])
    return tuple(item[3] for item in found)


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



def compile_patterns(patterns: dict[str, str]) -> list[tuple[str, re.Pattern[str]]]:
    return [(name, re.compile(pattern, re.IGNORECASE)) for name, pattern in patterns.items()]


def first_match(patterns: Iterable[tuple[str, re.Pattern[str]]], text: str) -> str | None:
    for name, pattern in patterns:
        if pattern.search(text):
            return name
    return None


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
        self._patterns = compile_patterns(self.config.result_patterns)
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
        declarations = Declarations(trace, context, self.config.use_agent_tools)
        findings: list[Finding] = []
        for call in tool_calls(trace):
            if call.name in self._ignore:
                continue
            rules: list[str] = []
            details: dict[str, Any] = {}
            declared = declarations.for_call(call)
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
