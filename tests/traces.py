"""Completed traces for detector tests: real dataset files through halod's readers and normalization
(the same path as `halod import`), as the `TraceSpans` views detectors receive."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from halod.analysis.trace import TraceSpans
from halod.formats import ReadOptions, read_file
from halod.normalize import normalize_request
from tests.conftest import DATASETS

AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"
AIRLINE_TOOLS = DATASETS / "tau-bench-airline" / "tools.json"
RETAIL = DATASETS / "agentrx-tau-retail" / "tau_dataset_full.json"
RETAIL_TOOLS = DATASETS / "agentrx-tau-retail" / "tools.json"
HALO = sorted((DATASETS / "otel-fixtures" / "halo-engine").glob("*.jsonl"))
ANY_AGENT = sorted((DATASETS / "otel-fixtures" / "any-agent").glob("*_trace.json"))


def traces_of(*paths: Path, tools: Path | None = None) -> list[TraceSpans]:
    """Every trace in the files, in file order."""
    options = ReadOptions(tools=json.loads(tools.read_text()) if tools else None)
    tables = [normalize_request(chunk.request, "test").spans
              for path in paths for chunk in read_file(path, options=options)]
    return TraceSpans.from_table(pa.concat_tables(tables)) if tables else []


@functools.cache
def airline() -> list[TraceSpans]:
    """The 200 tau-bench airline runs, with the airline tools declared on every LLM span."""
    return traces_of(AIRLINE, tools=AIRLINE_TOOLS)


@functools.cache
def retail() -> list[TraceSpans]:
    """The 100 AgentRx retail runs, with the retail tools declared on every LLM span."""
    return traces_of(RETAIL, tools=RETAIL_TOOLS)


def by_task(traces: list[TraceSpans]) -> dict[str, TraceSpans]:
    """Transcript traces keyed by their run's task id (the root's halod.run.task_id)."""
    return {str(t.root.get("halod.run.task_id")): t for t in traces if t.root is not None}


def runs(path: Path) -> list[dict[str, Any]]:
    """The raw transcript records, for expectations computed independently of halod."""
    return list(json.loads(path.read_text()))
