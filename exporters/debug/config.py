"""Config of the `debug` exporter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from halod.security import StrictModel
from halod.sending_queue import SendingQueueConfig


class DebugConfig(StrictModel):
    verbosity: Literal["basic", "detailed"] = Field(
        default="basic", description="basic: one log line per commit; detailed: also one line per span."
    )
    sending_queue: SendingQueueConfig = Field(default_factory=SendingQueueConfig)
