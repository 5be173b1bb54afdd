"""Tool detectors: tool_error, unknown_tool, invalid_tool_args, repeated_tool_call, tool_loop,
text_tool_call. Real dataset traces (tests/traces.py) with expectations computed independently from
the raw transcript JSON, plus small hand-built traces, and each module docstring's example."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from halod.analysis.signals import (
    _outputs,
    _tools,
    invalid_tool_args,
    repeated_tool_call,
    text_tool_call,
    tool_error,
    tool_loop,
    unknown_tool,
)
from halod.analysis.signals.base import DetectContext, Finding
from halod.analysis.trace import SpanView, TraceSpans
from tests.traces import (
    AIRLINE,
    AIRLINE_TOOLS,
    ANY_AGENT,
    HALO,
    RETAIL,
    RETAIL_TOOLS,
    airline,
    retail,
    runs,
    traces_of,
)

CTX = DetectContext()
DETECTORS = {
    "tool_error": tool_error,
    "unknown_tool": unknown_tool,
    "invalid_tool_args": invalid_tool_args,
    "repeated_tool_call": repeated_tool_call,
    "tool_loop": tool_loop,
    "text_tool_call": text_tool_call,
}

# --- a tiny builder of hand-made traces ----------------------------------------------------------

_ids = itertools.count(1)


def span(kind: str, name: str, *, attrs: dict[str, Any] | None = None, parent: str | None = None,
         start: int | None = None, status: str = "UNSET", status_message: str | None = None,
         tool_name: str | None = None, tool_arguments: str | None = None, output_text: str | None = None,
         span_id: str | None = None) -> SpanView:
    number = next(_ids)
    at = start if start is not None else number * 1_000
    return SpanView({
        "trace_id": "t" * 32, "span_id": span_id or f"{number:016x}", "parent_span_id": parent, "name": name,
        "semantic_kind": kind, "service_name": "svc", "start_ns": at, "end_ns": at + 500,
        "status_code": status, "status_message": status_message, "tool_name": tool_name,
        "tool_arguments": tool_arguments, "output_text": output_text, "input_text": None,
        "attributes": orjson.dumps(attrs or {}).decode(), "events": None,
    })


def fn(name: str, properties: dict[str, Any] | None = None, required: list[str] | None = None,
       **extra: Any) -> dict[str, Any]:
    """An OpenAI-style tool definition."""
    parameters = {"type": "object", "properties": properties or {}, "required": required or [], **extra}
    return {"type": "function", "function": {"name": name, "description": "", "parameters": parameters}}


def llm(*, calls: list[tuple[str, str, str | None]] = (), tools: list[dict[str, Any]] = (),  # type: ignore[assignment]
        text: str | None = None, **kwargs: Any) -> SpanView:
    """An OpenInference LLM span declaring `tools` and requesting `calls` [(name, arguments, id)]."""
    attrs: dict[str, Any] = {"openinference.span.kind": "LLM"}
    for index, definition in enumerate(tools):
        attrs[f"llm.tools.{index}.tool.json_schema"] = json.dumps(definition)
    prefix = "llm.output_messages.0.message"
    attrs[f"{prefix}.role"] = "assistant"
    if text is not None:
        attrs[f"{prefix}.content"] = text
    for index, (name, arguments, call_id) in enumerate(calls):
        attrs[f"{prefix}.tool_calls.{index}.tool_call.function.name"] = name
        attrs[f"{prefix}.tool_calls.{index}.tool_call.function.arguments"] = arguments
        if call_id is not None:
            attrs[f"{prefix}.tool_calls.{index}.tool_call.id"] = call_id
    attrs.update(kwargs.pop("attrs", {}))
    return span("LLM", "chat", attrs=attrs, output_text=text, **kwargs)


def tool(name: str, arguments: str | None = "{}", output: str | None = "ok", *, call_id: str | None = None,
         attrs: dict[str, Any] | None = None, **kwargs: Any) -> SpanView:
    extra = {"openinference.span.kind": "TOOL", "tool.name": name, **(attrs or {})}
    if call_id is not None:
        extra["tool_call.id"] = call_id
    return span("TOOL", name, attrs=extra, tool_name=name, tool_arguments=arguments, output_text=output, **kwargs)


def trace(*spans: SpanView) -> TraceSpans:
    return TraceSpans("t" * 32, list(spans))


def run(module: Any, trace_: TraceSpans, context: DetectContext = CTX, **config: Any) -> list[Finding]:
    return module.Detector(module.Config(**config)).detect(trace_, context)  # type: ignore[no-any-return]


def fired(module: Any, traces: list[TraceSpans], context: DetectContext = CTX, **config: Any) -> list[Finding]:
    detector = module.Detector(module.Config(**config))
    return [finding for t in traces for finding in detector.detect(t, context)]


def traces_fired(module: Any, traces: list[TraceSpans], **config: Any) -> int:
    detector = module.Detector(module.Config(**config))
    return sum(1 for t in traces if detector.detect(t, CTX))


# --- raw-transcript helpers (independent of halod) -------------------------------------------------


def message_index(message: dict[str, Any], position: int) -> int:
    """The index halod gives a message: AgentRx's own `index`, else its position."""
    index = message.get("index")
    return index if isinstance(index, int) and not isinstance(index, bool) else position


def raw_calls(record: dict[str, Any]) -> list[tuple[int, int, str, str, str]]:
    """(message index, position in tool_calls, name, arguments text, call id) of a run's calls, in order."""
    calls = []
    for position, message in enumerate(record["traj"]):
        for slot, call in enumerate(message.get("tool_calls") or []):
            function = call["function"]
            calls.append((message_index(message, position), slot, function["name"], function["arguments"], call["id"]))
    return calls


def canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        return arguments.strip()


def finding_keys(traces: list[TraceSpans], findings: list[Finding], attribute: str) -> set[tuple[int, int]]:
    """(run index, span attribute) of each finding's span."""
    spans = {s.span_id: (t.root.get("halod.run.index"), s) for t in traces for s in t if t.root is not None}
    keys = set()
    for finding in findings:
        run_index, s = spans[finding.span_id]  # type: ignore[index]
        keys.add((run_index, s.get(attribute)))
    return keys


