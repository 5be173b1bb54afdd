"""Retry with exponential backoff (after the Collector's exporterhelper `retry_on_failure`).

Every component that calls out (pulling receivers, later the LLM client and exporters) embeds
`RetryConfig` as `retry_on_failure:` and paces its attempts with a `Backoff`, so all of them retry
the same documented way: the wait starts at `initial_interval`, grows by `multiplier` up to
`max_interval`, and is randomized by +/- `randomization_factor` so that many clients do not retry in
step. `max_elapsed_time` bounds how long one operation keeps retrying (0: forever, for daemons that
must wait out an outage).
"""

from __future__ import annotations

import random

from pydantic import Field, model_validator

from halod.security import StrictModel
from halod.units import Duration


class RetryConfig(StrictModel):
    enabled: bool = Field(default=True, description="Retry failed calls; false gives up after the first failure.")
    initial_interval: Duration = Field(default=1.0, gt=0, description="Wait after the first failure.")
    max_interval: Duration = Field(default=30.0, gt=0, description="Longest wait between two attempts.")
    multiplier: float = Field(default=1.5, ge=1.0, description="Growth of the wait after each failure.")
    randomization_factor: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Each wait is drawn from wait * (1 +/- factor)."
    )
    max_elapsed_time: Duration = Field(
        default=0.0, ge=0, description="Give up on an operation after this long (0: never give up)."
    )

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_interval < self.initial_interval:
            raise ValueError("max_interval must be at least initial_interval")
        return self


class Backoff:
    """The waits of one operation's retries. ``next_wait()`` returns the seconds to wait before the
    next attempt, or None once `max_elapsed_time` is spent (or retries are off); ``reset()`` after a
    success. `elapsed` is counted from the waits handed out, so it needs no clock."""

    def __init__(self, config: RetryConfig, rng: random.Random | None = None) -> None:
        self._config = config
        self._rng = rng or random.Random()
        self.reset()

    def reset(self) -> None:
        self._interval = self._config.initial_interval
        self.attempts = 0
        self.elapsed = 0.0

    def next_wait(self, at_least: float = 0.0) -> float | None:
        """`at_least`: a delay the other side asked for (Retry-After) that the wait must not undercut."""
        config = self._config
        if not config.enabled:
            return None
        spread = config.randomization_factor * self._interval
        wait = max(at_least, self._rng.uniform(self._interval - spread, self._interval + spread))
        if config.max_elapsed_time and self.elapsed + wait > config.max_elapsed_time:
            return None
        self.attempts += 1
        self.elapsed += wait
        self._interval = min(self._interval * config.multiplier, config.max_interval)
        return wait
