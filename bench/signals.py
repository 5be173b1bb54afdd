"""Ingest with the whole post-commit analysis on (assembly, all detectors, windows, triggers), against
the spine alone: the issue's bar is that the detectors cut the acknowledged ingest rate by at most a
third. Runs bench/ingest.py twice (analysis off, then on) with the same arguments.

    python bench/signals.py                      # 8 clients, as fast as answered, 20 s each
    python bench/signals.py --clients 16
    python bench/signals.py --rate 15000         # a steady offered load: does the analysis keep up?

Reports acknowledged spans/s for both, the ratio, and for the analysis run the traces arriving per
second against those completed and evaluated (and how many of those were completed early because
`max_open_traces` was reached: the analysis fell behind). A trace completes `wait_duration` (10 s)
after its last span, so the warm-up is at least 15 s: the measured window then sees steady state.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ingest

MIN_WARMUP_S = 15.0  # > the default wait_duration (10 s): completions in the window are steady-state


def main(argv: list[str]) -> int:
    parser = ingest.build_parser()
    args = parser.parse_args(argv)
    args.warmup = max(args.warmup, MIN_WARMUP_S)
    pool = ingest.RequestPool(args.pool, args.spans_per_request)
    results = {}
    for analysis in (False, True):
        args.analysis = analysis
        result = ingest.run(args, pool)
        ingest.print_report(result)
        results[analysis] = result
    spine, full = results[False]["spans_per_s"], results[True]["spans_per_s"]
    analysis = results[True]
    print(f"\nwith analysis: {full:,} vs {spine:,} spans/s acknowledged ({full / spine:.0%} of the spine; "
          f"the bar is 67%); {analysis['traces_completed_per_s']:,} traces/s evaluated of "
          f"{analysis['traces_arrived_per_s']:,} arriving, {analysis['traces_evicted_per_s']:,}/s completed early, "
          f"open traces {analysis['open_traces_growth_per_s']:+,}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
