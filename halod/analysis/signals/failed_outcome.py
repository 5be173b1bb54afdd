"""`failed_outcome`: the trace itself says the run failed.

Rule: look at the root span, then at every span of a kind in `span_kinds` (default AGENT and
EVALUATOR: agent runs and evaluations), in start order. A span says "failed" when any of its
attributes says so:

- a key of `success_keys` (default `outcome.success`, `success`, `task.success`, `eval.success`,
  `agent.success`) is `false`, `0`, or a string in `failure_values` (e.g. "false", "failed");
- a key of `reward_keys` (default `outcome.reward`, `reward`, `eval.reward`, `task.reward`) is a
  number (or numeric string) `<= max_failed_reward` (default `0.0`: a reward of zero or less is an
  unambiguous failure on any scale; a partial reward such as 0.5 is not a failure unless you raise
  the threshold; tau-bench rewards are 0 or 1, so 0 is failure); a boolean reward counts as success;
- a key of `label_keys` (default `outcome`, `agent.outcome`, `outcome.status`, `outcome.label`,
  `task.outcome`, `eval.outcome`) is a string in `failure_values` (exact, case-insensitive: "fail",
  "failed", "failure", "error", "incorrect", "unsuccessful", "unresolved", "timeout", "aborted",
  "false").

The first span that says so gives one finding (severity `error`) at that span, `details = {key,
value}` (the first key that said failed, in the order success, reward, label). NaN and
non-numeric rewards are ignored. A trace with no such attribute is not judged.

Knobs: `enabled`, `success_keys`, `reward_keys`, `max_failed_reward`, `label_keys`,
`failure_values`, `span_kinds`.

Example: a tau-bench run imported as a transcript, whose root carries `outcome.reward = 0.0` and
`outcome.success = false` -> one finding `failed_outcome` at the root with
`details={"key": "outcome.success", "value": False}`.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from halod.analysis.signals.base import DetectContext, Finding
from halod.analysis.trace import SpanView, TraceSpans
from halod.security import StrictModel

DEFAULT_FAILURE_VALUES = ["fail", "failed", "failure", "error", "incorrect", "unsuccessful", "unresolved",
                          "timeout", "aborted", "false"]


class Config(StrictModel):
    enabled: bool = Field(default=True, description="Run this detector.")
    success_keys: list[str] = Field(
        default_factory=lambda: ["outcome.success", "success", "task.success", "eval.success", "agent.success"],
        description="Attributes holding a success flag (false / 0 / a failure value means failed).",
    )
    reward_keys: list[str] = Field(
        default_factory=lambda: ["outcome.reward", "reward", "eval.reward", "task.reward"],
        description="Attributes holding a numeric reward.",
    )
    max_failed_reward: float = Field(default=0.0, description="A reward at or below this is a failure.")
    label_keys: list[str] = Field(
        default_factory=lambda: ["outcome", "agent.outcome", "outcome.status", "outcome.label", "task.outcome",
                                 "eval.outcome"],
        description="Attributes holding an outcome label.",
    )
    failure_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FAILURE_VALUES),
        description="Labels (exact, case-insensitive) that mean failure, for label and success keys.",
    )
    span_kinds: list[str] = Field(
        default_factory=lambda: ["AGENT", "EVALUATOR"],
        description="Semantic kinds of spans read besides the root.",
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(number) else number


class Detector:
    name = "failed_outcome"

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        c = self.config
        self._failure = {value.lower() for value in c.failure_values}
        self._kinds = frozenset(c.span_kinds)

    def detect(self, trace: TraceSpans, context: DetectContext) -> list[Finding]:
        if not self.config.enabled:
            return []
        root = trace.root
        candidates = [root] if root is not None else []
        candidates += [span for span in trace.spans if span is not root and span.semantic_kind in self._kinds]
        for span in candidates:
            said = self._failed(span)
            if said is not None:
                key, value = said
                return [Finding.at(self.name, "error", span, key=key, value=value)]
        return []

    def _failed(self, span: SpanView) -> tuple[str, Any] | None:
        c = self.config
        attrs = span.attrs
        for key in c.success_keys:
            value = attrs.get(key)
            if value is False or (isinstance(value, str) and value.strip().lower() in self._failure) or (
                    not isinstance(value, bool) and isinstance(value, int | float) and value == 0):
                return key, value
        for key in c.reward_keys:
            value = attrs.get(key)
            number = _number(value)
            if number is not None and number <= c.max_failed_reward:
                return key, value
        for key in c.label_keys:
            value = attrs.get(key)
            if isinstance(value, str) and value.strip().lower() in self._failure:
                return key, value
        return None
