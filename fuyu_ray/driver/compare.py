"""`python -m fuyu_ray.compare BASE NEW [options]`: the command line; see fuyu_ray.presentation.compare."""

from __future__ import annotations

import argparse
import math
import sys

import pyarrow as pa

from fuyu_ray.presentation.compare import DEFAULT_THRESHOLD_PCT, SETTING_KEYS, BadInput, compare, open_run, parse_keys
from fuyu_ray.presentation.compare_output import write
from fuyu_ray.storage.records import error_line
from fuyu_ray.storage.store import ResultStore


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, as every bad input
        raise BadInput(message)


def default_out(new: str) -> str:
    return new.rstrip("/") + "/compare"


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m fuyu_ray.compare",
        description="Compare two runs of python -m fuyu_ray.grid cell by cell, and tell a real change from noise: "
        "latency, prefill, decode and energy per sample as NEW/BASE ratios with 95% bootstrap "
        "intervals, accuracy paired on sample_id (exact McNemar test for option letters, paired "
        "bootstrap otherwise). Writes compare.md, compare.png and compare.parquet.",
    )
    parser.add_argument(
        "base", metavar="BASE", help="result folder (or pyarrow.fs URI, file://...) of the run to compare against"
    )
    parser.add_argument("new", metavar="NEW", help="result folder (or URI) of the run being judged")
    parser.add_argument(
        "--match",
        metavar="KEYS",
        help="comma-separated settings that pair cells (default: all of them: %s); leave out device, "
        "model or weights to compare across hardware or model versions" % ", ".join(SETTING_KEYS),
    )
    parser.add_argument("--out", metavar="DIR", help="folder or URI for the outputs (default: NEW/compare)")
    parser.add_argument(
        "--threshold",
        metavar="PCT",
        type=float,
        default=DEFAULT_THRESHOLD_PCT,
        help="smallest change that counts, in %% of BASE's figure (default %(default)g)",
    )
    parser.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 1 when any verdict is slower or worse, or a cell ok in BASE failed, ran out of "
        "memory or timed out in NEW",
    )
    parser.add_argument(
        "--judge-disturbed",
        action="store_true",
        help="draw verdicts from pairs whose measurement was disturbed too (by default they are inconclusive)",
    )
    try:
        args = parser.parse_args(argv)
        if not (args.threshold >= 0 and math.isfinite(args.threshold)):
            raise BadInput(f"--threshold must be a percentage >= 0, got {args.threshold:g}")
        keys = parse_keys(args.match)
        base, new = open_run(args.base, "BASE"), open_run(args.new, "NEW")
        comparison = compare(base, new, keys, args.threshold, args.judge_disturbed)
    except BadInput as exc:
        print(f"fuyu_ray: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_out(args.new)
    try:
        text = write(comparison, out)
    except (OSError, pa.ArrowException) as exc:
        print(f"fuyu_ray: cannot write the comparison to {out}: {error_line(exc, typed=False)}", file=sys.stderr)
        return 2
    print(text)
    print(f"compare: {ResultStore.at(out).path('compare.md')}")
    return 1 if args.fail_on_regression and comparison.regressed else 0


if __name__ == "__main__":
    raise SystemExit(main())
