"""halod's configuration: the Collector's YAML shape plus one top-level `storage:` section.

    storage:     {path, retention, queue}            halod's addition: the DuckDB store
    analysis:    {assembly, signals, windows, triggers}   halod's addition: after the commit
    receivers:   {<type>[/<name>]: config}           e.g. otlp, otlp/edge
    processors:  {...}                               on the acknowledgement path, before the commit
    exporters:   {...}                               fed with committed spans, after the commit
    extensions:  {...}
    service:     {pipelines: {traces[/<name>]: {receivers, processors, exporters}},
                  extensions: [...], telemetry: {logs, metrics}, shutdown_timeout}

Loading never stops at the first problem: `load_config` collects every error, each prefixed with its
YAML path (``receivers.otlp.protocols.grpc.endpoint: invalid endpoint ...``), and raises one
`ConfigError` holding all of them. Warnings (a component defined but unused) do not stop the load.

``${env:VAR}`` and ``${env:VAR:-default}`` are substituted inside string values before validation;
``$$`` is a literal ``$``. A variable that is unset and has no default is an error naming its path.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from halod.analysis.config import AnalysisConfig
from halod.analysis.signals import validate_settings
from halod.components import ComponentID, Factory, Kind, Registry, default_registry
from halod.security import AuthConfig, StrictModel, TLSConfig
from halod.units import ByteSize, Duration, Endpoint

EMBEDDED_DEFAULT = "<embedded default>"
SectionT = TypeVar("SectionT", bound=BaseModel)


class RetentionConfig(StrictModel):
    max_age: Duration | None = Field(
        default=7 * 86400.0,
        description="Drop spans that ended and were stored longer ago than this (e.g. 7d): imported history "
        "is kept this long after its import. null keeps them forever.",
    )
    max_size: ByteSize | None = Field(
        default=None,
        description="Drop the oldest spans (by end time) while the data in the file exceeds this (e.g. 20GiB). "
        "null: no size limit.",
    )
    check_interval: Duration = Field(default=60.0, gt=0, description="How often retention is enforced.")


class StoreQueueConfig(StrictModel):
    """The bounded queue between receivers and the single DuckDB writer (the acknowledgement path)."""

    queue_size: int = Field(
        default=128, ge=1, description="Requests that may wait for a commit; beyond it requests are refused."
    )
    max_inflight_bytes: ByteSize = Field(
        default=512 * 2**20, ge=1,
        description="Decoded bytes that may wait for a commit; beyond it requests are refused (retryable).",
    )
    max_batch_spans: int = Field(
        default=16384, ge=1,
        description="Group commit: at most this many spans are written in one transaction.",
    )
    retry_after: Duration = Field(default=1.0, description="Delay suggested to refused clients (Retry-After).")


class StorageConfig(StrictModel):
    path: Path = Field(
        default=Path("halod-data/halod.duckdb"),
        description="The DuckDB database file; its folder is created. Relative to the working directory.",
    )
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    queue: StoreQueueConfig = Field(default_factory=StoreQueueConfig)
    memory_limit: ByteSize | None = Field(
        default=None, description="DuckDB memory limit (e.g. 2GiB); null leaves DuckDB's default (80% of RAM)."
    )


class PipelineConfig(StrictModel):
    receivers: list[str] = Field(min_length=1, description="Receivers feeding this pipeline (at least one).")
    processors: list[str] = Field(default_factory=list, description="Run in order before the commit.")
    exporters: list[str] = Field(default_factory=list, description="Fed with committed spans, after the commit.")


class LogsConfig(StrictModel):
    level: Literal["debug", "info", "warning", "warn", "error"] = "info"
    encoding: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: human-readable on a terminal, JSON lines otherwise."
    )


class MetricsConfig(StrictModel):
    """The local HTTP listener for /metrics, /healthz, /readyz and the admin API (/api/v1/...)."""

    address: Endpoint = Field(default="127.0.0.1:8888", description="host:port of the listener.")
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="Bearer token required by /metrics and the admin API."
    )
    tls: TLSConfig | None = None


class TelemetryConfig(StrictModel):
    logs: LogsConfig = Field(default_factory=LogsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)


class ServiceConfig(StrictModel):
    extensions: list[str] = Field(default_factory=list)
    pipelines: dict[str, PipelineConfig] = Field(min_length=1)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    shutdown_timeout: Duration = Field(
        default=30.0, gt=0, description="How long the first SIGINT/SIGTERM waits for a drain before giving up."
    )

    @field_validator("pipelines")
    @classmethod
    def _pipeline_ids(cls, pipelines: dict[str, PipelineConfig]) -> dict[str, PipelineConfig]:
        for key in pipelines:
            signal, _, name = key.partition("/")
            if signal != "traces":
                raise ValueError(f"pipeline {key!r}: halod handles traces only (use traces or traces/<name>)")
            if "/" in key and not name:
                raise ValueError(f"pipeline {key!r}: the name after '/' is empty")
        return pipelines


class DocumentConfig(StrictModel):
    """The top level of a YAML file, before component configs are validated by their factories."""

    storage: StorageConfig = Field(default_factory=StorageConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    receivers: dict[str, Any] = Field(default_factory=dict)
    processors: dict[str, Any] = Field(default_factory=dict)
    exporters: dict[str, Any] = Field(default_factory=dict)
    extensions: dict[str, Any] = Field(default_factory=dict)
    service: ServiceConfig


@dataclass
class ComponentSpec:
    kind: Kind
    id: ComponentID
    factory: Factory[Any]
    config: BaseModel


@dataclass
class HalodConfig:
    """A validated configuration: typed storage/service sections and every component's typed config."""

    source: str
    storage: StorageConfig
    service: ServiceConfig
    components: dict[tuple[Kind, ComponentID], ComponentSpec]
    warnings: list[str] = field(default_factory=list)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def component(self, kind: Kind, id_: str | ComponentID) -> ComponentSpec:
        cid = id_ if isinstance(id_, ComponentID) else ComponentID.parse(id_)
        return self.components[(kind, cid)]


