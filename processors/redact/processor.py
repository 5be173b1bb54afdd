r"""The `redact` processor: masks secrets before spans reach the store (on the ack path).

Work is vectorized with Arrow's RE2 kernels over whole columns, so spans without secrets cost no
per-span Python work. Value patterns apply to the text columns and to the string values inside the
JSON of attributes, events and links; key rules replace the string value of matching attribute keys.

JSON stays valid by construction: a pattern run over JSON text could match across quotes and
structure (``token=\S+``, ``.*``), so the vectorized pass only finds the rows that contain a match,
and those rows are redacted again value by value on their parsed JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from halod.components import Consumer, CreateSettings, Host
from halod.model import CommitResult, SpanBatch
from halod.processors.redact.config import RedactConfig

TEXT_COLUMNS = ("input_text", "output_text", "tool_arguments", "status_message")
JSON_COLUMNS = ("attributes", "events", "links")
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

    def _replace(self, values: Any) -> Any:
        for pattern in self._value_patterns:
            values = pc.replace_substring_regex(values, pattern=pattern, replacement=self._config.replacement)
        return values

    def _redact_json(self, column: pa.ChunkedArray) -> pa.ChunkedArray:
        column = column.combine_chunks()
        changed = pc.fill_null(pc.not_equal(self._replace(column), column), False)
        if not pc.any(changed).as_py():
            return pa.chunked_array([column])
        documents = column.to_pylist()
        for index in pc.indices_nonzero(changed).to_pylist():
            document = orjson.loads(documents[index])
            strings: list[str] = []
            _collect_strings(document, strings)
            replaced = iter(self._replace(pa.array(strings, pa.string())).to_pylist())
            documents[index] = orjson.dumps(_put_strings(document, replaced)).decode()
        return pa.chunked_array([pa.array(documents, pa.string())])

    def redact(self, table: pa.Table) -> pa.Table:
        for name in TEXT_COLUMNS + JSON_COLUMNS:
            index = table.schema.get_field_index(name)
            column = table.column(index)
            if name == "attributes" and self._key_pattern:
                column = pc.replace_substring_regex(column, pattern=self._key_pattern,
                                                    replacement=f'\\1"{self._config.replacement}"')
            column = self._redact_json(column) if name in JSON_COLUMNS else self._replace(column)
            table = table.set_column(index, name, column)
        return table

    async def consume(self, batch: SpanBatch) -> CommitResult:
        batch.spans = self.redact(batch.spans)
        return await self._next.consume(batch)


def _collect_strings(node: Any, out: list[str]) -> None:
    """Every string value of a JSON document, depth first (keys are not values: left alone)."""
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, list):
        for item in node:
            _collect_strings(item, out)
    elif isinstance(node, dict):
        for value in node.values():
            _collect_strings(value, out)


def _put_strings(node: Any, replaced: Iterator[str]) -> Any:
    """`node` with its string values taken, in `_collect_strings` order, from `replaced`."""
    if isinstance(node, str):
        return next(replaced)
    if isinstance(node, list):
        return [_put_strings(item, replaced) for item in node]
    if isinstance(node, dict):
        return {key: _put_strings(value, replaced) for key, value in node.items()}
    return node
