"""Chat transcripts of agent runs (tau-bench, AgentRx): each run becomes one trace of made-up spans.

Input: a JSON array of runs, or JSON Lines with one run per line. A run is an object
`{task_id, trial, reward, info, traj}`; `traj` (or `messages`) is an OpenAI-style message list:
`role`, `content` (text, null, or a list of `{type: text, text}` parts), `tool_calls`
(`[{id, function: {name, arguments}}]`), `tool_call_id`, `name`, and in AgentRx an `index` on every
message. docs/formats.md has the full mapping; in short:

- the run is an AGENT root span; every assistant message an LLM span; every tool call a TOOL span
  (child of the root, linked to the LLM span that requested it), joined to its result message by
  `tool_call_id` (a result joins the latest call with its id that precedes it and has no result yet);
  user, system and other messages are events on the root span;
- a tool result whose text matches `TOOL_ERROR_PATTERN` makes its TOOL span status ERROR;
- times are synthetic (`halod.synthetic_time=true`): see `slot` below;
- ids are deterministic (halod.formats.ids.run_trace_id / run_span_id).

A run that is not an object or has no message list is a Problem and is skipped (its record index and
timeline slots are still used up, so later runs keep their ids and times). Bad messages or tool calls
inside a run are Problems too; the rest of the run is converted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from halod.formats import ids
from halod.formats._common import (
    Chunk,
    ChunkBuilder,
    Context,
    RecordError,
    Warn,
    json_text,
    reject_damaged,
    set_attributes,
    type_name,
)

# A tool result whose text matches this at its start (re.match) is an error: the TOOL span gets status
# ERROR with the result text as its message. tau-bench tools answer "Error: ..." when they refuse a call
# (73 such results in tau-bench airline, 34 in AgentRx retail).
TOOL_ERROR_PATTERN = re.compile(r"Error")

SCOPE_NAME = "halod.formats.transcript"
ROOT_NAME = "agent_run"
LLM_NAME = "chat"
_OUTCOME_SCALARS = (str, int, float, bool)
_HANDLED_KEYS = frozenset({"traj", "messages", "task_id", "trial", "reward", "info"})

# (span id, name, kind, message position, attributes) -> a child span of the run's root in that slot
_SpanMaker = Callable[[bytes, str, "Span.SpanKind.ValueType", int, dict[str, Any]], Span]


def messages_of(document: Any) -> Any:
    """The run's message list: `traj`, else `messages` (None when neither is present)."""
    return document.get("traj", document.get("messages")) if isinstance(document, dict) else None


def slots(document: Any) -> int:
    """How many timeline slots a run takes: one per message (0 for a run without a message list)."""
    messages = messages_of(document)
    return len(messages) if isinstance(messages, list) else 0


def text_of(content: Any) -> str | None:
    """A message's content as text: strings as they are, text parts joined, other values as JSON."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        texts = [part.get("text") for part in content if part.get("type") in ("text", None)]
        if texts and all(isinstance(text, str) for text in texts):
            return "".join(texts)
    return json_text(content)


def message_index(message: dict[str, Any], position: int) -> int:
    """The message's own `index` (AgentRx) when it is an integer, else its position in the list."""
    index = message.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


@dataclass
class _Call:
    position: int  # of the assistant message that made the call
    number: int  # position in that message's tool_calls
    call_id: str | None
    name: str
    arguments: str | None
    result: int | None = None  # position of the result message


@dataclass
class _Run:
    """One run, parsed: the message list with its calls joined to their results."""

    messages: list[dict[str, Any] | None]
    calls: dict[int, list[_Call]]  # assistant message position -> its valid calls
    orphans: set[int]  # positions of tool results that match no call