class ConfigError(Exception):
    """Every problem found in a configuration, each naming its YAML path."""

    def __init__(self, source: str, problems: list[str], warnings: list[str] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.warnings = warnings or []
        super().__init__(f"invalid configuration {source}:\n" + "\n".join(f"  - {p}" for p in problems))


# --------------------------------------------------------------------------------------------- loading

_SUBSTITUTION = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_REFERENCE = re.compile(r"^env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.DOTALL)


def _path_str(parts: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def substitute_env(node: Any, environ: dict[str, str], problems: list[str], path: tuple[Any, ...] = ()) -> Any:
    """Replace ${env:VAR} / ${env:VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {key: substitute_env(value, environ, problems, (*path, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [substitute_env(value, environ, problems, (*path, index)) for index, value in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        reference = _ENV_REFERENCE.match(match.group(1))
        if reference is None:
            problems.append(
                f"{_path_str(path)}: unsupported substitution {match.group(0)!r} "
                "(use ${env:VAR} or ${env:VAR:-default})"
            )
            return match.group(0)
        name, default = reference.group(1), reference.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        problems.append(f"{_path_str(path)}: environment variable {name} is not set and has no default")
        return ""

    return _SUBSTITUTION.sub(replace, node)


def _pydantic_problems(error: ValidationError, prefix: tuple[Any, ...], model: type[BaseModel]) -> list[str]:
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            message = "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif item["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{_path_str((*prefix, *loc))}: {message}")
    return problems


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys a nested model accepts at `loc`, for "unknown key" messages."""
    current: Any = model
    mapping_key = False  # the next part is a key of a dict-valued field (a pipeline name), not a field
    for part in loc:
        if mapping_key:
            mapping_key = False
            continue
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(part)
        if info is None:
            return []
        annotation = info.annotation
        if get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
            mapping_key = True
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def parse_config(
    document: Any,
    source: str = "<config>",
    registry: Registry | None = None,
    environ: dict[str, str] | None = None,
) -> HalodConfig:
    """Validate a parsed YAML document; raises `ConfigError` with every problem found."""
    registry = registry or default_registry()
    problems: list[str] = []
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(source, ["<root>: the configuration must be a mapping of sections"])
    document = substitute_env(document, dict(os.environ) if environ is None else environ, problems)

    # Each section is validated on its own, so a problem in one never hides those of another
    # (component sections are validated by their factories below).
    for key in document:
        if key not in DocumentConfig.model_fields:
            problems.append(f"{key}: unknown section (allowed: {', '.join(DocumentConfig.model_fields)})")
    storage = _validate_section(StorageConfig, document, "storage", problems)
    analysis = _validate_section(AnalysisConfig, document, "analysis", problems)
    signal_settings = (document.get("analysis") or {}).get("signals") if isinstance(document.get("analysis"), dict) \
        else None
    if isinstance(signal_settings, dict):  # checked even when the rest of `analysis` is not valid
        problems += validate_settings(signal_settings)[1]
    service = _validate_section(ServiceConfig, document, "service", problems)
    for kind in Kind:
        if not isinstance(document.get(kind.section) or {}, dict):
            problems.append(f"{kind.section}: must be a mapping of component ids to their configs")

    components: dict[tuple[Kind, ComponentID], ComponentSpec] = {}
    for kind in Kind:
        section = document.get(kind.section)
        if section is None:
            continue
        if not isinstance(section, dict):
            continue  # reported by DocumentConfig above
        for key, raw in section.items():
            path = f"{kind.section}.{key}"
            try:
                cid = ComponentID.parse(str(key))
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
                continue
            factory = registry.get(kind, cid.type)
            if factory is None:
                known = ", ".join(registry.types(kind)) or "none"
                problems.append(f"{path}: unknown {kind} type {cid.type!r} (known: {known})")
                continue
            try:
                config = factory.config_model.model_validate(raw if raw is not None else {})
            except ValidationError as exc:
                problems += _pydantic_problems(exc, (kind.section, key), factory.config_model)
                continue
            components[(kind, cid)] = ComponentSpec(kind, cid, factory, config)

    warnings: list[str] = []
    if service is not None:
        problems += _check_references(service, document, warnings)
    if problems or storage is None or service is None or analysis is None:
        raise ConfigError(source, problems, warnings)
    return HalodConfig(source, storage, service, components, warnings, analysis)


def _validate_section(
    model: type[SectionT], document: dict[str, Any], key: str, problems: list[str]
) -> SectionT | None:
    if key not in document and model is ServiceConfig:
        problems.append(f"{key}: required section is missing (it declares the pipelines)")
        return None
    try:
        return model.model_validate(document.get(key) or {})
    except ValidationError as exc:
        problems += _pydantic_problems(exc, (key,), model)
        return None


def _check_references(service: ServiceConfig, document: dict[str, Any], warnings: list[str]) -> list[str]:
    """Pipelines reference defined components; each receiver feeds one pipeline; unused ones warn."""
    problems: list[str] = []
    defined = {kind: set(document.get(kind.section) or {}) for kind in Kind}
    used: dict[Kind, set[str]] = {kind: set() for kind in Kind}
    receiver_pipeline: dict[str, str] = {}
    for name, pipeline in service.pipelines.items():
        for kind, ids in (
            (Kind.RECEIVER, pipeline.receivers),
            (Kind.PROCESSOR, pipeline.processors),
            (Kind.EXPORTER, pipeline.exporters),
        ):
            seen: set[str] = set()
            for index, cid in enumerate(ids):
                path = f"service.pipelines.{name}.{kind.section}[{index}]"
                if cid in seen:
                    problems.append(f"{path}: {kind} {cid!r} is listed twice")
                seen.add(cid)
                if cid not in defined[kind]:
                    problems.append(f"{path}: {kind} {cid!r} is not defined in {kind.section}")
                used[kind].add(cid)
                if kind is Kind.RECEIVER:
                    # One store per daemon: a receiver in two pipelines would commit every span twice.
                    if cid in receiver_pipeline and receiver_pipeline[cid] != name:
                        problems.append(
                            f"{path}: receiver {cid!r} already feeds pipeline {receiver_pipeline[cid]!r}; "
                            "a receiver may feed only one pipeline (all pipelines share one store)"
                        )
                    receiver_pipeline.setdefault(cid, name)
    for index, cid in enumerate(service.extensions):
        if cid not in defined[Kind.EXTENSION]:
            problems.append(f"service.extensions[{index}]: extension {cid!r} is not defined in extensions")
        used[Kind.EXTENSION].add(cid)
    for kind in Kind:
        for cid in sorted(defined[kind] - used[kind]):
            warnings.append(f"{kind.section}.{cid}: defined but not used in any pipeline")
    return problems


def load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(source, [f"<root>: not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None


def default_config_text() -> str:
    return resources.files("halod.configs").joinpath("default.yaml").read_text(encoding="utf-8")


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> HalodConfig:
    """Load and validate a YAML file, or the embedded default config when `path` is None."""
    if path is None:
        return parse_config(load_yaml(default_config_text(), EMBEDDED_DEFAULT), EMBEDDED_DEFAULT, environ=environ)
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"<root>: cannot read the file: {exc.strerror or exc}"]) from None
    return parse_config(load_yaml(text, source), source, environ=environ)
