"""`python -m fuyu_ray.recommend RUN [options]`: per task, the cheapest measured configuration that meets
every constraint, the next ones, and what each constraint ruled out; `--predict` adds settings not run.

Exit 0 when every task has a recommendation, 1 when some task has none (with what came closest), 2 for
bad input (one line, nothing written).
"""

from __future__ import annotations

import argparse
import sys

import polars as pl

from fuyu_ray.driver.report import open_run
from fuyu_ray.job.cells import expand
from fuyu_ray.job.prices import add_price_options, prices_from_options
from fuyu_ray.job.spec import JobError, JobSpec, check_axis_value
from fuyu_ray.presentation.cost import with_costs
from fuyu_ray.presentation.cost_model import fit_all
from fuyu_ray.presentation.recommendation import (
    LATENCY_STATISTICS,
    RANKED_BY,
    Constraints,
    Setting,
    answer_lines,
    header_lines,
    predict,
    predicted_lines,
    recommend,
)
from fuyu_ray.tasks import TASKS

PREDICTABLE = ("device", "optimization", "batch_size", "image_size")


class BadInput(Exception):
    """One line naming what is wrong; the command writes nothing."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own is a usage block and a line; ours is the line
        raise BadInput(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="python -m fuyu_ray.recommend",
        description="Per task, the best measured configuration that meets every constraint, the next three, and "
        "what each constraint ruled out; --predict adds settings that were not run. Exit 0: every task has one; "
        "1: some task has none (the closest miss is shown); 2: bad input.",
    )
    parser.add_argument("run", metavar="RUN", help="the run's results folder or URI (grid's --out)")
    parser.add_argument("--max-latency-s", type=float, metavar="X", help="per batch; the p90 unless --latency median")
    parser.add_argument("--max-ttft-s", type=float, metavar="X", help="time to the first token")
    parser.add_argument("--latency", choices=tuple(LATENCY_STATISTICS), default="p90", help="which statistic limits")
    parser.add_argument(
        "--min-accuracy",
        action="append",
        default=[],
        metavar="TASK=Y",
        help="the floor in the report's units (percent; CIDEr as the report shows it), to be cleared by the "
        "95%% interval; repeatable",
    )
    parser.add_argument(
        "--by", choices=tuple(RANKED_BY), help="rank by (default: cost with prices, else energy, else latency)"
    )
    parser.add_argument("--task", help="one task (default: every task of the run)")
    parser.add_argument(
        "--include-disturbed",
        action="store_true",
        help="consider cells measured while something disturbed the machine (by default they are ruled out)",
    )
    parser.add_argument("--predict", metavar="K=V,...", help=f"settings not run, of {', '.join(PREDICTABLE)}")
    add_price_options(parser)
    return parser.parse_args(argv)


def floors(values: list[str], run_tasks: list[str]) -> dict[str, float]:
    parsed = {}
    for value in values:
        task, _, floor = value.partition("=")
        if task not in TASKS:
            raise BadInput(f"--min-accuracy {value}: unknown task {task!r} (known: {', '.join(TASKS)})")
        if task not in run_tasks:
            raise BadInput(f"--min-accuracy {value}: the run has no cell of {task}")
        try:
            parsed[task] = float(floor)
        except ValueError:
            raise BadInput(f"--min-accuracy {value}: give TASK=NUMBER, such as textvqa=50") from None
    return parsed


def ranking(args: argparse.Namespace, cells: pl.DataFrame) -> str:
    if args.by:
        return args.by
    if "cost_per_1k_answers" in cells.columns and cells.get_column("cost_per_1k_answers").is_not_null().any():
        return "cost"
    return "energy" if cells.get_column("energy_j_per_sample").is_not_null().any() else "latency"


def check_figures(cells: pl.DataFrame, constraints: Constraints, tasks: list[str]) -> None:
    """A constraint that names a figure this run never measured is a mistake, not a miss of every cell."""
    ok = cells.filter(pl.col("status") == "ok")

    def measured(column: str, task: str | None = None) -> bool:
        rows = ok if task is None else ok.filter(pl.col("dataset") == task)
        return column in rows.columns and rows.get_column(column).is_not_null().any()

    if constraints.max_ttft_s is not None and not measured(constraints.ttft_column):
        raise BadInput(f"--max-ttft-s: no cell of the run measured {constraints.ttft_column}")
    if constraints.by == "cost" and not measured("cost_per_1k_answers"):
        raise BadInput("--by cost: no cell has a cost; give prices (--cpu-per-hour, --cuda-per-hour, ...)")
    if constraints.by == "energy" and not measured("energy_j_per_sample"):
        raise BadInput("--by energy: no cell of the run measured energy")
    for task in constraints.min_accuracy:
        if not measured("accuracy", task):
            raise BadInput(f"--min-accuracy {task}: no cell of {task} has an accuracy (random weights?)")
    if not tasks:
        raise BadInput("the run has no ok cell to recommend")


def prediction_setting(text: str, job: JobSpec) -> Setting:
    def fail(where: str, problem: str) -> BadInput:
        return BadInput(f"--predict {where}: {problem}")

    values = {axis: getattr(job.base, axis) for axis in PREDICTABLE}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key not in PREDICTABLE:
            raise BadInput(f"--predict {part}: unknown setting {key!r} (known: {', '.join(PREDICTABLE)})")
        raw = int(value) if value.isdigit() else value  # as YAML reads a job's `image_size: 392`
        values[key] = check_axis_value(key, raw, key, fail)
    return Setting(**values)


def main(argv: list[str] | None = None) -> int:
    try:
        return recommend_run(argv)
    except (BadInput, JobError, ValueError) as exc:
        print(f"fuyu_ray: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


def recommend_run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    store, job, _ = open_run(args.run, None)
    prices = prices_from_options(args).over(job.prices)
    ids = [cell.cell_id for cell in expand(job).cells]
    cells = with_costs(pl.from_arrow(store.read_cells(ids)), prices)
    run_tasks = cells.filter(pl.col("status") == "ok").get_column("dataset").unique(maintain_order=True).to_list()
    if args.task is not None:
        if args.task not in TASKS:
            raise BadInput(f"--task {args.task}: unknown task (known: {', '.join(TASKS)})")
        if args.task not in run_tasks:
            raise BadInput(f"--task {args.task}: the run has no ok cell of it (it has: {', '.join(run_tasks)})")
    tasks = [args.task] if args.task else run_tasks
    constraints = Constraints(
        max_latency_s=positive(args.max_latency_s, "--max-latency-s"),
        max_ttft_s=positive(args.max_ttft_s, "--max-ttft-s"),
        min_accuracy=floors(args.min_accuracy, run_tasks),
        latency=args.latency,
        by=ranking(args, cells),
        include_disturbed=args.include_disturbed,
    )
    check_figures(cells, constraints, tasks)
    setting = prediction_setting(args.predict, job) if args.predict else None
    answers = [recommend(cells, task, constraints) for task in tasks]
    lines = header_lines(args.run, constraints, prices)
    for answer in answers:
        lines += answer_lines(answer, constraints)
    if setting is not None:
        fits = fit_all(cells)
        lines += predicted_lines([predict(cells, fits, t, setting, prices) for t in tasks], setting, constraints)
    text = "\n".join(lines)
    print(text)
    store.write_bytes("recommend.md", text.encode())
    print(f"recommendation: {store.path('recommend.md')}")
    return 0 if all(answer.found for answer in answers) else 1


def positive(value: float | None, option: str) -> float | None:
    if value is not None and not value > 0:
        raise BadInput(f"{option}: must be a positive number of seconds, got {value:g}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
