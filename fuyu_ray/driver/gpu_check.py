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
import gc
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fuyu_ray.bench.data import load_samples
from fuyu_ray.bench.prompts import TaskSettings, build_prompt
from fuyu_ray.bench.records import cell_batch, outcome_row, sample_table
from fuyu_ray.driver.store import ResultStore
from fuyu_ray.job.cells import Cell, expand
from fuyu_ray.job.presets import PRESETS
from fuyu_ray.job.spec import JobError, image_dims, parse_job

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "jobs" / "gpu-check.json"
TARGET_DATASET = "textvqa"  # the task the targets below are measured on, as jobs/gpu-check.json runs it
COLUMNS = (
    ("optimization", "preset"),
    ("batch_size", "batch"),
    ("image", "image"),
    ("dataset", "dataset"),
    ("seq_len", "seq_len"),
    ("status", "status"),
    ("latency_s", "latency s"),
    ("ttft_s", "TTFT s"),
    ("prefill_compute_s", "prefill compute s"),
    ("decode_s_per_token", "decode s/tok"),
    ("energy_j_per_sample", "J/sample"),
    ("decode_roofline_ratio", "decode/limit"),
    ("prefill_roofline_ratio", "prefill/limit"),
    ("compile_s", "compile s"),
    ("recompiles", "recompiles"),
    ("first_token_top1_match", "top-1 vs stock"),
    ("first_token_max_logit_diff", "max logit diff"),
    ("attention", "attention"),
    ("error", "why not run"),
)

# The time budget (README, "On one GPU, without Ray", has the arithmetic for fuyu-8b on an H200).
# The whole check must end within 8 minutes: 450 s for the cells and model loads, counted from the
# start of `main`, leaves 30 s for the interpreter, the imports before it and the process's exit.
DEFAULT_BUDGET_S = 450.0
LOAD_S = 20.0  # a full-size model with random weights, plus three 1-s idle-power windows
STOCK_CELL = (12.0, 60.0)  # (expected, deadline) seconds of a cell on a stock path
COMPILED_CELL = (100.0, 150.0)  # a cell that compiles its shape: 40-90 s of compiles, then the timed batches

# The GPU check's targets, at 10 generated tokens on textvqa.
TARGET_B1_LATENCY_S = 0.066  # batch 1, image 224: latency of one batch
TARGET_B16_J_PER_SAMPLE = 3.0  # batch 16, image 224: energy per sample
TARGET_B16_PREFILL_RATIO = 0.70  # batch 16, image 224: prefill compute against the measured matrix rate
TARGET_HD_TTFT_S = 0.100  # batch 1, image 1920x1080 (2,340 image tokens): time to first token
HD_IMAGE = (1920, 1080)


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
    """Sweeps in the job's order; within a sweep, one variant's cells together (so that few
    models are loaded at once); a cell two sweeps share runs once, where it first appears."""
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
    return order


@dataclass
class Budget:
    """Seconds left of the check's budget, and each cell's deadline within it."""

    started: float
    seconds: float | None  # None: no limit
    clock: object = time.perf_counter

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


def cell_times(cell: Cell) -> tuple[float, float]:
    """(expected, allowance) seconds for a cell."""
    return COMPILED_CELL if PRESETS[cell.point.optimization].compiled else STOCK_CELL


