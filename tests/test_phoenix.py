"""The `phoenix` receiver against a real Arize Phoenix server (tests/phoenix_server.py).

Spans are written into Phoenix through its own OTLP endpoint with the OpenTelemetry SDK's exporter,
pulled by a real halod subprocess, and compared with what halod stores when it gets the same spans
directly over OTLP (halod.normalize on the SDK's own encoding): the difference is exactly what Phoenix
does not keep (receivers/phoenix/convert.py).

One Phoenix server serves the module (~15 s to start; the first run also installs it, ~1-2 min).
"""

from __future__ import annotations

import contextlib
import json
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from halod.components import ComponentID, CreateSettings
from halod.config import ConfigError, parse_config
from halod.normalize import normalize_request
from halod.receivers.phoenix.config import PhoenixReceiverConfig
from halod.receivers.phoenix.convert import add_spans, fold_json_strings, iso_to_ns, project_request
from halod.receivers.phoenix.receiver import Cursor, PhoenixError, PhoenixReceiver, span_global_id, span_rowid
from halod.telemetry import Telemetry
from tests.conftest import Daemon, free_port
from tests.phoenix_server import API_KEY, PhoenixServer
from tests.spans import halo_attributes

pytestmark = pytest.mark.timeout(900)  # the first run installs Phoenix into its own virtualenv

PROJECT = "halod-e2e"
# Attributes Phoenix parses from JSON text at ingestion: halod gets them back as equal JSON, not equal text.
JSON_VALUED = {"tool.parameters", "metadata"}


# -- spans ----------------------------------------------------------------------------------------------


