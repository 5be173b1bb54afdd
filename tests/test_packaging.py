"""What a user gets from the repository: the wheel's contents, shipped configs, docs, CI command."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from halod.config import default_config_text, load_config
from tests.conftest import REPO, run_cli


def test_generated_docs_are_in_sync() -> None:
    result = subprocess.run([sys.executable, "-m", "halod.docgen", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_embedded_default_is_configs_default_yaml() -> None:
    assert default_config_text() == (REPO / "configs" / "default.yaml").read_text()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    result = run_cli("validate", "--config", str(REPO / "configs" / name))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_docker_config_turns_auth_on_only_with_a_token() -> None:
    path = REPO / "configs" / "docker.yaml"
    without = load_config(path, environ={})
    with_token = load_config(path, environ={"HALOD_TOKEN": "s3cret"})
    for config, expected in ((without, None), (with_token, "s3cret")):
        otlp = config.component("receiver", "otlp").config
        token = otlp.protocols.grpc.auth.bearer_token
        assert (token.get_secret_value() if token else None) == expected
        assert config.service.telemetry.metrics.auth.check("Bearer s3cret")


def test_dockerfile_runs_the_shipped_docker_config() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "USER halod" in dockerfile and "HEALTHCHECK" in dockerfile
    for port in ("4317", "4318", "8888"):
        assert port in dockerfile
    config = re.search(r'"--config", "/app/(configs/[^"]+)"', dockerfile)
    assert config and (REPO / config.group(1)).is_file()
    for copied in re.findall(r"^COPY (\S+)", dockerfile, re.MULTILINE):
        assert (REPO / copied).exists(), copied


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    test_command = next(line for line in readme.splitlines() if "pytest" in line and line.startswith("python3"))
    assert test_command in (REPO / ".ci" / "run").read_text()


def test_wheel_contains_components_configs_and_entry_point(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path),
         str(REPO)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("halod-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "halod/cli.py",
        "halod/store/store.py",
        "halod/receivers/otlp/receiver.py",
        "halod/processors/redact/processor.py",
        "halod/exporters/debug/exporter.py",
        "halod/configs/default.yaml",
        "halod/configs/docker.yaml",
    ):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "halod = halod.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(name.startswith(("receivers/", "tests/", "bench/")) for name in names)