def image_label(value) -> str:
    width, height = image_dims(value)
    return str(width) if width == height else f"{width}x{height}"


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
    job, out: str, log=print, budget_s: float | None = DEFAULT_BUDGET_S, started: float | None = None
) -> list[dict]:
    """Every cell of the job, in the order of value, within the budget; returns the records' rows.

    `started` is when the budget began (default: now); `main` passes its own start.
    """
    budget = Budget(time.perf_counter() if started is None else started, budget_s)
    store = ResultStore.at(out)
    store.ensure_dirs()
    notes = [measured_peaks_line(job, log)]
    cells = ordered_cells(job)
    uses_left = Counter(cell.variant for cell in cells)
    runners: dict = {}  # variant -> (runner or None, why not)
    measured: dict[tuple, dict] = {}  # workload -> the ok row that measured it
    rows: list[dict] = []
    for cell in cells:
        variant = cell.variant
        expected_s, allowance_s = cell_times(cell)
        if variant not in runners:
            refusal = budget.refusal(f"loading {variant.label} and its first cell", LOAD_S + expected_s)
            runners[variant] = (None, refusal) if refusal else _load(variant, job, log)
        runner, why_not = runners[variant]
        record = samples = None
        if runner is None:
            status = "skipped" if why_not.startswith("not started") else "failed"
            record = cell_batch(outcome_row(cell.settings(), status, why_not))
        else:
            key = workload_key(cell, runner.loaded) if runner.loaded is not None else None
            same = measured.get(key) if key is not None else None
            refusal = budget.refusal("this cell", expected_s)
            if same is not None:
                reason = (
                    f"same workload as cell {same['cell_id']} (seq_len {same['seq_len']}): no prompt is longer than "
                    f"seq_len {cell.point.seq_len}, so nothing is cut; that cell's figures apply"
                )
                record = cell_batch(outcome_row(cell.settings(), "skipped", reason))
            elif refusal:
                record = cell_batch(outcome_row(cell.settings(), "skipped", refusal))
            else:
                result = runner.run(cell, deadline=budget.deadline(allowance_s))
                record, samples = result.record, result.samples
        row = record.to_pylist()[0]
        if row["status"] == "ok" and runner is not None and runner.loaded is not None:
            measured.setdefault(key, row)
        store.write_cell(record, samples if samples is not None else sample_table([]))
        rows.append(row)
        log(
            f"  {cell.point.optimization} {cell.point.dataset} batch={cell.point.batch_size} "
            f"image={image_label(cell.point.image_size)} "
            f"seq_len={cell.point.seq_len}: {row['status']} latency={_fmt(row['latency_s'])}s "
            f"ttft={_fmt(row['ttft_s'])}s "
            f"{row['error'] or ''}"
        )
        uses_left[variant] -= 1
        if uses_left[variant] == 0:
            runner = None  # the last reference but the table's
            _release(runners, variant)
        # After every cell, so that a run stopped from outside still leaves a summary of what it measured.
        wall = f"Wall time so far: {time.perf_counter() - budget.started:.0f} s (budget {_fmt(budget_s)} s)."
        store.write_bytes("summary.md", summary(job, rows, notes + [wall]).encode())
    return rows


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
    from fuyu_ray.bench.runner import CellRunner  # torch, once the job is known good

    started = time.perf_counter()
    try:
        runner = CellRunner(variant, min_energy_window_s=job.min_energy_window_s, context={"actor": "gpu_check"})
    except Exception as exc:
        load_error = f"model load failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        log(f"{variant.label}: {load_error}")
        return None, load_error
    skipped = f" ({runner.load_outcome[0]}: {runner.load_outcome[1]})" if runner.load_outcome else ""
    log(f"{variant.label}: loaded in {time.perf_counter() - started:.1f}s{skipped}")
    return runner, None


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    text = str(value).replace("|", "/")
    return text if len(text) <= 90 else text[:87] + "..."


def _image(row: dict) -> tuple[int, int]:
    return row.get("image_width") or row["image_size"], row.get("image_height") or row["image_size"]


