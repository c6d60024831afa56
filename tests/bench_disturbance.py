"""The default job twice: once on an idle machine, once with a busy loop on every core for part of
the run. Prints how many cells each run flagged as disturbed, whether every cell timed while the
loop ran was flagged, and how far the latency of cells clean in both runs agrees.

Not run in CI: `.venv/bin/python tests/bench_disturbance.py` on an otherwise idle machine.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
LOOP_START_S, LOOP_LENGTH_S = 30.0, 40.0  # after Ray and the first models are up; covers several cells


def spin(until: float) -> None:
    while time.time() < until:
        pass


def run_default_job(out: Path) -> float:
    import subprocess

    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fuyu_ray.grid", "--job", "jobs/smoke.yaml", "--out", str(out)],
        cwd=ROOT,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def busy_loop_later(start_in: float, length: float, window: list[float]) -> threading.Thread:
    def body() -> None:
        time.sleep(start_in)
        until = time.time() + length
        window.extend([time.time(), until])
        spinners = [multiprocessing.Process(target=spin, args=(until,)) for _ in range(os.cpu_count() or 1)]
        for process in spinners:
            process.start()
        for process in spinners:
            process.join()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        idle_out, busy_out = Path(scratch) / "idle", Path(scratch) / "busy"
        idle_s = run_default_job(idle_out)
        window: list[float] = []
        loop = busy_loop_later(LOOP_START_S, LOOP_LENGTH_S, window)
        busy_s = run_default_job(busy_out)
        loop.join()
        idle = pl.read_parquet(idle_out / "cells.parquet").filter(pl.col("status") == "ok")
        busy = pl.read_parquet(busy_out / "cells.parquet").filter(pl.col("status") == "ok")

    def flagged(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("measurement_quality").str.starts_with("disturbed"))

    loop_start, loop_end = window
    under_loop = busy.filter(
        pl.col("started_at").map_elements(timestamp, return_dtype=pl.Float64) < loop_end,
        pl.col("finished_at").map_elements(timestamp, return_dtype=pl.Float64) > loop_start,
    )
    missed = under_loop.filter(~pl.col("measurement_quality").str.starts_with("disturbed"))
    both_clean = idle.filter(pl.col("measurement_quality") == "clean").join(
        busy.filter(pl.col("measurement_quality") == "clean"), on="cell_id", suffix="_busy"
    )
    ratios = [b / a for a, b in zip(both_clean.get_column("latency_s"), both_clean.get_column("latency_s_busy")) if a]

    print(f"idle run:  {idle.height} ok cells in {idle_s:.0f} s, {flagged(idle).height} flagged disturbed")
    for row in flagged(idle).iter_rows(named=True):
        print(
            f"    {row['cell_id']} {row['optimization']} {row['dataset']} b{row['batch_size']}: "
            f"{row['measurement_quality']}"
        )
    print(
        f"busy run:  {busy.height} ok cells in {busy_s:.0f} s, {flagged(busy).height} flagged disturbed; "
        f"{under_loop.height} cells overlapped the {LOOP_LENGTH_S:.0f} s busy loop, {missed.height} of them not flagged"
    )
    for row in missed.iter_rows(named=True):
        print(f"    missed {row['cell_id']}: other_cpu_share {row['other_cpu_share']}")
    if ratios:
        print(
            f"clean in both runs: {len(ratios)} cells; busy/idle latency median {statistics.median(ratios):.3f}, "
            f"range {min(ratios):.3f}..{max(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