def _parse(document: Any, warn: Warn) -> _Run:
    if not isinstance(document, dict):
        raise RecordError(f"a run must be an object with traj, not {type_name(document)}")
    raw = messages_of(document)
    if raw is None:
        raise RecordError("missing traj (the run's list of messages)")
    if not isinstance(raw, list):
        raise RecordError(f"traj must be an array of messages, not {type_name(raw)}")
    messages: list[dict[str, Any] | None] = []
    for position, message in enumerate(raw):
        if isinstance(message, dict) and isinstance(message.get("role"), str):
            messages.append(message)
        else:
            warn(f"message {position}: not an object with a string role; skipped")
            messages.append(None)
    calls: dict[int, list[_Call]] = {}
    # Unanswered calls by id, most recent last. tau-bench reuses call ids (134 distinct ids for 1164 calls
    # in airline, repeated within a run too), so a result joins the latest unanswered call with its id
    # made before it, not just any call with that id.
    pending: dict[str, list[_Call]] = {}
    orphans: set[int] = set()
    for position, message in enumerate(messages):
        if message is None:
            continue
        if message["role"] == "assistant":
            tool_calls = message.get("tool_calls") or []
            if not isinstance(tool_calls, list):
                warn(f"message {position}: tool_calls must be an array, not {type_name(tool_calls)}; ignored")
                continue
            for number, entry in enumerate(tool_calls):
                call = _call(entry, position, number, warn)
                if call is not None:
                    calls.setdefault(position, []).append(call)
                    if call.call_id is not None:
                        pending.setdefault(call.call_id, []).append(call)
        elif message["role"] in ("tool", "function"):
            call_id = message.get("tool_call_id")
            waiting = pending.get(call_id) if isinstance(call_id, str) else None
            if waiting:
                waiting.pop().result = position
            else:
                orphans.add(position)
    return _Run(messages, calls, orphans)


def _call(entry: Any, position: int, number: int, warn: Warn) -> _Call | None:
    where = f"message {position}: tool_calls[{number}]"
    function = entry.get("function") if isinstance(entry, dict) else None
    if not isinstance(function, dict):
        warn(f"{where} has no function object; the call is skipped")
        return None
    name = function.get("name")
    if not isinstance(name, str) or not name:
        warn(f"{where}: function.name must be a non-empty string, not {type_name(name)}; the call is skipped")
        return None
    arguments = function.get("arguments")
    if arguments is not None and not isinstance(arguments, str):
        arguments = json_text(arguments)  # some writers store the arguments parsed; keep them as JSON text
    call_id = entry.get("id")
    return _Call(position, number, call_id if isinstance(call_id, str) and call_id else None, name, arguments)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _outcome(document: dict[str, Any]) -> dict[str, Any]:
    """The run's outcome attributes (see docs/formats.md)."""
    attributes: dict[str, Any] = {}
    info = _object(document.get("info"))
    reward_info = _object(info.get("reward_info"))
    reward = document.get("reward", reward_info.get("reward"))
    if isinstance(reward, bool):
        attributes["outcome.success"] = reward
    elif isinstance(reward, int | float):
        attributes["outcome.reward"] = float(reward)
        attributes["outcome.success"] = reward >= 1
    details = reward_info.get("info")
    if isinstance(details, dict):
        for key, value in details.items():
            if isinstance(value, _OUTCOME_SCALARS):
                attributes[f"outcome.{key}"] = value
    if isinstance(info.get("source"), _OUTCOME_SCALARS):
        attributes["outcome.ended_by"] = info["source"]
    if isinstance(info.get("user_cost"), _OUTCOME_SCALARS):
        attributes["outcome.user_cost"] = info["user_cost"]
    task = info.get("task")
    if isinstance(task, dict) and isinstance(task.get("user_id"), str):
        attributes["user.id"] = task["user_id"]
    return attributes


