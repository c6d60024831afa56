"""The driver: `python -m fuyu_ray.grid [--job FILE] [--out DIR|URI] [--address ADDR] [--force] ...`.

Job file -> cells -> Ray actors -> records on disk -> report. Bad input exits with status 2
and one line, before anything is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from fuyu_ray import __version__
from fuyu_ray.bench.data import DatasetNotFound, is_local_folder, resolve_local_folder
from fuyu_ray.driver.connect import check_reachable, check_token, connect, dashboard_line, job_facts
from fuyu_ray.driver.progress import make_progress
from fuyu_ray.job.cells import Grid, expand
from fuyu_ray.job.spec import JobError, JobSpec, load_job
from fuyu_ray.storage.records import RETRYABLE, FinishedCell, error_line, now_iso
from fuyu_ray.storage.store import ResultStore, cells_to_run

DEFAULT_JOB = "jobs/smoke.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fuyu_ray.grid",
        description="Run a job's grid of cells on Ray (a new local Ray, or --address) and write each cell's "
        "latency, energy, FLOPs and accuracy, then the report, to --out. A rerun skips the cells already there.",
    )
    parser.add_argument("--job", default=DEFAULT_JOB, help=f"job file (default {DEFAULT_JOB})")
    parser.add_argument("--out", help="results directory or pyarrow.fs URI (default results/<job name>)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local cluster)")
    parser.add_argument("--force", action="store_true", help="recompute cells already on disk")
    parser.add_argument("--no-retry-failed", action="store_true", help="keep failed, oom and timeout cells as they are")
    parser.add_argument(
        "--remeasure-disturbed",
        action="store_true",
        help="run again the cells on disk whose measurement was disturbed (see measurement_quality)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="list the cells and check on the workers that the model and datasets resolve; load and write nothing",
    )
    return parser.parse_args(argv)


def check_local_datasets(job: JobSpec, grid: Grid) -> None:
    """A split or config that a local dataset folder lacks is bad input, found before anything
    starts. Folders only the workers can see, and hub ids, are checked where they are read."""
    for task in sorted({cell.point.dataset for cell in grid.cells}):
        source = job.dataset_source(task)
        if is_local_folder(source):
            try:
                resolve_local_folder(task, source)
            except DatasetNotFound as exc:
                raise JobError(f"{job.source_path}: datasets.{task}: {exc}") from None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in ("torch", "transformers", "ray", "polars", "pyarrow", "datasets", "nvidia-ml-py"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def stop_on_sigterm() -> None:
    """`ray job stop` sends SIGTERM: finish as an interrupt, so finished cells are reported."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        job = load_job(args.job)
        grid = expand(job)
        check_local_datasets(job, grid)
        address = args.address or os.environ.get("RAY_ADDRESS")
        if address:
            check_reachable(address, "--address" if args.address else "RAY_ADDRESS")
            check_token(address, "--address" if args.address else "RAY_ADDRESS")
        store = open_store(args.out or f"results/{job.name}")
    except JobError as exc:
        for line in exc.lines:
            print(f"fuyu_ray: {line}", file=sys.stderr)
        return 2
    return run(job, grid, args, address, store)


def open_store(out: str):
    """The results location, checked before anything starts: a bad --out is bad input."""
    try:
        store = ResultStore.at(out)
        if store.filesystem.get_file_info(store.root).type == pafs.FileType.File:
            raise JobError(f"--out {out!r}: is a file, not a folder")
        return store
    except (OSError, pa.ArrowException) as exc:
        raise JobError(f"--out {out!r}: {error_line(exc, typed=False)}") from None