def summary(job, rows: list[dict], notes: list[str]) -> str:
    first = next((r for r in rows if r["status"] == "ok"), {})
    lines = [
        f"# {job.name}: {first.get('model_label', job.model)}",
        "",
        f"GPU: {first.get('gpu_name')} (driver {first.get('driver_version')}), torch threads "
        f"{first.get('torch_threads')}; "
        "fp16 = stock transformers generate (dynamic cache, SDPA), the baseline of this run. "
        "TTFT is the time to the first token, host set-up included; prefill compute is the first forward alone.",
        "",
        *notes,
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in rows:  # in the order they ran: the order of value
        width, height = _image(row)
        shown = {**row, "image": str(width) if width == height else f"{width}x{height}"}
        lines.append("| " + " | ".join(_fmt(shown.get(key)) for key, _ in COLUMNS) + " |")
    lines += ["", *speedups(rows), "", *targets(rows, on_gpu=bool(first.get("gpu_name")))]
    return "\n".join(lines) + "\n"


def speedups(rows: list[dict]) -> list[str]:
    """Each preset against the stock baseline at the targets' points."""
    lines = []
    for batch, image in ((1, (224, 224)), (16, (224, 224)), (1, HD_IMAGE)):
        at = {r["optimization"]: r for r in rows if _at_point(r, batch, image)}
        stock = at.get("fp16")
        if not stock:
            continue
        label = "x".join(map(str, image)) if image[0] != image[1] else str(image[0])
        for name, row in sorted(at.items()):
            lines.append(
                f"- batch {batch}, image {label}, {name}: {row['latency_s'] * 1000:.1f} ms "
                f"({stock['latency_s'] / row['latency_s']:.2f}x stock), "
                f"TTFT {_ms(row['ttft_s'])}, prefill compute {_ms(row['prefill_compute_s'])}, "
                f"J/sample {_fmt(row['energy_j_per_sample'])}, prefill/limit {_fmt(row['prefill_roofline_ratio'])}, "
                f"decode/limit {_fmt(row['decode_roofline_ratio'])}"
            )
    return lines


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _at_point(row: dict, batch: int, image: tuple[int, int]) -> bool:
    return (
        row["status"] == "ok"
        and row["dataset"] == TARGET_DATASET
        and _image(row) == image
        and row["seq_len"] == 200
        and row["batch_size"] == batch
    )


def targets(rows: list[dict], on_gpu: bool = True) -> list[str]:
    """The GPU check's targets, read off this run: the best preset at each point, against its target.

    On a CPU try-out the figures are shown but not judged: a tiny model would only "meet" them by being tiny.
    """

    def best(batch: int, image, key: str, pick):
        candidates = [r for r in rows if _at_point(r, batch, image) and r.get(key) is not None]
        return pick(candidates, key=lambda r: r[key]) if candidates else None

    def verdict(met: bool) -> str:
        return ("met" if met else "missed") if on_gpu else "not judged (no GPU)"

    square = (224, 224)
    lines = [f"Targets ({TARGET_DATASET}, 10 generated tokens):"]
    fastest = best(1, square, "latency_s", min)
    if fastest:
        ms = fastest["latency_s"] * 1000
        lines.append(
            f"- batch 1, image 224, latency: {ms:.1f} ms ({fastest['optimization']}); "
            f"target <= {TARGET_B1_LATENCY_S * 1000:.0f} ms: {verdict(ms <= TARGET_B1_LATENCY_S * 1000)}"
        )
    frugal = best(16, square, "energy_j_per_sample", min)
    if frugal:
        joules = frugal["energy_j_per_sample"]
        lines.append(
            f"- batch 16, image 224, energy: {joules:.2f} J/sample ({frugal['optimization']}); "
            f"target <= {TARGET_B16_J_PER_SAMPLE:.1f}: {verdict(joules <= TARGET_B16_J_PER_SAMPLE)}"
        )
    prefill = best(16, square, "prefill_roofline_ratio", max)
    if prefill:
        ratio = prefill["prefill_roofline_ratio"]
        lines.append(
            f"- batch 16, image 224, prefill compute: {ratio:.0%} of the matrix rate ({prefill['optimization']}); "
            f"target >= {TARGET_B16_PREFILL_RATIO:.0%}: {verdict(ratio >= TARGET_B16_PREFILL_RATIO)}"
        )
    hd = {r["optimization"]: r for r in rows if _at_point(r, 1, HD_IMAGE) and r.get("ttft_s") is not None}
    quickest = min(hd.values(), key=lambda r: r["ttft_s"]) if hd else None
    if quickest:
        ms = quickest["ttft_s"] * 1000
        each = ", ".join(f"{name} {row['ttft_s'] * 1000:.1f} ms" for name, row in sorted(hd.items()))
        lines.append(
            f"- batch 1, image 1920x1080 (2,340 image tokens), time to first token: {ms:.1f} ms "
            f"({quickest['optimization']}; {each}); target <= {TARGET_HD_TTFT_S * 1000:.0f} ms: "
            f"{verdict(ms <= TARGET_HD_TTFT_S * 1000)}"
        )
    agreement = [r for r in rows if r["status"] == "ok" and r.get("first_token_top1_match") is not None]
    for row in agreement:
        width, height = _image(row)
        image = str(width) if width == height else f"{width}x{height}"
        lines.append(
            f"- first-token agreement, {row['optimization']} vs stock generate, batch {row['batch_size']}, image "
            f"{image}: "
            f"top-1 match {row['first_token_top1_match']:.0%}, largest logit difference "
            f"{row['first_token_max_logit_diff']:.3g}"
        )
    return lines if len(lines) > 1 else []


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="python -m fuyu_ray.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=DEFAULT_JOB)
    parser.add_argument("--out", default="results/gpu-check")
    parser.add_argument("--model", help="override the job's model (e.g. tiny, to try the script on a CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="override the job's device")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="seconds for all cells and model loads, from the start (default %(default)s; 0: no limit); "
        "a cell starts only if what is left covers it, and stops at its own deadline",
    )
    args = parser.parse_args(argv)
    hub_environment()
    try:
        job = load_plain_job(args.job, args.model, args.device)
    except JobError as exc:
        for line in exc.lines:
            print(f"fuyu_ray: {line}", file=sys.stderr)
        return 2
    rows = run(job, args.out, budget_s=args.budget_s or None, started=started)
    print(f"{len(rows)} cells in {time.perf_counter() - started:.0f}s; summary: {args.out}/summary.md")
    # A cell stopped at its deadline is the budget at work, not a fault: its record says where it stopped.
    return 0 if all(r["status"] in ("ok", "skipped", "timeout") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
