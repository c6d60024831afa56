"""The GPU check: the targets' cells, then the seed's grid, on one GPU, in-process, with no Ray, Polars or datasets.

`python -m fuyu_ray.gpu_check` runs jobs/gpu-check.json (full-size fuyu-8b architecture,
random weights, synthetic data, 10 generated tokens) through the same CellRunner the Ray
actors use, writes each cell's parquet as it finishes, and a plain summary. The `fp16` rows
are stock transformers (`generate`, dynamic cache, SDPA): the baseline every other preset is
measured against in the same run. The full Polars report can be made anywhere later:
`python -m fuyu_ray.report --job jobs/gpu-check.json --out DIR`.

Cells run in the order of value: the job's sweeps in file order (the targets' points first),
and within a sweep, one model variant's cells together. Each cell starts only if what is
left of the time budget covers what it is expected to take, and gets a deadline of its own,
past which it stops with a timeout record. A cell whose workload repeats one already measured
(a seq_len that cuts no prompt) is recorded as skipped, naming the cell whose figures apply.
The README's "On one GPU, without Ray" section gives the budget's arithmetic.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fuyu_ray.bench.data import load_samples
from fuyu_ray.bench.prompts import TaskSettings, build_prompt
from fuyu_ray.driver.gpu_check_output import OUTPUT_FILES, CheckOutput
from fuyu_ray.job.cells import Cell, expand
from fuyu_ray.job.presets import PRESETS
from fuyu_ray.job.spec import ImageSize, JobError, parse_job
from fuyu_ray.presentation.formats import fmt_cell
from fuyu_ray.presentation.gpu_check_summary import (
    ENERGY_TARGET_WINDOW_S,
    at_point,
    is_target_cell,
    summary,
    target_lines,
)
from fuyu_ray.storage.records import cell_batch, error_line, outcome_row, sample_table

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "gpu-check.json"


TARGET_SWEEP = "target_"  # the prefix of the sweeps that hold the targets' points in jobs/gpu-check.json


# The time budget (README, "On one GPU, without Ray", has the arithmetic for fuyu-8b on an H200).
# The whole check must end within 8 minutes: 450 s for the cells and model loads, counted from the
# start of `main`, leaves 30 s for the interpreter, the imports before it and the process's exit.
DEFAULT_BUDGET_S = 450.0


LOAD_S = 20.0  # a full-size model with random weights, plus three 1-s idle-power windows


STOCK_CELL = (12.0, 60.0)  # (expected, deadline) seconds of a cell on a stock path


COMPILED_CELL = (100.0, 150.0)  # a cell that compiles its shape: 40-90 s of compiles, then the timed batches


REHEARSAL_BUDGET_S = 60.0


REHEARSAL_MODEL = "standin:sleep=0.05,batches=3,compile_s={compile_s:g}"


WATCHDOG_MARGIN_S = 60.0  # past the budget, the watchdog ends a check that overran with every thread's traceback


def hub_environment(environ=os.environ) -> None:
    """The GPU check needs nothing from the hub (random weights, synthetic data), so it runs
    offline unless the environment says otherwise: no look-up waits on a network."""
    environ.setdefault("HF_HUB_OFFLINE", "1")


def load_plain_job(path: Path, model: str | None, device: str | None):
    """JSON is YAML too: the same file feeds `python -m fuyu_ray.grid`, and needs no PyYAML here."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise JobError(f"{path}: {exc}") from None
    if model:
        raw["model"] = model
    if device:
        raw["base"]["device"] = device
    return parse_job(raw, str(path))


def ordered_cells(job) -> list[Cell]:
    """The targets' stock cells first (they are the baseline, and a compile may take minutes), then the
    targets' compiled cells, then the other sweeps in the job's order; within a sweep, one variant's
    cells together (so that few models are loaded at once); a cell two sweeps share runs once, where it
    first appears."""
    grid = expand(job)
    by_id = {cell.cell_id: cell for cell in grid.cells}
    order: list[Cell] = []
    seen: set[str] = set()
    for ids in grid.sections.values():
        groups: dict = {}
        for cell_id in ids:
            if cell_id not in seen:
                seen.add(cell_id)
                groups.setdefault(by_id[cell_id].variant, []).append(by_id[cell_id])
        for cells in groups.values():
            order.extend(cells)
    targets = [c for c in order if c.cell_id in target_ids(grid)]
    stock = [c for c in targets if not PRESETS[c.point.optimization].compiled]
    compiled = [c for c in targets if PRESETS[c.point.optimization].compiled]
    return stock + compiled + [c for c in order if c.cell_id not in target_ids(grid)]


def target_ids(grid) -> set[str]:
    return {cell_id for name, ids in grid.sections.items() if name.startswith(TARGET_SWEEP) for cell_id in ids}


