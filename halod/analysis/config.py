"""Config of the post-commit analysis (`analysis:` at the top level of the YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from halod.analysis.triggers import DEFAULT_RULES, TriggerRule
from halod.security import StrictModel
from halod.units import Duration


class AssemblyConfig(StrictModel):
    """When a trace counts as complete (after the Collector's groupbytrace processor)."""

    wait_duration: Duration = Field(
        default=10.0, gt=0,
        description="A trace whose root span has ended is complete once no new span arrived for this long.",
    )
    max_idle: Duration = Field(
        default=120.0, gt=0,
        description="A trace without a root (yet) is complete once no new span arrived for this long.",
    )
    max_open_traces: int = Field(
        default=100_000, ge=1,
        description="Traces held open at most (about 400 bytes each: spans stay in the store); when full, the "
        "oldest is completed early (counted). Every trace is open for at least wait_duration, so this bounds "
        "the sustainable rate: 100,000 / 10 s = 10,000 traces/s.",
    )
    recent_completed: int = Field(
        default=100_000, ge=0,
        description="Completed trace ids remembered, so that a span arriving after its trace completed is "
        "known as late and the whole trace is re-read from the store and re-evaluated.",
    )
    tick: Duration = Field(default=0.5, gt=0, description="How often open traces are checked for completion.")

    @model_validator(mode="after")
    def _idle_after_wait(self) -> AssemblyConfig:
        if self.max_idle < self.wait_duration:
            raise ValueError("max_idle must be at least wait_duration")
        return self


class WindowsConfig(StrictModel):
    """Tumbling windows by trace end time."""

    size: Duration = Field(default=300.0, gt=0, description="Window length (5m).")
    allowed_lateness: Duration = Field(
        default=60.0, ge=0,
        description="A window closes when the latest trace end time seen passes its end by this much.",
    )
    idle_close: Duration = Field(
        default=120.0, gt=0,
        description="With no trace completed for this long, every window with traces closes (imported "
        "history, quiet periods).",
    )


class AnalysisConfig(StrictModel):
    enabled: bool = Field(default=True, description="Run trace assembly, signals, windows and triggers.")
    evaluator: Literal["process", "thread"] = Field(
        default="process",
        description="Where detectors run: a worker process (default: off the daemon's GIL, so ingestion keeps "
        "its pace) or a thread of the daemon (no extra process).",
    )
    assembly: AssemblyConfig = Field(default_factory=AssemblyConfig)
    windows: WindowsConfig = Field(default_factory=WindowsConfig)
    signals: dict[str, Any] = Field(
        default_factory=dict,
        description="Per-detector settings by signal name (docs/signals.md), e.g. `tool_loop: {min_consecutive: 5}` "
        "or `refusal: {enabled: false}`.",
    )
    triggers: list[TriggerRule] = Field(
        default_factory=lambda: [TriggerRule.model_validate(rule) for rule in DEFAULT_RULES],
        description="Rules evaluated on every closed window (halod/analysis/triggers.py); the default trips on "
        "an overall failure rate above 50%, a tool failing in over 20% of the traces using it, a doubling of "
        "failures in a service, and a first-seen (signal, tool) pair.",
    )
    max_trace_spans: int = Field(
        default=10_000, ge=1,
        description="Spans of one trace evaluated at most (bounds the evaluator's memory): a larger trace is "
        "evaluated on its first max_trace_spans spans by start time, logged and counted "
        "(halod_traces_truncated_total); all its spans stay stored.",
    )
    exclude_services: list[str] = Field(
        default_factory=lambda: ["halod"],
        description="Services whose traces are assembled and evaluated but never counted in windows or "
        "triggers (halod's own telemetry: it must not trigger analysis of itself).",
    )