def call_keys(traces: list[TraceSpans], findings: list[Finding]) -> set[tuple[int, int, int]]:
    """(run index, calling message index, position) of each finding's TOOL span."""
    spans = {s.span_id: (t.root.get("halod.run.index"), s) for t in traces for s in t if t.root is not None}
    return {
        (spans[f.span_id][0], spans[f.span_id][1].get("halod.tool_call.message_index"),  # type: ignore[index]
         spans[f.span_id][1].get("halod.tool_call.position"))  # type: ignore[index]
        for f in findings
    }


# --- the contract ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_contract(name: str) -> None:
    module = DETECTORS[name]
    detector = module.Detector(module.Config())
    assert detector.name == name
    assert module.__doc__ and "**Rule.**" in module.__doc__ and "**Example.**" in module.__doc__
    for field_name, info in module.Config.model_fields.items():
        assert info.description, f"{name}.{field_name} has no description"
    assert module.Config().enabled is True
    with pytest.raises(ValidationError):
        module.Config(no_such_knob=1)
    busy = trace(llm(calls=[("x", "{}", "1")]), tool("x", call_id="1", output="Error: boom"),
                 tool("x", output="Error: boom"), tool("x"), tool("x"), tool("x"))
    assert module.Detector(module.Config(enabled=False)).detect(busy, CTX) == []


@pytest.mark.parametrize("module, knob", [(tool_error, "patterns"), (unknown_tool, "result_patterns"),
                                          (text_tool_call, "tag_patterns")])
def test_bad_regex_is_a_config_error(module: Any, knob: str) -> None:
    with pytest.raises(ValidationError, match="bad"):
        module.Config(**{knob: {"bad": "(unclosed"}})


# --- tool_error ------------------------------------------------------------------------------------


def raw_error_results(path: Path) -> set[tuple[int, int]]:
    """(run index, message index) of every tool result starting with "Error"."""
    return {
        (run_index, message_index(message, position))
        for run_index, record in enumerate(runs(path))
        for position, message in enumerate(record["traj"])
        if message.get("role") == "tool" and str(message.get("content") or "").startswith("Error")
    }


@pytest.mark.parametrize("path, traces, expected", [(AIRLINE, airline, 73), (RETAIL, retail, 34)])
def test_tool_error_on_tau_bench_is_exactly_the_error_results(path: Path, traces: Any, expected: int) -> None:
    # The dataset README counts 73 airline results starting with "Error:" (AgentRx retail: 34). The
    # detector finds exactly those spans and nothing else: every other tau-bench result is JSON, a
    # number, a user id, "Transfer successful" or empty, none of which the anchored patterns take.
    findings = fired(tool_error, traces())
    assert len(findings) == expected
    assert finding_keys(traces(), findings, "halod.message.index") == raw_error_results(path)
    assert all(f.details["rules"][:2] == ["status", "error_prefix"] for f in findings)  # the importer sets ERROR too


def test_tool_error_without_status_still_matches_the_results() -> None:
    findings = fired(tool_error, airline(), error_status=False)
    assert len(findings) == 73 and {f.details["rule"] for f in findings} == {"error_prefix"}


def test_tool_error_on_halo_and_any_agent() -> None:
    halo = traces_of(*HALO)
    findings = fired(tool_error, halo)
    errors = [s for t in halo for s in t.tool_spans if s.is_error]
    assert len(errors) == 3 and {f.span_id for f in findings} == {s.span_id for s in errors}
    assert all(f.details["rules"] == ["status", "error_occurred"] and f.tool == "list_files" for f in findings)
    assert fired(tool_error, traces_of(*ANY_AGENT)) == []  # all seven runs succeeded


def test_tool_error_docstring_example() -> None:
    bad = tool("book_reservation", output="Error: not enough seats on flight HAT290")
    [finding] = run(tool_error, trace(bad))
    assert finding.span_id == bad.span_id and finding.tool == "book_reservation" and finding.severity == "error"
    assert finding.details == {"rule": "error_prefix", "rules": ["error_prefix"], "pattern": "error_prefix",
                               "result": "Error: not enough seats on flight HAT290"}
    assert run(tool_error, trace(tool("db", output="No error occurred; 3 rows written"))) == []
    assert run(tool_error, trace(tool("db", output='{"error": null, "rows": 3}'))) == []


@pytest.mark.parametrize("result, rule", [
    ("Error: file not found", "error_prefix"),
    ("ERROR - connection refused", "error_prefix"),
    ("[error] quota exceeded", "error_prefix"),
    ("Error code: 429 - rate limited", "error_prefix"),
    ("Exception: division by zero", "error_prefix"),
    ("An error occurred while running the tool. Please try again.", "error_occurred"),
    ("Error executing tool search: timeout", "error_occurred"),
    ("Unexpected error occurred", "error_occurred"),
    ("Traceback (most recent call last):\n  File \"x.py\", line 1", "traceback"),
    ("ValueError: invalid literal for int()", "exception_name"),
    ("httpx.ConnectError(\"[Errno 111] Connection refused\")", "exception_name"),
    ("Failed to fetch https://example.com", "failed_to"),
    ("Unable to parse the date", "failed_to"),
    ("Could not find user 42", "failed_to"),
    ("HTTP/1.1 404 Not Found", "http_status"),
    ("404 Client Error: Not Found for url: https://x", "http_status"),
    ("HTTP Error 503: Service Unavailable", "http_status"),
    ("Status code: 500", "http_status"),
    ("Permission denied: /etc/shadow", "denied"),
    ("Request timed out after 30 s", "timed_out"),
    ('{"error": "not found"}', "json_error"),
    ('{"errors": [{"message": "bad"}]}', "json_error"),
    ('{"success": false, "message": "nope"}', "json_error"),
    ('{"content": [], "isError": true}', "json_error"),
])
def test_tool_error_patterns_match(result: str, rule: str) -> None:
    [finding] = run(tool_error, trace(tool("t", output=result)))
    assert finding.details["rule"] == rule


@pytest.mark.parametrize("result", [
    "The error handling section of the manual says to retry.",
    "Errors are rare: 0.1% of requests.",
    "No error occurred; 3 rows written",
    "Found 3 results. One mentions an Error: in its title.",
    "Status: 200 OK",
    "HTTP/1.1 200 OK",
    "1203.0",
    "Transfer successful",
    "",
    '{"error": null, "rows": 3}',
    '{"errors": [], "data": {}}',
    '{"success": true, "result": {"steps": []}}',
    '{"ok": 0}',  # 0 is not false in JSON
    "error_rate=0.02",
    "user not found" * 1,  # a lower-level message without an error marker is not enough
    "MyErrorHandler registered",
])
def test_tool_error_patterns_spare_ordinary_results(result: str) -> None:
    assert run(tool_error, trace(tool("t", output=result))) == []


