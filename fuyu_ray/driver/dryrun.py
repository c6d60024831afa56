"""`python -m fuyu_ray.grid --dry-run`: what a job will do, told before it runs.

It lists the cells: which would run, which a rerun reuses from --out, which would be skipped and
why. On a worker of each kind the job needs, it checks that the model and datasets resolve
there. It loads no model and writes nothing. Exit 0 when every source was checked on a worker of
each kind that needs it and resolves; 2 when one does not resolve (a line each); 3 when a kind the
job needs has no worker in this cluster, so its sources went unchecked (a line each).
"""

from __future__ import annotations

import sys

import ray

from fuyu_ray.driver.execute import actor_demand, skip_reason
from fuyu_ray.driver.sources import SourceCheck, check_sources
from fuyu_ray.job.cells import Grid, Variant
from fuyu_ray.job.spec import JobSpec, is_built_in

CHECK_TIMEOUT_S = 300.0  # a worker of a kind may first have to start, on a cold node


def checker_options(variant: Variant) -> dict:
    """A sliver of what the variant's actor asks for: the check lands on a worker where its cells
    would run (a GPU node, a bench node where the cluster marks them), without waiting for a whole one."""
    demand = actor_demand(variant, cpus_per_actor=None)
    custom = {key: 0.001 for key in demand if key not in ("CPU", "GPU")}
    return {"num_cpus": 0 if "GPU" in demand else 0.01, "num_gpus": 0.01 if "GPU" in demand else 0, "resources": custom}


def check_on_workers(job: JobSpec, grid: Grid, variants: list[Variant]) -> dict[str, list[SourceCheck]]:
    """One check per device kind, on a worker of that kind."""
    datasets = {task: job.dataset_source(task) for task in {cell.point.dataset for cell in grid.cells}}
    remote = ray.remote(check_sources)
    one_per_device = {variant.device: variant for variant in variants}
    pending = {
        device: remote.options(**checker_options(variant)).remote(job.model, job.weights, datasets)
        for device, variant in sorted(one_per_device.items())
    }
    return {device: ray.get(ref, timeout=CHECK_TIMEOUT_S) for device, ref in pending.items()}


def dry_run(job: JobSpec, grid: Grid, done: dict[str, str], todo_ids: set[str], out: str) -> int:
    """Print the plan; the caller has connected to Ray."""
    reasons = {variant: skip_reason(variant, job.cpus_per_actor) for variant in grid.by_variant()}
    counts = {"run": 0, "reuse": 0, "skip": 0}
    print(f"dry run of {job.name} ({job.source_path}): {len(grid.cells)} cells; results would go to {out}")
    for cell in grid.cells:
        reason = reasons[cell.variant]
        if reason:
            verdict = f"skip: {reason}"
            counts["skip"] += 1
        elif cell.cell_id in todo_ids:
            verdict = "run" + (f" again (was {done[cell.cell_id]})" if cell.cell_id in done else "")
            counts["run"] += 1
        else:
            verdict = f"reuse ({done[cell.cell_id]} in --out)"
            counts["reuse"] += 1
        print(f"  {cell.cell_id} {cell.description}: {verdict}")
    print(f"{counts['run']} would run, {counts['reuse']} reused from --out, {counts['skip']} skipped")

    runnable = [variant for variant, reason in reasons.items() if not reason]
    problems = []
    for device, checks in check_on_workers(job, grid, runnable).items():
        for check in checks:
            if check.problem:  # said once, on stderr
                problems.append(f"on a {device} worker: {check.line}")
            else:
                print(f"  on a {device} worker: {check.line}")
    unchecked = unchecked_sources(job, grid, reasons, {variant.device for variant in runnable})
    for line in problems + unchecked:
        print(f"fuyu_ray: {line}", file=sys.stderr)
    return 2 if problems else 3 if unchecked else 0


def unchecked_sources(job: JobSpec, grid: Grid, reasons: dict[Variant, str | None], checked: set[str]) -> list[str]:
    """A line per source that no worker of a kind the job needs could check: that kind has no worker here.
    Built-in sources ship with the package and need none."""
    missing = sorted({variant.device for variant in reasons} - checked)
    sources = [("model", job.model)] if not is_built_in(job.model) else []
    sources += [
        (f"dataset {task}", job.dataset_source(task).source)
        for task in sorted({cell.point.dataset for cell in grid.cells})
        if job.dataset_source(task).source != "synthetic"
    ]
    return [
        f"unchecked on a {device} worker: {kind} {source!r}: "
        f"{next(r for v, r in reasons.items() if v.device == device)}"
        for device in missing
        for kind, source in sources
    ]
