"""Noise is not reported as change: pairs of runs with identical settings, compared.

Each run is one stand-in cell (`standin:sleep=0.05,batches=20`: 20 timed sleeps of 50 ms, each
recorded with the jitter of really sleeping on this machine), measured in-process by the same
StandInRunner a Ray actor wraps and written as a result folder (cells/, samples/, cells.parquet,
samples.parquet). Each pair goes through `python -m fuyu_ray.compare` (its `main`, default
settings: match on everything, 5% threshold). A pair is flagged when any verdict is other than
"no clear change" or "n/a". The bench fails (exit 1) when more than --allowed pairs are flagged.

It also counts the pairs whose latency interval alone excludes 1 (what a 0% threshold would
flag), to show what the threshold is there for.

    .venv/bin/python tests/bench_compare_noise.py [--pairs 20] [--sleep 0.05] [--batches 20]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_compare import standin_cell, standin_run  # noqa: E402

from fuyu_ray.driver import compare  # noqa: E402  (the command line: compare.main)

QUIET = ("no clear change", "n/a")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--sleep", type=float, default=0.05)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--allowed", type=int, default=2, help="most flagged pairs that pass (default 2)")
    args = parser.parse_args()

    flagged = interval_only = 0
    ratios = []
    with tempfile.TemporaryDirectory(prefix="compare-noise-") as root:
        print(f"{'pair':>4}  {'BASE median':>11}  {'NEW median':>10}  {'NEW/BASE':>8}  {'95% interval':>19}  verdict")
        for pair in range(args.pairs):
            cell = standin_cell(args.sleep, args.batches)
            base = standin_run(Path(root) / f"{pair}-base", cell)
            new = standin_run(Path(root) / f"{pair}-new", cell)
            with contextlib.redirect_stdout(io.StringIO()):
                code = compare.main([str(base), str(new)])
            if code != 0:
                print(f"compare exited {code}", file=sys.stderr)
                return 2
            [row] = pq.read_table(new / "compare" / "compare.parquet").to_pylist()
            verdicts = [v for k, v in row.items() if k.endswith("_verdict") and v is not None]
            noisy = any(v not in QUIET for v in verdicts)
            excludes_one = row["latency_ci_low"] > 1 or row["latency_ci_high"] < 1
            flagged += noisy
            interval_only += excludes_one
            ratios.append(row["latency_ratio"])
            print(
                f"{pair:>4}  {row['latency_base'] * 1000:>8.3f} ms  {row['latency_new'] * 1000:>7.3f} ms  "
                f"{row['latency_ratio']:>8.4f}  [{row['latency_ci_low']:.4f}, {row['latency_ci_high']:.4f}]  "
                f"{row['latency_verdict']}{' (interval excludes 1)' if excludes_one else ''}"
            )
    spread_pct = (max(ratios) - min(ratios)) * 100
    print(
        f"\nflagged as a change: {flagged} of {args.pairs} pairs (allowed: {args.allowed}); "
        f"latency ratios {min(ratios):.4f} to {max(ratios):.4f} (spread {spread_pct:.2f} points of %); "
        f"interval alone excludes 1 in {interval_only} of {args.pairs} (what a 0% threshold would flag)"
    )
    return 0 if flagged <= args.allowed else 1


if __name__ == "__main__":
    raise SystemExit(main())
