"""The `langfuse` receiver against a fake Langfuse API (tests/langfuse_server.py) and a real halod.

One scenario runs a daemon through everything a deployment meets: a first pull over several pages with
a 500 on the way and a malformed record, typed columns and parent links, new data, a late observation
for an old trace, an unfinished observation and an output-less trace held back until their updates,
a 429 with Retry-After, quiet polls that fetch nothing again, and a restart that resumes from the
committed cursor. A second daemon runs with wrong keys.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from halod.components import ComponentID, CreateSettings
from halod.receivers.langfuse.api import LangfuseError, parse_retry_after
from halod.receivers.langfuse.config import LangfuseReceiverConfig
from halod.receivers.langfuse.factory import FACTORY
from halod.receivers.langfuse.mapping import iso_ms, observation_span, time_ns
from halod.receivers.langfuse.receiver import LangfuseReceiver
from halod.telemetry import Telemetry
from tests.conftest import Daemon
from tests.langfuse_server import FakeLangfuse, iso

TRACES = "/api/public/traces"
OBSERVATIONS = "/api/public/observations"
SECRET = "sk-lf-very-secret-value"


@pytest.fixture
def fake() -> Iterator[FakeLangfuse]:
    with FakeLangfuse(public_key="pk-lf-test", secret_key=SECRET) as server:
        yield server


def config(fake: FakeLangfuse, **overrides: Any) -> dict[str, Any]:
    receiver = {
        "host": fake.url, "public_key": "${env:LF_PUBLIC_KEY}", "secret_key": "${env:LF_SECRET_KEY}",
        "poll_interval": "150ms", "page_size": 2, "overlap": "10m", "hold_unfinished": "10s",
        "retry_on_failure": {"initial_interval": "100ms", "max_interval": "300ms"}, **overrides,
    }
    return {"receivers": {"langfuse": receiver},
            "service": {"pipelines": {"traces": {"receivers": ["otlp", "langfuse"]}}}}


ENV = {"LF_PUBLIC_KEY": "pk-lf-test", "LF_SECRET_KEY": SECRET}


def agent_run(fake: FakeLangfuse, name: str, start: float, *, output: bool = True) -> list[str]:
    """A trace with an agent, an LLM call that asks for a tool, the tool call, a chain step and an
    error event, in Langfuse's documented shapes. Returns the observation ids."""
    fake.add_trace({
        "id": f"{name}-trace", "timestamp": iso(start), "name": f"{name}-run",
        "input": {"question": f"what about {name}?"}, "output": f"answer for {name}" if output else None,
        "sessionId": f"session-{name}", "userId": "user-7", "tags": ["prod", "agent"], "release": "v1.2.3",
        "version": "7", "environment": "production",
        "metadata": {"service.name": "support-agent", "team": {"name": "core", "size": 4}},
    })
    agent, llm, tool, chain, event = (f"{name}-{part}" for part in ("agent", "llm", "tool", "chain", "event"))
    observations: list[dict[str, Any]] = [
        {"id": agent, "traceId": f"{name}-trace", "type": "AGENT", "name": "support-agent",
         "startTime": iso(start), "endTime": iso(start + 5), "parentObservationId": None},
        {"id": llm, "traceId": f"{name}-trace", "type": "GENERATION", "name": "chat", "parentObservationId": agent,
         "startTime": iso(start + 0.1), "endTime": iso(start + 1.1), "model": "gpt-4o-mini",
         "modelParameters": {"temperature": 0.2, "max_tokens": 256},
         "input": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"about {name}"}],
         "output": {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_1", "type": "function",
              "function": {"name": "lookup_order", "arguments": '{"order_id": "A1"}'}}]},
         "usage": {"input": 0, "output": 0, "total": 0, "unit": "TOKENS"},
         "usageDetails": {"input": 120, "output": 30, "total": 150, "input_cached_tokens": 20},
         "costDetails": {"input": 0.0012, "output": 0.0006, "total": 0.0018}},
        {"id": tool, "traceId": f"{name}-trace", "type": "TOOL", "name": "lookup_order", "parentObservationId": agent,
         "startTime": iso(start + 1.2), "endTime": iso(start + 1.5), "input": {"order_id": "A1"},
         "output": {"status": "shipped"}},
        {"id": chain, "traceId": f"{name}-trace", "type": "SPAN", "name": "format-answer",
         "parentObservationId": agent, "startTime": iso(start + 1.6), "endTime": iso(start + 1.9),
         "metadata": {"step": 3}},
        {"id": event, "traceId": f"{name}-trace", "type": "EVENT", "name": "guardrail-tripped",
         "parentObservationId": tool, "startTime": iso(start + 1.4), "level": "ERROR",
         "statusMessage": "policy violation: refund over limit"},
    ]
    for observation in observations:
        fake.add_observation(observation)
    return [o["id"] for o in observations]


