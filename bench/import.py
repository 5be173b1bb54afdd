"""Import throughput: `halod import` of the tau-bench airline transcripts and of a ~100 MB OTLP JSON
file (one ExportTraceServiceRequest per line, the Collector's file exporter layout), into a fresh
store with no daemon running (the embedded path), optionally also through a running daemon.

    python bench/import.py                 # both workloads, embedded
    python bench/import.py --size-mb 20    # a smaller OTLP JSON file
    python bench/import.py --json

Spans/s counts spans committed (new) over the wall time of the import call, file reading, format
conversion, normalization and the store commits included. The OTLP JSON file is generated before
the clock starts from the ingest benchmark's agent spans (bench/ingest.py), with fresh ids per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import RequestPool

from halod import otlp
from halod.config import parse_config
from halod.importer import run_import
from halod.telemetry import configure_logging

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
AIRLINE = DATASETS / "tau-bench-airline" / "gpt-4o-airline.json"


def write_otlp_json(path: Path, size_mb: float) -> tuple[int, int]:
    """OTLP JSON lines until the file reaches `size_mb`; returns (bytes, spans)."""
    pool = RequestPool(16, 512, seed=11)
    written = spans = sequence = 0
    with path.open("wb") as out:
        while written < size_mb * 2**20:
            line = otlp.encode_json_request(otlp.decode_protobuf(pool.take(sequence))) + b"\n"
            out.write(line)
            written += len(line)
            spans += pool.spans_per_request
            sequence += 1
    return written, spans


def timed_import(workdir: Path, name: str, files: list[Path], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    config = parse_config({
        "storage": {"path": str(workdir / f"{name}.duckdb")},
        "receivers": {"otlp": {}},  # not started: the import is embedded (nothing answers on port 1)
        "service": {"pipelines": {"traces": {"receivers": ["otlp"]}},
                    "telemetry": {"metrics": {"address": "127.0.0.1:1"}}},
        **(extra or {}),
    })
    started = time.perf_counter()
    summary = asyncio.run(run_import(config, files))
    seconds = time.perf_counter() - started
    totals = summary.totals()
    return {"workload": name, "spans": totals["spans"], "stored": totals["stored"], "seconds": round(seconds, 2),
            "spans_per_s": round(totals["stored"] / seconds), "problems": summary.problems,
            "bytes": sum(f.stat().st_size for f in files)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="size of the OTLP JSON file (default 100)")
    parser.add_argument("--json", action="store_true", help="one JSON object per workload")
    args = parser.parse_args(argv)
    configure_logging("warning", "console")
    results = []
    with tempfile.TemporaryDirectory(prefix="halod-import-bench-") as tmp:
        workdir = Path(tmp)
        results.append(timed_import(workdir, "tau-bench-airline", [AIRLINE]))
        otlp_file = workdir / "spans.otlp.jsonl"
        started = time.perf_counter()
        size, spans = write_otlp_json(otlp_file, args.size_mb)
        print(f"wrote {size / 2**20:.0f} MB of OTLP JSON ({spans:,} spans) in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        results.append(timed_import(workdir, "otlp-json", [otlp_file]))
    for result in results:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['workload']:<20} {result['stored']:>9,} spans  {result['bytes'] / 2**20:7.1f} MB  "
                  f"{result['seconds']:6.1f} s  {result['spans_per_s']:>8,} spans/s  problems {result['problems']}")
    return 0 if all(r["stored"] == r["spans"] and not r["problems"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
