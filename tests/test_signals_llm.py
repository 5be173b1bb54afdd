"""LLM-level detectors: refusal / refusal_loop, llm_error, step_limit, no_final_answer, escalation,
failed_outcome, latency_outlier / token_outlier (and TrailingStats).

Real traces (tau-bench airline, AgentRx retail, HALO and any-agent fixtures) give positive and
negative cases, with expectations computed from the raw JSON where they can be; small hand-built
traces cover the rest, including each module docstring's example."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from halod.analysis import features
from halod.analysis.signals import (
    _outputs,
    escalation,
    failed_outcome,
    llm_error,
    no_final_answer,
    outliers,
    refusal,
    step_limit,
)
from halod.analysis.signals.base import DetectContext, Finding
from halod.analysis.trace import SpanView, TraceSpans
from halod.model import SPAN_SCHEMA
from tests.traces import AIRLINE, ANY_AGENT, HALO, RETAIL, airline, retail, runs, traces_of

CTX = DetectContext()
SECOND = 1_000_000_000
_ids = itertools.count(1)


# ---------------------------------------------------------------- a tiny trace builder


def span(kind: str = "LLM", name: str | None = None, *, start: int | None = None, end: int | None = None,
         parent: str | None = "root", attributes: dict[str, Any] | None = None,
         events: list[dict[str, Any]] | None = None, **columns: Any) -> SpanView:
    """One span row with the columns detectors read; times in seconds from 0 (default: in order)."""
    number = next(_ids)
    start_s = number if start is None else start
    end_s = start_s + 1 if end is None else end
    row: dict[str, Any] = dict.fromkeys(SPAN_SCHEMA.names)
    row.update(
        trace_id="t" * 32, span_id=columns.pop("span_id", f"s{number:015d}"), parent_span_id=parent,
        name=name or kind.lower(), kind="INTERNAL", semantic_kind=kind, service_name="svc",
        start_ns=start_s * SECOND, end_ns=end_s * SECOND, duration_ns=(end_s - start_s) * SECOND,
        status_code="UNSET", attributes=orjson.dumps(attributes or {}).decode(),
        events=orjson.dumps(events).decode() if events else None,
    )
    row.update(columns)
    return SpanView(row)


def root(**kw: Any) -> SpanView:
    kw.setdefault("start", 0)
    kw.setdefault("end", 1000)
    return span("AGENT", "agent_run", parent=None, span_id="root", **kw)


def trace(*spans: SpanView) -> TraceSpans:
    return TraceSpans("t" * 32, list(spans))


def tool_calls_json(*names: str) -> str:
    return json.dumps([{"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": "{}"}}
                       for i, n in enumerate(names)])


def signals(findings: list[Finding]) -> list[str]:
    return [finding.signal for finding in findings]


def fired(detector: Any, traces: list[TraceSpans], signal: str | None = None) -> list[TraceSpans]:
    """The traces on which the detector emits `signal` (any signal when None)."""
    return [t for t in traces if any(signal in (None, f.signal) for f in detector.detect(t, CTX))]


def run_index(t: TraceSpans) -> int:
    assert t.root is not None
    return int(t.root.get("halod.run.index"))


def real_row(t: TraceSpans, kind: str) -> dict[str, Any]:
    """A copy of the row of the first span of `kind` in a real trace (to derive error cases from)."""
    return dict(next(s for s in t if s.semantic_kind == kind).row)


DATASETS = [("airline", AIRLINE, airline), ("retail", RETAIL, retail)]


def assistant_messages(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in run["traj"] if m.get("role") == "assistant"]


# ---------------------------------------------------------------- the output readers


def test_llm_text_and_requested_tools_read_every_output_shape() -> None:
    plain = span(output_text="Hello there")
    assert _outputs.llm_text(plain) == "Hello there"
    openai_calls = span(output_text=tool_calls_json("get_user", "calc"))
    assert _outputs.llm_text(openai_calls) == ""
    assert _outputs.requested_tools(openai_calls) == ["get_user", "calc"]
    genai = span(output_text=json.dumps([{"role": "assistant", "parts": [
        {"type": "text", "content": "Let me look."}, {"type": "tool_call", "id": "1", "name": "search"}]}]))
    assert _outputs.llm_text(genai) == "Let me look."
    assert _outputs.requested_tools(genai) == ["search"]
    any_agent = span(output_text='[{"tool.name": "write_file", "tool.args": "{}"}]')
    assert _outputs.requested_tools(any_agent) == ["write_file"]
    answer_json = span(output_text='{"steps": [{"number": 1}]}')
    assert _outputs.llm_text(answer_json) == '{"steps": [{"number": 1}]}'
    api_response = span(output_text=json.dumps({"id": "x", "choices": [{"message": {
        "role": "assistant", "content": "Hi", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]}))
    assert (_outputs.llm_text(api_response), _outputs.requested_tools(api_response)) == ("Hi", ["f"])
    anthropic = span(output_text=json.dumps({"role": "assistant", "content": [
        {"type": "text", "text": "Checking"}, {"type": "tool_use", "id": "t", "name": "lookup", "input": {}}]}))
    assert (_outputs.llm_text(anthropic), _outputs.requested_tools(anthropic)) == (
        "Checking", ["lookup"])
    openinference = span(output_text=None, attributes={
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": "Done.",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "a",
        "llm.output_messages.0.message.tool_calls.1.tool_call.function.name": "b",
    })
    assert (_outputs.llm_text(openinference), _outputs.requested_tools(openinference)) == (
        "Done.", ["a", "b"])
    nothing = span(output_text=None)
    assert not _outputs.records_output(nothing)
    broken = span(output_text="[{not json")
    assert _outputs.llm_text(broken) == "[{not json"


def test_span_attribute_lookup_skips_parsing_only_when_the_key_is_surely_absent() -> None:
    attributes = {"tool_call.id": "c1", "note": 'says "agent.tools" in a value', "outcome.résumé": "ok"}
    view = span("TOOL", attributes=attributes)
    assert view.get("agent.tools") is None and "attrs" not in view.__dict__  # absent: answered from the text
    assert view.get("gen_ai.tool.call.id", "none") == "none" and "attrs" not in view.__dict__
    assert view.get("outcome.résumé") == "ok"  # not plain ASCII: parsed to be sure
    assert view.get("tool_call.id") == "c1" and view.attrs == attributes
    assert span("TOOL").get("anything", 7) == 7


def test_real_transcript_outputs_are_read_as_text_or_tool_calls() -> None:
    t = airline()[0]  # run 0: text turns and tool-call turns
    texts = [_outputs.llm_text(s) for s in t.llm_spans]
    calls = [_outputs.requested_tools(s) for s in t.llm_spans]
    raw = assistant_messages(runs(AIRLINE)[0])
    assert texts == [m.get("content") or "" for m in raw]
    assert calls == [[c["function"]["name"] for c in m.get("tool_calls") or []] for m in raw]


# ---------------------------------------------------------------- refusal / refusal_loop


def test_refusal_docstring_example() -> None:
    first = span(output_text="I'm sorry, but I can't help with that request.")
    second = span(output_text="As an AI, I cannot browse the web.")
    findings = refusal.Detector().detect(trace(root(), first, second), CTX)
    assert signals(findings) == ["refusal", "refusal", "refusal_loop"]
    assert [f.span_id for f in findings[:2]] == [first.span_id, second.span_id]
    assert findings[2].span_id == second.span_id
    assert findings[2].details == {"count": 2, "span_ids": [first.span_id, second.span_id]}
    assert findings[0].severity == "warning" and findings[2].severity == "error"


@pytest.mark.parametrize("text", [
    "I can't help with creating malware.",
    "I cannot assist with that.",
    "I\u2019m sorry, but I cannot do that.",  # typographic apostrophe
    "I am unable to process a refund for this ticket.",
    "I won't be able to change the date.",
    "As an AI language model, I don't have opinions.",
    "Sorry. I must decline this request.",
    "Unfortunately, I cannot cancel individual items from an order.",
    "I'm not allowed to share that.",
])
def test_refusal_patterns_fire(text: str) -> None:
    assert signals(refusal.Detector().detect(trace(root(), span(output_text=text)), CTX)) == ["refusal"]


@pytest.mark.parametrize("text", [
    "Sure, here is your booking.",
    "If you're unable to find it, let me know.",  # someone else is unable
    "I can't wait to help you plan this trip!",
    "PHI am unable",  # not a word start
    "x" * 400 + " I'm sorry, but I can't help with that.",  # beyond scan_chars: a quote deep in the text
    tool_calls_json("cancel_reservation"),
])
def test_refusal_patterns_stay_silent(text: str) -> None:
    assert refusal.Detector().detect(trace(root(), span(output_text=text)), CTX) == []


def test_refusal_reads_structured_refusal_and_respects_knobs() -> None:
    structured = span(output_text=None, attributes={
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.refusal": "This request violates our policy."})
    findings = refusal.Detector().detect(trace(root(), structured), CTX)
    assert signals(findings) == ["refusal"] and findings[0].details["pattern"] == "refusal field"
    single = refusal.Detector(refusal.Config(loop_min=3))
    two = trace(root(), span(output_text="I am unable to do that."), span(output_text="I am unable to do that."))
    assert signals(single.detect(two, CTX)) == ["refusal", "refusal"]
    custom = refusal.Detector(refusal.Config(patterns=["(?i)no can do"]))
    assert signals(custom.detect(trace(root(), span(output_text="NO CAN DO, friend")), CTX)) == ["refusal"]
    assert refusal.Detector(refusal.Config(enabled=False)).detect(two, CTX) == []
    with pytest.raises(ValidationError):
        refusal.Config(patterns=["(unclosed"])
    with pytest.raises(ValidationError):
        refusal.Config(loop_min=1)
    with pytest.raises(ValidationError):
        refusal.Config(unknown_knob=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(("label", "path", "load"), DATASETS)
def test_refusal_on_datasets_matches_raw_assistant_messages(label: str, path: Any, load: Any) -> None:
    patterns = [re.compile(p) for p in refusal.DEFAULT_PATTERNS]

    def refusals(run: dict[str, Any]) -> int:
        heads = [(m.get("content") or "")[:300].replace("\u2019", "'") for m in assistant_messages(run)]
        return sum(1 for head in heads if any(p.search(head) for p in patterns))

    counts = [refusals(run) for run in runs(path)]
    detector = refusal.Detector()
    by_index = {run_index(t): Counter(signals(detector.detect(t, CTX))) for t in load()}
    assert {i: c["refusal"] for i, c in by_index.items() if c["refusal"]} == {
        i: n for i, n in enumerate(counts) if n}
    assert {i for i, c in by_index.items() if c["refusal_loop"]} == {i for i, n in enumerate(counts) if n >= 2}
    # the numbers reported in the session report (docs/detectors.md gets them from bench/detectors.py)
    assert (sum(1 for n in counts if n), sum(1 for n in counts if n >= 2)) == {
        "airline": (58, 23), "retail": (19, 3)}[label]


def test_refusal_real_examples_and_fixtures() -> None:
    by_index = {run_index(t): t for t in airline()}
    raw = runs(AIRLINE)
    refusing = next(i for i, run in enumerate(raw) if any(
        (m.get("content") or "").startswith("I'm sorry, but I cannot remove a passenger")
        for m in assistant_messages(run)))
    assert "refusal" in signals(refusal.Detector().detect(by_index[refusing], CTX))
    assert refusal.Detector().detect(by_index[0], CTX) == []  # run 0 books a flight without declining
    for t in traces_of(*HALO) + traces_of(*ANY_AGENT):
        assert refusal.Detector().detect(t, CTX) == []


# ---------------------------------------------------------------- llm_error


def test_llm_error_docstring_example() -> None:
    failed = span(status_code="ERROR", status_message="Error code: 429 - Rate limit reached for gpt-4o")
    findings = llm_error.Detector().detect(trace(root(), failed), CTX)
    assert signals(findings) == ["llm_error"]
    assert findings[0].span_id == failed.span_id and findings[0].severity == "error"
    assert findings[0].details["class"] == "rate_limit"


@pytest.mark.parametrize(("message", "expected"), [
    ("openai.RateLimitError: too many requests", "rate_limit"),
    ("429 RESOURCE_EXHAUSTED", "rate_limit"),
    ("This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens",
     "context_length"),
    ("Error code: 400 - {'error': {'code': 'context_length_exceeded'}}", "context_length"),
    ("prompt is too long: 210000 tokens > 200000 maximum", "context_length"),
    ("Request timed out.", "timeout"),
    ("504 Deadline Exceeded", "timeout"),
    ("The response was filtered due to the prompt triggering Azure OpenAI's content management policy",
     "content_filter"),
    ("Candidate was blocked due to SAFETY", "content_filter"),
    ("Internal server error", "other"),
    (None, "other"),
])
def test_llm_error_classes(message: str | None, expected: str) -> None:
    findings = llm_error.Detector().detect(trace(root(), span(status_code="ERROR", status_message=message)), CTX)
    assert [f.details["class"] for f in findings] == [expected]


def test_llm_error_reads_exception_events_error_type_and_finish_reason() -> None:
    exception = span(events=[{"name": "exception", "time_ns": 1, "attributes": {
        "exception.type": "openai.APITimeoutError", "exception.message": "Request timed out."}}])
    error_type = span(attributes={"error.type": "context_length_exceeded"})
    filtered = span(attributes={"gen_ai.response.finish_reasons": ["content_filter"]})
    http = span(status_code="ERROR", attributes={"http.response.status_code": 429})
    ok = span(output_text="fine", attributes={"gen_ai.response.finish_reasons": ["stop"]},
              events=[{"name": "log", "time_ns": 1, "attributes": {"message": "rate limit ok"}}])
    tool_error = span("TOOL", status_code="ERROR", status_message="429 rate limit")  # not an LLM span
    findings = llm_error.Detector().detect(trace(root(), exception, error_type, filtered, http, ok, tool_error), CTX)
    assert [(f.span_id, f.details["class"]) for f in findings] == [
        (exception.span_id, "timeout"), (error_type.span_id, "context_length"),
        (filtered.span_id, "content_filter"), (http.span_id, "rate_limit")]
    assert findings[0].details["exception_type"] == "openai.APITimeoutError"
    custom = llm_error.Detector(llm_error.Config(classes={"quota": ["insufficient_quota"]}))
    failed = span(status_code="ERROR", status_message="insufficient_quota")
    assert [f.details["class"] for f in custom.detect(trace(failed), CTX)] == ["quota"]
    with pytest.raises(ValidationError):
        llm_error.Config(classes={"x": ["(bad"]})


def test_llm_error_real_spans() -> None:
    detector = llm_error.Detector()
    for t in airline() + retail() + traces_of(*HALO) + traces_of(*ANY_AGENT):
        assert detector.detect(t, CTX) == []  # no dataset LLM call failed
    # a real any-agent LLM span, as it would look had the provider refused it
    t = traces_of(*ANY_AGENT)[0]
    row = real_row(t, "LLM")
    row.update(status_code="ERROR", status_message="litellm.RateLimitError: MistralException - rate limit exceeded",
               events=json.dumps([{"name": "exception", "time_ns": row["start_ns"], "attributes": {
                   "exception.type": "litellm.RateLimitError", "exception.message": "rate limit exceeded"}}]))
    broken = TraceSpans(t.trace_id, [SpanView(row) if s.span_id == row["span_id"] else s for s in t])
    findings = detector.detect(broken, CTX)
    assert [(f.span_id, f.details["class"]) for f in findings] == [(row["span_id"], "rate_limit")]


# ---------------------------------------------------------------- step_limit


def test_step_limit_docstring_example() -> None:
    agent = root(events=[{"name": "exception", "time_ns": 5, "attributes": {
        "exception.type": "MaxTurnsExceeded", "exception.message": "Max turns (10) exceeded"}}])
    findings = step_limit.Detector().detect(trace(agent, span(output_text="thinking")), CTX)
    assert signals(findings) == ["step_limit"]
    assert findings[0].span_id == "root" and findings[0].details["source"] == "error"
    assert findings[0].severity == "error"


@pytest.mark.parametrize("where", ["status", "output", "exception"])
@pytest.mark.parametrize("text", [
    "GraphRecursionError: Recursion limit of 25 reached without hitting a stop condition.",
    "Reached max steps.",
    "Max iterations of 10 reached",
    "The next request would exceed the request_limit of 50",
    "Exceeded the maximum number of turns",
    "Agent stopped due to iteration limit or time limit.",
    "Agent stopped due to max iterations.",
    "AgentMaxStepsError",
    "MaxTurnsExceeded: Max turns (10) exceeded",
    "Turn limit hit",
])
def test_step_limit_patterns(where: str, text: str) -> None:
    """Each text is found as an error and as an output (the output keywords pre-check lets it through)."""
    if where == "status":
        spans = [root(), span("CHAIN", status_code="ERROR", status_message=text)]
    elif where == "output":
        spans = [root(output_text=text)]
    else:
        spans = [root(), span(events=[{"name": "exception", "time_ns": 1, "attributes": {"exception.type": text}}])]
    assert signals(step_limit.Detector().detect(trace(*spans), CTX)) == ["step_limit"]


def test_step_limit_silent_cases_and_outcome() -> None:
    detector = step_limit.Detector()
    talk = trace(root(output_text="Done."), span(output_text="The max turns setting is 10; raise it if needed."),
                 span("TOOL", output_text="GraphRecursionError in user code"))  # LLM and TOOL outputs not read
    assert detector.detect(talk, CTX) == []
    ok_error = trace(root(), span(status_code="ERROR", status_message="maximum recursion depth exceeded"))
    assert detector.detect(ok_error, CTX) == []  # Python's RecursionError is not an agent limit
    ended = trace(root(attributes={"outcome.ended_by": "max_turns"}), span(output_text="..."))
    findings = detector.detect(ended, CTX)
    assert signals(findings) == ["step_limit"] and findings[0].details["source"] == "outcome"
    extra = step_limit.Detector(step_limit.Config(extra_patterns=["BudgetExhausted"]))
    assert signals(extra.detect(trace(root(), span(status_code="ERROR", status_message="BudgetExhausted")),
                                CTX)) == ["step_limit"]


def test_step_limit_llm_call_count() -> None:
    detector = step_limit.Detector(step_limit.Config(max_llm_calls=3))
    cut = trace(root(), span(output_text="a"), span(output_text="b"), span(output_text=tool_calls_json("search")),
                span("TOOL", "search", tool_name="search", output_text="[]"))
    findings = detector.detect(cut, CTX)
    assert signals(findings) == ["step_limit"] and findings[0].details == {
        "source": "llm_calls", "llm_calls": 3, "max_llm_calls": 3}
    answered = trace(root(), span(output_text="a"), span(output_text="b"), span(output_text="Here you go."))
    assert detector.detect(answered, CTX) == []
    assert step_limit.Detector().detect(cut, CTX) == []  # rule off by default


@pytest.mark.parametrize(("label", "path", "load"), DATASETS)
def test_step_limit_on_datasets(label: str, path: Any, load: Any) -> None:
    traces = load()
    assert fired(step_limit.Detector(), traces) == []  # tau-bench records no explicit limit
    # tau-bench's agent stops after 30 steps: those runs have 30 assistant messages and end on a tool result
    cut = {i for i, run in enumerate(runs(path))
           if len(assistant_messages(run)) >= 30 and run["traj"][-1]["role"] == "tool"}
    detector = step_limit.Detector(step_limit.Config(max_llm_calls=30))
    assert {run_index(t) for t in fired(detector, traces)} == cut
    assert len(cut) == {"airline": 3, "retail": 1}[label]


def test_step_limit_real_fixture_spans() -> None:
    halo = traces_of(*HALO)
    assert fired(step_limit.Detector(), halo + traces_of(*ANY_AGENT)) == []
    t = halo[0]
    row = real_row(t, "AGENT")
    row.update(status_code="ERROR", status_message="MaxTurnsExceeded: Max turns (10) exceeded")
    broken = TraceSpans(t.trace_id, [SpanView(row) if s.span_id == row["span_id"] else s for s in t])
    assert [f.span_id for f in step_limit.Detector().detect(broken, CTX)] == [row["span_id"]]


# ---------------------------------------------------------------- no_final_answer


def test_no_final_answer_docstring_example() -> None:
    call = span(output_text=json.dumps([{"function": {"name": "transfer_to_human_agents", "arguments": "{}"}}]))
    tool = span("TOOL", "transfer_to_human_agents", tool_name="transfer_to_human_agents",
                output_text="Transfer successful")
    findings = no_final_answer.Detector().detect(trace(root(), call, tool), CTX)
    assert findings == [Finding("no_final_answer", "warning", tool.span_id,
                                {"reason": "ended_on_tool_call", "tools": ["transfer_to_human_agents"]},
                                "transfer_to_human_agents")]


def test_no_final_answer_rules() -> None:
    detector = no_final_answer.Detector()
    answered = trace(root(), span(output_text=tool_calls_json("search")), span("TOOL", tool_name="search"),
                     span(output_text="Here is what I found."))
    assert detector.detect(answered, CTX) == []
    requested = trace(root(), span(output_text=tool_calls_json("search")))  # call requested, never executed
    findings = detector.detect(requested, CTX)
    assert signals(findings) == ["no_final_answer"] and findings[0].tool == "search"
    final_tool = trace(root(), span(output_text=tool_calls_json("final_answer")),
                       span("TOOL", tool_name="final_answer", output_text="42"))
    assert detector.detect(final_tool, CTX) == []
    empty = trace(root(), span(output_text="Working on it"), span(output_text=""))
    findings = detector.detect(empty, CTX)
    assert [(f.signal, f.details["reason"]) for f in findings] == [("no_final_answer", "empty_output")]
    root_answer = trace(root(output_text="The answer is 4."), span(output_text="thinking"), span(output_text=""))
    assert detector.detect(root_answer, CTX) == []
    document_answer = trace(root(attributes={"halod.document.final_output": "4"}), span(output_text="a"),
                            span(output_text=None))
    assert detector.detect(document_answer, CTX) == []
    not_recorded = trace(root(), span(output_text=None), span("TOOL", tool_name="x", start=50), span(start=60))
    assert detector.detect(not_recorded, CTX) == []  # no LLM output recorded anywhere: not judged
    assert detector.detect(trace(root(), span("TOOL", tool_name="x")), CTX) == []  # no LLM span
    knobs = no_final_answer.Detector(no_final_answer.Config(on_tool_call=False))
    assert knobs.detect(requested, CTX) == []
    handoff_is_final = no_final_answer.Detector(no_final_answer.Config(final_tools=["transfer_to_*"]))
    tool = span("TOOL", tool_name="transfer_to_human_agents")
    assert handoff_is_final.detect(trace(root(), span(output_text=tool_calls_json(tool.tool_name)), tool), CTX) == []


@pytest.mark.parametrize(("label", "path", "load"), DATASETS)
def test_no_final_answer_on_datasets(label: str, path: Any, load: Any) -> None:
    # raw: runs whose last message is a tool result, its call made by the last assistant message
    expected = {i for i, run in enumerate(runs(path))
                if run["traj"][-1]["role"] == "tool" and assistant_messages(run)[-1].get("tool_calls")}
    findings = {run_index(t): no_final_answer.Detector().detect(t, CTX) for t in load()}
    assert {i for i, f in findings.items() if f} == expected
    assert len(expected) == {"airline": 51, "retail": 8}[label]
    tools = Counter(f[0].tool for f in findings.values() if f)
    raw_tools = Counter(runs(path)[i]["traj"][-1].get("name") for i in expected)
    assert tools == raw_tools


def test_no_final_answer_on_fixtures() -> None:
    detector = no_final_answer.Detector()
    assert fired(detector, traces_of(*HALO)) == []  # HALO exports record no LLM output: not judged
    any_agent = traces_of(*ANY_AGENT)
    assert fired(detector, any_agent) == []  # every framework answered (smolagents / ADK through a final tool)
    strict = no_final_answer.Detector(no_final_answer.Config(final_tools=[]))
    ended = {t.services[0]: f[0].tool for t in any_agent if (f := strict.detect(t, CTX))}
    assert ended == {"GOOGLE_trace": "final_output", "SMOLAGENTS_trace": "final_answer"}


# ---------------------------------------------------------------- escalation


def test_escalation_docstring_example() -> None:
    tool = span("TOOL", "transfer_to_human_agents", tool_name="transfer_to_human_agents",
                tool_arguments='{"summary": "user wants a refund"}')
    findings = escalation.Detector().detect(trace(root(), tool), CTX)
    assert findings == [Finding("escalation", "warning", tool.span_id, {"via": "tool"}, "transfer_to_human_agents")]


def test_escalation_tools_requests_and_text() -> None:
    detector = escalation.Detector()
    for name in ("escalate_to_supervisor", "Give_Up", "ask_human_for_help", "handoff_to_human"):
        assert signals(detector.detect(trace(root(), span("TOOL", tool_name=name)), CTX)) == ["escalation"]
    assert detector.detect(trace(root(), span("TOOL", tool_name="transfer_to_agent")), CTX) == []  # agent to agent
    requested = trace(root(), span(output_text=tool_calls_json("transfer_to_human_agents")))
    findings = detector.detect(requested, CTX)
    assert [(f.details["via"], f.tool) for f in findings] == [("tool_call", "transfer_to_human_agents")]
    said = trace(root(), span(output_text="I understand. I will transfer you to a human agent who can help."),
                 span(output_text="Let me connect you with a live representative now."))
    findings = detector.detect(said, CTX)
    assert [(f.span_id, f.details["via"], f.details["count"]) for f in findings] == [
        (said.llm_spans[0].span_id, "text", 2)]
    for text in ("Would you like me to transfer you to a human agent?",
                 "You may need to contact a human agent for further assistance.",
                 "I can transfer you to a human agent if you like."):
        assert detector.detect(trace(root(), span(output_text=text)), CTX) == [], text
    both = trace(root(), span(output_text="I'll transfer you to a human agent."),
                 span("TOOL", tool_name="transfer_to_human_agents"))
    assert [f.details["via"] for f in detector.detect(both, CTX)] == ["tool"]  # one hand-off, counted once
    no_text = escalation.Detector(escalation.Config(phrases=[]))
    assert no_text.detect(said, CTX) == []


@pytest.mark.parametrize(("label", "path", "load"), DATASETS)
def test_escalation_on_datasets_counts_transfer_calls(label: str, path: Any, load: Any) -> None:
    per_run = [sum(1 for m in run["traj"] for c in m.get("tool_calls") or []
                   if c["function"]["name"] == "transfer_to_human_agents") for run in runs(path)]
    detector = escalation.Detector()
    got = {run_index(t): detector.detect(t, CTX) for t in load()}
    assert {i: len(f) for i, f in got.items() if f} == {i: n for i, n in enumerate(per_run) if n}
    assert all(f.details["via"] == "tool" and f.tool == "transfer_to_human_agents"
               for findings in got.values() for f in findings)
    assert sum(per_run) == {"airline": 48, "retail": 7}[label]


def test_escalation_silent_on_fixtures() -> None:
    assert fired(escalation.Detector(), traces_of(*HALO) + traces_of(*ANY_AGENT)) == []


# ---------------------------------------------------------------- failed_outcome


def test_failed_outcome_docstring_example() -> None:
    run = root(attributes={"outcome.reward": 0.0, "outcome.success": False})
    findings = failed_outcome.Detector().detect(trace(run, span(output_text="bye")), CTX)
    assert findings == [Finding("failed_outcome", "error", "root", {"key": "outcome.success", "value": False})]


@pytest.mark.parametrize(("attributes", "kind", "expected"), [
    ({"outcome.reward": 0}, "root", "outcome.reward"),
    ({"outcome.reward": "0.0"}, "root", "outcome.reward"),
    ({"reward": -1.0}, "root", "reward"),
    ({"outcome.reward": 0.5}, "root", None),  # partial credit is not failure by default
    ({"outcome.reward": 1.0, "outcome.success": True}, "root", None),
    ({"outcome.reward": float("nan")}, "root", None),
    ({"outcome.reward": True}, "root", None),
    ({"success": "failed"}, "root", "success"),
    ({"success": 0}, "root", "success"),
    ({"agent.outcome": "FAILURE"}, "root", "agent.outcome"),
    ({"agent.outcome": "success"}, "root", None),
    ({"eval.success": False}, "EVALUATOR", "eval.success"),
    ({"success": False}, "TOOL", None),  # a tool's own flag is not the run's outcome
    ({}, "root", None),
])
def test_failed_outcome_keys(attributes: dict[str, Any], kind: str, expected: str | None) -> None:
    spans = [root(attributes=attributes)] if kind == "root" else [root(), span(kind, attributes=attributes)]
    findings = failed_outcome.Detector().detect(trace(*spans), CTX)
    assert [f.details["key"] for f in findings] == ([expected] if expected else [])


def test_failed_outcome_threshold_knob() -> None:
    partial = trace(root(attributes={"outcome.reward": 0.5}))
    assert failed_outcome.Detector().detect(partial, CTX) == []
    strict = failed_outcome.Detector(failed_outcome.Config(max_failed_reward=0.99))
    assert signals(strict.detect(partial, CTX)) == ["failed_outcome"]


@pytest.mark.parametrize(("label", "path", "load"), DATASETS)
def test_failed_outcome_on_datasets_is_exactly_reward_zero(label: str, path: Any, load: Any) -> None:
    failed = {i for i, run in enumerate(runs(path)) if run["reward"] == 0}
    assert len(failed) == {"airline": 116, "retail": 27}[label]
    got = fired(failed_outcome.Detector(), load())
    assert {run_index(t) for t in got} == failed
    assert all(f.span_id == t.root.span_id for t in got for f in failed_outcome.Detector().detect(t, CTX))  # type: ignore[union-attr]


def test_failed_outcome_silent_without_outcome() -> None:
    assert fired(failed_outcome.Detector(), traces_of(*HALO) + traces_of(*ANY_AGENT)) == []


# ---------------------------------------------------------------- latency_outlier / token_outlier


def outlier_trace(seconds: int, tokens: int | None, service: str = "shop", agent: str = "support") -> TraceSpans:
    top = root(end=seconds, service_name=service, agent_name=agent)
    llm = span(start=0, end=1, service_name=service, total_tokens=tokens)
    return trace(top, llm)


def test_outliers_docstring_example() -> None:
    stats = outliers.TrailingStats()
    for i in range(60):
        stats.add((outliers.LATENCY, "shop", "support"), (1 + i / 59) * SECOND)  # 1 s .. 2 s
    slow = outlier_trace(10, None)
    findings = outliers.Detector().detect(slow, DetectContext(baselines=stats.baselines))
    assert signals(findings) == ["latency_outlier"] and findings[0].span_id == "root"
    assert findings[0].details["value"] == 10 * SECOND
    assert findings[0].details["baseline_quantile"] == 2 * SECOND


def test_outliers_fire_above_factor_and_respect_min_samples() -> None:
    detector = outliers.Detector()
    stats = detector.new_stats()
    normal = [outlier_trace(5 + i % 5, 1000 + 10 * (i % 7)) for i in range(49)]
    for t in normal:  # the stage's order: detect, then add
        assert detector.detect(t, DetectContext(baselines=stats.baselines)) == []
        stats.add_trace(t)
    huge = outlier_trace(100, 50_000)
    assert detector.detect(huge, DetectContext(baselines=stats.baselines)) == []  # 49 samples < min_samples
    stats.add_trace(outlier_trace(6, 1010))
    findings = detector.detect(huge, DetectContext(baselines=stats.baselines))
    assert sorted(signals(findings)) == ["latency_outlier", "token_outlier"]
    tokens = next(f for f in findings if f.signal == "token_outlier")
    assert tokens.details == {"value": 50_000.0, "baseline_quantile": 1060.0, "factor": 2.0, "samples": 50,
                              "service": "shop", "agent": "support", "unit": "tokens"}
    just_under = outlier_trace(18, 2120)  # 2 x p99 (9 s, 1060 tokens) is not above
    assert detector.detect(just_under, DetectContext(baselines=stats.baselines)) == []
    other_group = outlier_trace(100, 50_000, agent="billing")
    assert detector.detect(other_group, DetectContext(baselines=stats.baselines)) == []
    assert detector.detect(huge, CTX) == []  # no baselines at all
    only_latency = outliers.Detector(outliers.Config(tokens=False))
    assert signals(only_latency.detect(huge, DetectContext(baselines=stats.baselines))) == ["latency_outlier"]


def test_outlier_values_and_groups() -> None:
    t = trace(root(end=30, service_name="a", agent_name=""),
              span(agent_name="planner", prompt_tokens=10, completion_tokens=5),
              span(total_tokens=100), span(prompt_tokens=7), span("TOOL", total_tokens=999))
    assert features.trace_group(t) == ("a", "planner")
    assert features.trace_tokens(t) == 122
    assert features.trace_duration_ns(t) == 30 * SECOND
    rootless = trace(span(start=3, end=4, parent="missing"), span(start=5, end=9, parent="missing"))
    assert features.trace_duration_ns(rootless) == 6 * SECOND
    assert features.trace_tokens(rootless) is None
    assert outliers.observations(rootless) == [((outliers.LATENCY, "svc", ""), 6.0 * SECOND)]


def test_outliers_on_real_traces() -> None:
    detector = outliers.Detector(outliers.Config(min_samples=20))
    stats = detector.new_stats()
    seen = []
    for t in airline():
        seen += detector.detect(t, DetectContext(baselines=stats.baselines))
        stats.add_trace(t)
    assert seen == []  # transcripts take 1 s per message: no run is twice the p99
    assert len(stats.baselines[(outliers.LATENCY, "gpt-4o-airline", "gpt-4o-airline")]) == 200
    assert (outliers.TOKENS, "gpt-4o-airline", "gpt-4o-airline") not in stats.baselines  # no token counts
    halo = traces_of(*HALO)
    big = max(halo, key=lambda t: features.trace_tokens(t) or 0)
    assert features.trace_tokens(big) == sum(s.total_tokens or 0 for s in big.llm_spans) > 100_000
    service, agent = features.trace_group(big)
    baseline = outliers.TrailingStats()
    for value in range(50):
        baseline.add((outliers.TOKENS, service, agent), 1000 + value)
    findings = detector.detect(big, DetectContext(baselines=baseline.baselines))
    assert [f.signal for f in findings] == ["token_outlier"]


def test_trailing_stats_window_lru_and_quantile() -> None:
    stats = outliers.TrailingStats(window=3, max_keys=2)
    a, b, c = (("latency_outlier", s, "") for s in "abc")
    for value in (5.0, 1.0, 3.0, 4.0, math.nan, math.inf):
        stats.add(a, value)
    assert stats.baselines[a] == [1.0, 3.0, 4.0]  # 5 fell out of the window; NaN / inf ignored
    stats.add(b, 1.0)
    stats.add(a, 2.0)  # a is now the most recently used
    stats.add(c, 7.0)  # evicts b
    assert set(stats.baselines) == {a, c} and stats.evicted == 1
    assert stats.baselines[a] == [2.0, 3.0, 4.0]
    assert stats.quantile(a, 0.99) == 4.0 and stats.quantile(a, 0.5) == 3.0 and stats.quantile(b) is None
    snapshot = stats.snapshot()
    snapshot[a].append(100.0)
    assert stats.baselines[a] == [2.0, 3.0, 4.0]
    assert outliers.quantile([float(v) for v in range(1, 101)], 0.99) == 99.0
    with pytest.raises(ValueError):
        outliers.TrailingStats(window=0)


def test_trailing_stats_stays_sorted_under_churn() -> None:
    stats = outliers.TrailingStats(window=50)
    key = ("token_outlier", "s", "a")
    values = [float((i * 7919) % 101) for i in range(500)]
    for value in values:
        stats.add(key, value)
    assert stats.baselines[key] == sorted(values[-50:])


# ---------------------------------------------------------------- every module


MODULES = [refusal, llm_error, step_limit, no_final_answer, escalation, failed_outcome, outliers]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_module_contract(module: Any) -> None:
    assert module.__doc__ and "Example" in module.__doc__ and "Knobs" in module.__doc__
    config = module.Config()
    assert config.enabled is True
    for name, field in module.Config.model_fields.items():
        assert field.description, f"{module.__name__}.Config.{name} has no description"
    detector = module.Detector(config)
    names = getattr(detector, "names", (detector.name,))
    assert detector.name in names
    off = module.Detector(module.Config(enabled=False))
    for t in airline()[:20]:
        assert off.detect(t, CTX) == []
        findings = detector.detect(t, CTX)
        assert all(f.signal in names and f.severity in ("info", "warning", "error") for f in findings)
        assert all(f.span_id is None or f.span_id in t.by_id for f in findings)
        json.dumps([f.details for f in findings])  # JSON-able