def agent_traces(count: int, first: int = 0, error_at: int | None = None, project: str = PROJECT,
                 ) -> list[ReadableSpan]:
    """`count` traces of an agent run, 4 spans each: AGENT root -> CHAIN -> LLM, and AGENT -> TOOL.
    OpenInference attributes from the recorded halo-engine fixture plus messages, tool calls, tokens,
    JSON-text metadata and tool parameters, a list attribute, a custom event; trace `error_at`'s tool
    fails (status ERROR + exception event)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "support-agent", "openinference.project.name": project}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("openinference.instrumentation.openai_agents", "1.4.0")
    for index in range(first, first + count):
        root = tracer.start_span("Agent workflow", attributes={
            **halo_attributes("AGENT"),
            "input.value": f"List the Python files, request {index}",
            "session.id": f"session-{index % 3}",
            "user.id": "user-7",
            "metadata": json.dumps({"tier": "gold", "attempt": index, "flags": {"beta": True}}),
            "tag.tags": ["prod", "eu-west"],
        })
        in_root = trace_api.set_span_in_context(root)
        plan = tracer.start_span("plan", context=in_root, attributes={
            "openinference.span.kind": "CHAIN", "input.value": "plan the next step", "output.value": "call list_files",
        })
        llm = tracer.start_span("response", context=trace_api.set_span_in_context(plan),
                                kind=trace_api.SpanKind.CLIENT, attributes={
            **halo_attributes("LLM"),
            "llm.model_name": "gpt-4o-mini-2024-07-18",
            "llm.invocation_parameters": json.dumps({"temperature": 0.2}),
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "You are a helpful code assistant.",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": f"List the Python files, request {index}",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "list_files",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"subdir": "./"}',
            "llm.token_count.prompt": 325 + index,
            "llm.token_count.completion": 21,
            "llm.token_count.total": 346 + index,
        })
        llm.add_event("first_token", {"latency_ms": 120 + index, "streamed": True})
        llm.end()
        plan.end()
        tool = tracer.start_span("list_files", context=in_root, attributes={
            **halo_attributes("TOOL", with_output=True),
            "tool.parameters": json.dumps({"subdir": "./", "pattern": "*.py", "depth": [1, 2]}),
        })
        if index == error_at:
            try:
                raise RuntimeError("rate limited by the file service")
            except RuntimeError as exc:
                tool.record_exception(exc)
            tool.set_status(trace_api.Status(trace_api.StatusCode.ERROR, "rate limited by the file service"))
        tool.end()
        root.set_attribute("output.value", "['./agent.py', './main.py']")
        root.end()
    spans = list(memory.get_finished_spans())
    provider.shutdown()
    assert len(spans) == 4 * count
    return spans


def direct_rows(spans: list[ReadableSpan]) -> dict[str, dict[str, Any]]:
    """What halod stores for `spans` received directly over OTLP, by span id."""
    rows = normalize_request(encode_spans(spans), "otlp").spans.to_pylist()
    return {row["span_id"]: row for row in rows}


SAME = ("trace_id", "span_id", "parent_span_id", "name", "semantic_kind", "status_code", "status_message",
        "model_name", "tool_name", "input_text", "output_text", "prompt_tokens", "completion_tokens",
        "total_tokens", "session_id", "user_id", "agent_name", "links")


def _json_equal_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    return {key: (json.loads(value) if key in JSON_VALUED else value) for key, value in attributes.items()}


def assert_same_as_direct(stored: dict[str, Any], direct: dict[str, Any], project: str = PROJECT) -> None:
    """A span pulled from Phoenix against the same span received directly: equal, except for what
    Phoenix does not keep (OTel kind, resource, scope, flags, sub-microsecond times, JSON spacing)."""
    span = direct["span_id"]
    for column in SAME:
        assert stored[column] == direct[column], f"{span} {column}: {stored[column]!r} != {direct[column]!r}"
    assert stored["kind"] == "UNSPECIFIED"  # Phoenix keeps no OTel span kind
    assert stored["service_name"] == project
    assert json.loads(stored["resource_attributes"]) == {"service.name": project, "openinference.project.name": project}
    assert stored["scope_name"] is None and stored["scope_version"] is None
    for column in ("start_ns", "end_ns"):  # Phoenix keeps microseconds
        assert abs(stored[column] - direct[column]) <= 1_000, f"{span} {column}"
    assert stored["duration_ns"] == stored["end_ns"] - stored["start_ns"]
    if direct["tool_arguments"] is None:
        assert stored["tool_arguments"] is None
    else:
        assert json.loads(stored["tool_arguments"]) == json.loads(direct["tool_arguments"])
    assert _json_equal_attributes(json.loads(stored["attributes"])) == _json_equal_attributes(
        json.loads(direct["attributes"])), span
    stored_events, direct_events = (json.loads(row["events"] or "[]") for row in (stored, direct))
    assert [(e["name"], e["attributes"]) for e in stored_events] == [
        (e["name"], e["attributes"]) for e in direct_events]
    for got, want in zip(stored_events, direct_events, strict=True):
        assert abs(got["time_ns"] - want["time_ns"]) <= 1_000


# -- fixtures and helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[PhoenixServer]:
    failed_before = request.session.testsfailed
    server = PhoenixServer.start(tmp_path_factory.mktemp("phoenix"))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    try:
        yield server
    finally:
        server.stop()
        if request.session.testsfailed > failed_before and reporter is not None:
            reporter.write_line(f"\n--- Phoenix log ({server.log_path}) ---\n{server.log()}")


def receiver_config(phoenix: PhoenixServer | None = None, **settings: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "base_url": phoenix.url if phoenix else f"http://127.0.0.1:{free_port()}",
        "project": PROJECT,
        "poll_interval": "200ms",
        "retry_on_failure": {"initial_interval": "100ms", "max_interval": "500ms"},
    }
    return {**config, **settings}


def with_receivers(receivers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"receivers": receivers, "service": {"pipelines": {"traces": {"receivers": ["otlp", *receivers]}}}}


def wait_until(check: Callable[[], Any], what: str, daemon: Daemon, phoenix: PhoenixServer | None = None,
               timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            logs = f"halod log:\n{daemon.log()[-6000:]}"
            if phoenix is not None:
                logs += f"\nPhoenix log:\n{phoenix.log()}"
            raise AssertionError(f"timed out waiting for {what}\n{logs}")
        assert daemon.proc is not None and daemon.proc.poll() is None, f"halod exited:\n{daemon.log()}"
        time.sleep(0.2)


def stored_spans(daemon: Daemon, source: str = "phoenix") -> dict[str, dict[str, Any]]:
    rows = daemon.query(f"SELECT * FROM spans WHERE source = '{source}'")
    return {row["span_id"]: row for row in rows}


def log_events(daemon: Daemon) -> list[dict[str, Any]]:
    events = []
    for line in daemon.log().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


# -- end to end against Phoenix ------------------------------------------------------------------------------


def test_pulls_every_span_incrementally_and_resumes_after_a_restart(
    phoenix: PhoenixServer, make_daemon: Callable[..., Daemon]
) -> None:
    first = agent_traces(5, error_at=2)
    phoenix.send(first)
    phoenix.wait_for_spans(PROJECT, len(first))

    # the key through the config loader's ${env:...}; pages of 7 spans so a pull takes several pages
    daemon = make_daemon(
        with_receivers({"phoenix": receiver_config(phoenix, api_key="${env:PHOENIX_API_KEY}", page_size=7)}),
        env={"PHOENIX_API_KEY": API_KEY},
    )
    stored = wait_until(lambda: (rows := stored_spans(daemon)) and len(rows) >= len(first) and rows,
                        "the first spans in halod", daemon, phoenix)
    expected = direct_rows(first)
    assert stored.keys() == expected.keys()
    for span_id, row in expected.items():
        assert_same_as_direct(stored[span_id], row)
    errors = [row for row in stored.values() if row["status_code"] == "ERROR"]
    assert len(errors) == 1 and errors[0]["tool_name"] == "list_files"
    assert json.loads(errors[0]["events"])[0]["name"] == "exception"
    assert sorted({row["semantic_kind"] for row in stored.values()}) == ["AGENT", "CHAIN", "LLM", "TOOL"]

    # Phoenix said there is no next page: spans written later are picked up after the last one stored
    second = agent_traces(2, first=5)
    phoenix.send(second)
    records = phoenix.wait_for_spans(PROJECT, len(first) + len(second))
    stored = wait_until(lambda: (rows := stored_spans(daemon)) and len(rows) >= len(records) and rows,
                        "the spans written after the first pull", daemon, phoenix)
    assert stored.keys() == {record["context"]["span_id"] for record in records}
    for span_id, row in direct_rows(second).items():
        assert_same_as_direct(stored[span_id], row)
    assert daemon.metric("halod_store_duplicate_spans_total") == 0
    assert daemon.metric("halod_receiver_accepted_spans_total", receiver="phoenix") == len(records)
    cursor = Cursor.decode(daemon.query("SELECT cursor FROM source_cursors WHERE source = 'phoenix'")[0]["cursor"])
    assert cursor is not None and cursor.base_url == phoenix.url
    assert cursor.next_rowid == max(span_rowid(record["id"]) or 0 for record in records) + 1

    # a restart resumes at the cursor: nothing fetched again, and spans written meanwhile are not skipped
    assert daemon.stop() == 0
    third = agent_traces(1, first=7)
    phoenix.send(third)
    records = phoenix.wait_for_spans(PROJECT, len(first) + len(second) + len(third))
    daemon.start()
    stored = wait_until(lambda: (rows := stored_spans(daemon)) and len(rows) >= len(records) and rows,
                        "the spans written while halod was down", daemon, phoenix)
    assert stored.keys() == {record["context"]["span_id"] for record in records}
    wait_until(lambda: daemon.metric("halod_receiver_accepted_spans_total", receiver="phoenix") >= len(third),
               "the restart's commit to be counted", daemon)
    time.sleep(1.0)  # a few more polls: they must find nothing new
    assert daemon.metric("halod_receiver_accepted_spans_total", receiver="phoenix") == len(third)
    assert daemon.metric("halod_store_duplicate_spans_total") == 0
    assert daemon.metric("halod_receiver_pull_errors_total", receiver="phoenix") == 0
    assert API_KEY not in daemon.log()
    assert daemon.stop() == 0


def test_failures_are_retried_logged_and_counted_while_halod_stays_up(
    phoenix: PhoenixServer, make_daemon: Callable[..., Daemon]
) -> None:
    wrong_key = "wrong-key-0123456789abcdefghijklmnop"
    daemon = make_daemon(with_receivers({
        "phoenix/down": receiver_config(),  # nothing listens there
        "phoenix/nokey": receiver_config(phoenix),
        "phoenix/badkey": receiver_config(phoenix, api_key=wrong_key),
        "phoenix/missing": receiver_config(phoenix, api_key=API_KEY, project="no-such-project"),
    }))
    for receiver in ("phoenix/down", "phoenix/nokey", "phoenix/badkey", "phoenix/missing"):
        wait_until(lambda r=receiver: daemon.metric("halod_receiver_pull_errors_total", receiver=r) >= 2,
                   f"{receiver} to retry", daemon, phoenix)
    assert daemon.proc is not None and daemon.proc.poll() is None  # still up, and ready
    daemon.wait_ready(timeout=5)

    events = log_events(daemon)
    retries = [e for e in events if e.get("event") == "fetch failed; retrying" and e.get("receiver") == "phoenix/down"]
    assert retries and f"cannot reach Phoenix at {daemon.config['receivers']['phoenix/down']['base_url']}" in (
        retries[0]["error"])
    config_faults = {e["receiver"]: e["error"] for e in events
                     if e.get("event") == "phoenix receiver cannot read spans"}
    assert config_faults.keys() == {"phoenix/nokey", "phoenix/badkey", "phoenix/missing"}
    assert f"{phoenix.url}/v1/projects/{PROJECT} answered 401" in config_faults["phoenix/nokey"]
    assert "set api_key" in config_faults["phoenix/nokey"]
    assert "api_key configured was refused" in config_faults["phoenix/badkey"]
    assert f"{phoenix.url}/v1/projects/no-such-project answered 404" in config_faults["phoenix/missing"]
    assert "set project to an existing Phoenix project" in config_faults["phoenix/missing"]
    # each config fault is logged at error level once, not at every retry
    assert sum(e.get("event") == "phoenix receiver cannot read spans" for e in events) == 3
    assert wrong_key not in daemon.log() and API_KEY not in daemon.log()
    assert daemon.stop() == 0


def test_a_record_that_cannot_be_converted_is_reported_and_the_others_kept(phoenix: PhoenixServer) -> None:
    project = "halod-records"
    spans = agent_traces(1, project=project)
    phoenix.send(spans)
    records = phoenix.wait_for_spans(project, len(spans))
    broken = json.loads(json.dumps(records))
    broken[1]["context"]["trace_id"] = "not-hex"
    broken[2]["start_time"] = "yesterday"
    request = project_request(project)
    problems = add_spans(request, broken)
    assert problems == [
        f"span {records[1]['context']['span_id']}: trace_id 'not-hex' is not hex",
        f"span {records[2]['context']['span_id']}: start_time 'yesterday' is not an ISO 8601 time",
    ]
    batch = normalize_request(request, "phoenix")
    assert batch.num_spans == len(spans) - 2 and batch.rejected == 0
    expected = direct_rows(spans)
    for row in batch.spans.to_pylist():
        assert_same_as_direct(row, expected[row["span_id"]], project)


@contextlib.asynccontextmanager
async def opened_receiver(**settings: Any) -> AsyncIterator[PhoenixReceiver]:
    """The receiver's own client, opened without a daemon: fetch() is called directly."""
    config = PhoenixReceiverConfig.model_validate(settings)
    receiver = PhoenixReceiver(CreateSettings(ComponentID("phoenix"), "traces", Telemetry()), config,
                               next_consumer=None)  # type: ignore[arg-type]  # fetch() hands nothing on
    await receiver.open()
    try:
        yield receiver
    finally:
        await receiver.close()
        await receiver.close()


