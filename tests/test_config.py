"""Configuration loading: invalid configs (table-driven from tests/data/invalid_configs/*.yaml), valid
configs with their typed values, the embedded default, `halod validate`, and the unit parsers.

Each file under tests/data/invalid_configs holds

    description: what the case is about
    env: {VAR: value}          # optional: the environment the config is loaded with
    config: {...}              # the halod configuration under test
    expect: [substring, ...]   # each must appear in some problem of the ConfigError (and in
                               # `halod validate` stderr); each names the YAML path
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from halod.components import Kind
from halod.config import ConfigError, load_config, load_yaml, parse_config
from halod.units import parse_byte_size, parse_duration, parse_endpoint, split_endpoint
from tests.conftest import REPO, run_cli

INVALID_DIR = Path(__file__).parent / "data" / "invalid_configs"
INVALID_FILES = sorted(INVALID_DIR.glob("*.yaml"))


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    assert set(case) <= {"description", "env", "config", "expect"}, f"{path.name}: unexpected keys {set(case)}"
    assert "config" in case and case.get("expect"), f"{path.name}: needs config and expect"
    for expected in case["expect"]:
        # every expected message names the YAML path it is about
        assert ": " in expected, f"{path.name}: {expected!r} does not name a path"
    return case


def minimal(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "receivers": {"otlp": None},
        "service": {"pipelines": {"traces": {"receivers": ["otlp"]}}},
    }
    doc.update(overrides)
    return doc


# ---------------------------------------------------------------------------------------- invalid configs


def test_invalid_config_table_is_populated() -> None:
    assert len(INVALID_FILES) >= 15
    # every case file is well-formed (a malformed one would silently test nothing)
    for path in INVALID_FILES:
        load_case(path)


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_invalid_config_reports_every_expected_problem(path: Path) -> None:
    case = load_case(path)
    with pytest.raises(ConfigError) as info:
        parse_config(case["config"], source=path.name, environ=dict(case.get("env") or {}))
    error = info.value
    assert error.problems, "a ConfigError must carry at least one problem"
    missing = [exp for exp in case["expect"] if not any(exp in problem for problem in error.problems)]
    assert not missing, f"expected problems not reported: {missing}\nreported: {error.problems}"
    # the exception text carries every problem too (it is what the CLI prints)
    for problem in error.problems:
        assert problem in str(error)


@pytest.fixture(scope="module")
def validate_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """`halod validate --config F` for every invalid case, run concurrently (each is a subprocess)."""
    folder = tmp_path_factory.mktemp("invalid_configs")

    def run(path: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
        case = load_case(path)
        config_file = folder / path.name
        config_file.write_text(yaml.safe_dump(case["config"], sort_keys=False))
        env = {key: str(value) for key, value in (case.get("env") or {}).items()}
        return path.stem, run_cli("validate", "--config", str(config_file), env=env)

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(pool.map(run, INVALID_FILES))


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: p.stem)
def test_halod_validate_rejects_invalid_config(
    path: Path, validate_results: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    case = load_case(path)
    result = validate_results[path.stem]
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "valid (" not in result.stdout
    for expected in case["expect"]:
        assert expected in result.stderr, f"{expected!r} not in stderr:\n{result.stderr}"


def test_env_unset_variable_is_not_read_from_the_real_environment() -> None:
    # the table relies on these names being unset; make that explicit so a polluted env fails loudly
    assert "HALOD_TEST_UNSET_7F3A" not in os.environ


# ------------------------------------------------------------------------------------------ valid configs


def test_env_substitution_gives_typed_values() -> None:
    document = load_yaml(
        """
storage:
  path: ${env:HALOD_DIR}/halod.duckdb
  retention:
    max_age: ${env:HALOD_MAX_AGE}
    max_size: ${env:HALOD_MAX_SIZE:-1GiB}
  queue:
    queue_size: ${env:HALOD_QUEUE}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:${env:HALOD_GRPC_PORT:-4317}
        auth:
          bearer_token: "pa$$word-${env:HALOD_TOKEN}"
      http:
        endpoint: ${env:HALOD_HTTP_ENDPOINT:-127.0.0.1:4318}
        traces_url_path: "/v1/$${env:NOT_SUBSTITUTED}"
service:
  shutdown_timeout: ${env:HALOD_SHUTDOWN:-45s}
  pipelines:
    traces:
      receivers: [otlp]