def emit(document: Any, where: str, record: int, clock_ns: int, ctx: Context, builder: ChunkBuilder) -> Iterator[Chunk]:
    """Convert one run (record index `record`, timeline starting at `clock_ns`) into its spans."""
    reject_damaged(document)

    def warn(message: str) -> None:
        builder.problem(where, message)

    run = _parse(document, warn)
    step = ctx.options.transcript_step_ns
    messages = run.messages
    task_id, trial = document.get("task_id"), document.get("trial")
    trace_id = ids.run_trace_id(ctx.dataset, task_id, trial, record)
    root_id = ids.run_span_id(trace_id, -1, "agent")
    common = {
        "session.id": f"{ctx.dataset}:{task_id}:{trial}:{record}",
        "agent.name": ctx.dataset,
        "halod.synthetic_time": True,
    }
    origin = ctx.origin({"service.name": ctx.service_name, "halod.dataset": ctx.dataset}, SCOPE_NAME)
    model = document.get("model")
    tools = [json_text(tool) for tool in ctx.options.tools or ()]

    def slot(position: int) -> int:
        return clock_ns + position * step

    def span(span_id: bytes, name: str, kind: Span.SpanKind.ValueType, position: int,
             attributes: dict[str, Any]) -> Span:
        out = Span(trace_id=trace_id, span_id=span_id, parent_span_id=root_id, name=name, kind=kind,
                   start_time_unix_nano=slot(position), end_time_unix_nano=slot(position) + step)
        set_attributes(out.attributes, {**attributes, **common})
        return out

    llm_spans = sum(1 for message in messages if message is not None and message["role"] == "assistant")
    yield from builder.reserve(1 + llm_spans + sum(len(calls) for calls in run.calls.values()) + len(run.orphans))
    yield from builder.add_span(_root(document, run, trace_id, root_id, record, slot, common), origin)
    since = 0  # the first message the next LLM call had not seen as input yet
    for position, message in enumerate(messages):
        if message is None:
            continue
        role = message["role"]
        if role == "assistant":
            attributes = _llm_attributes(message, position, run.calls.get(position, []), messages[since:position])
            if isinstance(model, str) and model:
                attributes["llm.model_name"] = model
            for number, tool in enumerate(tools):
                attributes[f"llm.tools.{number}.tool.json_schema"] = tool
            llm_id = ids.run_span_id(trace_id, position, "llm")
            yield from builder.add_span(span(llm_id, LLM_NAME, Span.SPAN_KIND_CLIENT, position, attributes), origin)
            since = position + 1
            for call in run.calls.get(position, []):
                tool_span = _tool_span(call, messages, span, trace_id)
                tool_span.links.add(trace_id=trace_id, span_id=llm_id)
                yield from builder.add_span(tool_span, origin)
        elif position in run.orphans:
            text = text_of(message.get("content"))
            call_id = message.get("tool_call_id")
            attributes = {
                "openinference.span.kind": "TOOL", "tool.name": message.get("name"), "output.value": text,
                "tool_call.id": call_id, "halod.message.index": message_index(message, position),
                "halod.tool_call.orphan": True,
            }
            orphan = span(ids.run_span_id(trace_id, position, "orphan"), str(message.get("name") or "tool"),
                          Span.SPAN_KIND_INTERNAL, position, {k: v for k, v in attributes.items() if v is not None})
            _error_status(orphan, text)
            yield from builder.add_span(orphan, origin)


def _root(document: dict[str, Any], run: _Run, trace_id: bytes, root_id: bytes, record: int,
          slot: Callable[[int], int],
          common: dict[str, Any]) -> Span:
    messages = run.messages
    texts = {position: text_of(message.get("content")) for position, message in enumerate(messages) if message}
    first_user = next((texts[p] for p, m in enumerate(messages) if m and m["role"] == "user"), None)
    last_answer = next((texts[p] for p in range(len(messages) - 1, -1, -1)
                        if (m := messages[p]) and m["role"] == "assistant" and texts[p]), None)
    system = next((texts[p] for p, m in enumerate(messages) if m and m["role"] == "system"), None)
    attributes: dict[str, Any] = {
        "openinference.span.kind": "AGENT",
        "input.value": first_user,
        "output.value": last_answer,
        "halod.run.task_id": document.get("task_id"),
        "halod.run.trial": document.get("trial"),
        "halod.run.index": record,
        "halod.run.system_prompt": system,
        "halod.message.count": len(messages),
        **_outcome(document),
    }
    if document.get("info") is not None:
        attributes["halod.run.info"] = json_text(document["info"])
    for key, value in document.items():
        if key not in _HANDLED_KEYS and value is not None and value != {} and value != []:
            attributes[f"halod.run.{key}"] = value if isinstance(value, _OUTCOME_SCALARS) else json_text(value)
    root = Span(trace_id=trace_id, span_id=root_id, name=ROOT_NAME, kind=Span.SPAN_KIND_INTERNAL,
                start_time_unix_nano=slot(0), end_time_unix_nano=slot(len(messages)))
    set_attributes(root.attributes, {k: v for k, v in {**attributes, **common}.items() if v is not None})
    for position, message in enumerate(messages):
        if message is None or message["role"] in ("assistant", "tool", "function"):
            continue
        role = message["role"]
        name = {"user": "user_message", "system": "system_message"}.get(role, "message")
        event = root.events.add(name=name, time_unix_nano=slot(position))
        event_attributes = {"content": texts[position], "halod.message.index": message_index(message, position)}
        if name == "message":
            event_attributes["role"] = role
        set_attributes(event.attributes, {k: v for k, v in event_attributes.items() if v is not None})
    return root


