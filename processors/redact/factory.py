"""Factory of the `redact` processor."""

from __future__ import annotations

from typing import Any

from halod.components import Consumer, CreateSettings, Factory, Kind
from halod.processors.redact.config import RedactConfig


def create(settings: CreateSettings, config: RedactConfig, next_consumer: Consumer) -> Any:
    from halod.processors.redact.processor import RedactProcessor

    return RedactProcessor(settings, config, next_consumer)


FACTORY = Factory(
    kind=Kind.PROCESSOR,
    type="redact",
    config_model=RedactConfig,
    create=create,
    description="Masks secrets (regular expressions, attribute keys) before spans are stored.",
)
