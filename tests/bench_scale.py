"""Benchmark, not a CI test: how the driver and the report scale with the number of cells.

    .venv/bin/python tests/bench_scale.py [--cells 1000 10000] [--sleep 0.001] [--keep DIR] [--source DIR] [--profile]

For each size, a job of stand-in cells (`model: "standin:sleep=..."`, `limit: 1`, random weights,
cpu) crossing three axes (batch size x image size x sequence length) runs twice through the real
CLI and a real local Ray: once from an empty --out, then again with nothing left to do. Printed
per size:

- execution: `wall_s` from run.json (the cells, as the driver times them) and per cell;
- report: seconds in `report.write_report`, in the first run and in the rerun;
- whole command: seconds from start to exit of `python -m fuyu_ray.grid`, Ray start-up included,
  for the first run and for the no-op rerun;
- driver peak RSS (the driver process alone, `getrusage`), per run;
- bytes on disk: the per-cell files (`cells/`, `samples/`), apparent and allocated, and the whole --out.

Targets at 10,000 cells on a 2-core machine: no-op rerun <= 20 s, report <= 20 s, driver peak
RSS <= 1 GB, summary.md <= 200 KB, execution <= 5.5 ms per cell.

`--source DIR` runs the driver from another checkout's `fuyu_ray` (to compare before and after);
`--profile` writes cProfile statistics of each driver run beside the results (`--keep DIR`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def axes_for(cells: int) -> dict[str, list[int]]:
    """Three crossed axes whose product is about `cells`: image size and seq_len 10 (or 20) values each."""
    side = 10 if cells < 4000 else 20
    batches = max(1, round(cells / side / side))
    return {
        "batch_size": list(range(1, batches + 1)),
        "image_size": [224 + 16 * i for i in range(side)],
        "seq_len": [16 + 8 * i for i in range(side)],
    }


def write_job(directory: Path, cells: int, sleep_s: float) -> Path:
    axes = axes_for(cells)
    job = directory / f"scale-{cells}.yaml"
    job.write_text(
        f"name: scale\nmodel: 'standin:sleep={sleep_s}'\nweights: random\nlimit: 1\n"
        "base: {device: cpu, dataset: textvqa, batch_size: 1, image_size: 224, seq_len: 200, optimization: fp32}\n"
        "sweeps:\n"
        f"  batch: {{batch_size: [1, 2, 4, 8]}}\n"
        f"  grid: {{{', '.join(f'{axis}: {values}' for axis, values in axes.items())}}}\n"
    )
    return job


def driver(figures_path: str, source: str | None, argv: list[str], profile: str | None = None) -> int:
    """Run `fuyu_ray.driver.grid.main` in this process, timing the report and reading this process's peak RSS
    (and, with `profile`, writing cProfile statistics of the whole driver there)."""
    import resource

    if source:
        sys.path.insert(0, source)
    import fuyu_ray.presentation.report as report

    timings: list[float] = []
    write_report = report.write_report

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return write_report(*args, **kwargs)
        finally:
            timings.append(time.perf_counter() - started)

    report.write_report = timed
    from fuyu_ray.driver.grid import main

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        return main(argv)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        Path(figures_path).write_text(
            json.dumps(
                {
                    "report_s": sum(timings),
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    "fuyu_ray_from": report.__file__,
                }
            )
        )


def run_driver(job: Path, out: Path, work: Path, source: str | None, profile: str | None = None) -> dict:
    figures = work / "figures.json"
    command = [
        sys.executable,
        __file__,
        "--as-driver",
        str(figures),
        *(["--source", source] if source else []),
        *(["--profile", profile] if profile else []),
        "--",
        "--job",
        str(job),
        "--out",
        str(out),
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=source or ROOT, capture_output=True, text=True)
    whole_s = time.perf_counter() - started
    if result.returncode not in (0, 1) or not figures.exists():  # 1: some cell failed, and the report is written
        raise SystemExit(f"driver exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {
        "whole_s": whole_s,
        "exit": result.returncode,
        **json.loads(figures.read_text()),
        "stderr_warnings": [
            line for line in result.stderr.splitlines() if "Warning" in line and "ray" not in line.lower()
        ],
    }


def disk_bytes(folder: Path) -> tuple[int, int]:
    """(apparent, allocated) bytes of the files under `folder`."""
    apparent = allocated = 0
    for path in folder.rglob("*"):
        if path.is_file():
            stat = path.stat()
            apparent += stat.st_size
            allocated += stat.st_blocks * 512
    return apparent, allocated


def measure(cells: int, sleep_s: float, work: Path, source: str | None, profile: bool = False) -> dict:
    job = write_job(work, cells, sleep_s)
    out = work / f"out-{cells}"
    first = run_driver(job, out, work, source, str(work / f"driver-{cells}.prof") if profile else None)
    run = json.loads((out / "run.json").read_text())
    rerun = run_driver(job, out, work, source, str(work / f"rerun-{cells}.prof") if profile else None)
    rerun_info = json.loads((out / "run.json").read_text())
    per_cell = [disk_bytes(out / sub) for sub in ("cells", "samples")]
    return {
        "cells": run["cells_total"],
        "cells_run": run["cells_run"],
        "rerun_cells_run": rerun_info["cells_run"],
        "exit": first["exit"],
        "rerun_exit": rerun["exit"],
        "execution_s": round(run["wall_s"], 1),
        "execution_ms_per_cell": round(1000 * run["wall_s"] / max(run["cells_run"], 1), 2),
        "ray_init_s": round(run["ray_init_s"], 1),
        "report_s": round(first["report_s"], 1),
        "rerun_report_s": round(rerun["report_s"], 1),
        "whole_command_s": round(first["whole_s"], 1),
        "noop_rerun_whole_s": round(rerun["whole_s"], 1),
        "driver_peak_rss_mb": round(first["peak_rss_bytes"] / 2**20),
        "rerun_driver_peak_rss_mb": round(rerun["peak_rss_bytes"] / 2**20),
        "per_cell_files_bytes": sum(a for a, _ in per_cell),
        "per_cell_files_allocated_bytes": sum(b for _, b in per_cell),
        "per_cell_bytes": round(sum(a for a, _ in per_cell) / run["cells_total"]),
        "out_bytes": disk_bytes(out)[0],
        "summary_md_bytes": (out / "summary.md").stat().st_size,
        "warnings": sorted(set(first["stderr_warnings"] + rerun["stderr_warnings"])),
        "fuyu_ray_from": first["fuyu_ray_from"],
    }


def main() -> int:
    if "--as-driver" in sys.argv:
        split = sys.argv.index("--")
        own, argv = sys.argv[1:split], sys.argv[split + 1 :]
        figures = own[own.index("--as-driver") + 1]
        source = own[own.index("--source") + 1] if "--source" in own else None
        profile = own[own.index("--profile") + 1] if "--profile" in own else None
        return driver(figures, source, argv, profile)
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--sleep", type=float, default=0.001)
    parser.add_argument("--keep", help="leave the results folders here instead of a temporary folder")
    parser.add_argument("--source", help="a checkout whose fuyu_ray the driver runs (default: this one)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="write cProfile statistics of each driver run beside the results (with --keep)",
    )
    args = parser.parse_args()
    source = str(Path(args.source).resolve()) if args.source else None
    with tempfile.TemporaryDirectory(prefix="fr-scale-", dir="/tmp") as scratch:
        work = Path(args.keep or scratch)
        work.mkdir(parents=True, exist_ok=True)
        for cells in args.cells:
            print(json.dumps(measure(cells, args.sleep, work, source, args.profile)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