def _llm_attributes(message: dict[str, Any], position: int, calls: list[_Call],
                    new_input: list[dict[str, Any] | None]) -> dict[str, Any]:
    text = text_of(message.get("content"))
    prefix = "llm.output_messages.0.message."
    attributes: dict[str, Any] = {
        "openinference.span.kind": "LLM",
        "halod.message.index": message_index(message, position),
        "input.value": json_text([m for m in new_input if m is not None]),
        "input.mime_type": "application/json",
        f"{prefix}role": "assistant",
    }
    if text:
        attributes["output.value"] = text
        attributes[f"{prefix}content"] = text
    elif message.get("tool_calls"):
        attributes["output.value"] = json_text(message["tool_calls"])
        attributes["output.mime_type"] = "application/json"
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        attributes[f"{prefix}refusal"] = refusal
    for call in calls:
        call_prefix = f"{prefix}tool_calls.{call.number}.tool_call."
        attributes[f"{call_prefix}function.name"] = call.name
        if call.arguments is not None:
            attributes[f"{call_prefix}function.arguments"] = call.arguments
        if call.call_id is not None:
            attributes[f"{call_prefix}id"] = call.call_id
    return attributes


def _tool_span(call: _Call, messages: list[dict[str, Any] | None], span: _SpanMaker, trace_id: bytes) -> Span:
    call_message = messages[call.position]
    assert call_message is not None
    attributes: dict[str, Any] = {
        "openinference.span.kind": "TOOL",
        "tool.name": call.name,
        "halod.tool_call.message_index": message_index(call_message, call.position),
        "halod.tool_call.position": call.number,
    }
    if call.arguments is not None:
        attributes["tool.parameters"] = call.arguments
        attributes["input.value"] = call.arguments
    if call.call_id is not None:
        attributes["tool_call.id"] = call.call_id
    text: str | None = None
    if call.result is None:
        position = call.position
        attributes["halod.message.index"] = message_index(call_message, call.position)
        attributes["halod.tool_call.result_missing"] = True
    else:
        position = call.result
        result = messages[call.result]
        assert result is not None
        text = text_of(result.get("content"))
        attributes["halod.message.index"] = message_index(result, call.result)
        if text is not None:
            attributes["output.value"] = text
    tool_span: Span = span(ids.run_span_id(trace_id, call.position, "tool", call.number), call.name,
                           Span.SPAN_KIND_INTERNAL, position, attributes)
    _error_status(tool_span, text)
    return tool_span


def _error_status(span: Span, text: str | None) -> None:
    if text is not None and TOOL_ERROR_PATTERN.match(text):
        span.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message=text))


def read_document(document: Any, ctx: Context, builder: ChunkBuilder) -> Iterator[Chunk]:
    """A JSON array of runs (record N = element N); one object is read as a single run."""
    runs = document if isinstance(document, list) else [document]
    clock = ctx.options.transcript_start_ns
    for index, run in enumerate(runs):
        where = f"record {index}"
        try:
            yield from emit(run, where, index, clock, ctx, builder)
        except RecordError as exc:
            builder.problem(where, str(exc))
        clock += slots(run) * ctx.options.transcript_step_ns

