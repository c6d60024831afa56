"""`python -m fuyu_ray.report --out DIR [--job FILE]`: a run's report rebuilt from its cell files."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fuyu_ray.job.cells import expand
from fuyu_ray.job.prices import add_price_options, prices_from_options
from fuyu_ray.job.spec import JobError, JobSpec, load_job, parse_job
from fuyu_ray.presentation.report import write_report
from fuyu_ray.storage.store import ResultStore


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report of a run from its cell files: after an interrupted run, for cells the GPU check
    wrote, after an upgrade, or to price it. The job is the one the run stored in run.json unless --job names
    another; prices given here stand over the job's."""
    parser = argparse.ArgumentParser(prog="python -m fuyu_ray.report", description=main.__doc__)
    parser.add_argument("--out", required=True, help="the run's results folder or URI (grid's --out)")
    parser.add_argument("--job", help="job file (default: the job stored in the run's run.json)")
    add_price_options(parser)
    args = parser.parse_args(argv)
    try:
        store, job, run_info = open_run(args.out, args.job)
        prices = prices_from_options(args).over(job.prices)
    except (JobError, ValueError) as exc:
        for line in str(exc).splitlines():
            print(f"fuyu_ray: {line}", file=sys.stderr)
        return 2
    store.ensure_dirs()  # only now, the run known good: the GPU check's --out has cell files but no plots/
    write_report(store, job, expand(job), run_info, prices)
    print(f"report: {store.path('summary.md')}")
    return 0


def open_run(out: str, job_file: str | None) -> tuple[ResultStore, JobSpec, dict[str, Any]]:
    """The run at --out and its job, refused (JobError) where a report would describe something else:
    a folder without cells, or a job none of whose cells are the ones on disk. Nothing is written."""
    store = ResultStore.at(out)
    done = store.done_cells()
    if not done:
        raise JobError(f"--out {out}: no cells here; give the --out of a run of python -m fuyu_ray.grid")
    run_info = store.read_json("run.json")
    if job_file is not None:
        job = load_job(job_file)
    elif run_info.get("job_text"):
        import yaml  # as load_job does: only where a job is read

        job = parse_job(yaml.safe_load(run_info["job_text"]), f"{run_info.get('job_file')} (as stored in run.json)")
    else:
        raise JobError(f"--out {out}: its run.json holds no job; name the job file with --job")
    on_disk = sum(1 for cell in expand(job).cells if cell.cell_id in done)
    if not on_disk:
        stored = run_info.get("job_name")
        raise JobError(
            f"--job {job.source_path}: none of its cells are in {out}"
            + (f", which holds cells of the job {stored!r}" if stored else "")
            + "; give the job that wrote them, or leave out --job"
        )
    if not run_info:
        run_info = {"note": "report rebuilt from cell files; no driver run recorded"}
    shown_file = job.source_path if job_file is not None else run_info.get("job_file", job.source_path)
    return store, job, {**run_info, "job_file": shown_file, "out": store.root}


if __name__ == "__main__":
    raise SystemExit(main())