def test_tool_error_status_error_type_and_knobs() -> None:
    failed = tool("t", output="fine", status="ERROR", status_message="boom")
    typed = tool("u", output="fine", attrs={"error.type": "TimeoutError"})
    findings = run(tool_error, trace(failed, typed))
    assert [(f.details["rule"], f.tool) for f in findings] == [("status", "t"), ("error_type", "u")]
    assert findings[0].details["status_message"] == "boom"
    assert run(tool_error, trace(failed, typed), error_status=False, error_type_attribute=False) == []
    assert run(tool_error, trace(failed), ignore_tools=["t"]) == []
    # an LLM span in ERROR is not a tool error (llm_error's business)
    assert run(tool_error, trace(llm(text="x", status="ERROR"))) == []
    # custom patterns replace the defaults; scan_chars bounds the head the patterns see
    assert run(tool_error, trace(tool("t", output="oops")), patterns={"oops": r"\Aoops"})[0].details["rule"] == "oops"
    long = tool("t", output="x" * 100 + "Traceback (most recent call last)")
    assert run(tool_error, trace(long), patterns={"tb": "Traceback"}, scan_chars=50) == []


# --- unknown_tool ----------------------------------------------------------------------------------


def tool_names(path: Path) -> set[str]:
    return {definition["function"]["name"] for definition in json.loads(path.read_text())}


def test_unknown_tool_is_silent_on_tau_bench_with_its_tools() -> None:
    # Independently: every name gpt-4o / the AgentRx agent called is among the declared tools.
    for path, tools, traces in ((AIRLINE, AIRLINE_TOOLS, airline), (RETAIL, RETAIL_TOOLS, retail)):
        called = {call[2] for record in runs(path) for call in raw_calls(record)}
        assert called <= tool_names(tools)
        assert fired(unknown_tool, traces()) == []


def test_unknown_tool_real_calls_against_another_tool_set() -> None:
    # The airline runs imported without their tools, judged against the retail tools (a configured
    # list): every call of an airline-only tool is undeclared, shared ones (think, calculate, ...) are not.
    traces = traces_of(AIRLINE)
    context = DetectContext(declared_tools={d["function"]["name"]: d for d in json.loads(RETAIL_TOOLS.read_text())})
    findings = fired(unknown_tool, traces, context)
    retail_names = tool_names(RETAIL_TOOLS)
    expected = Counter(call[2] for record in runs(AIRLINE) for call in raw_calls(record)
                       if call[2] not in retail_names)
    assert Counter(f.tool for f in findings) == expected
    assert all(f.details["rules"] == ["undeclared"] and f.details["declared_from"] == "context" for f in findings)
    assert fired(unknown_tool, traces) == []  # no declared tool set known: silent


def test_unknown_tool_on_halo_uses_agent_tools() -> None:
    halo = traces_of(*HALO)
    assert fired(unknown_tool, halo) == []  # the agent span says ["list_files", "read_file", "grep"]
    declarations = [_tools.declarations(t, CTX) for t in halo]
    sources = {d.for_call(call).source for t, d in zip(halo, declarations, strict=True)  # type: ignore[union-attr]
               for call in _tools.tool_calls(t)}
    assert sources == {"agent.tools"}
    # without agent.tools and with a configured list that lacks grep and read_file, those calls are unknown
    context = DetectContext(declared_tools={"list_files": {}})
    findings = fired(unknown_tool, halo, context, use_agent_tools=False)
    expected = Counter(s.tool_name for t in halo for s in t.tool_spans if s.tool_name != "list_files")
    assert Counter(f.tool for f in findings) == expected and sum(expected.values()) == 5


def test_unknown_tool_on_any_agent() -> None:
    traces = traces_of(*ANY_AGENT)
    assert fired(unknown_tool, traces) == []  # the dumps carry no tool definitions
    context = DetectContext(declared_tools={"get_current_time": {}, "write_file": {}})
    findings = fired(unknown_tool, traces, context)
    # frameworks add their own final-answer tool, which a configured list of the user's tools lacks
    assert Counter(f.tool for f in findings) == {"final_output": 2, "final_answer": 2}
    assert fired(unknown_tool, traces, context, ignore_tools=["final_output", "final_answer"]) == []


def test_unknown_tool_docstring_example() -> None:
    weather = fn("get_weather", {"city": {"type": "string"}}, ["city"])
    caller = llm(tools=[weather], calls=[("get_forecast", '{"city": "Paris"}', "c1")])
    ran = tool("get_forecast", '{"city": "Paris"}', "Error: unknown tool get_forecast", call_id="c1")
    [finding] = run(unknown_tool, trace(caller, ran))
    assert finding.span_id == ran.span_id and finding.tool == "get_forecast" and finding.severity == "error"
    assert finding.details == {"rules": ["undeclared", "result"], "declared_from": "llm.tools", "declared_count": 1,
                               "did_you_mean": ["get_weather"], "pattern": "unknown_tool",
                               "result": "Error: unknown tool get_forecast"}


def test_unknown_tool_requested_but_never_run_points_at_the_llm_span() -> None:
    caller = llm(tools=[fn("search")], calls=[("search", "{}", "a"), ("browse", "{}", "b")])
    ran = tool("search", call_id="a")
    [finding] = run(unknown_tool, trace(caller, ran))
    assert finding.span_id == caller.span_id and finding.tool == "browse"


def test_unknown_tool_matches_tool_spans_to_their_requester() -> None:
    # by call id even when another LLM span came in between; else the latest LLM span before it
    first = llm(tools=[fn("a")], calls=[("a", "{}", "x")], start=1)
    second = llm(tools=[fn("b")], calls=[("b", "{}", "y")], start=2)
    by_id = tool("a", call_id="x", start=3)
    by_time = tool("b", start=4)
    assert run(unknown_tool, trace(first, second, by_id, by_time)) == []
    stray = tool("a", start=5)  # no id: its requester is `second`, which did not declare `a`
    [finding] = run(unknown_tool, trace(first, second, by_id, by_time, stray))
    assert finding.span_id == stray.span_id


