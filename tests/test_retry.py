"""The shared backoff every calling component uses (halod.retry)."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from halod.retry import Backoff, RetryConfig


def test_waits_grow_by_the_multiplier_up_to_the_maximum() -> None:
    backoff = Backoff(RetryConfig(initial_interval=1, max_interval=5, multiplier=2, randomization_factor=0))
    assert [backoff.next_wait() for _ in range(5)] == [1, 2, 4, 5, 5]
    assert backoff.attempts == 5 and backoff.elapsed == 17
    backoff.reset()
    assert backoff.next_wait() == 1


def test_waits_are_spread_within_the_randomization_factor() -> None:
    config = RetryConfig(initial_interval=2, max_interval=2, randomization_factor=0.5)
    waits = [Backoff(config, random.Random(seed)).next_wait() for seed in range(200)]
    assert all(w is not None and 1.0 <= w <= 3.0 for w in waits)
    assert len(set(waits)) > 100  # really spread, not one value


def test_max_elapsed_time_gives_up_and_retry_after_is_honoured() -> None:
    backoff = Backoff(RetryConfig(initial_interval=1, max_interval=1, randomization_factor=0, max_elapsed_time=3))
    assert backoff.next_wait(at_least=2.5) == 2.5  # the server's Retry-After beats the schedule
    assert backoff.next_wait() is None  # 2.5 + 1 > 3
    assert Backoff(RetryConfig(enabled=False)).next_wait() is None


def test_config_is_checked() -> None:
    with pytest.raises(ValidationError, match="max_interval must be at least initial_interval"):
        RetryConfig(initial_interval=10, max_interval=1)
    with pytest.raises(ValidationError):
        RetryConfig(multiplier=0.5)
