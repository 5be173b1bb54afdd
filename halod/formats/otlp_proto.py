"""OTLP protobuf files: serialized `ExportTraceServiceRequest`s.

Two layouts, told apart by content:

- **length-delimited**: each request preceded by its length as a varint (protobuf's
  `writeDelimitedTo` / Python's `_VarintBytes(len(data)) + data`), any number of them;
- **single**: the whole file is one serialized request (what `SerializeToString()` writes).

A single request starts with byte 0x0a (field 1, `resource_spans`); a delimited file starts with a
length varint, which is 0x0a only when the first request is exactly 10 bytes long. So: a file whose
first byte is not 0x0a is delimited; otherwise the layout whose framing runs exactly to the end of the
file wins (if both break, a truncated file, the one that got further). Both are read incrementally:
one delimited record, or one `ResourceSpans` of a single request, at a time.

A truncated or corrupt record is a Problem located at its byte offset and reading stops there (a
length-prefixed stream cannot be resynchronized); everything before it is kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans

from halod.formats._common import Chunk, ChunkBuilder

_RESOURCE_SPANS_TAG = 0x0A  # field 1, wire type 2 (length-delimited)


class _Corrupt(Exception):
    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


def _varint(stream: BinaryIO, offset: int, what: str) -> tuple[int, int] | None:
    """(value, bytes read) of the varint at the stream's position; None at a clean end of file."""
    value = shift = 0
    for count in range(1, 11):
        byte = stream.read(1)
        if not byte:
            if count == 1:
                return None
            raise _Corrupt(offset, f"truncated {what} (the file ends inside a varint)")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value, count
        shift += 7
    raise _Corrupt(offset, f"corrupt {what} (a varint longer than 10 bytes)")


def _frames(stream: BinaryIO, size: int, delimited: bool) -> Iterator[tuple[int, int, int]]:
    """(offset of the frame, offset of its payload, payload length) of each delimited record, or of each
    `resource_spans` field of a single request (other fields of a single request are skipped)."""
    offset = 0
    stream.seek(0)
    while True:
        if delimited:
            header = _varint(stream, offset, "length prefix")
            if header is None:
                return
            length, used = header
            field = _RESOURCE_SPANS_TAG
        else:
            tag = _varint(stream, offset, "field tag")
            if tag is None:
                return
            key, used = tag
            field, wire = key, key & 7
            if wire == 0:
                value = _varint(stream, offset + used, "field value")
                if value is None:
                    raise _Corrupt(offset, "truncated field (the file ends after a field tag)")
                offset += used + value[1]
                continue
            if wire in (1, 5):
                length = 8 if wire == 1 else 4
                if offset + used + length > size:
                    raise _Corrupt(offset, f"truncated field: {length} bytes announced, {size - offset - used} left")
                stream.seek(length, os.SEEK_CUR)
                offset += used + length
                continue
            if wire != 2:
                raise _Corrupt(offset, f"corrupt data: wire type {wire} where a request field was expected")
            header = _varint(stream, offset + used, "field length")
            if header is None:
                raise _Corrupt(offset, "truncated field (the file ends after a field tag)")
            length, more = header
            used += more
        payload = offset + used
        if payload + length > size:
            what = "record" if delimited else "resource_spans field"
            raise _Corrupt(offset, f"truncated {what}: {length} bytes announced, {size - payload} left")
        if field == _RESOURCE_SPANS_TAG or delimited:
            yield offset, payload, length
        stream.seek(payload + length)
        offset = payload + length


def _reach(stream: BinaryIO, size: int, delimited: bool) -> tuple[bool, int]:
    """(whether the framing of this layout covers the whole file, how far it got)."""
    reached = 0
    try:
        for _, payload, length in _frames(stream, size, delimited):
            reached = payload + length
    except _Corrupt:
        return False, reached
    return True, size


def layout(stream: BinaryIO, size: int) -> str:
    """"delimited" or "single" (see the module docstring)."""
    stream.seek(0)
    if stream.read(1) != bytes([_RESOURCE_SPANS_TAG]):
        return "delimited"
    single_ok, single_reach = _reach(stream, size, delimited=False)
    if single_ok:
        return "single"
    delimited_ok, delimited_reach = _reach(stream, size, delimited=True)
    return "delimited" if delimited_ok or delimited_reach > single_reach else "single"


def read(stream: BinaryIO, size: int, builder: ChunkBuilder) -> Iterator[Chunk]:
    """Convert a protobuf file; chunk positions are the offset after the last record (or ResourceSpans)
    fully converted."""
    if size == 0:
        return
    delimited = layout(stream, size) == "delimited"
    try:
        for offset, payload, length in _frames(stream, size, delimited):
            stream.seek(payload)
            data = stream.read(length)
            try:
                if delimited:
                    yield from builder.add_request(ExportTraceServiceRequest.FromString(data))
                else:
                    yield from builder.add_resource_spans(ResourceSpans.FromString(data))
            except DecodeError as exc:
                what = "record is not a valid ExportTraceServiceRequest" if delimited else \
                    "resource_spans field is not a valid ResourceSpans"
                raise _Corrupt(offset, f"{what}: {exc}") from None
            stream.seek(payload + length)
            yield from builder.consumed(payload + length)
    except _Corrupt as exc:
        builder.problem(f"byte {exc.offset}", f"{exc}; reading stopped here")


def check(stream: BinaryIO, size: int) -> str | None:
    """Why this is not an OTLP protobuf file (its first record or ResourceSpans does not decode into
    anything), or None when it plausibly is one."""
    if size == 0:
        return "the file is empty"
    delimited = layout(stream, size) == "delimited"
    try:
        for _, payload, length in _frames(stream, size, delimited):
            stream.seek(payload)
            data = stream.read(length)
            if delimited:
                if ExportTraceServiceRequest.FromString(data).resource_spans:
                    return None
            elif ResourceSpans.FromString(data).ListFields():
                return None
            return "its first record decodes to an empty request"
    except _Corrupt as exc:
        return f"at byte {exc.offset}: {exc}"
    except DecodeError as exc:
        return f"its first record is not protobuf: {exc}"
    return "it holds no trace data"