def test_unknown_tool_declarations_from_genai_and_agent_tools() -> None:
    definitions = json.dumps([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}])
    output = json.dumps([{"role": "assistant", "parts": [
        {"type": "text", "content": "let me check"},
        {"type": "tool_call", "id": "q", "name": "lookupp", "arguments": {"k": 1}}]}])
    chat = span("LLM", "chat", attrs={"gen_ai.operation.name": "chat", "gen_ai.tool.definitions": definitions,
                                      "gen_ai.output.messages": output})
    [finding] = run(unknown_tool, trace(chat))
    assert finding.tool == "lookupp" and finding.details["declared_from"] == "gen_ai.tool.definitions"
    assert finding.details["did_you_mean"] == ["lookup"]
    agent = span("AGENT", "agent", attrs={"agent.tools": ["read"]})
    turn = span("CHAIN", "turn", parent=agent.span_id)
    ran = tool("write", parent=turn.span_id)
    [finding] = run(unknown_tool, trace(agent, turn, llm(parent=turn.span_id), ran))
    assert finding.span_id == ran.span_id and finding.details["declared_from"] == "agent.tools"
    assert run(unknown_tool, trace(agent, turn, ran), use_agent_tools=False) == []


@pytest.mark.parametrize("result", [
    "Error: unknown tool 'fetch'",
    "fetch is not a valid tool, try one of [search, browse].",
    "Tool fetch not found in agent Assistant",
    "Error: The tool 'fetch' is not available.",
    "No such tool: fetch",
    "Action 'fetch' don't exist, these are the only available Actions: search",
])
def test_unknown_tool_results_saying_so(result: str) -> None:
    [finding] = run(unknown_tool, trace(tool("fetch", output=result)))  # no declared set: only the result speaks
    assert finding.details["rules"] == ["result"]


@pytest.mark.parametrize("result", [
    "Error: user not found",
    "The tool returned: user not found",
    "Use the search tool for anything else.",
    '{"name": "tool rack", "status": "not found in store"}',
])
def test_unknown_tool_spares_other_results(result: str) -> None:
    assert run(unknown_tool, trace(tool("fetch", output=result))) == []


# --- invalid_tool_args -----------------------------------------------------------------------------


_PYTHON_TYPES = {"string": str, "integer": int, "number": (int, float), "array": list, "object": dict,
                 "boolean": bool}


@pytest.mark.parametrize("path, tools, traces, nested_extras", [
    (AIRLINE, AIRLINE_TOOLS, airline, 1), (RETAIL, RETAIL_TOOLS, retail, 0)])
def test_invalid_tool_args_on_tau_bench(path: Path, tools: Path, traces: Any, nested_extras: int) -> None:
    # Independently: every call's arguments are JSON objects carrying every required property with the
    # declared top-level type and no top-level property outside the schema, so nothing fires by default.
    # tau-bench's schemas never state additionalProperties; with unknown_properties_when_unspecified,
    # the calls whose array items carry undeclared keys are flagged (one airline update_reservation_flights
    # call gives each flight an origin and a destination; tau-bench ignored them and the run passed).
    schemas = {d["function"]["name"]: d["function"]["parameters"] for d in json.loads(tools.read_text())}
    assert all("additionalProperties" not in json.dumps(schema) for schema in schemas.values())
    with_extras = set()
    for run_index, record in enumerate(runs(path)):
        for index, position, name, arguments, _ in raw_calls(record):
            value, schema = json.loads(arguments), schemas[name]
            assert set(schema["required"]) <= set(value) <= set(schema["properties"])
            for key, item in value.items():
                declared = schema["properties"][key]
                assert isinstance(item, _PYTHON_TYPES[declared["type"]])
                item_properties = declared.get("items", {}).get("properties")
                if isinstance(item, list) and item_properties is not None and any(
                        set(element) - set(item_properties) for element in item):
                    with_extras.add((run_index, index, position))
    assert len(with_extras) == nested_extras
    assert fired(invalid_tool_args, traces()) == []
    strict = fired(invalid_tool_args, traces(), unknown_properties_when_unspecified=True)
    assert call_keys(traces(), strict) == with_extras
    assert all(f.severity == "warning" and {v["rule"] for v in f.details["violations"]} == {"unknown_property"}
               for f in strict)


def test_invalid_tool_args_on_a_real_call_with_broken_arguments() -> None:
    # A real airline trace, its first update_reservation_flights call re-issued with the cabin misspelt,
    # a flight without its date and an extra property: judged against the real declared schema.
    source = next(t for t in airline() if any(s.tool_name == "update_reservation_flights" for s in t.tool_spans))
    original = next(s for s in source.tool_spans if s.tool_name == "update_reservation_flights")
    arguments = json.loads(original.tool_arguments)
    arguments["cabin"] = "first"
    arguments["flights"][0].pop("date")
    arguments["note"] = "asap"
    broken = SpanView({**original.row, "tool_arguments": json.dumps(arguments),
                       "span_id": "b" * 16, "attributes": orjson.dumps({
                           **original.attrs, "tool.parameters": json.dumps(arguments)}).decode()})
    edited = TraceSpans(source.trace_id, [s for s in source.spans if s is not original] + [broken])
    [finding] = run(invalid_tool_args, edited)
    assert finding.span_id == broken.span_id and finding.tool == "update_reservation_flights"
    rules = {(v["path"], v["rule"]) for v in finding.details["violations"]}
    assert rules == {("$.cabin", "enum"), ("$.flights[0]", "required")}  # "note": additionalProperties unspecified
    [strict] = run(invalid_tool_args, edited, unknown_properties_when_unspecified=True)
    assert ("$.note", "unknown_property") in {(v["path"], v["rule"]) for v in strict.details["violations"]}
    assert strict.severity == "error"


def test_invalid_tool_args_on_any_agent_prefers_what_ran() -> None:
    # LlamaIndex's dump records the requested arguments as "{}" although the tools ran with the right
    # ones: the TOOL span's arguments are judged, so nothing fires; requested-only calls are judged as asked.
    traces = traces_of(*ANY_AGENT)
    schemas = {
        "get_current_time": fn("get_current_time", {"timezone": {"type": "string"}}, ["timezone"]),
        "write_file": fn("write_file", {"text": {"type": "string"}}, ["text"]),
    }
    assert fired(invalid_tool_args, traces, DetectContext(declared_tools=schemas)) == []
    llama = traces_of(next(p for p in ANY_AGENT if p.name.startswith("LLAMA")))
    requests_only = [TraceSpans(t.trace_id, [s for s in t.spans if s.semantic_kind != "TOOL"]) for t in llama]
    findings = fired(invalid_tool_args, requests_only, DetectContext(declared_tools=schemas))
    assert sorted(f.tool for f in findings) == ["get_current_time", "write_file"]
    assert all(f.details["violations"][0]["rule"] == "required" for f in findings)