@dataclass
class Budget:
    """Seconds left of the check's budget, and each cell's deadline within it. Its times for a cell are
    the README's for fuyu-8b, scaled with the budget (a rehearsal's 60 s is a whole check in small), and
    raised to the longest a cell of that kind has taken so far: a compile that took 150 s once will again."""

    started: float
    seconds: float | None  # None: no limit
    clock: object = time.perf_counter
    scale: float = 1.0
    longest: dict = field(default_factory=dict)  # compiled or not -> the longest such cell so far, in seconds

    def scaled(self, seconds: float) -> float:
        return seconds * self.scale

    def cell_times(self, cell: Cell) -> tuple[float, float]:
        """(expected, allowance) seconds for a cell."""
        compiled = PRESETS[cell.point.optimization].compiled
        expected, allowance = (self.scaled(t) for t in (COMPILED_CELL if compiled else STOCK_CELL))
        return max(expected, self.longest.get(compiled, 0.0)), allowance

    def learn(self, cell: Cell, seconds: float) -> None:
        compiled = PRESETS[cell.point.optimization].compiled
        self.longest[compiled] = max(self.longest.get(compiled, 0.0), seconds)

    def end(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    def left(self) -> float:
        return float("inf") if self.seconds is None else self.started + self.seconds - self.clock()

    def refusal(self, what: str, needs_s: float) -> str | None:
        """Why `what` must not start, or None when the budget covers what it is expected to take."""
        left = self.left()
        if left >= needs_s:
            return None
        return (
            f"not started: {what} needs about {needs_s:.0f} s and {max(left, 0.0):.0f} s were left "
            f"of the GPU check's {self.seconds:.0f} s budget"
        )

    def deadline(self, allowance_s: float) -> float | None:
        if self.seconds is None:
            return None
        return min(self.clock() + allowance_s, self.started + self.seconds)


def workload_key(cell: Cell, loaded) -> tuple:
    """What a cell measures beyond its settings' names: the exact prompts its seq_len leaves."""
    point = cell.point
    settings = TaskSettings.for_task(point.dataset, cell.task_override)
    data = load_samples(point.dataset, cell.source, cell.limit)
    prompts = tuple(build_prompt(settings, s, point.seq_len, loaded.count_text_tokens).text for s in data.samples)
    return (cell.variant, point.dataset, cell.source, point.batch_size, point.image_size, cell.limit, settings, prompts)


def measured_peaks_line(job, log=print) -> str:
    """Measure the chip's real matrix rate and copy bandwidth, and make them the roofline's limits."""
    import torch  # torch loads once the job is known good: bad input answers at once

    from fuyu_ray.bench import hardware  # torch, once the job is known good

    if job.base.device != "cuda" or not torch.cuda.is_available():
        return "Roofline limits: none (no CUDA device)."
    already = hardware.peak_overrides_in(os.environ)
    if already:
        return (
            f"Roofline limits: as set in {', '.join(f'{k}={v}' for k, v in already.items())} (datasheet for the rest)."
        )
    try:
        peak = hardware.measure_peaks("cuda")
    except Exception as exc:  # the cells still run, judged against the datasheet
        line = f"Roofline limits: datasheet (measuring the chip failed: {type(exc).__name__}: {exc})."
    else:
        os.environ.update(hardware.peak_overrides(peak))
        line = (
            f"Roofline limits measured in this run: fp16 matrix rate {peak.fp16_tflops:.0f} TFLOP/s "
            f"(8192^3 products), copy bandwidth {peak.bandwidth_gbps:.0f} GB/s (2 GiB, read + written)."
        )
    torch.cuda.empty_cache()
    log(line)
    return line


def run(
    job,
    out: str,
    log=None,
    budget_s: float | None = DEFAULT_BUDGET_S,
    budget: Budget | None = None,
    mode: str = "judge",
    output: CheckOutput | None = None,
) -> list[dict]:
    """Every cell of the job, in the order of value, within the budget (`budget`, or `budget_s` from now);
    returns the records' rows. `mode` is what the target lines say instead of a verdict off a GPU
    ("not judged (no GPU)", "rehearsal")."""
    budget = budget or Budget(time.perf_counter(), budget_s)
    budget_s = budget.seconds
    output = output or CheckOutput(out)
    log = log or output.log
    notes = [measured_peaks_line(job, log)]
    cells = ordered_cells(job)
    uses_left = Counter(cell.variant for cell in cells)
    runners: dict = {}  # variant -> (runner or None, why not)
    measured: dict[tuple, dict] = {}  # workload -> the ok row that measured it
    rows: list[dict] = output.rows
    for cell in cells:
        record, samples = run_one(cell, job, budget, runners, measured, log)
        row = record.to_pylist()[0]
        output.add(record, samples if samples is not None else sample_table([]))
        rows.append(row)
        log(
            f"  {cell.point.optimization} {cell.point.dataset} batch={cell.point.batch_size} "
            f"image={cell.point.image_size.label} "
            f"seq_len={cell.point.seq_len}: {row['status']} latency {fmt_cell(row['latency_s'])} s "
            f"ttft {fmt_cell(row['ttft_s'])} s "
            f"{row['error'] or row.get('deadline_passed_at') or ''}"
        )
        uses_left[cell.variant] -= 1
        if uses_left[cell.variant] == 0:
            _release(runners, cell.variant)
        if is_target_cell(cell.point):
            for line in target_lines(rows, mode):
                log(line)
        # After every cell, so that a run stopped from outside still leaves what it measured.
        wall = f"Wall time so far: {time.perf_counter() - budget.started:.0f} s (budget {fmt_cell(budget_s)} s)."
        output.write(summary(job, rows, notes + [wall], mode))
    return rows


def run_one(cell: Cell, job, budget: Budget, runners: dict, measured: dict, log):
    """One cell's (record, samples): its model loaded if need be, refused where the budget cannot cover it,
    skipped where an earlier cell measured the same workload."""
    variant = cell.variant
    expected_s, allowance_s = budget.cell_times(cell)
    if variant not in runners:
        refusal = budget.refusal(f"loading {variant.label} and its first cell", budget.scaled(LOAD_S) + expected_s)
        runners[variant] = (None, refusal) if refusal else _load(variant, job, log)
    runner, why_not = runners[variant]
    if runner is None:
        status = "skipped" if why_not.startswith("not started") else "failed"
        return cell_batch(outcome_row(cell.settings(), status, why_not)), None
    key = workload_key(cell, runner.loaded) if runner.loaded is not None else None
    same = measured.get(key) if key is not None else None
    if same is not None:
        reason = (
            f"same workload as cell {same['cell_id']} (seq_len {same['seq_len']}): no prompt is longer than "
            f"seq_len {cell.point.seq_len}, so nothing is cut; that cell's figures apply"
        )
        return cell_batch(outcome_row(cell.settings(), "skipped", reason)), None
    refusal = budget.refusal("this cell", expected_s)
    if refusal:
        return cell_batch(outcome_row(cell.settings(), "skipped", refusal)), None
    began = budget.clock()  # the budget's own clock: what it learns is in its time
    result = runner.run(
        cell,
        deadline=budget.deadline(allowance_s),
        hard_deadline=budget.end(),
        min_energy_window_s=ENERGY_TARGET_WINDOW_S if is_target_cell(cell.point) else None,
    )
    budget.learn(cell, budget.clock() - began)
    row = result.record.to_pylist()[0]
    if row["status"] == "ok" and runner.loaded is not None:
        measured.setdefault(key, row)
    return result.record, result.samples


def _release(runners: dict, variant) -> None:
    """Free a variant's model once none of its cells is left: at most a couple stay loaded."""
    import torch  # torch loads once the job is known good: bad input answers at once

    runner, _ = runners[variant]
    if runner is not None:
        runner.close()
    runners[variant] = (None, "released")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load(variant, job, log):
    """(runner, None), or (None, why) for a variant whose model cannot load: the others still run."""
    from fuyu_ray.bench.standin import runner_class  # torch, once the job is known good

    started = time.perf_counter()
    try:
        runner = runner_class(variant.model)(
            variant, min_energy_window_s=job.min_energy_window_s, context={"actor": "gpu_check"}
        )
    except Exception as exc:
        load_error = f"model load failed: {error_line(exc)}"
        log(f"{variant.label}: {load_error}")
        return None, load_error
    skipped = f" ({runner.load_outcome[0]}: {runner.load_outcome[1]})" if runner.load_outcome else ""
    log(f"{variant.label}: loaded in {time.perf_counter() - started:.1f}s{skipped}")
    return runner, None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fuyu_ray.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=DEFAULT_JOB)
    parser.add_argument("--out", default="results/gpu-check", help="at most five files, none in a subfolder")
    parser.add_argument("--model", help="override the job's model (e.g. tiny, to try the script on a CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="override the job's device")
    parser.add_argument(
        "--budget-s",
        type=float,
        help=f"seconds for all cells and model loads, from the start (default {DEFAULT_BUDGET_S:g}, "
        f"{REHEARSAL_BUDGET_S:g} in a rehearsal; 0: no limit); a cell starts only if what is left covers it, "
        "and stops at its own deadline",
    )
    parser.add_argument(
        "--watchdog-s",
        type=float,
        help=f"end the process with every thread's traceback after this many seconds, having written what was "
        f"measured (default: the budget + {WATCHDOG_MARGIN_S:g} s)",
    )
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="the same plan on CPU with the stand-in model in a compressed budget: proves the order, the "
        "deadlines, the files and the target lines without a GPU",
    )
    parser.add_argument(
        "--simulated-compile-s",
        type=float,
        default=1.0,
        help="in a rehearsal, how long each compiled preset's warm-up takes (default %(default)g)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    hub_environment()
    budget_s = args.budget_s if args.budget_s is not None else REHEARSAL_BUDGET_S if args.rehearse else DEFAULT_BUDGET_S
    model = REHEARSAL_MODEL.format(compile_s=args.simulated_compile_s) if args.rehearse else args.model
    try:
        job = load_plain_job(args.job, model, "cpu" if args.rehearse else args.device)
    except JobError as exc:
        for line in exc.lines:
            print(f"fuyu_ray: {line}", file=sys.stderr)
        return 2
    mode = "rehearsal" if args.rehearse else "judge" if job.base.device == "cuda" else "not judged (no GPU)"
    output = CheckOutput(args.out)
    budget = Budget(started, budget_s or None, scale=(budget_s or DEFAULT_BUDGET_S) / DEFAULT_BUDGET_S)
    watchdog = Watchdog(args.watchdog_s or (budget_s or DEFAULT_BUDGET_S) + WATCHDOG_MARGIN_S, output, job, mode)
    watchdog.start()
    try:
        rows = run(job, args.out, budget=budget, mode=mode, output=output)
    finally:
        watchdog.cancel()
    for line in target_lines(rows, mode):
        output.log(line)
    wall_s = time.perf_counter() - started
    output.log(f"{len(rows)} cells in {wall_s:.0f}s; summary: {args.out}/summary.md")
    problems = rehearsal_problems(rows, args.out, wall_s, budget_s) if args.rehearse else []
    for problem in problems:
        output.log(f"rehearsal: {problem}")
    output.close()
    # A cell stopped at its deadline is the budget at work, not a fault: its record says where it stopped.
    return 0 if not problems and all(r["status"] in ("ok", "skipped", "timeout") for r in rows) else 1


def rehearsal_problems(rows: list[dict], out: str, wall_s: float, budget_s: float) -> list[str]:
    """What the rehearsal proves of the mechanics: the order, the budget, and files that would come back."""
    problems = []
    ran = [r for r in rows if r["status"] != "skipped"]
    if not ran or not all(at_point(r, r["batch_size"], ImageSize.of_record(r)) for r in rows[:3]):
        problems.append("the stock target cells did not run first")
    if budget_s and wall_s > budget_s + REHEARSAL_OVERRUN_S:
        problems.append(f"ran {wall_s:.0f} s, past the budget of {budget_s:g} s by more than {REHEARSAL_OVERRUN_S:g}")
    left = sorted(os.listdir(out))
    if len(left) > 8 or any(os.path.isdir(os.path.join(out, name)) for name in left):
        problems.append(f"{out} holds {left}: more than 8 files, or a folder")
    missing = [name for name in OUTPUT_FILES if name not in left]
    if missing:
        problems.append(f"{out} lacks {', '.join(missing)}")
    return problems


class Watchdog:
    """Ends a check that overran its budget: writes what was measured, prints every thread's traceback,
    exits with status 3. A thread does it, so Python code still runs; faulthandler's own timer, a little
    later, ends the process even if no Python code can run any more (a hang inside a kernel call)."""

    def __init__(self, seconds: float, output: CheckOutput, job, mode: str):
        self.seconds, self.output, self.job, self.mode = seconds, output, job, mode
        self.timer = threading.Timer(seconds, self.fire)
        self.timer.daemon = True

    def start(self) -> None:
        faulthandler.dump_traceback_later(self.seconds + WATCHDOG_BACKSTOP_S, exit=True)
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()
        faulthandler.cancel_dump_traceback_later()

    def fire(self) -> None:
        output = self.output
        output.log(f"watchdog: the check ran {self.seconds:g} s; writing what was measured, then exiting")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        faulthandler.dump_traceback(file=output.log_file, all_threads=True)
        try:
            note = f"Stopped by the watchdog after {self.seconds:g} s; the cell that was running is not here."
            output.write(summary(self.job, output.rows, [note], self.mode))
            for line in target_lines(output.rows, self.mode):
                output.log(line)
        finally:
            output.close()
            os._exit(3)


REHEARSAL_OVERRUN_S = 10.0


WATCHDOG_BACKSTOP_S = 30.0


if __name__ == "__main__":
    sys.exit(main())