def page_span_ids(page: Any) -> list[str]:
    return [span.span_id.hex() for rs in page.request.resource_spans for ss in rs.scope_spans for span in ss.spans]


async def test_fetch_pages_in_insertion_order_and_falls_back_to_the_start(phoenix: PhoenixServer) -> None:
    """fetch() against Phoenix: paging, the idle poll, and the safety nets that refetch rather than skip."""
    project = "halod-paging"
    spans = agent_traces(2, project=project)
    phoenix.send(spans)
    records = phoenix.wait_for_spans(project, len(spans))
    in_order = [record["context"]["span_id"] for record in records]
    project_id = phoenix.get(f"/v1/projects/{project}")["data"]["id"]
    async with opened_receiver(base_url=phoenix.url, project=project_id, api_key=API_KEY, page_size=3) as receiver:
        cursor, seen, pages = None, [], 0
        while True:
            page = await receiver.fetch(cursor)
            assert not page.problems
            seen += page_span_ids(page)
            cursor, pages = page.cursor, pages + 1
            if not page.more:
                break
        assert seen == in_order and pages == -(-len(records) // 3)
        position = Cursor.decode(cursor)
        assert position == Cursor(phoenix.url, project_id, span_rowid(records[-1]["id"]) + 1)  # type: ignore[operator]

        idle = await receiver.fetch(cursor)  # nothing new: no spans, the same cursor (nothing to commit)
        assert idle.cursor == cursor and not idle.request.resource_spans and not idle.more

        # a cursor past Phoenix's newest span (its database was reset): from the first span again
        reset = await receiver.fetch(Cursor(phoenix.url, project_id, position.next_rowid + 1000).encode())
        assert page_span_ids(reset)[:3] == in_order[:3]
        # a cursor of another project or server (the config changed): from the first span
        for stale in (Cursor(phoenix.url, "UHJvamVjdDo5OTk=", position.next_rowid),
                      Cursor("http://elsewhere:6006", project_id, position.next_rowid)):
            assert page_span_ids(await receiver.fetch(stale.encode()))[:3] == in_order[:3]


# -- conversion and config, no server --------------------------------------------------------------------------


def test_json_text_attributes_phoenix_spread_are_folded_back() -> None:
    folded = fold_json_strings({
        "tool.parameters.city": "Paris", "tool.parameters.days": [1, 2], "tool.name": "weather",
        "metadata.user.tier": "gold", "metadata.runs.0.id": "a", "metadata.runs.1.id": "b",
        "retrieval.documents.0.document.metadata.source": "wiki", "retrieval.documents.0.document.content": "x",
        "llm.prompt_template.variables": "not json",  # Phoenix could not parse it: the text as sent
        "user_metadata": 5,  # parsed from "5" (Phoenix matches any key ending in `metadata`)
    })
    assert folded == {
        "tool.parameters": json.dumps({"city": "Paris", "days": [1, 2]}),
        "tool.name": "weather",
        "metadata": json.dumps({"user": {"tier": "gold"}, "runs": [{"id": "a"}, {"id": "b"}]}),
        "retrieval.documents.0.document.metadata": json.dumps({"source": "wiki"}),
        "retrieval.documents.0.document.content": "x",
        "llm.prompt_template.variables": "not json",
        "user_metadata": "5",
    }


def test_times_and_cursors_convert_exactly() -> None:
    assert iso_to_ns("2026-04-24T18:12:13.315189+00:00") == 1777054333315189000
    assert iso_to_ns("2026-04-24T18:12:13.315189Z") == iso_to_ns("2026-04-24T18:12:13.315189")
    assert iso_to_ns("2026-04-24T20:12:13.315189+02:00") == 1777054333315189000
    assert span_global_id(3) == "U3Bhbjoz" and span_rowid("U3Bhbjoz") == 3  # as Phoenix writes them
    assert span_rowid("UHJvamVjdDox") is None and span_rowid("%%") is None and span_rowid(None) is None
    cursor = Cursor("http://127.0.0.1:6006", "UHJvamVjdDox", 42)
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.decode("garbage") is None and Cursor.decode(None) is None


def test_config_reads_the_key_from_the_environment_and_validates(tmp_path: Path) -> None:
    def receivers(settings: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
        return parse_config({
            "storage": {"path": str(tmp_path / "halod.duckdb")},
            "receivers": {"phoenix": settings},
            "service": {"pipelines": {"traces": {"receivers": ["phoenix"]}}},
        }, environ=environ or {}).component("receiver", "phoenix").config

    config = receivers({"api_key": "${env:PHOENIX_API_KEY}", "base_url": "https://phoenix.example/root/"},
                       {"PHOENIX_API_KEY": "s3cret-key"})
    assert config.api_key.get_secret_value() == "s3cret-key"
    assert "s3cret-key" not in repr(config) and "s3cret-key" not in str(config.model_dump())
    assert config.base_url == "https://phoenix.example/root"
    assert receivers({"api_key": "${env:PHOENIX_API_KEY:-}"}).api_key is None
    defaults = receivers({})
    assert (defaults.base_url, defaults.project, defaults.page_size) == ("http://127.0.0.1:6006", "default", 1000)
    for bad, message in (
        ({"page_size": 1001}, "receivers.phoenix.page_size: "),
        ({"base_url": "127.0.0.1:6006"}, "receivers.phoenix.base_url: invalid URL '127.0.0.1:6006': expected an http"),
        ({"project": "a/b"}, "receivers.phoenix.project: .*cannot contain"),
        ({"tls": {"ca_file": str(tmp_path / "missing.pem")}}, "receivers.phoenix.tls.ca_file: .*does not exist"),
        ({"projects": "x"}, "receivers.phoenix.projects"),
    ):
        with pytest.raises(ConfigError, match=message):
            receivers(bad)


def test_sigterm_during_a_retry_stops_halod_promptly(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(with_receivers({"phoenix": receiver_config(retry_on_failure={"initial_interval": "30s",
                                                                                      "max_interval": "30s"})}))
    wait_until(lambda: daemon.metric("halod_receiver_pull_errors_total", receiver="phoenix") >= 1,
               "the first failed fetch", daemon)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl: the cryptography package is not installed)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_https_verification_and_the_bearer_header(tmp_path: Path) -> None:
    """TLS options against an HTTPS server answering like Phoenix (a self-signed certificate), fetching
    through the receiver's own client; the API key goes out as a bearer token."""
    cert, key = self_signed_cert(tmp_path)
    seen: list[str | None] = []

    async def project(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"data": {"id": "UHJvamVjdDox", "name": "tls-project"}})

    async def spans(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"data": [], "next_cursor": None})

    app = web.Application()
    app.router.add_get("/root/v1/projects/tls-project", project)
    app.router.add_get("/root/v1/projects/UHJvamVjdDox/spans", spans)
    runner = web.AppRunner(app)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
    await site.start()

    async def fetch(**tls: Any) -> Any:
        async with opened_receiver(base_url=f"https://127.0.0.1:{port}/root", project="tls-project",
                                   api_key="k-123", tls=tls) as receiver:
            return await receiver.fetch(None)

    try:
        page = await fetch(ca_file=str(cert))
        assert page.cursor is None and not page.request.resource_spans and not page.more
        assert (await fetch(insecure_skip_verify=True)).cursor is None
        with pytest.raises(PhoenixError, match=r"cannot reach Phoenix at https://127\.0\.0\.1.*certificate"):
            await fetch()  # the system's CAs do not know the self-signed certificate
        assert seen == ["Bearer k-123"] * 4
    finally:
        await runner.cleanup()