def test_invalid_tool_args_docstring_example() -> None:
    certificate = fn("send_certificate", {"user_id": {"type": "string"}, "amount": {"type": "number"}},
                     ["user_id", "amount"], additionalProperties=False)
    caller = llm(tools=[certificate], calls=[("send_certificate", '{"amount": "100", "note": "sorry"}', "c")])
    ran = tool("send_certificate", '{"amount": "100", "note": "sorry"}', call_id="c")
    [finding] = run(invalid_tool_args, trace(caller, ran))
    assert finding.span_id == ran.span_id and finding.severity == "error" and finding.details["count"] == 3
    assert finding.details["violations"] == [
        {"path": "$", "rule": "required", "message": "missing required property 'user_id'"},
        {"path": "$.amount", "rule": "type", "message": "expected number, got string"},
        {"path": "$.note", "rule": "unknown_property", "message": "property 'note' is not declared"},
    ]
    good = tool("send_certificate", '{"user_id": "sara_doe_496", "amount": 100}', call_id="c")
    assert run(invalid_tool_args, trace(caller, good)) == []


def test_invalid_tool_args_json() -> None:
    declared = [fn("f", {"q": {"type": "string"}})]
    # requested arguments must be JSON
    caller = llm(tools=declared, calls=[("f", '{"q": "x"', "1")])
    [finding] = run(invalid_tool_args, trace(caller))
    assert finding.span_id == caller.span_id and finding.details["violations"][0]["rule"] == "invalid_json"
    # a TOOL span's plain-text input is fine when nothing says it should be JSON...
    assert run(invalid_tool_args, trace(tool("g", "weather in Paris"))) == []
    # ...but not when it looks like JSON, or the tool has a schema
    assert run(invalid_tool_args, trace(tool("g", "{'q': 'x'}")))[0].details["violations"][0]["rule"] == "invalid_json"
    assert run(invalid_tool_args, trace(llm(tools=declared), tool("f", "x")))[0].details["count"] == 1
    # a TOOL span rendering its input as text, when the model's request was JSON: the request is judged
    assert run(invalid_tool_args, trace(llm(tools=declared, calls=[("f", '{"q": "x"}', "1")]),
                                        tool("f", "q=x", call_id="1"))) == []
    # blank arguments are {}; no recorded arguments are not judged
    needs = [fn("f", {"q": {"type": "string"}}, ["q"])]
    assert run(invalid_tool_args, trace(llm(tools=needs, calls=[("f", " ", None)])))[0].details["violations"][0][
        "rule"] == "required"
    assert run(invalid_tool_args, trace(llm(tools=needs), tool("f", None))) == []
    # undeclared tools are unknown_tool's business
    assert run(invalid_tool_args, trace(llm(tools=needs), tool("h", '{"zzz": 1}'))) == []


def check(value: Any, schema: dict[str, Any], strict: bool = False) -> list[tuple[str, str]]:
    return [(v.path, v.rule) for v in invalid_tool_args.check_schema(value, schema, strict_properties=strict)]


def test_schema_checker() -> None:
    assert check(1, {"type": "integer"}) == [] and check(1.0, {"type": "integer"}) == []
    assert check(1.5, {"type": "integer"}) == [("$", "type")]
    assert check(True, {"type": "integer"}) == [("$", "type")] and check(True, {"type": "number"}) == [("$", "type")]
    assert check("1", {"type": "number"}) == [("$", "type")] and check(1, {"type": "boolean"}) == [("$", "type")]
    assert check(None, {"type": ["string", "null"]}) == [] and check(None, {"type": "string", "nullable": True}) == []
    assert check([], {"type": "object"}) == [("$", "type")] and check({}, {"type": "array"}) == [("$", "type")]
    assert check(True, {"enum": [1]}) == [("$", "enum")] and check(1.0, {"enum": [1]}) == []
    assert check("a", {"const": "b"}) == [("$", "const")]
    nested = {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}}}}
    assert check({"items": [{"n": 1}, {"n": "2"}, {}, {"n": 1, "x": 0}]}, nested) == [
        ("$.items[1].n", "type"), ("$.items[2]", "required"), ("$.items[3].x", "unknown_property")]
    typed_extra = {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}
    assert check({"a": "x", "b": 2}, typed_extra) == [("$.b", "type")]
    open_schema = {"type": "object", "properties": {"a": {}}}
    assert check({"b": 1}, open_schema) == []
    assert check({"b": 1}, open_schema, strict=True) == [("$.b", "unknown_property")]
    one_of = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    assert check("x", one_of) == [] and check(2, one_of) == [] and check([], one_of) == [("$", "any_of")]
    assert check(3, {"allOf": [{"type": "integer"}, {"enum": [1, 2]}]}) == [("$", "enum")]
    assert check({"weird key": 1}, {"type": "object", "properties": {"weird key": {"type": "string"}}}) == [
        ("$['weird key']", "type")]
    assert check("anything", {"format": "email", "minLength": 99, "$ref": "#/x"}) == []  # ignored keywords
    deep: dict[str, Any] = {"type": "object", "properties": {}}
    cursor = deep
    for _ in range(100):  # deeper than the checker goes: no recursion error
        child: dict[str, Any] = {"type": "object", "properties": {}}
        cursor["properties"]["a"] = child
        cursor = child
    value: Any = 1
    for _ in range(100):
        value = {"a": value}
    assert check(value, deep) == []


# --- repeated_tool_call ----------------------------------------------------------------------------


def raw_repeats(path: Path, key: Any) -> set[tuple[int, int, int]]:
    """(run, message index, position) of each call whose (name, key(arguments)) came earlier in its run."""
    repeats = set()
    for run_index, record in enumerate(runs(path)):
        seen = set()
        for index, position, name, arguments, _ in raw_calls(record):
            if (name, key(arguments)) in seen:
                repeats.add((run_index, index, position))
            seen.add((name, key(arguments)))
    return repeats


