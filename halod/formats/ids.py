"""Trace and span ids for formats whose ids are not OTLP-sized, and the made-up ids of transcripts.

OTLP wants a 16-byte trace id and an 8-byte span id, neither all zero. Source ids map as follows
(`map_id`), the same way wherever they appear (span, parent, link), so parent links still resolve:

- hex text of exactly the right size (32 / 16 hex digits, an optional `0x` prefix, any case) is
  that id, unchanged;
- an integer from 1 to 2**128-1 (trace) / 2**64-1 (span) is that number as big-endian bytes: the id
  the SDK itself would have exported (`format(id, '032x')`), so it counts as unchanged;
- anything else (HALO's 24-hex-digit span ids, other lengths, non-hex text, out-of-range integers)
  becomes the first 16 / 8 bytes of sha256 of its text (hex text lower-cased first, so case does not
  matter), and the original text is kept in the attributes `halod.original.trace_id`,
  `halod.original.span_id`, `halod.original.parent_span_id`;
- a hash that comes out all zero (practically never) gets its last byte set to 1.

Missing ids (null, "") are an error for trace and span ids; for parents they mean "no parent", as do
an all-zero parent id and the integer 0. An all-zero trace or span id is an error: mapping it would
merge every such span into one.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
ORIGINAL_TRACE_ID = "halod.original.trace_id"
ORIGINAL_SPAN_ID = "halod.original.span_id"
ORIGINAL_PARENT_SPAN_ID = "halod.original.parent_span_id"

_HEX = frozenset("0123456789abcdefABCDEF")


class IdError(ValueError):
    """An id that cannot be mapped (missing, all zero, or neither text nor an integer)."""


def _nonzero(digest: bytes) -> bytes:
    return digest if any(digest) else digest[:-1] + b"\x01"


def hashed_id(text: str, size: int) -> bytes:
    """The first `size` bytes of sha256(text), never all zero."""
    return _nonzero(hashlib.sha256(text.encode()).digest()[:size])


def _convert(value: Any, size: int) -> tuple[bytes, str | None] | None:
    """(id, original text when changed), or None for a missing or all-zero id."""
    what = "trace_id" if size == TRACE_ID_BYTES else "span_id"
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise IdError(f"{what} must be hex text or an integer, not {type(value).__name__}")
    if isinstance(value, int):
        if value == 0:
            return None
        if 0 < value < 1 << (8 * size):
            return value.to_bytes(size, "big"), None
        return hashed_id(str(value), size), str(value)
    text = value.strip()
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    is_hex = bool(digits) and _HEX.issuperset(digits)
    if is_hex and len(digits) == 2 * size:
        raw = bytes.fromhex(digits)
        return (raw, None) if any(raw) else None
    if not text:
        return None
    return hashed_id(text.lower() if is_hex else text, size), value


def map_id(value: Any, size: int) -> tuple[bytes, str | None]:
    """A trace id (`size` 16) or span id (`size` 8) and its original text when it had to change.

    Raises IdError when the id is missing, all zero, or of another type.
    """
    converted = _convert(value, size)
    if converted is None:
        what = "trace_id" if size == TRACE_ID_BYTES else "span_id"
        missing = value is None or (isinstance(value, str) and not value.strip())
        raise IdError(f"{what} is missing" if missing else f"{what} {value!r} is all zero")
    return converted


def map_parent_id(value: Any) -> tuple[bytes, str | None]:
    """A parent span id (b"" for none: missing, empty, all zero or 0) and its original text when changed."""
    converted = _convert(value, SPAN_ID_BYTES)
    return (b"", None) if converted is None else converted


def run_trace_id(dataset: str, task_id: Any, trial: Any, record: int) -> bytes:
    """The trace id of one transcript run: sha256 of the JSON array [dataset, task_id, trial, record
    index] (values as JSON, so task 1 and task "1" differ), first 16 bytes, never all zero."""
    data = orjson.dumps([dataset, task_id, trial, record], default=str)
    return _nonzero(hashlib.sha256(data).digest()[:TRACE_ID_BYTES])


def run_span_id(trace_id: bytes, position: int, slot: str, call: int = 0) -> bytes:
    """A span id inside a transcript run: sha256 of the trace id followed by the JSON array
    [message position, slot, tool call position], first 8 bytes, never all zero. `slot` is "agent"
    (the root, position -1), "llm", "tool" (a call, at its assistant message's position) or "orphan"
    (a tool result that matches no call)."""
    data = trace_id + orjson.dumps([position, slot, call])
    return _nonzero(hashlib.sha256(data).digest()[:SPAN_ID_BYTES])
