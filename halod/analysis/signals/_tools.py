"""The tool calls of a trace and the tools declared to them, read once per trace view and shared by
the tool detectors (unknown_tool, invalid_tool_args, repeated_tool_call, tool_loop, text_tool_call).

**Tool calls of a trace** (`tool_calls`): every TOOL span is a call (name: `tool_name_of`; arguments:
`tool_arguments`). Its *requester* is the LLM span that asked for it: the latest LLM span starting at
or before it whose requested calls (`_outputs.requested_calls`) carry the TOOL span's call id
(`tool_call.id`, `gen_ai.tool.call.id`), else the latest LLM span starting at or before it. A
requested call that no TOOL span executes (matched by call id, else by name among its requester's
calls) is a call of its own, with the LLM span as its evidence. Calls are in start-time order.

**Declared tools of a call** (`declarations(...).for_call`), first found wins:
1. the requester's (or, for an unexecuted request, the LLM span's own) `llm.tools.N.tool.json_schema`
   (OpenAI `{"type": "function", "function": {name, parameters}}`, or flat `{name, parameters}` /
   `{name, input_schema}`), or its `gen_ai.tool.definitions` (a JSON list of the same);
2. `agent.tools` (a list of names) on the nearest ancestor span carrying it (OpenAI Agents SDK via
   OpenInference), when `use_agent_tools`; schemas taken from `context.declared_tools` when present;
3. `context.declared_tools` (the configured tools of the service or agent).
None found: the call's declared set is unknown (detectors then do not judge it against one).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

from halod.analysis.signals._outputs import requested_calls, text_or_none, tool_name_of
from halod.analysis.signals.base import NOT_JSON, DetectContext, parse_json
from halod.analysis.trace import SpanView, TraceSpans

MAX_TOOLS = 512
"""The most tool declarations read from one span."""
_MAX_DEPTH = 64


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


def declarations(trace: TraceSpans, context: DetectContext, use_agent_tools: bool = True) -> Declarations:
    """The trace's `Declarations` for `context`, shared by the detectors that resolve declared tools
    (its per-span results are cached)."""
    key = f"declarations.{use_agent_tools}"
    found: Declarations | None = trace.memo.get(key)
    if found is None or found.context is not context:
        found = trace.memo[key] = Declarations(trace, context, use_agent_tools)
    return found


class Declarations:
    """Resolves the declared tool set of calls and LLM spans of one trace (cached per span). Holds
    the trace's spans, not the trace, so that the trace's memo holding it makes no reference cycle."""

    def __init__(self, trace: TraceSpans, context: DetectContext, use_agent_tools: bool = True) -> None:
        self._by_id = trace.by_id
        self.context = context
        # Most traces have no `agent.tools` anywhere: then no parent chain is walked.
        self._use_agent_tools = use_agent_tools and any(span.get("agent.tools") is not None for span in trace.spans)
        self._context_tools = _context_tools(context)
        self._agent: dict[str, list[str] | None] = {}

    def own(self, span: SpanView) -> DeclaredTools | None:
        """What an LLM span declares itself."""
        return span_declared_tools(span)

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
            current = self._by_id.get(parent) if parent else None
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
        call_id = text_or_none(span.get("tool_call.id")) or text_or_none(span.get("gen_ai.tool.call.id"))
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