def test_repeated_tool_call_on_tau_bench_airline() -> None:
    # The dataset README: 27 airline calls exactly repeat an earlier call (same name, same argument
    # text). The detector compares parsed JSON, so it also counts 5 calls whose argument text differs
    # only by whitespace after ":" and "," (gpt-4o wrote both `{"a": 1}` and `{"a":1}`): 32 in all, in
    # 16 traces. Both sets are computed here from the raw JSON.
    exact = raw_repeats(AIRLINE, lambda arguments: arguments)
    normalized = raw_repeats(AIRLINE, canonical)
    assert len(exact) == 27 and len(normalized) == 32 and exact < normalized
    findings = fired(repeated_tool_call, airline())
    assert call_keys(airline(), findings) == normalized
    assert traces_fired(repeated_tool_call, airline()) == 16
    # each repeat points back at its first occurrence, which has the same normalized arguments
    spans = {s.span_id: s for t in airline() for s in t}
    for finding in findings:
        first, repeat = spans[finding.details["first_span_id"]], spans[finding.span_id]
        assert first.tool_name == repeat.tool_name == finding.tool
        assert canonical(first.tool_arguments) == canonical(repeat.tool_arguments)
        assert first.start_ns < repeat.start_ns and finding.details["occurrence"] >= 2


def test_repeated_tool_call_on_retail_halo_any_agent() -> None:
    normalized = raw_repeats(RETAIL, canonical)
    assert len(normalized) == 9 and len(raw_repeats(RETAIL, lambda arguments: arguments)) == 7
    assert call_keys(retail(), fired(repeated_tool_call, retail())) == normalized
    halo = traces_of(*HALO)
    [finding] = fired(repeated_tool_call, halo)  # list_files {"subdir": "", "pattern": "requirements.txt"} twice
    assert finding.tool == "list_files" and finding.details["calls_between"] == 2
    assert fired(repeated_tool_call, traces_of(*ANY_AGENT)) == []
    # ignoring idempotent reads
    findings = fired(repeated_tool_call, airline(), ignore_tools=["search_direct_flight", "get_reservation_details"])
    assert len(findings) == 32 - 9


def test_repeated_tool_call_docstring_example() -> None:
    first = tool("search_direct_flight", '{"origin": "JFK", "date": "2024-05-20"}')
    other = tool("get_user_details", '{"user_id": "u1"}')
    again = tool("search_direct_flight", '{"date":"2024-05-20","origin":"JFK"}')
    [finding] = run(repeated_tool_call, trace(first, other, again))
    assert finding.span_id == again.span_id and finding.tool == "search_direct_flight"
    assert finding.details == {"first_span_id": first.span_id, "occurrence": 2, "calls_between": 1,
                               "arguments": '{"date":"2024-05-20","origin":"JFK"}'}


def test_repeated_tool_call_rules() -> None:
    a1, a2, a3 = tool("a", '{"x": [1, 2]}'), tool("a", '{ "x" : [1,2] }'), tool("a", '{"x": [1, 2]}')
    different = [tool("a", '{"x": [2, 1]}'), tool("a", '{"x": 1.0}'), tool("a", '{"x": 1}'), tool("b", '{"x": [1, 2]}')]
    findings = run(repeated_tool_call, trace(a1, a2, *different, a3))
    assert [(f.span_id, f.details["occurrence"]) for f in findings] == [(a2.span_id, 2), (a3.span_id, 3)]
    # non-JSON arguments compare as stripped text; blank is {}
    texts = [tool("s", "weather in Paris"), tool("s", "  weather in Paris\n"), tool("s", "weather in paris")]
    assert len(run(repeated_tool_call, trace(*texts))) == 1
    assert len(run(repeated_tool_call, trace(tool("n", ""), tool("n", "{}")))) == 1
    # requested calls that never ran count too
    caller = llm(calls=[("q", '{"k": 1}', None), ("q", '{"k":1}', None)])
    assert [f.span_id for f in run(repeated_tool_call, trace(caller))] == [caller.span_id]
    assert len(run(repeated_tool_call, trace(*[tool("z", "{}") for _ in range(10)]), max_findings=3)) == 3


# --- tool_loop -------------------------------------------------------------------------------------


def raw_runs(path: Path, minimum: int) -> set[tuple[int, int]]:
    """(run, message index of the first call) of each maximal run of >= minimum calls to one tool."""
    found = set()
    for run_index, record in enumerate(runs(path)):
        calls = raw_calls(record)
        for _, group in itertools.groupby(calls, key=lambda call: call[2]):
            members = list(group)
            if len(members) >= minimum:
                found.add((run_index, members[0][0]))
    return found


def raw_cycles(path: Path) -> set[tuple[int, tuple[str, ...]]]:
    """(run, cycle) of runs where a block of 2-3 calls with 2+ tools repeats 3+ times back to back,
    found with a backreference regex over the comma-joined names (a different method from the detector's)."""
    found = set()
    for run_index, record in enumerate(runs(path)):
        names = ",".join(call[2] for call in raw_calls(record)) + ","
        position = 0
        while position < len(names):
            for size in (2, 3):
                match = re.compile(rf"((?:[^,]+,){{{size}}})\1{{2,}}").match(names, position)
                if match is not None and len(set(match[1].split(",")[:-1])) >= 2:
                    found.add((run_index, tuple(match[1].split(",")[:-1])))
                    position = match.end() - 1  # resume after the repeats (at their last comma)
                    break
            position = names.find(",", position) + 1 or len(names)
    return found


@pytest.mark.parametrize("path, traces, runs_expected, traces_expected", [
    (AIRLINE, airline, 54, 46), (RETAIL, retail, 20, 20)])
def test_tool_loop_on_tau_bench(path: Path, traces: Any, runs_expected: int, traces_expected: int) -> None:
    # tau-bench agents make one call per message, so steps are calls. Runs of >= 4 calls to one tool are
    # mostly fan-outs (get_reservation_details for each of a user's reservations); with every argument
    # distinct they are exempted by exempt_distinct_arguments.
    findings = fired(tool_loop, traces())
    consecutive = [f for f in findings if f.details["kind"] == "consecutive"]
    assert finding_keys(traces(), consecutive, "halod.tool_call.message_index") == raw_runs(path, 4)
    assert len(consecutive) == runs_expected
    cycles = {(t.root.get("halod.run.index"), tuple(f.details["cycle"]))  # type: ignore[union-attr]
              for t in traces() for f in tool_loop.Detector().detect(t, CTX) if f.details["kind"] == "cycle"}
    assert cycles == raw_cycles(path)
    assert traces_fired(tool_loop, traces()) == traces_expected
    exempted = fired(tool_loop, traces(), exempt_distinct_arguments=True)
    assert all(f.details["kind"] == "cycle" or f.details["distinct_arguments"] < f.details["calls"] for f in exempted)
    assert len(exempted) < len(findings)


