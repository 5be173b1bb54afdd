"""A real Arize Phoenix server for the tests of the `phoenix` receiver.

Phoenix pins heavy dependencies that conflict with halod's, so it lives in its own virtualenv,
installed by `phoenix_executable()` the first time a test needs it (a fresh clone with only
`pip install -e ".[test]"` works) into the gitignored `.cache/phoenix-venv` (or $HALOD_PHOENIX_VENV),
and reused afterwards. An fcntl lock keeps parallel sessions from installing it twice; the install
log and its duration are kept beside the venv (`phoenix-venv.install.log`, `halod-installed.json`).

`PhoenixServer.start()` runs `phoenix serve` on free 127.0.0.1 ports (the gRPC port too: it binds
4317 on every interface otherwise) with a fresh working directory and auth on: requests carry the
admin secret as their bearer token, the way a Phoenix API key is sent. It writes its log to a file the
tests print on failure.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.conftest import REPO, free_port, wait_until_serving

PHOENIX_VERSION = "20.26.1"  # the version these tests were written and run against
VENV = Path(os.environ.get("HALOD_PHOENIX_VENV") or REPO / ".cache" / "phoenix-venv")
# Auth on, with an admin secret usable as a bearer token (Phoenix: >= 32 chars, a digit, a lower-case letter).
SECRET = "halod-test-jwt-secret-0123456789abcdefgh"
API_KEY = "halod-test-admin-key-0123456789abcdefgh"


def _installed() -> bool:
    marker = VENV / "halod-installed.json"
    try:
        return json.loads(marker.read_text())["version"] == PHOENIX_VERSION and (VENV / "bin" / "phoenix").is_file()
    except (OSError, ValueError, KeyError):
        return False


def phoenix_executable() -> Path:
    """`phoenix` of the cached virtualenv, installing arize-phoenix==PHOENIX_VERSION first if needed."""
    if _installed():
        return VENV / "bin" / "phoenix"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with (VENV.parent / f"{VENV.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be installing: wait for it, then reuse
        if _installed():
            return VENV / "bin" / "phoenix"
        shutil.rmtree(VENV, ignore_errors=True)  # a half-made venv from an interrupted install
        log = VENV.parent / f"{VENV.name}.install.log"
        started = time.monotonic()
        with log.open("w") as out:
            steps = [
                [sys.executable, "-m", "venv", str(VENV)],
                [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                 f"arize-phoenix=={PHOENIX_VERSION}"],
            ]
            for step in steps:
                out.write(f"$ {' '.join(step)}\n")
                out.flush()
                result = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1500)
                if result.returncode != 0:
                    out.close()
                    tail = log.read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"installing Phoenix failed ({' '.join(step)}), log {log}:\n{tail}")
        seconds = round(time.monotonic() - started, 1)
        (VENV / "halod-installed.json").write_text(json.dumps({"version": PHOENIX_VERSION, "install_seconds": seconds}))
        sys.stderr.write(f"\ninstalled arize-phoenix {PHOENIX_VERSION} into {VENV} in {seconds} s\n")
    return VENV / "bin" / "phoenix"


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: a preexec_fn that has the kernel SIGTERM the server when the test process dies, so no
    450 MB Phoenix outlives a killed run (prctl is looked up here, before the fork, not in the child)."""
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class PhoenixServer:
    workdir: Path
    port: int
    grpc_port: int
    proc: subprocess.Popen[bytes]
    started_in_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "phoenix.log"

    def log(self, tail: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text[-tail:]

    @classmethod
    def start(cls, workdir: Path, timeout: float = 180.0) -> PhoenixServer:
        executable = phoenix_executable()
        port, grpc_port = free_port(), free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("PHOENIX_")}
        env.update({
            "PHOENIX_WORKING_DIR": str(workdir / "data"),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_ENABLE_AUTH": "true",
            "PHOENIX_SECRET": SECRET,
            "PHOENIX_ADMIN_SECRET": API_KEY,
            "PHOENIX_TELEMETRY_ENABLED": "false",
        })
        with (workdir / "phoenix.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(executable), "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                preexec_fn=_die_with_parent(),
            )
        server = cls(workdir, port, grpc_port, proc)
        started = time.monotonic()
        try:
            server.wait_healthy(timeout)
        except BaseException:
            server.stop()
            raise
        server.started_in_s = round(time.monotonic() - started, 1)
        return server

    def wait_healthy(self, timeout: float) -> None:
        wait_until_serving(f"{self.url}/healthz", self.proc, "phoenix serve", self.log, timeout, interval=0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # -- REST ------------------------------------------------------------------------------------------

    def get(self, path: str, params: dict[str, str] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(f"{self.url}{path}{query}", headers={"Authorization": f"Bearer {API_KEY}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def spans(self, project: str) -> list[dict[str, Any]]:
        """Every span record of `project`, in insertion order (what the receiver reads)."""
        records: list[dict[str, Any]] = []
        params = {"sort": "id", "order": "asc", "limit": "1000"}
        while True:
            try:
                body = self.get(f"/v1/projects/{project}/spans", params)
            except urllib.error.HTTPError as error:
                if error.code == 404:  # the project appears with its first span
                    return []
                raise
            records += body["data"]
            if not body.get("next_cursor"):
                return records
            params["cursor"] = body["next_cursor"]

    def send(self, spans: Sequence[ReadableSpan]) -> None:
        """Export `spans` through Phoenix's own OTLP/HTTP endpoint with the SDK's exporter."""
        exporter = OTLPSpanExporter(endpoint=f"{self.url}/v1/traces", headers={"authorization": f"Bearer {API_KEY}"})
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
        finally:
            exporter.shutdown()

    def wait_for_spans(self, project: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Phoenix acknowledges OTLP before it writes (and writes slowly): wait until `count` spans are listed."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.spans(project)
            if len(records) >= count or time.monotonic() > deadline:
                assert len(records) == count, f"Phoenix lists {len(records)} spans of {project}, expected {count}"
                return records
            time.sleep(0.2)
