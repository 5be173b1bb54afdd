"""Read the trace files agents leave behind into OTLP `ExportTraceServiceRequest` chunks.

Formats (docs/formats.md has the exact mappings):

- `otlp_json`: OTLP/JSON requests, one per line (the Collector's file exporter) or one document per file;
- `otlp_proto`: serialized requests, length-delimited or one per file;
- `halo_jsonl`: HALO canonical JSONL, one flattened span per line;
- `sdk_spans`: OpenTelemetry SDK span dumps `{"spans": [...]}`;
- `transcript`: chat transcripts of agent runs (tau-bench, AgentRx), a JSON array or JSON Lines.

`read_file` yields `Chunk`s of at most `ReadOptions.max_spans_per_chunk` spans (a line of a line format
is never split: one holding more spans is a chunk of its own), converting as it goes (only a
single-document JSON file is parsed whole), and turns damaged input into `Problem`s attached to the
chunks instead of exceptions: a bad line or record is skipped, the rest is read. Each chunk's
request goes to `halod.normalize.normalize_request(chunk.request, source)`.

Line formats (`LINE_FORMATS`: OTLP/JSON lines, HALO JSONL, transcripts as JSON Lines) can be resumed at
a chunk's `position` (`read_file(path, start=position)`) or fed line by line (`read_lines`, what a
tailing file receiver does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from halod.formats import halo_jsonl, otlp_json, otlp_proto, sdk_spans, transcript
from halod.formats._common import (
    DEFAULT_TRANSCRIPT_START_NS,
    Chunk,
    ChunkBuilder,
    Context,
    Damaged,
    FormatError,
    LineState,
    Problem,
    ReadOptions,
    RecordError,
)
from halod.formats.transcript import TOOL_ERROR_PATTERN

__all__ = [
    "DEFAULT_TRANSCRIPT_START_NS",
    "FORMATS",
    "LINE_FORMATS",
    "TOOL_ERROR_PATTERN",
    "Chunk",
    "FormatError",
    "LineState",
    "Problem",
    "ReadOptions",
    "detect_format",
    "read_file",
    "read_lines",
    "reads_by_line",
]

FORMATS: tuple[str, ...] = ("otlp_json", "otlp_proto", "halo_jsonl", "sdk_spans", "transcript")
LINE_FORMATS: frozenset[str] = frozenset({"otlp_json", "halo_jsonl", "transcript"})

_Emit = Callable[[Any, str, int, int, Context, ChunkBuilder], Iterator[Chunk]]
_EMITTERS: dict[str, _Emit] = {
    "otlp_json": otlp_json.emit, "halo_jsonl": halo_jsonl.emit, "transcript": transcript.emit,
}
_BOM = b"\xef\xbb\xbf"
_DEFAULT_OPTIONS = ReadOptions()  # frozen, so one shared default is safe

# ------------------------------------------------------------------------------------------ detection

_HEAD_BYTES = 64 * 1024
_LONG_HEAD_BYTES = 4 * 1024 * 1024  # when the first object's keys are not all in the first 64 KiB
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
# A JSON string (its closing quote optional: a head may end inside one) or a structural character.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[{}\[\],:]')


def _text(head: bytes) -> str | None:
    """The head of a text file, or None when it looks binary (NUL, invalid UTF-8, control characters)."""
    try:
        text = head.decode()
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the end of the head
            return None
        text = head[: exc.start].decode()
    return None if _CONTROL.search(text) else text


def _first_keys(text: str) -> tuple[set[str], bool]:
    """The keys of the first JSON object in `text` (of the first element when it starts with an array),
    and whether that object ended within `text`."""
    stack: list[str] = []
    keys: set[str] = set()
    previous = ""
    target = 1 if text.lstrip()[:1] == "{" else 2
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token[0] == '"':
            if len(stack) == target and stack[-1] == "{" and previous in ("{", ","):
                keys.add(token[1:-1])
            previous = '"'
            continue
        if token in "{[":
            stack.append(token)
        elif token in "}]":
            if stack:
                stack.pop()
            if len(stack) < target:
                return keys, True
        previous = token
    return keys, False


def _format_of(top: str, keys: set[str]) -> str | None:
    if keys & {"resourceSpans", "resource_spans"}:
        return "otlp_json"
    if keys & {"traj", "messages"}:
        return "transcript"
    if top == "{" and {"trace_id", "span_id"} <= keys and keys & {"start_time", "end_time"}:
        return "halo_jsonl"
    if top == "{" and "spans" in keys:
        return "sdk_spans"
    return None


def detect_format(path: Path | str) -> str:
    """The format of a trace file, told by its content (never by its name).

    Binary content (NUL bytes, invalid UTF-8, control characters in the first 64 KiB) is `otlp_proto`
    when its first record decodes as OTLP protobuf. Text must start (after whitespace and a UTF-8 BOM)
    with `{` or `[`; the keys of the first JSON object (of the first array element for `[`) decide:
    `resourceSpans` / `resource_spans` -> otlp_json; `traj` or `messages` -> transcript; `trace_id` +
    `span_id` + `start_time` (or `end_time`) -> halo_jsonl; `spans` -> sdk_spans. Raises FormatError
    naming the file and what was seen when none applies.
    """
    path = Path(path)
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        head = stream.read(_HEAD_BYTES).removeprefix(_BOM)
        text = _text(head)
        if text is None:
            reason = otlp_proto.check(stream, size)
            if reason is None:
                return "otlp_proto"
            raise FormatError(f"{path}: cannot tell the trace format: binary content that is not OTLP protobuf "
                              f"({reason})")
        body = text.lstrip()
        if not body:
            raise FormatError(f"{path}: cannot tell the trace format: the file is empty")
        if body[0] not in "{[":
            raise FormatError(f"{path}: cannot tell the trace format: text that is not JSON (it starts with "
                              f"{body[:40]!r}) and not OTLP protobuf")
        while True:
            if len(head) < size and "\n" in text:
                text = text[: text.rindex("\n")]  # only whole lines: a cut string would confuse the scan
            keys, complete = _first_keys(text)
            found = _format_of(body[0], keys)
            if found is not None:
                return found
            if complete or len(head) >= size or len(head) >= _LONG_HEAD_BYTES:
                break
            head += stream.read(_LONG_HEAD_BYTES - len(head))
            text = _text(head) or ""
    where = "the first element of the top-level array" if body[0] == "[" else "the first JSON object"
    raise FormatError(
        f"{path}: cannot tell the trace format: {where} has keys {sorted(keys)[:16]}; expected resourceSpans "
        "(otlp_json), trace_id + span_id + start_time (halo_jsonl), spans (sdk_spans) or traj / messages "
        "(transcript)"
    )


# ------------------------------------------------------------------------------------------ reading


def read_file(path: Path | str, format: str | None = None, options: ReadOptions = _DEFAULT_OPTIONS,
              start: int = 0) -> Iterator[Chunk]:
    """Convert a trace file into chunks (see the module docstring); `format` None means `detect_format`.

    `start` resumes a line-format file at a byte offset that begins a line (a chunk's `position`): the
    chunks are exactly those a full read yields after that point (line numbers, transcript record
    indexes and timeline included: they are recovered by scanning the lines before `start`). It must
    be 0 for other formats and for single-document JSON files. Raises FormatError at once (not on
    iteration) for an unknown format, an undetectable file or a bad `start`; OSError when unreadable.
    """
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    ctx = Context.create(str(path), options)
    size = path.stat().st_size
    if reads_by_line(path, fmt):
        state = _state_at(path, fmt, start, size, options)
        return _read_lines(fmt, _file_lines(path, start), ctx, state)
    if start:
        raise FormatError(f"{path}: start={start} applies to files read line by line; this {fmt} file is read "
                          "as a whole (start must be 0)")
    if fmt == "otlp_proto":
        return _read_proto(path, ctx)
    return _read_document(fmt, path, size, ctx)


def reads_by_line(path: Path | str, format: str) -> bool:
    """Whether `read_file` reads this file line by line (resumable at a byte offset, and what a tailing
    reader may feed to `read_lines`) rather than as one document (a JSON array of runs, a pretty-printed
    request, an SDK dump, protobuf)."""
    return format in LINE_FORMATS and not _is_document(Path(path), format)


def read_lines(format: str, lines: Iterable[tuple[int, bytes]], file: str, options: ReadOptions = _DEFAULT_OPTIONS,
               *, state: LineState | None = None) -> Iterator[Chunk]:
    """Convert lines of a line-format file: `(byte offset after the line, the line's bytes)` pairs.

    Each non-blank line is one record (a request, a span, a run); a line that is not JSON or does not
    convert is a Problem at "line N". `state` says where the first line stands in its file (line
    number, record index, transcript clock); pass the `state` of the last chunk to go on where a
    previous call stopped. Without it, the first line is line 1, record 0, at
    `options.transcript_start_ns`. A chunk is yielded when full and at the end of `lines`; a line is
    never split across chunks, so each chunk's `position` is the end of a line given.
    """
    if format not in LINE_FORMATS:
        raise FormatError(f"{format!r} is not a line format; line formats: {', '.join(sorted(LINE_FORMATS))}")
    return _read_lines(format, lines, Context.create(file, options), state or LineState())


def _read_lines(fmt: str, lines: Iterable[tuple[int, bytes]], ctx: Context, state: LineState) -> Iterator[Chunk]:
    emit = _EMITTERS[fmt]
    timed = fmt == "transcript"
    step = ctx.options.transcript_step_ns
    line, record = state.line, state.record
    clock = ctx.options.transcript_start_ns if state.clock_ns is None else state.clock_ns
    builder: ChunkBuilder | None = None
    for position, raw in lines:
        if builder is None:
            builder = ChunkBuilder(ctx.file, ctx.options.max_spans_per_chunk, position - len(raw), state,
                                   whole_inputs=True)
        text = raw.removeprefix(_BOM).strip() if line == 1 else raw.strip()
        if text:
            where = f"line {line}"
            try:
                document = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                builder.problem(where, f"not valid JSON: {exc}")
            else:
                try:
                    yield from emit(document, where, record, clock, ctx, builder)
                except RecordError as exc:
                    builder.problem(where, str(exc))
                if timed:
                    clock += transcript.slots(document) * step
            record += 1
        line += 1
        yield from builder.consumed(position, LineState(line, record, clock if timed else None))
    if builder is not None:
        yield from builder.finish()


def _file_lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as stream:
        stream.seek(start)
        position = start
        for raw in stream:
            position += len(raw)
            yield position, raw


def _state_at(path: Path, fmt: str, start: int, size: int, options: ReadOptions) -> LineState:
    """The LineState of the line that begins at byte `start`, by scanning the lines before it."""
    if start == 0:
        return LineState()
    if not 0 < start <= size:
        raise FormatError(f"{path}: start={start} is outside the file ({size} bytes): truncated or replaced?")
    with path.open("rb") as stream:
        stream.seek(start - 1)
        if stream.read(1) != b"\n":
            raise FormatError(f"{path}: start={start} is not at the beginning of a line")
    line, record, clock = 1, 0, options.transcript_start_ns
    for position, raw in _file_lines(path, 0):
        text = raw.strip()
        if text:
            record += 1
            if fmt == "transcript":
                with contextlib.suppress(orjson.JSONDecodeError):  # a bad line takes no slot, as when read
                    clock += transcript.slots(orjson.loads(text)) * options.transcript_step_ns
        line += 1
        if position >= start:
            break
    return LineState(line, record, clock if fmt == "transcript" else None)


def _is_document(path: Path, fmt: str) -> bool:
    """Whether a line-format file is one JSON document rather than JSON Lines.

    A file whose first non-blank byte is `[` is a document (an array of requests or runs). For OTLP/JSON
    starting with `{`: JSON Lines unless the first non-blank line is not JSON by itself and the next
    non-blank line does not start with `{` (a pretty-printed request). HALO JSONL is always lines.
    """
    if fmt == "halo_jsonl":
        return False
    with path.open("rb") as stream:
        lines = (raw.strip() for raw in stream)
        first = next((text for text in lines if text), b"").removeprefix(_BOM).strip()
        if first[:1] == b"[":
            return True
        if fmt != "otlp_json" or not first:
            return False
        try:
            orjson.loads(first)
            return False
        except orjson.JSONDecodeError:
            second = next((text for text in lines if text), None)
            return second is None or not second.startswith(b"{")


def _read_proto(path: Path, ctx: Context) -> Iterator[Chunk]:
    builder = ChunkBuilder(ctx.file, ctx.options.max_spans_per_chunk)
    with path.open("rb") as stream:
        yield from otlp_proto.read(stream, os.fstat(stream.fileno()).st_size, builder)
    yield from builder.finish()


def _read_document(fmt: str, path: Path, size: int, ctx: Context) -> Iterator[Chunk]:
    """A single-document JSON file, parsed whole. When it does not parse, the complete elements of its
    array (the top-level array, or `spans` of an SDK dump) are salvaged and each damaged one reported."""
    builder = ChunkBuilder(ctx.file, ctx.options.max_spans_per_chunk)
    data = path.read_bytes().removeprefix(_BOM)
    # SDK dumps carry 128-bit integer trace ids, which orjson reads as (rounded) floats; the standard
    # library keeps them exact. (orjson.JSONDecodeError is a json.JSONDecodeError.)
    loads: Callable[[bytes], Any] = json.loads if fmt == "sdk_spans" else orjson.loads
    try:
        document: Any = loads(data)
    except json.JSONDecodeError as exc:
        salvaged = _salvage_array(data, "spans" if fmt == "sdk_spans" else None, loads)
        if salvaged is None:
            builder.problem("file", f"not valid JSON: {exc}")
            document = None
        else:
            document = {"spans": salvaged} if fmt == "sdk_spans" else salvaged
    if document is not None:
        if fmt == "sdk_spans":
            yield from sdk_spans.read_document(document, ctx, builder)
        elif fmt == "transcript":
            yield from transcript.read_document(document, ctx, builder)
        else:
            yield from otlp_json.read_document(document, ctx, builder)
    yield from builder.consumed(size)
    yield from builder.finish()


_JSON_TOKEN_BYTES = re.compile(rb'"(?:[^"\\]|\\.)*"?|[{}\[\],:]')


def _salvage_array(data: bytes, key: str | None, loads: Callable[[bytes], Any]) -> list[Any] | None:
    """The elements of the top-level array (`key` None) or of the array under `key` in the top-level
    object, from a document that does not parse as a whole: elements that parse are kept, the others
    become `Damaged` (reported where they are converted). None when there is no such array."""
    stack: list[bytes] = []
    previous = b""
    last_string = b""
    current_key: bytes | None = None
    depth: int | None = None  # stack depth inside the array, once found
    pieces: list[tuple[int, int]] = []
    element_start = 0
    closed = False
    for match in _JSON_TOKEN_BYTES.finditer(data):
        token = match.group()
        if token[:1] == b'"':
            last_string, previous = token, b'"'
            continue
        if token == b":":
            if len(stack) == 1:
                current_key = last_string[1:-1]
        elif token in (b"{", b"["):
            if depth is None and token == b"[" and (
                (key is None and not stack)
                or (key is not None and len(stack) == 1 and previous == b":" and current_key == key.encode())
            ):
                depth, element_start = len(stack) + 1, match.end()
            stack.append(token)
        elif token in (b"}", b"]"):
            if depth is not None and len(stack) == depth:
                pieces.append((element_start, match.start()))
                closed = True
                break
            if stack:
                stack.pop()
        elif token == b"," and depth is not None and len(stack) == depth:
            pieces.append((element_start, match.start()))
            element_start = match.end()
        previous = token
    if depth is None:
        return None
    if not closed:
        pieces.append((element_start, len(data)))
    elements: list[Any] = []
    for number, piece in enumerate(pieces):
        text = data[piece[0] : piece[1]].strip()
        if not text and number == len(pieces) - 1:
            continue  # "[]", or a file cut right after a comma
        try:
            elements.append(loads(text))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            ends_inside = not closed and number == len(pieces) - 1
            elements.append(Damaged(f"the file ends inside this element (truncated at byte {len(data)})"
                                    if ends_inside else f"not valid JSON: {exc}"))
    return elements