def test_tool_loop_airline_cycles() -> None:
    cycles = sorted(f.details["cycle"] for f in fired(tool_loop, airline()) if f.details["kind"] == "cycle")
    assert cycles == [["book_reservation", "think"], ["book_reservation", "think"],
                      ["calculate", "book_reservation", "think"]]


def test_tool_loop_on_halo_and_any_agent() -> None:
    halo = traces_of(*HALO)
    [finding] = fired(tool_loop, halo)  # seven list_files calls in a row, hunting for a requirements file
    assert finding.tool == "list_files" and finding.details["count"] == 7 and finding.details["distinct_arguments"] == 6
    # the two grep calls one response made in parallel are one step: 1+1+1 list_files then grep x2 ...
    assert fired(tool_loop, halo, min_consecutive=2, count_parallel_as_one=True) != fired(
        tool_loop, halo, min_consecutive=2, count_parallel_as_one=False)
    assert fired(tool_loop, traces_of(*ANY_AGENT)) == []


def test_tool_loop_docstring_example() -> None:
    calls = [tool("search", f'{{"q": {i}}}') for i in range(4)] + [tool("book")]
    [finding] = run(tool_loop, trace(*calls))
    assert finding.span_id == calls[0].span_id and finding.tool == "search"
    assert finding.details["kind"] == "consecutive" and finding.details["count"] == 4 and finding.details["calls"] == 4
    assert finding.details["last_span_id"] == calls[3].span_id
    cycle = [tool(name) for name in ["read", "edit"] * 3]
    [finding] = run(tool_loop, trace(*cycle))
    assert finding.span_id == cycle[0].span_id and finding.tool == "read"
    assert finding.details["kind"] == "cycle" and finding.details["cycle"] == ["read", "edit"]
    assert finding.details["repeats"] == 3


def test_tool_loop_rules() -> None:
    def kinds(names: str, **config: Any) -> list[tuple[str, Any]]:
        findings = run(tool_loop, trace(*[tool(name) for name in names]), **config)
        return [(f.details["kind"], f.details.get("count") or "".join(f.details["cycle"])) for f in findings]

    assert kinds("aaab") == [] and kinds("aaaab") == [("consecutive", 4)]
    assert kinds("aaaaaaa", min_consecutive=3) == [("consecutive", 7)]  # one finding per maximal run
    assert kinds("ababa") == [] and kinds("ababab") == [("cycle", "ab")]
    assert kinds("abcabcabc") == [("cycle", "abc")] and kinds("abcdabcdabcd") == []  # longer than max_cycle_length
    assert kinds("abcdabcdabcd", max_cycle_length=4) == [("cycle", "abcd")]
    assert kinds("ababab", min_cycle_repeats=4) == [] and kinds("ababab", max_cycle_length=0) == []
    assert kinds("xababababy") == [("cycle", "ab")]
    assert kinds("aabaabaab") == [("cycle", "aab")]
    assert kinds("aaaaabab") == [("consecutive", 5)]
    assert kinds("atatatat", ignore_tools=["t"]) == [("consecutive", 4)]
    # parallel calls from one response are one step
    caller = llm(calls=[("get", f'{{"id": {i}}}', str(i)) for i in range(5)])
    fan_out = [tool("get", f'{{"id": {i}}}', call_id=str(i)) for i in range(5)]
    assert run(tool_loop, trace(caller, *fan_out)) == []
    assert len(run(tool_loop, trace(caller, *fan_out), count_parallel_as_one=False)) == 1
    # distinct arguments exempted only on request, repeats are never exempted
    distinct = [tool("get", f'{{"id": {i}}}') for i in range(4)]
    assert len(run(tool_loop, trace(*distinct))) == 1
    assert run(tool_loop, trace(*distinct), exempt_distinct_arguments=True) == []
    same = [tool("get", '{"id": 1}') for _ in range(4)]
    assert len(run(tool_loop, trace(*same), exempt_distinct_arguments=True)) == 1


# --- text_tool_call --------------------------------------------------------------------------------


@pytest.mark.parametrize("traces", [airline, retail, lambda: traces_of(*HALO), lambda: traces_of(*ANY_AGENT)])
def test_text_tool_call_is_silent_on_real_traces(traces: Any) -> None:
    # None of these agents wrote calls as text. any-agent's LLM spans carry their calls as a JSON list
    # of {"tool.name", "tool.args"} in gen_ai.output (read as requested calls), and its final outputs
    # are JSON objects without a tool-call shape ({"steps": [...]}).
    assert fired(text_tool_call, traces()) == []


def test_any_agent_requested_calls_are_read() -> None:
    calls = [c for t in traces_of(*ANY_AGENT) for s in t.llm_spans for c in _outputs.requested_calls(s)]
    assert {c.name for c in calls} >= {"get_current_time", "write_file"} and len(calls) >= 14


def test_text_tool_call_on_real_spans_with_the_calls_stripped() -> None:
    # Real airline LLM spans that called a tool, with their structured tool calls removed and their output
    # the first call as a model prints it, `{"name": ..., "arguments": ...}`: a call written as text. Each is found.
    source = airline()[0]
    stripped = []
    for s in source.spans:
        if s.semantic_kind == "LLM" and _outputs.requested_calls(s):
            attrs = {k: v for k, v in s.attrs.items() if ".tool_calls." not in k and k != "output.value"}
            first = _outputs.requested_calls(s)[0]
            printed = json.dumps({"name": first.name, "arguments": json.loads(first.arguments)})
            stripped.append(SpanView({**s.row, "output_text": printed, "attributes": orjson.dumps(attrs).decode()}))
    expected = [json.loads(s.output_text)["name"] for s in stripped]
    findings = run(text_tool_call, TraceSpans(source.trace_id, stripped))
    assert [f.tool for f in findings] == expected and len(findings) >= 3
    assert all(f.details["rule"] == "json" and f.details["declared"] for f in findings)