""",
        "inline",
    )
    environ = {
        "HALOD_DIR": "/var/lib/halod",
        "HALOD_MAX_AGE": "36h",
        "HALOD_QUEUE": "7",
        "HALOD_TOKEN": "s3cr3t",
        "HALOD_HTTP_ENDPOINT": "0.0.0.0:14318",
    }
    config = parse_config(document, "inline", environ=environ)
    assert config.storage.path == Path("/var/lib/halod/halod.duckdb")
    assert config.storage.retention.max_age == 36 * 3600.0
    assert config.storage.retention.max_size == 2**30  # default of ${env:...:-1GiB}
    assert config.storage.queue.queue_size == 7 and isinstance(config.storage.queue.queue_size, int)
    assert config.service.shutdown_timeout == 45.0
    otlp = config.component(Kind.RECEIVER, "otlp").config
    assert otlp.protocols.grpc.endpoint == "127.0.0.1:4317"
    assert otlp.protocols.grpc.auth.bearer_token.get_secret_value() == "pa$word-s3cr3t"
    assert otlp.protocols.http.endpoint == "0.0.0.0:14318"
    # $$ escapes: the ${env:...} after it is literal text, not a substitution
    assert otlp.protocols.http.traces_url_path == "/v1/${env:NOT_SUBSTITUTED}"


def test_env_substitution_inside_lists_and_set_value_beats_default() -> None:
    config = parse_config(
        {
            "receivers": {"otlp": None},
            "processors": {"redact": {"attributes": ["${env:KEY_A}", "${env:KEY_B:-fallback.*}"]}},
            "service": {"pipelines": {"traces": {"receivers": ["otlp"], "processors": ["redact"]}}},
        },
        environ={"KEY_A": "user.email", "KEY_B": ""},
    )
    # an empty (but set) variable wins over the default
    assert config.component(Kind.PROCESSOR, "redact").config.attributes == ["user.email", ""]


def test_real_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALOD_TEST_QUEUE_SIZE", "3")
    config = parse_config(minimal(storage={"queue": {"queue_size": "${env:HALOD_TEST_QUEUE_SIZE}"}}))
    assert config.storage.queue.queue_size == 3


def test_embedded_default_config_is_the_shipped_file_and_validates() -> None:
    from halod.config import EMBEDDED_DEFAULT, default_config_text

    assert default_config_text() == (REPO / "configs" / "default.yaml").read_text(encoding="utf-8")
    config = load_config(None, environ={})
    assert config.source == EMBEDDED_DEFAULT
    assert config.warnings == []
    assert config.storage.path == Path("halod-data/halod.duckdb")
    assert config.storage.retention.max_age == 7 * 86400.0
    assert list(config.service.pipelines) == ["traces"]
    assert config.service.pipelines["traces"].receivers == ["otlp"]
    assert config.service.telemetry.metrics.address == "127.0.0.1:8888"
    otlp = config.component(Kind.RECEIVER, "otlp").config
    assert otlp.protocols.grpc.endpoint == "127.0.0.1:4317"
    assert otlp.protocols.http.endpoint == "127.0.0.1:4318"


def test_halod_validate_accepts_the_default_config() -> None:
    result = run_cli("validate", env={"HALOD_CONFIG": ""})
    assert result.returncode == 0, result.stderr
    assert "valid (1 pipeline(s), 1 component(s))" in result.stdout


def test_otlp_with_null_value_enables_both_protocols() -> None:
    config = parse_config(load_yaml("receivers:\n  otlp:\nservice:\n  pipelines:\n    traces:\n"
                                    "      receivers: [otlp]\n", "inline"))
    protocols = config.component(Kind.RECEIVER, "otlp").config.protocols
    assert protocols.grpc is not None and protocols.grpc.endpoint == "127.0.0.1:4317"
    assert protocols.http is not None and protocols.http.endpoint == "127.0.0.1:4318"
    assert protocols.http.max_request_body_size == 20 * 2**20


def test_protocols_grpc_null_enables_only_grpc() -> None:
    document = load_yaml(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\nservice:\n  pipelines:\n    traces:\n"
        "      receivers: [otlp]\n",
        "inline",
    )
    protocols = parse_config(document).component(Kind.RECEIVER, "otlp").config.protocols
    assert protocols.grpc is not None and protocols.grpc.endpoint == "127.0.0.1:4317"
    assert protocols.http is None


def test_named_components_and_pipelines() -> None:
    config = parse_config({
        "receivers": {"otlp": None, "otlp/edge": {"protocols": {"http": {"endpoint": "0.0.0.0:5318"}}}},
        "processors": {"redact/strict": {"attributes": ["user.*"]}},
        "exporters": {"debug/verbose": {"verbosity": "detailed"}},
        "service": {"pipelines": {
            "traces": {"receivers": ["otlp"]},
            "traces/edge": {"receivers": ["otlp/edge"], "processors": ["redact/strict"],
                            "exporters": ["debug/verbose"]},
        }},
    })
    assert config.warnings == []
    edge = config.component(Kind.RECEIVER, "otlp/edge")
    assert (edge.id.type, edge.id.name) == ("otlp", "edge")
    assert edge.config.protocols.http.endpoint == "0.0.0.0:5318" and edge.config.protocols.grpc is None
    assert config.component(Kind.EXPORTER, "debug/verbose").config.verbosity == "detailed"
    assert set(config.service.pipelines) == {"traces", "traces/edge"}


def test_unused_component_is_a_warning_not_an_error(tmp_path: Path) -> None:
    document = minimal(exporters={"debug": None}, processors={"redact": None})
    config = parse_config(document)
    assert sorted(config.warnings) == [
        "exporters.debug: defined but not used in any pipeline",
        "processors.redact: defined but not used in any pipeline",
    ]
    path = tmp_path / "unused.yaml"
    path.write_text(yaml.safe_dump(document))
    result = run_cli("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning: exporters.debug: defined but not used in any pipeline" in result.stderr
    assert "warning: processors.redact: defined but not used in any pipeline" in result.stderr
    assert f"{path}: valid" in result.stdout


def test_warnings_travel_with_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(receivers={"otlp": {"protocols": {"grpc": {"endpoint": "nowhere"}}}},
                             exporters={"debug": None}))
    assert info.value.warnings == ["exporters.debug: defined but not used in any pipeline"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = "receivers:\n  otlp:\nservice:\n  pipelines:\n    traces:\n      receivers: [otlp\n  telemetry: {}\n"
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "broken.yaml")
    (problem,) = info.value.problems
    assert problem.startswith("<root>: not valid YAML (line ")
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    result = run_cli("validate", "--config", str(path))
    assert result.returncode != 0
    assert "not valid YAML (line 7, column" in result.stderr


def test_yaml_error_line_number_is_the_offending_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml("service:\n  pipelines: {}\n bad: indent\n", "x.yaml")
    assert "(line 3, column" in info.value.problems[0]


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert info.value.problems[0].startswith("<root>: cannot read the file")
    result = run_cli("validate", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0 and "cannot read the file" in result.stderr


def test_empty_document_reports_missing_service() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(None)
    assert info.value.problems == ["service: required section is missing (it declares the pipelines)"]


# ------------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (0, 0.0), (1.5, 1.5), ("2", 2.0), ("2.5", 2.5), ("200ms", 0.2), ("10s", 10.0), ("5m", 300.0),
        ("2h", 7200.0), ("7d", 7 * 86400.0), ("1.5h", 5400.0), ("250us", 250e-6), ("250µs", 250e-6),
        ("100ns", 100e-9), (" 3 s ", 3.0),
    ],
)
def test_parse_duration_valid(text: Any, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10 parsecs", "", "s", "-1", "-5s", "1w", "ten seconds", "1e3s", True, None, [1]])
def test_parse_duration_invalid(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (0, 0), (1048576, 1048576), (1024.0, 1024), ("512", 512), ("16MiB", 16 * 2**20), ("20MB", 20 * 10**6),
        ("512KiB", 512 * 1024), ("1kb", 1000), ("2GiB", 2 * 2**30), ("1TB", 10**12), ("10b", 10),
        ("1.5KiB", 1536), (" 4 MiB ", 4 * 2**20),
    ],
)
def test_parse_byte_size_valid(text: Any, size: int) -> None:
    assert parse_byte_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "MiB", "-1", "-1KiB", "1 PiB", "16 mebibytes", 1.5, -1, True, None])
def test_parse_byte_size_invalid(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_byte_size(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:4317", "127.0.0.1", 4317), ("localhost:0", "localhost", 0), (":4318", "0.0.0.0", 4318),
        ("[::1]:4317", "::1", 4317), ("0.0.0.0:65535", "0.0.0.0", 65535),
        ("my-host.internal:80", "my-host.internal", 80),
    ],
)
def test_parse_endpoint_valid(text: str, host: str, port: int) -> None:
    assert parse_endpoint(text) == text
    assert split_endpoint(parse_endpoint(text)) == (host, port)


@pytest.mark.parametrize(
    "text", ["localhost", "4317", "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:123456", "::1:4317", "http://h:1",
             "host:port", "", 4317, None],
)
def test_parse_endpoint_invalid(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)
