"""The `file` receiver: tails and watches trace files, committing each file's position with its spans.

Every poll lists the files matching `include` (minus `exclude`) and reads the first one with new
data, one chunk (one store commit) at a time, until nothing is new; then it waits `poll_interval`.

- **Files read by line** (OTLP JSON lines, HALO JSONL, transcript JSONL): read from the remembered byte
  offset up to the last complete line; a line still being written is left for the next poll.
- **Whole documents** (a JSON array of transcripts, an SDK dump, protobuf, a pretty-printed request): read
  once the file has not changed for `settle_time`; the position is the number of chunks committed,
  so a restart in the middle resumes after the last committed chunk (the reader itself is kept
  from page to page, so a file is parsed once). If such a file changes again it is read again from
  its start (the store deduplicates the spans it already had).

Identity of a file: its path plus a fingerprint (sha256 of its first bytes, up to 1 KiB). A file
whose fingerprint no longer matches, or that got shorter than the offset, was replaced or truncated
(rotation): it is read from the start. Positions of files that disappeared are forgotten.

The cursor (`SpanBatch.cursor`) is JSON `{path: FileState}` for every known file (fingerprint,
offset and line-reader state for line formats, chunks committed for whole documents).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from halod.components import Consumer, CreateSettings, Host
from halod.formats import Chunk, LineState, ReadOptions, detect_format, read_file, read_lines, reads_by_line
from halod.pull import Page, PullReceiver
from halod.receivers.file.config import FileReceiverConfig

FINGERPRINT_BYTES = 1024
READ_BYTES = 16 * 2**20  # at most this much of a file is read per page (lines beyond wait for the next)


@dataclass
class FileState:
    fp: str = ""
    fp_len: int = 0
    offset: int = 0  # line formats: bytes consumed
    line: int = 1  # line formats: the line reader's LineState at `offset` (line numbers in problems,
    record: int = 0  # transcript run indexes and timeline continue where the last read stopped)
    clock_ns: int | None = None
    chunks: int = 0  # whole-document formats: chunks committed
    size: int = 0  # whole-document formats: size when read
    complete: bool = False  # whole-document formats: every chunk committed


class FileReceiver(PullReceiver):
    """See the module docstring. Lifecycle: halod.pull.PullReceiver."""

    def __init__(self, settings: CreateSettings, config: FileReceiverConfig, next_consumer: Consumer) -> None:
        super().__init__(settings, config, next_consumer)
        self.config = config
        self._files: dict[str, FileState] = {}
        self._formats: dict[str, tuple[str, bool]] = {}
        self._documents: dict[str, _Document] = {}
        self._options = ReadOptions()
        self._first_poll = False

    async def start(self, host: Host) -> None:
        if not self.config.include:
            self.telemetry.log.warning("file receiver has no include patterns; it reads nothing", receiver=self.id)
        await super().start(host)

    async def open(self) -> None:
        tools = json.loads(self.config.tools.read_text()) if self.config.tools else None
        self._options = ReadOptions(tools=tools, service_name=self.config.service_name)
        self._first_poll = self.cursor is None
        if self.cursor:
            self._files = {path: FileState(**state) for path, state in json.loads(self.cursor).items()}

    async def close(self) -> None:
        pass

    async def fetch(self, cursor: str | None) -> Page:
        return await asyncio.to_thread(self._next_page)

    # -- in a worker thread: file I/O and format conversion ---------------------------------------

    def _next_page(self) -> Page:
        paths = self._matching_files()
        for gone in set(self._files) - set(paths):
            del self._files[gone]
            self._documents.pop(gone, None)
        if self._first_poll:
            self._first_poll = False
            if self.config.start_at == "end":
                for path in paths:
                    self._files[path] = self._skip_to_end(path)
        problems: list[str] = []
        for path in paths:
            try:
                chunk, more = self._read(path)
            except (OSError, ValueError) as exc:  # unreadable now, format unknown: tell, try again later
                problems.append(f"{path}: {exc}")
                continue
            if chunk is not None:
                return Page(chunk.request, self._cursor(), more=more,
                            problems=problems + [str(p) for p in chunk.problems])
        return Page(ExportTraceServiceRequest(), self._cursor() if self._files else None, problems=problems)

    def _matching_files(self) -> list[str]:
        found: set[str] = set()
        for pattern in self.config.include:
            found.update(glob.glob(pattern, recursive=True))
        for pattern in self.config.exclude:
            found.difference_update(glob.glob(pattern, recursive=True))
        return sorted(path for path in found if os.path.isfile(path))

    def _cursor(self) -> str:
        return json.dumps({path: asdict(state) for path, state in self._files.items()}, sort_keys=True)

    def _format(self, path: str) -> tuple[str, bool]:
        """(format, read line by line) of `path`, decided once per file identity."""
        if path not in self._formats:
            forced: str | None = self.config.format
            file_format = forced or detect_format(Path(path))
            self._formats[path] = (file_format, reads_by_line(path, file_format))
        return self._formats[path]

    def _skip_to_end(self, path: str) -> FileState:
        size = os.path.getsize(path)
        fp, fp_len = _fingerprint(path)
        return FileState(fp, fp_len, offset=size, size=size, complete=True)

    def _identify(self, path: str, size: int) -> FileState:
        """The remembered state of `path`, reset when the file was replaced or truncated."""
        state = self._files.get(path)
        if state is not None:
            same = state.fp_len == 0 or _fingerprint(path, state.fp_len)[0] == state.fp
            if not same or size < state.offset:
                self.telemetry.log.info("file replaced or truncated; reading it from the start",
                                        receiver=self.id, path=path)
                self._formats.pop(path, None)
                self._documents.pop(path, None)
                state = None
        if state is None:
            state = FileState()
        if state.fp_len < FINGERPRINT_BYTES and size > state.fp_len:
            state.fp, state.fp_len = _fingerprint(path)
        self._files[path] = state
        return state

    def _read(self, path: str) -> tuple[Chunk | None, bool]:
        """The next chunk of `path` (None: nothing new) and whether more is ready after it."""
        stat = os.stat(path)
        state = self._identify(path, stat.st_size)
        if stat.st_size == 0:
            return None, False
        file_format, by_line = self._format(path)
        if by_line:
            return self._read_lines(path, file_format, state, stat.st_size)
        return self._read_document(path, file_format, state, stat)

    def _read_lines(self, path: str, file_format: str, state: FileState, size: int) -> tuple[Chunk | None, bool]:
        if state.offset >= size:
            return None, False
        with open(path, "rb") as file:
            file.seek(state.offset)
            data = file.read(READ_BYTES)
        end = data.rfind(b"\n") + 1
        if end == 0:
            return None, False  # a line still being written
        lines = []
        offset = state.offset
        for line in data[:end].splitlines(keepends=True):
            offset += len(line)
            lines.append((offset, line))
        line_state = LineState(state.line, state.record, state.clock_ns)
        for chunk in read_lines(file_format, lines, path, self._options, state=line_state):
            state.offset = chunk.position
            if chunk.state is not None:
                state.line, state.record, state.clock_ns = chunk.state.line, chunk.state.record, chunk.state.clock_ns
            return chunk, state.offset < size
        state.offset = offset  # only blank lines
        return None, offset < size

    def _read_document(self, path: str, file_format: str, state: FileState,
                       stat: os.stat_result) -> tuple[Chunk | None, bool]:
        if state.complete and state.size == stat.st_size:
            return None, False
        if time.time() - stat.st_mtime < self.config.settle_time:
            return None, False  # still being written, perhaps
        if state.size != stat.st_size:  # changed since the chunks counted were read: from the start
            state.chunks, state.size, state.complete = 0, stat.st_size, False
        document = self._documents.get(path)
        if document is None or document.size != stat.st_size or document.next_index != state.chunks:
            # A reader kept from the previous page goes on; a new one (after a restart, or a changed
            # file) skips the chunks already committed.
            chunks = read_file(Path(path), file_format, self._options)
            for _ in range(state.chunks):
                next(chunks, None)
            document = self._documents[path] = _Document(stat.st_size, chunks, next(chunks, None), state.chunks)
        chunk = document.ahead
        if chunk is not None:
            document.ahead = next(document.chunks, None)  # one ahead: tells whether this chunk is the last
            document.next_index += 1
            state.chunks = document.next_index
        state.complete = document.ahead is None
        if state.complete:
            del self._documents[path]
        return chunk, not state.complete


@dataclass
class _Document:
    """A whole-document file being read, one chunk per page."""

    size: int
    chunks: Iterator[Chunk]
    ahead: Chunk | None
    next_index: int


def _fingerprint(path: str, length: int = FINGERPRINT_BYTES) -> tuple[str, int]:
    with open(path, "rb") as file:
        head = file.read(length)
    return hashlib.sha256(head).hexdigest()[:32], len(head)