def test_text_tool_call_docstring_example() -> None:
    weather = fn("get_weather", {"city": {"type": "string"}}, ["city"])
    fenced = llm(tools=[weather], text='```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```')
    [finding] = run(text_tool_call, trace(fenced))
    assert finding.span_id == fenced.span_id and finding.tool == "get_weather" and finding.severity == "error"
    assert finding.details["rule"] == "json" and finding.details["declared"] is True
    assert finding.details["excerpt"].startswith('{"name": "get_weather"')
    tagged = llm(tools=[weather], text='<tool_call>{"name": "get_weather"}</tool_call>')
    [finding] = run(text_tool_call, trace(tagged))
    assert finding.details["rule"] == "tag" and finding.details["pattern"] == "tool_call"
    assert finding.tool == "get_weather"
    assert run(text_tool_call, trace(llm(tools=[weather], text="The weather in Paris is sunny."))) == []


@pytest.mark.parametrize("text, tool_named", [
    ('I will call it now: {"tool": "search", "args": {"q": "x"}} and wait.', "search"),
    ('{"function": {"name": "search", "arguments": "{}"}}', "search"),
    ('[{"name": "search", "parameters": {"q": "x"}}]', "search"),
    ('{"tool_calls": [{"function": {"name": "search", "arguments": "{}"}}]}', "search"),
    ('{"action": "search", "action_input": "cats"}', "search"),
    ("[TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {}}]", "search"),
    ("<|python_tag|>search.call(query=\"x\")", None),
    ("<functioncall> {\"name\": \"search\", \"arguments\": {}}", "search"),
])
def test_text_tool_call_shapes_without_declared_tools(text: str, tool_named: str | None) -> None:
    [finding] = run(text_tool_call, trace(llm(text=text)))
    assert finding.tool == tool_named


@pytest.mark.parametrize("text", [
    '{"name": "Alice", "age": 3}',  # a name without arguments
    '{"action": "Final Answer", "action_input": "42"}',  # not an identifier
    '{"steps": [{"number": 1, "description": "x"}]}',
    "Use braces like { and } in templates; {not json}",
    "{" * 5000,
    'Here is the user: {"name": {"first_name": "Mia"}, "address": {}}',
])
def test_text_tool_call_spares_other_json(text: str) -> None:
    assert run(text_tool_call, trace(llm(text=text))) == []


def test_text_tool_call_declared_names_and_execution() -> None:
    declared = [fn("search")]
    # with a declared set, only declared names count (no arguments key needed)
    assert run(text_tool_call, trace(llm(tools=declared, text='{"name": "search"}')))[0].tool == "search"
    assert run(text_tool_call, trace(llm(tools=declared, text='{"name": "browse", "arguments": {}}'))) == []
    # a span that also made a structured call is not judged
    assert run(text_tool_call, trace(llm(tools=declared, calls=[("search", "{}", "1")],
                                         text='{"name": "search", "arguments": {}}'))) == []
    # a framework that parses text calls (ReAct/JSON agents) runs them: not reported unless asked
    react = llm(tools=declared, text='{"action": "search", "action_input": "cats"}')
    ran = tool("search", '"cats"')
    assert run(text_tool_call, trace(react, ran)) == []
    assert len(run(text_tool_call, trace(react, ran), skip_when_executed=False)) == 1
    # gen_ai.output.messages text parts are read
    messages = json.dumps([{"role": "assistant", "parts": [
        {"type": "text", "content": '<tool_call>{"name": "search", "arguments": {}}</tool_call>'}]}])
    chat = span("LLM", "chat", attrs={"gen_ai.operation.name": "chat", "gen_ai.output.messages": messages},
                output_text=messages)
    assert run(text_tool_call, trace(chat))[0].details["rule"] == "tag"


# --- firing counts on the datasets (reported, and pinned so changes are noticed) -------------------


def test_firing_counts_per_dataset() -> None:
    counts = {name: (traces_fired(module, airline()), traces_fired(module, retail()))
              for name, module in DETECTORS.items()}
    assert counts == {
        "tool_error": (36, 23),
        "unknown_tool": (0, 0),
        "invalid_tool_args": (0, 0),
        "repeated_tool_call": (16, 8),
        "tool_loop": (46, 20),
        "text_tool_call": (0, 0),
    }


# --- hostile input ---------------------------------------------------------------------------------


def test_hostile_trace_strings_are_bounded() -> None:
    import time

    # a schema nested far deeper than the checker goes, as JSON text on the LLM span
    deep_schema = '{"anyOf": [' * 400 + '{"type": "string"}' + "]}" * 400
    deep_definition = ('{"type": "function", "function": {"name": "deep", "parameters": {"type": "object", '
                       '"properties": {"x": ' + deep_schema + "}}}}")
    # a configured schema whose alternatives share subtrees: 32^20 paths without a work budget
    wide: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        wide = {"anyOf": [wide] * 32}
    context = DetectContext(declared_tools={"wide": {"name": "wide", "parameters": {
        "type": "object", "properties": {"x": wide}}}})
    deep_json = "[" * 100_000 + "]" * 100_000
    huge = "Error: " + "x" * 2_000_000
    attrs = {"llm.tools.0.tool.json_schema": deep_definition,
             f"llm.output_messages.0.message.tool_calls.{'9' * 5000}.tool_call.function.name": "x",
             "agent.tools": "[" * 10_000}
    spans = [
        llm(calls=[("deep", '{"x": 1}', "1")], attrs=attrs), tool("deep", '{"x": 1}', call_id="1"),
        tool("t", deep_json, deep_json), tool("t", "{" * 100_000, huge),
        llm(text="{" * 100_000 + '"name": "x"'), llm(text='{"a": ' * 50_000), llm(text=huge),
    ]
    started = time.perf_counter()
    results = {name: run(module, trace(*spans)) for name, module in DETECTORS.items()}
    wide_findings = run(invalid_tool_args, trace(tool("wide", '{"x": 1}')), context)
    assert time.perf_counter() - started < 2.0
    # past the depth cap and the work budget the checker stops: unchecked, not a violation
    assert wide_findings == [] and invalid_tool_args.check_schema(1, wide) == []
    assert [(f.tool, f.details["violations"][0]["rule"]) for f in results["invalid_tool_args"]] == [
        ("t", "invalid_json"), ("t", "invalid_json")]
    assert [f.details["rule"] for f in results["tool_error"]] == ["error_prefix"]
    assert results["text_tool_call"] == []
    assert all(len(json.dumps(f.details)) < 5000 for findings in results.values() for f in findings)
