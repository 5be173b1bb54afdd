"""The daemon's lifecycle and local interfaces end to end: signals and drain, health, the admin API and
its token, `halod query`, and startup failures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import Daemon, free_port

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def export(daemon: Daemon, names: list[str]) -> None:
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="life")))
    scope = resource_spans.scope_spans.add()
    for name in names:
        scope.spans.append(Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=name,
                                start_time_unix_nano=now - 1000, end_time_unix_nano=now))
    with grpc.insecure_channel(daemon.grpc_endpoint) as channel:
        channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)(
            request.SerializeToString(), timeout=30)


def get(url: str, token: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def log_events(daemon: Daemon) -> list[str]:
    return [json.loads(line).get("event", "") for line in daemon.log().splitlines() if line.startswith("{")]


def wait_for_event(daemon: Daemon, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while event not in log_events(daemon):
        assert daemon.proc is not None and daemon.proc.poll() is None, f"halod exited:\n{daemon.log()}"
        assert time.monotonic() < deadline, f"no {event!r} in the log:\n{daemon.log()}"
        time.sleep(0.05)


@contextmanager
def stuck_http_request(daemon: Daemon) -> Iterator[socket.socket]:
    """An OTLP/HTTP request in flight that never finishes: headers and part of the announced body only."""
    sock = socket.create_connection(("127.0.0.1", daemon.http_port), timeout=30)
    try:
        sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\x0a" * 10)
        time.sleep(1.0)  # let the server dispatch it to the receiver (it then awaits the rest of the body)
        yield sock
    finally:
        sock.close()


# -- signals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_and_exits_zero(daemon: Daemon, sig: signal.Signals) -> None:
    export(daemon, ["before-stop-1", "before-stop-2"])
    assert daemon.stop(sig) == 0
    events = log_events(daemon)
    assert "signal received; draining (send it again to force exit)" in events
    assert events.index("halod shutting down") < events.index("store closed") < events.index("halod stopped")
    assert events[-1] == "halod stopped"
    assert sorted(r["name"] for r in daemon.query("SELECT name FROM spans")) == ["before-stop-1", "before-stop-2"]


def test_second_signal_forces_exit_during_a_blocked_drain(daemon: Daemon) -> None:
    assert daemon.proc is not None
    with stuck_http_request(daemon):
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for_event(daemon, "halod shutting down")
        # The drain waits for the request in flight (grace period 10 s, shutdown timeout 20 s) ...
        time.sleep(1.0)
        assert daemon.proc.poll() is None, daemon.log()
        # ... until a second signal cuts it short.
        assert daemon.stop(signal.SIGTERM, timeout=30) == 130
    events = log_events(daemon)
    assert "second signal; forcing exit" in events
    assert "halod stopped" not in events


def test_drain_past_shutdown_timeout_exits_one(make_daemon: Any) -> None:
    daemon = make_daemon({"service": {"shutdown_timeout": "2s"},
                          "receivers": {"otlp": {"grace_period": "60s"}}})
    export(daemon, ["acknowledged-before-stuck-drain"])
    with stuck_http_request(daemon):
        assert daemon.stop(signal.SIGTERM, timeout=30) == 1
    assert "drain did not finish in time; exiting" in log_events(daemon)
    # What was acknowledged is in the file all the same.
    assert [r["name"] for r in daemon.query("SELECT name FROM spans")] == ["acknowledged-before-stuck-drain"]


def test_grace_period_bounds_the_http_drain(make_daemon: Any) -> None:
    """An HTTP request stuck in flight is cut off after `grace_period`; the drain then completes (exit 0)."""
    daemon = make_daemon({"service": {"shutdown_timeout": "20s"}, "receivers": {"otlp": {"grace_period": "1s"}}})
    with stuck_http_request(daemon):
        assert daemon.stop(signal.SIGTERM, timeout=30) == 0, daemon.log()
    assert log_events(daemon)[-1] == "halod stopped"


# -- health and the admin API -----------------------------------------------------------------------------


def test_health_and_readiness(daemon: Daemon) -> None:
    status, body = get(daemon.admin_url + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = get(daemon.admin_url + "/readyz")
    assert status == 200 and json.loads(body) == {"status": "ready"}
    status, body = get(daemon.admin_url + "/api/v1/status")
    assert status == 200
    assert json.loads(body)["ready"] is True and json.loads(body)["pid"] == daemon.proc.pid  # type: ignore[union-attr]


def test_admin_api_bearer_token(make_daemon: Any) -> None:
    token = "admin-e2e-token-5d1e"
    daemon = make_daemon({"service": {"telemetry": {"metrics": {"auth": {"bearer_token": token}}}}})
    export(daemon, ["guarded"])
    query = {"sql": "SELECT name FROM spans", "max_rows": 10}
    for bad in (None, "wrong-token"):
        assert get(daemon.admin_url + "/api/v1/query", bad, query)[0] == 401
        assert get(daemon.admin_url + "/metrics", bad)[0] == 401
        assert get(daemon.admin_url + "/api/v1/status", bad)[0] == 401
    status, body = get(daemon.admin_url + "/api/v1/query", token, query)
    assert status == 200
    result = json.loads(body)
    assert result["columns"] == ["name"] and result["rows"] == [["guarded"]]
    assert get(daemon.admin_url + "/metrics", token)[0] == 200
    # Probes stay open without the token.
    assert get(daemon.admin_url + "/healthz")[0] == 200
    assert get(daemon.admin_url + "/readyz")[0] == 200
    # The CLI takes the token from the config.
    assert daemon.query("SELECT name FROM spans") == [{"name": "guarded"}]


# -- halod query ---------------------------------------------------------------------------------------------


WRITES = {
    "DELETE FROM spans": "read-only",
    "DROP TABLE spans": "read-only",
    "UPDATE spans SET name = 'x'": "read-only",
    "CREATE TABLE t AS SELECT * FROM spans": "read-only",
    "SELECT 1; DELETE FROM spans": "exactly one",
}


def assert_writes_refused(daemon: Daemon, statements: list[str]) -> None:
    for sql in statements:
        result = daemon.cli("query", sql)
        assert result.returncode != 0, (sql, result.stdout)
        assert WRITES[sql] in result.stderr, (sql, result.stderr)


def test_query_refuses_writes_via_daemon_and_via_file(daemon: Daemon) -> None:
    export(daemon, ["keep-me-1", "keep-me-2"])
    assert_writes_refused(daemon, list(WRITES))  # through the admin API
    assert daemon.query("SELECT count(*) AS n FROM spans") == [{"n": 2}]
    assert daemon.stop() == 0
    assert_writes_refused(daemon, ["DELETE FROM spans", "SELECT 1; DELETE FROM spans"])  # through the local file
    assert daemon.query("SELECT count(*) AS n FROM spans") == [{"n": 2}]


def test_query_table_output(daemon: Daemon) -> None:
    export(daemon, ["tabled-span"])
    result = daemon.cli("query", "SELECT name, service_name, semantic_kind FROM spans")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("|"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["name", "service_name", "semantic_kind"]
    row = [line for line in lines if line.startswith("|")][1]
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["tabled-span", "life", "UNKNOWN"]
    assert lines[-1] == "1 row(s)"


# -- startup failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["grpc", "http", "admin"])
def test_port_in_use_exits_nonzero_naming_the_address(make_daemon: Any, listener: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"127.0.0.1:{port}"
        overrides: dict[str, Any] = {
            "grpc": {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": address}}}}},
            "http": {"receivers": {"otlp": {"protocols": {"http": {"endpoint": address}}}}},
            "admin": {"service": {"telemetry": {"metrics": {"address": address}}}},
        }[listener]
        daemon = make_daemon(overrides, start=False)
        daemon.start(wait=False)
        assert daemon.proc is not None
        code = daemon.proc.wait(30)
    log = daemon.log()
    assert code != 0, log
    # One clear line naming the address (gRPC writes it as host:port, aiohttp as ('host', port)) and no
    # traceback, not even from a listener that had started before the failing one.
    [failure] = [json.loads(line) for line in log.splitlines()
                 if line.startswith("{") and json.loads(line).get("event") == "startup failed"]
    assert "127.0.0.1" in failure["error"] and str(port) in failure["error"], failure
    assert "in use" in failure["error"] or "bind" in failure["error"].lower(), failure
    assert "Traceback" not in log and "Warning" not in log, log
    assert log_events(daemon)[-1] == "startup failed"
