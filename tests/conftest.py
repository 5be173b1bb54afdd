"""Shared fixtures: real halod daemons on free 127.0.0.1 ports, started as subprocesses.

Tests never bind the default ports, so they run beside a halod already running on this machine.
"""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
FIXTURES = DATASETS / "otel-fixtures"


# Ports handed to test servers come from below Linux's ephemeral range (32768-60999): a port the
# kernel picked for `bind(0)` can be given again to any outgoing connection (a client, the daemon's
# own) before the server binds it, and the server then fails with "address already in use".
_PORTS = random.Random(os.getpid())
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        port = _PORTS.randrange(20000, 32000)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m halod ARGS` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "halod", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_until_serving(url: str, proc: subprocess.Popen[bytes], what: str, log: Callable[[], str],
                       timeout: float, interval: float = 0.1) -> None:
    """Poll `url` until it answers 200; fail with the server's log if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(interval)
    raise TimeoutError(f"{what} not serving {url} after {timeout} s:\n{log()}")


@dataclass
class Daemon:
    """A halod subprocess with its config file, ports and log."""

    workdir: Path
    config: dict[str, Any]
    grpc_port: int
    http_port: int
    admin_port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "halod.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "halod.log"

    @property
    def db_path(self) -> Path:
        return Path(self.config["storage"]["path"])

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_config(self) -> Path:
        self.config_path.write_text(yaml.safe_dump(self.config))
        return self.config_path

    def start(self, wait: bool = True) -> Daemon:
        self.write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "halod", "run", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, env={**os.environ, **self.env},
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        wait_until_serving(self.admin_url + "/readyz", self.proc, "halod", self.log, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a CLI command against this daemon's config (e.g. cli("query", "SELECT 1"))."""
        return run_cli(*args, "--config", str(self.config_path), env=self.env, timeout=timeout)

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Rows of a read-only query through `halod query --json` (the daemon's admin API when up)."""
        result = self.cli("query", sql, "--json", "--max-rows", "100000")
        if result.returncode != 0:
            raise AssertionError(f"halod query failed ({result.returncode}): {result.stderr}")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.admin_url + "/metrics", timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` (e.g. halod_receiver_refused_requests_total) whose labels include `labels`."""
        total = 0.0
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def base_config(workdir: Path, grpc_port: int, http_port: int, admin_port: int) -> dict[str, Any]:
    return {
        "storage": {"path": str(workdir / "data" / "halod.duckdb")},
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": f"127.0.0.1:{grpc_port}"},
                    "http": {"endpoint": f"127.0.0.1:{http_port}"},
                }
            }
        },
        "service": {
            "pipelines": {"traces": {"receivers": ["otlp"]}},
            "telemetry": {"metrics": {"address": f"127.0.0.1:{admin_port}"}, "logs": {"encoding": "json"}},
            "shutdown_timeout": "20s",
        },
    }


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: make_daemon(overrides={...}, start=True, env={...}) -> a Daemon on free ports.

    `overrides` is deep-merged into the base config (storage under tmp_path, otlp grpc+http,
    admin listener, one traces pipeline). Every daemon still running at the end is killed.
    """
    daemons: list[Daemon] = []

    def make(overrides: dict[str, Any] | None = None, start: bool = True, env: dict[str, str] | None = None,
             name: str = "daemon") -> Daemon:
        workdir = tmp_path / f"{name}{len(daemons)}"
        workdir.mkdir()
        ports = free_port(), free_port(), free_port()
        config = deep_merge(base_config(workdir, *ports), overrides or {})
        daemon = Daemon(workdir, config, *ports, env=env or {})
        daemons.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    """A running halod with the base config."""
    return make_daemon()