def run(job: JobSpec, grid: Grid, args: argparse.Namespace, address: str | None, store) -> int:
    """Choose the cells, connect, execute them with progress, collect the run's facts, report, exit status."""
    # Ray, Polars and matplotlib load only once the job and --out are known good: bad input answers at once.
    import ray

    from fuyu_ray.driver.dryrun import dry_run  # Ray, as above

    started_at = now_iso()
    try:
        done = store.done_cells()
    except OSError as exc:
        print(f"fuyu_ray: --out {store.root!r}: {exc}", file=sys.stderr)
        return 2
    todo = choose_cells(grid, store, done, args)
    origin = "--address" if args.address else "RAY_ADDRESS"
    try:
        context, ray_init_s = connect(address, origin, job_facts(job, len(grid.cells), len(todo), store.root))
    except (ConnectionError, TimeoutError, RuntimeError) as exc:  # something listens there, but not Ray
        print(f"fuyu_ray: {origin} {address!r}: {error_line(exc, typed=False)}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            return dry_run(job, grid, done, {cell.cell_id for cell in todo}, store.root)
        finally:
            ray.shutdown()
    try:
        store.ensure_dirs()  # only now: bad input, a bad address included, writes nothing
    except OSError as exc:
        print(f"fuyu_ray: --out {store.root!r}: {exc}", file=sys.stderr)
        return 2
    dashboard = announce(job, grid, todo, store, context)
    outcome = execute_with_progress(job, grid, todo, store, done)
    run_info = run_facts(job, grid, todo, store, address, dashboard, started_at, ray_init_s, outcome)
    return report_and_exit(job, grid, store, run_info, outcome, ray)


def choose_cells(grid: Grid, store, done: dict[str, str], args: argparse.Namespace) -> list:
    """What this run computes: new, forced, retried and (if asked) disturbed cells, in the grid's order."""
    todo = cells_to_run(grid.cells, done, args.force, not args.no_retry_failed)
    if args.remeasure_disturbed:
        disturbed = store.disturbed_cells() - {cell.cell_id for cell in todo}
        todo += [cell for cell in grid.cells if cell.cell_id in disturbed]
    return todo


def announce(job: JobSpec, grid: Grid, todo: list, store, context) -> str | None:
    """Train tiny if the run needs it, take over SIGTERM, and say what runs where; returns the dashboard's URL."""
    if job.model == "tiny" and todo:
        from fuyu_ray.bench import train_tiny  # torch, needed on the driver only to train the built-in model

        print(f"tiny model: {train_tiny.ensure_checkpoint()}", flush=True)
    stop_on_sigterm()  # after ray.init, which installs a handler of its own that exits at once
    dashboard = getattr(context, "dashboard_url", None)
    print(f"fuyu_ray {job.name}: {len(grid.cells)} cells, {len(todo)} to run, results in {store.root}", flush=True)
    if dashboard:
        print(dashboard_line(dashboard), flush=True)
    return dashboard


@dataclass
class Outcome:
    """What executing the cells left: each cell's status, what this run wrote, and how it ended."""

    statuses: dict[str, str]
    finished_now: list[str] = field(default_factory=list)  # an interrupted run wrote fewer than it planned
    stats: object = None
    wall_s: float = 0.0
    interrupted: bool = False
    aborted: str | None = None
    store_failure: str | None = None


def execute_with_progress(job: JobSpec, grid: Grid, todo: list, store, done: dict[str, str]) -> Outcome:
    """Run the cells on Ray, writing each as it arrives; an interrupt, an abort or a full --out ends it early."""
    from fuyu_ray.driver.execute import execute  # Ray, once the job is known good

    outcome = Outcome(statuses=dict(done))
    by_id = {cell.cell_id: cell for cell in grid.cells}
    wall_started = time.perf_counter()
    with make_progress(len(todo)) as progress:

        def on_record(finished: FinishedCell) -> None:
            try:
                store.write_cell(finished.record(), finished.samples())
            except (OSError, pa.ArrowException) as exc:
                raise StoreFailed(error_line(exc)) from None
            outcome.statuses[finished.cell_id] = finished.row["status"]
            outcome.finished_now.append(finished.cell_id)
            progress.finished(by_id[finished.cell_id].description, finished.row)

        try:
            outcome.stats = execute(
                todo,
                on_record,
                progress.started,
                job.runner_options(),
                job.cpus_per_actor,
                job.max_actors_per_variant,
                job.cell_timeout_s,
                on_message=progress.message,
            )
        except StoreFailed as exc:  # a full or read-only --out: nothing more can be kept, so stop
            outcome.store_failure = str(exc)
        except KeyboardInterrupt:
            outcome.interrupted = True
            progress.message("interrupted: finished cells are on disk; rerun the same command to resume")
        except Exception as exc:  # the report of what finished is still worth writing
            outcome.aborted = error_line(exc)
            progress.message(
                f"run aborted ({outcome.aborted}); finished cells are on disk; rerun the same command to resume"
            )
    outcome.wall_s = time.perf_counter() - wall_started
    return outcome


def run_facts(
    job: JobSpec, grid: Grid, todo: list, store, address, dashboard, started_at: str, ray_init_s, outcome: Outcome
) -> dict:
    """run.json: how, where and when this run measured, beside the runs before it."""
    return {
        **earlier_runs(store),
        "job_name": job.name,
        "job_file": job.source_path,
        "job_text": Path(job.source_path).read_text(),
        "out": store.root,
        "ray_address": address or "local",
        "dashboard_url": dashboard,
        "started_at": started_at,
        "finished_at": now_iso(),
        "ray_init_s": ray_init_s,
        "wall_s": outcome.wall_s,
        "cells_total": len(grid.cells),
        "cells_planned": len(todo),
        "cells_run": len(outcome.finished_now),
        "cells_reused": len(grid.cells) - len(todo),
        "interrupted": outcome.interrupted,
        "aborted": outcome.aborted,
        "fuyu_ray_version": __version__,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        **harness_figures(outcome.stats, outcome.wall_s),
    }


def report_and_exit(job: JobSpec, grid: Grid, store, run_info: dict, outcome: Outcome, ray) -> int:
    """Write the report, stop Ray, and say how the run ended: 0, 1 (a cell or --out failed), 130 (interrupted)."""
    from fuyu_ray.presentation.report import write_report  # Polars and matplotlib, once the job is known good

    store_failure = outcome.store_failure
    try:
        write_report(store, job, grid, run_info)
    except (OSError, pa.ArrowException) as exc:
        store_failure = store_failure or error_line(exc)
    except KeyboardInterrupt:  # the cells are on disk; the report alone can be rebuilt from them
        print(f"interrupted while writing the report; python -m fuyu_ray.report --out {store.root} rebuilds it")
        return 130
    interrupted = shut_down(ray) or outcome.interrupted
    if store_failure:
        kept = sum(1 for c in grid.cells if c.cell_id in outcome.statuses)
        print(
            f"fuyu_ray: --out {store.root!r}: {store_failure}; the {kept} finished cells are kept; "
            "free space or make it writable, then rerun the same command to finish the rest",
            file=sys.stderr,
            flush=True,
        )
        return 1
    print(f"report: {store.path('summary.md')}", flush=True)
    return exit_status([outcome.statuses.get(c.cell_id) for c in grid.cells], interrupted, outcome.aborted)


def exit_status(cell_statuses: list[str | None], interrupted: bool, aborted: str | None) -> int:
    """130 interrupted; 1 when the run aborted or a cell failed, ran out of memory or timed out;
    0 when every cell is ok or skipped. (2, bad input, is decided before anything runs.)"""
    if interrupted:
        return 130
    return 1 if aborted or any(status in RETRYABLE for status in cell_statuses) else 0


def shut_down(ray) -> bool:
    """Stop Ray; a Ctrl-C while it stops (everything is written by then) ends the wait, not the run's report.
    Returns whether one came."""
    try:
        ray.shutdown()
    except KeyboardInterrupt:
        return True
    return False


EARLIER_RUNS_KEPT = 20  # a resumed run lists the runs before it; the oldest drop off past this


def earlier_runs(store) -> dict:
    """The facts of the runs that measured the cells on disk before this one (from run.json), so that a
    rerun that reuses them does not replace how and when they were measured with its own empty figures."""
    previous = store.read_json("run.json")
    if not previous:
        return {"earlier_runs": []}
    before = previous.pop("earlier_runs", None) or []
    previous.pop("job_text", None)
    return {"earlier_runs": [*before, previous][-EARLIER_RUNS_KEPT:]}


class StoreFailed(Exception):
    """Writing to --out failed: the run stops, and the cells already written stay."""


def harness_figures(stats, wall_s: float) -> dict:
    if stats is None or not stats.actors:
        return {"workers": 0, "busy_s": 0.0, "model_loads": 0, "busy_ratio": None, "actors": []}
    workers = stats.workers
    return {
        "workers": workers,
        "busy_s": stats.busy_s,
        "model_loads": stats.model_loads,
        "busy_ratio": stats.busy_s / (wall_s * workers) if wall_s and workers else None,
        "actors": stats.actors,
    }


if __name__ == "__main__":
    sys.exit(main())
