"""The `redact` processor: masks secrets before spans reach the store (on the ack path).

Work is vectorized with Arrow's RE2 kernels over whole columns, so redaction adds no per-span Python
work. Value patterns apply to the text columns and to the JSON text of attributes, events and links;
key rules rewrite ``"key":"value"`` pairs inside the attributes JSON.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
from halod.processors.redact.config import RedactConfig

from halod.components import Consumer, CreateSettings, Host
from halod.model import CommitResult, SpanBatch

TEXT_COLUMNS = ("input_text", "output_text", "tool_arguments", "status_message",
                "attributes", "events", "links")
_JSON_STRING = r'"(?:[^"\\]|\\.)*"'


def _key_regex(glob: str) -> str:
    return ".".join(r"[^.\"]+" if part == "*" else re.escape(part) for part in glob.split("."))


class RedactProcessor:
    def __init__(self, settings: CreateSettings, config: RedactConfig, next_consumer: Consumer) -> None:
        self._config = config
        self._next = next_consumer
        self._value_patterns = list(config.patterns)
        self._key_pattern = (
            f'("(?:{"|".join(_key_regex(glob) for glob in config.attributes)})":){_JSON_STRING}'
            if config.attributes else None
        )

    async def start(self, host: Host) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def redact(self, table: pa.Table) -> pa.Table:
        replacement = self._config.replacement
        for name in TEXT_COLUMNS:
            index = table.schema.get_field_index(name)
            column = table.column(index)
            for pattern in self._value_patterns:
                column = pc.replace_substring_regex(column, pattern=pattern, replacement=replacement)
            if name == "attributes" and self._key_pattern:
                column = pc.replace_substring_regex(column, pattern=self._key_pattern,
                                                    replacement=f'\\1"{replacement}"')
            table = table.set_column(index, name, column)
        return table

    async def consume(self, batch: SpanBatch) -> CommitResult:
        batch.spans = self.redact(batch.spans)
        return await self._next.consume(batch)