def wait_for(predicate: Callable[[], bool], what: str, daemon: Daemon, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{daemon.log()[-3000:]}")


def committed(daemon: Daemon) -> float:
    return daemon.metric("halod_store_committed_spans_total")


def rows(daemon: Daemon) -> dict[str, dict[str, Any]]:
    """Spans by their Langfuse id (observation id, or the trace id for a root)."""
    result = {}
    for row in daemon.query(
        "SELECT trace_id, span_id, parent_span_id, name, semantic_kind, service_name, model_name, tool_name, "
        "tool_arguments, input_text, output_text, prompt_tokens, completion_tokens, total_tokens, session_id, "
        "user_id, agent_name, status_code, status_message, start_ns, end_ns, attributes, resource_attributes "
        "FROM spans WHERE source = 'langfuse'"
    ):
        attributes = json.loads(row["attributes"])
        row["attributes"] = attributes
        result[attributes.get("langfuse.observation.id") or attributes["langfuse.trace.id"]] = row
    return result


def cursor(daemon: Daemon) -> dict[str, Any]:
    value = daemon.query("SELECT cursor FROM source_cursors WHERE source = 'langfuse'")[0]["cursor"]
    loaded: dict[str, Any] = json.loads(value)
    return loaded


def test_pulls_incrementally_through_faults_and_restarts(make_daemon: Callable[..., Daemon],
                                                         fake: FakeLangfuse) -> None:
    now = time.time()
    first = agent_run(fake, "alpha", now - 120)
    second = agent_run(fake, "beta", now - 90)
    # An observation that never got its end, older than hold_unfinished: stored as it is.
    fake.add_observation({"id": "beta-stuck", "traceId": "beta-trace", "type": "SPAN", "name": "stuck",
                          "startTime": iso(now - 80), "parentObservationId": "beta-agent"})
    # A record the receiver cannot convert: skipped and reported, the rest is stored.
    fake.add_observation({"id": "beta-bad", "traceId": "beta-trace", "type": "GENERATION", "name": "broken",
                          "startTime": iso(now - 70), "endTime": iso(now - 69), "usageDetails": "120 tokens"})
    fake.fail_next(500)  # the very first request fails; the pull retries it
    daemon = make_daemon(config(fake), env=ENV)

    expected = 2 + len(first) + len(second) + 1
    wait_for(lambda: committed(daemon) >= expected, f"{expected} spans", daemon)
    spans = rows(daemon)
    assert len(spans) == expected, sorted(spans)

    # -- the mapping: typed columns, parents, status ------------------------------------------------
    root, agent, llm, tool, chain, event = (spans[key] for key in (
        "alpha-trace", "alpha-agent", "alpha-llm", "alpha-tool", "alpha-chain", "alpha-event"))
    assert root["semantic_kind"] == "AGENT" and root["parent_span_id"] is None
    assert root["name"] == "alpha-run"
    assert json.loads(root["input_text"]) == {"question": "what about alpha?"}
    assert root["output_text"] == "answer for alpha"
    assert (root["session_id"], root["user_id"]) == ("session-alpha", "user-7")
    assert root["service_name"] == "support-agent"
    assert json.loads(root["resource_attributes"]) == {
        "service.name": "support-agent", "service.version": "v1.2.3", "deployment.environment.name": "production"}
    assert root["attributes"]["tag.tags"] == ["prod", "agent"]
    assert root["attributes"]["langfuse.metadata.team.name"] == "core"
    assert root["attributes"]["langfuse.metadata.team.size"] == 4
    assert root["attributes"]["langfuse.version"] == "7"
    assert root["attributes"]["langfuse.url"] == f"{fake.url}/project/test/traces/alpha-trace"
    assert root["end_ns"] > root["start_ns"]  # timestamp + latency

    assert agent["semantic_kind"] == "AGENT" and agent["agent_name"] == "support-agent"
    assert llm["semantic_kind"] == "LLM" and llm["model_name"] == "gpt-4o-mini"
    assert (llm["prompt_tokens"], llm["completion_tokens"], llm["total_tokens"]) == (120, 30, 150)
    assert json.loads(llm["attributes"]["llm.invocation_parameters"]) == {"temperature": 0.2, "max_tokens": 256}
    assert llm["attributes"]["llm.input_messages.1.message.content"] == "about alpha"
    assert llm["attributes"]["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"] == "lookup_order"
    assert llm["attributes"]["langfuse.usage_details.input_cached_tokens"] == 20
    assert llm["end_ns"] - llm["start_ns"] == 1_000_000_000
    assert tool["semantic_kind"] == "TOOL" and tool["tool_name"] == "lookup_order"
    assert json.loads(tool["tool_arguments"]) == {"order_id": "A1"}
    assert json.loads(tool["output_text"]) == {"status": "shipped"}
    assert tool["prompt_tokens"] is None  # Langfuse's zero usage of non-model observations is not copied
    assert chain["semantic_kind"] == "CHAIN" and chain["attributes"]["langfuse.metadata.step"] == 3
    assert event["status_code"] == "ERROR" and event["status_message"] == "policy violation: refund over limit"
    assert event["start_ns"] == event["end_ns"]  # an EVENT is a span of zero duration
    assert llm["service_name"] == "support-agent"  # observations take their trace's service
    stuck = spans["beta-stuck"]
    assert stuck["attributes"]["langfuse.unfinished"] is True and stuck["start_ns"] == stuck["end_ns"]

    by_span = {(row["trace_id"], row["span_id"]): key for key, row in spans.items()}
    parents = {key: by_span.get((row["trace_id"], row["parent_span_id"]))
               for key, row in spans.items() if row["parent_span_id"]}
    assert parents["alpha-agent"] == "alpha-trace"
    assert parents["alpha-llm"] == parents["alpha-tool"] == parents["alpha-chain"] == "alpha-agent"
    assert parents["alpha-event"] == "alpha-tool"
    assert parents["beta-stuck"] == "beta-agent"
    assert None not in parents.values()
    assert len({row["trace_id"] for row in spans.values()}) == 2

    # -- faults: the 500 was retried, the malformed record reported once by id ---------------------
    assert daemon.metric("halod_receiver_pull_errors_total", receiver="langfuse") >= 1
    assert daemon.metric("halod_receiver_bad_records_total", receiver="langfuse") == 1
    assert "observation beta-bad: usageDetails is not an object" in daemon.log()

    # -- incremental: new runs, a late observation of an old trace, updates of held records --------
    third = agent_run(fake, "gamma", time.time() - 2, output=False)  # its output comes later
    fake.add_observation({"id": "alpha-late", "traceId": "alpha-trace", "type": "TOOL", "name": "send_email",
                          "parentObservationId": "alpha-agent", "startTime": iso(now - 118),
                          "endTime": iso(now - 117), "input": {"to": "a@example.com"}})
    fake.add_observation({"id": "gamma-open", "traceId": "gamma-trace", "type": "GENERATION", "name": "draft",
                          "parentObservationId": "gamma-agent", "startTime": iso(time.time() - 1),
                          "model": "gpt-4o-mini"})
    expected += len(third) + 1
    wait_for(lambda: committed(daemon) >= expected, "the new observations", daemon)
    fake.update_trace("gamma-trace", output="answer for gamma")
    fake.update_observation("gamma-open", endTime=iso(time.time()), output="the draft",
                            usageDetails={"input": 5, "output": 7, "total": 12})
    expected += 2
    wait_for(lambda: committed(daemon) >= expected, "the finished trace and observation", daemon)

    # Quiet polls: only the new window and one count request per stream; nothing listed again.
    quiet = time.monotonic()
    time.sleep(1.0)
    recent = [r for r in fake.requests_to(TRACES) + fake.requests_to(OBSERVATIONS) if r.at >= quiet]
    assert len(recent) >= 8
    probes = [r for r in recent if r.params["limit"] == "1"]
    listings = [r for r in recent if r.params["limit"] != "1"]
    assert probes and listings
    horizon = iso(time.time() - 5)
    for request in listings:  # every listing is a new window, none a look-back range
        assert request.params.get("fromTimestamp", request.params.get("fromStartTime")) >= horizon, request

    # 429 with Retry-After: the next request waits at least that long, and nothing is lost.
    fake.fail_next(429, headers={"Retry-After": "1"})
    agent_run(fake, "delta", time.time() - 1)
    expected += 6
    wait_for(lambda: committed(daemon) >= expected, "the run after the 429", daemon)
    refused = next(r for r in fake.requests if r.status == 429)
    after = next(r for r in fake.requests if r.at > refused.at)
    assert after.at - refused.at >= 0.95

    assert daemon.metric("halod_store_duplicate_spans_total") == 0  # nothing stored twice so far
    spans = rows(daemon)
    assert len(spans) == expected
    assert spans["gamma-trace"]["output_text"] == "answer for gamma"
    assert spans["gamma-open"]["output_text"] == "the draft" and spans["gamma-open"]["total_tokens"] == 12
    assert "langfuse.unfinished" not in spans["gamma-open"]["attributes"]
    assert spans["alpha-late"]["tool_name"] == "send_email"
    assert spans["alpha-late"]["parent_span_id"] == spans["alpha-agent"]["span_id"]

    # -- restart: resumes from the committed cursor ------------------------------------------------
    assert daemon.stop() == 0
    mark = cursor(daemon)  # read with halod down: the cursor it stopped at
    before = len(fake.requests)
    agent_run(fake, "epsilon", time.time() - 1)  # arrives while halod is down
    fake.add_observation({"id": "delta-late", "traceId": "delta-trace", "type": "EVENT", "name": "retry",
                          "parentObservationId": "delta-agent", "startTime": iso(time.time() - 3)})
    expected += 6 + 1
    daemon.start()
    wait_for(lambda: committed(daemon) >= expected - len(spans), "the data added while down", daemon)
    resumed = [r for r in fake.requests[before:] if r.params["limit"] != "1"]
    assert next(r for r in resumed if r.path == TRACES).params["fromTimestamp"] == iso_ms(mark["traces"]["mark"])
    assert (next(r for r in resumed if r.path == OBSERVATIONS).params["fromStartTime"]
            == iso_ms(mark["observations"]["mark"]))
    assert len(rows(daemon)) == expected
    # The seen ids live in memory: the first poll after a restart lists the look-back again, once.
    assert daemon.metric("halod_store_duplicate_spans_total") <= len(spans)
    assert SECRET not in daemon.log()


def test_wrong_keys_are_logged_clearly_and_halod_stays_up(make_daemon: Callable[..., Daemon],
                                                          fake: FakeLangfuse) -> None:
    agent_run(fake, "alpha", time.time() - 60)
    daemon = make_daemon(config(fake), env={**ENV, "LF_SECRET_KEY": "sk-lf-wrong-secret"})
    wait_for(lambda: daemon.metric("halod_receiver_pull_errors_total", receiver="langfuse") >= 2,
             "retried pulls", daemon)
    log = daemon.log()
    errors = [json.loads(line) for line in log.splitlines() if "check public_key/secret_key" in line]
    assert errors, log
    assert any(e["level"] == "error" and e["receiver"] == "langfuse" and e["host"] == fake.url for e in errors)
    assert "sk-lf-wrong-secret" not in log
    assert all(r.status == 401 for r in fake.requests)
    daemon.wait_ready(timeout=2)  # still up and ready
    assert committed(daemon) == 0
    assert daemon.stop() == 0


# -- units: the pieces with rules of their own --------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    default = LangfuseReceiverConfig()
    assert default.public_key is None and default.secret_key is None and default.page_size == 100
    keys = LangfuseReceiverConfig.model_validate({"public_key": "", "secret_key": "  "})
    assert keys.public_key is None and keys.secret_key is None  # ${env:VAR:-} with VAR unset
    assert LangfuseReceiverConfig.model_validate({"host": "https://x.example/"}).host == "https://x.example"
    for bad in ({"page_size": 101}, {"host": "cloud.langfuse.com"}, {"hold_unfinished": "20m"},
                {"overlap": 0}, {"project": "p"}):
        with pytest.raises(ValueError):
            LangfuseReceiverConfig.model_validate(bad)


def test_times_and_retry_after() -> None:
    assert time_ns("2024-05-01T12:00:00.123Z", "t") == 1_714_564_800_123_000_000
    assert time_ns("2024-05-01T12:00:00.123456+00:00", "t") == 1_714_564_800_123_456_000
    assert iso_ms(1_714_564_800_123) == "2024-05-01T12:00:00.123Z"
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:10 GMT", now=1_714_564_800.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_observation_without_trace_is_a_root_and_unknown_types_have_no_kind() -> None:
    span = observation_span({"id": "o1", "type": "SOMETHING_NEW", "startTime": "2024-05-01T12:00:00.000Z",
                             "endTime": "2024-05-01T12:00:01.000Z", "level": "WARNING"})
    keys = {kv.key for kv in span.attributes}
    assert span.parent_span_id == b"" and len(span.trace_id) == 16 and len(span.span_id) == 8
    assert "openinference.span.kind" not in keys and "langfuse.level" in keys
    # OTel-shaped ids (Langfuse's OTel ingestion) are kept as they are
    otel = observation_span({"id": "00f067aa0ba902b7", "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                             "type": "SPAN", "startTime": "2024-05-01T12:00:00Z", "endTime": "2024-05-01T12:00:00Z"})
    assert otel.span_id.hex() == "00f067aa0ba902b7" and otel.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"


# -- the receiver's fetch contract, in process ------------------------------------------------------


def receiver_for(fake: FakeLangfuse | None, **settings: Any) -> LangfuseReceiver:
    if fake is not None:
        settings = {"host": fake.url, "public_key": fake.public_key, "secret_key": fake.secret_key,
                    "page_size": 2, "overlap": "10m", "hold_unfinished": 0, **settings}
    config = LangfuseReceiverConfig.model_validate(settings)
    create = CreateSettings(id=ComponentID("langfuse"), pipeline="traces", telemetry=Telemetry())
    receiver: LangfuseReceiver = FACTORY.create(create, config, None)  # fetch() never hands anything on
    return receiver


async def poll(receiver: LangfuseReceiver, cursor: str | None) -> tuple[list[Any], list[str], str | None]:
    """One poll, as the pulling loop runs it: fetch pages until the source has nothing more."""
    spans: list[Any] = []
    problems: list[str] = []
    while True:
        page = await receiver.fetch(cursor)
        spans += [span for rs in page.request.resource_spans for ss in rs.scope_spans for span in ss.spans]
        problems += page.problems
        cursor = page.cursor
        if not page.more:
            return spans, problems, cursor


async def test_a_record_with_an_unreadable_time_is_reported_once(fake: FakeLangfuse) -> None:
    start = time.time() - 30
    fake.add_trace({"id": "t1", "timestamp": iso(start), "output": "done"})
    fake.add_observation({"id": "ok", "traceId": "t1", "type": "SPAN", "startTime": iso(start + 1),
                          "endTime": iso(start + 2)})
    fake.add_observation({"id": "bad", "traceId": "t1", "type": "SPAN", "startTime": "yesterday",
                          "endTime": iso(start + 3)}, filter_time=iso(start + 3))
    receiver = receiver_for(fake)
    await receiver.open()
    try:
        spans, problems, cursor = await poll(receiver, None)
        assert len(spans) == 2 and problems == ["observation bad: startTime is not an ISO 8601 time: 'yesterday'"]
        fake.add_observation({"id": "late", "traceId": "t1", "type": "TOOL", "startTime": iso(start + 4),
                              "endTime": iso(start + 5)})
        spans, problems, cursor = await poll(receiver, cursor)
        assert [s.name for s in spans] == ["tool"] and problems == []
        spans, problems, _ = await poll(receiver, cursor)
        assert spans == [] and problems == []
    finally:
        await receiver.close()


async def test_a_committed_scan_resumes_at_its_page(fake: FakeLangfuse) -> None:
    cursor = json.dumps({"v": 1, "traces": {"mark": None, "scan": {"from": 1_000, "to": 2_000, "page": 3}},
                         "observations": {"mark": 500, "scan": None}})
    receiver = receiver_for(fake)
    await receiver.open()
    try:
        await receiver.fetch(cursor)
        first = fake.requests[0].params
        assert (first["page"], first["fromTimestamp"], first["toTimestamp"]) == ("3", iso_ms(1_000), iso_ms(2_000))
    finally:
        await receiver.close()


async def test_without_keys_nothing_is_requested_and_the_error_says_why() -> None:
    receiver = receiver_for(None)  # the default config: no keys
    await receiver.open()
    with pytest.raises(LangfuseError, match="check public_key/secret_key"):
        await receiver.fetch(None)
    await receiver.close()
    await receiver.close()
