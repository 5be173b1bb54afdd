"""Ingest with the whole post-commit analysis on (assembly, all detectors, windows, triggers), against
the spine alone: the issue's bar is that the detectors cut the acknowledged ingest rate by at most a
third. Runs bench/ingest.py twice (analysis off, then on) with the same arguments.

    python bench/signals.py                 # 8 clients, 20 s each
    python bench/signals.py --clients 16

Reports acknowledged spans/s for both, the ratio, and traces completed and evaluated per second.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest


def main(argv: list[str]) -> int:
    parser = ingest.build_parser()
    args = parser.parse_args(argv)
    pool = ingest.RequestPool(args.pool, args.spans_per_request)
    results = {}
    for analysis in (False, True):
        args.analysis = analysis
        result = ingest.run(args, pool)
        ingest.print_report(result)
        results[analysis] = result
    spine, full = results[False]["spans_per_s"], results[True]["spans_per_s"]
    print(f"\nwith analysis: {full:,} vs {spine:,} spans/s acknowledged ({full / spine:.0%} of the spine; "
          f"the bar is 67%), {results[True]['traces_completed_per_s']:,} traces/s evaluated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
