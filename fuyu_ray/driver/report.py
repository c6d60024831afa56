"""Report: Polars aggregates the cell files into cells.parquet, samples.parquet, summary.md and plots.

Only cells that belong to the current job are reported, so an --out directory reused with
an edited job file never shows stale cells.
"""

from __future__ import annotations

import argparse
import io
import sys
from typing import Any

import numpy as np
import polars as pl

from fuyu_ray.bench.records import PROBLEM_STATUSES
from fuyu_ray.driver.store import ResultStore
from fuyu_ray.driver.units import accuracy_axis, accuracy_scale, accuracy_text, counted
from fuyu_ray.job.cells import Grid, expand
from fuyu_ray.job.presets import PRESET_NAMES
from fuyu_ray.job.spec import AXES, JobError, JobSpec, load_job, parse_job
from fuyu_ray.tasks import TASKS

AXIS_TITLES = {
    "device": "Device",
    "dataset": "Dataset",
    "batch_size": "Batch size",
    "image_size": "Image size",
    "seq_len": "Seq len",
    "optimization": "Optimization",
}
# A report stays readable, and summary.md under ~200 KB, however large the grid: every list and
# table below is capped, and the cells it leaves out are rows of cells.parquet.
FULL_TABLE_ROWS = 48  # a sweep with at most this many settings gets a row each, as the seed's sections do
PIVOT_ROWS, PIVOT_COLUMNS = 24, 10  # a larger sweep's pivot shows at most this many values per axis, evenly spaced
EXTREMES = 5  # best and worst cells listed per metric in a larger sweep
LISTED = 12  # distinct values named in a note before "and N more"
TABLE_ROWS = 20  # rows of the failures, skipped-cells, roofline and per-node tables
SECTIONS_BYTES = 150_000  # sweep sections past this are named, with where their cells are
METRICS = (  # column, title, which way is better
    ("latency_s", "Latency s/batch", "lower"),
    ("energy_j_per_sample", "Energy J/sample", "lower"),
    ("accuracy", "Accuracy", "higher"),
)


def task_title(dataset: str) -> str:
    """The task's title; a name from results this version has no task for is shown as it is."""
    return TASKS[dataset].title if dataset in TASKS else dataset


def write_report(store: ResultStore, job: JobSpec, grid: Grid, run_info: dict[str, Any]) -> pl.DataFrame:
    ids = list(
        dict.fromkeys(cell_id for section in grid.sections.values() for cell_id in section)
    )  # grid.cells' order, no hashing
    cells = in_order(pl.from_arrow(store.read_cells(ids)), ids)
    store.write_table("cells.parquet", cells.to_arrow())
    store.write_samples(ids, "samples.parquet")  # streamed from the cell files: never all in memory
    plots = write_plots(store, job, grid, cells)
    store.write_bytes("summary.md", summarize(job, grid, cells, run_info, plots).encode())
    store.write_json("run.json", run_info)
    return cells


def in_order(cells: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    """The cells in the job's order, whatever order their files were listed in."""
    rank = {cell_id: index for index, cell_id in enumerate(ids)}
    order = pl.col("cell_id").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
    return cells.sort(order, maintain_order=True)


# --- formatting -----------------------------------------------------------------------------


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}"


def fmt_flops(value: float | None) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f}"


def fmt_number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


DISTURBED_MARK = " †"  # the figure was taken while something disturbed it: see "Disturbed measurements"


def disturbed(row: dict) -> bool:
    return (row.get("measurement_quality") or "").startswith("disturbed")


def fmt_latency(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    mark = DISTURBED_MARK if disturbed(row) else ""
    return f"{fmt_seconds(row['latency_s'])} (p90 {fmt_seconds(row['latency_p90_s'])}, n={row['latency_n']}){mark}"


def fmt_accuracy(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row["accuracy"] is None:
        return f"n/a ({row['accuracy_note']})" if row["accuracy_note"] else "n/a"
    scale = accuracy_scale(row["dataset"])
    text = accuracy_text(row["dataset"], row["accuracy"])
    if row["accuracy_ci_low"] is not None:
        text += f" [{row['accuracy_ci_low'] * scale:.1f}, {row['accuracy_ci_high'] * scale:.1f}]"
    return text + f" (n={row['accuracy_n']})"


def fmt_energy(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row["energy_j_per_sample"] is None:
        return "n/a¹"
    return f"{row['energy_j_per_sample']:.3f}"


def fmt_throughput(row: dict) -> str:
    """Samples per second over the timed batches (`samples_per_s`): what a deployment of that batch size serves."""
    if row["status"] != "ok" or row.get("samples_per_s") is None:
        return "n/a"
    return f"{row['samples_per_s']:.1f}"


def percent_of(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "n/a"
    return f"{100 * value / reference:.1f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- sections -------------------------------------------------------------------------------


def section_rows(cells: pl.DataFrame, grid: Grid, sweep: str) -> list[dict]:
    ids = grid.sections[sweep]
    by_id = (
        {row["cell_id"]: row for row in cells.filter(pl.col("cell_id").is_in(ids)).to_dicts()}
        if not cells.is_empty()
        else {}
    )
    return [by_id[cell_id] for cell_id in ids if cell_id in by_id]


def varied_axes(job: JobSpec, sweep: str) -> list[str]:
    """Axes with more than one value; an axis a sweep lists once only pins it."""
    return [a for a in AXES if len(job.sweeps[sweep].get(a, [])) > 1]


def fixed_settings(job: JobSpec, sweep: str) -> str:
    pinned = {**job.base.__dict__, **{a: v[0] for a, v in job.sweeps[sweep].items() if len(v) == 1}}
    return ", ".join(f"{AXIS_TITLES[a]}: {pinned[a]}" for a in AXES if a not in varied_axes(job, sweep))


def sweep_table(job: JobSpec, sweep: str, rows: list[dict]) -> str:
    varied = varied_axes(job, sweep)
    if "dataset" in varied:
        return dataset_pivot_table(varied, rows)
    keys = varied
    header = [AXIS_TITLES[a] for a in keys] + [
        "Latency s/batch (median, p90, n)",
        "Samples/s",
        "Prefill s",
        "Decode s/token",
        "Energy J/sample",
        "FLOPs/sample",
        "Accuracy [95% CI]",
    ]
    compare = "optimization" in varied
    if compare:
        header += ["% latency", "% FLOPs", "% energy"]
    references: dict[tuple, dict] = {}  # the first ok row of each group that differs only in optimization
    for row in rows:
        if row["status"] == "ok":
            references.setdefault(tuple(row[a] for a in keys if a != "optimization"), row)
    table_rows = []
    for row in rows:
        reference = references.get(tuple(row[a] for a in keys if a != "optimization"), {})
        line = [row[a] for a in keys] + [
            fmt_latency(row),
            fmt_throughput(row),
            fmt_seconds(row["prefill_s"]),
            fmt_seconds(row["decode_s_per_token"]),
            fmt_energy(row),
            fmt_flops(row["flops_per_sample"]),
            fmt_accuracy(row),
        ]
        if compare:
            line += [
                percent_of(row["latency_s"], reference.get("latency_s")),
                percent_of(row["flops_per_sample"], reference.get("flops_per_sample")),
                percent_of(row["energy_j_per_sample"], reference.get("energy_j_per_sample")),
            ]
        table_rows.append(line)
    return markdown_table(header, table_rows)


def dataset_pivot_table(varied: list[str], rows: list[dict]) -> str:
    """The seed's layout: one row per setting, accuracy and latency side by side per dataset."""
    keys = [a for a in varied if a != "dataset"]
    datasets = sorted({row["dataset"] for row in rows})
    header = [AXIS_TITLES[a] for a in keys]
    for dataset in datasets:
        header += [task_title(dataset), f"{task_title(dataset)} latency"]
    grouped: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[a] for a in keys), {})[row["dataset"]] = row
    table_rows = []
    for setting, by_dataset in grouped.items():
        line = list(setting)
        for dataset in datasets:
            row = by_dataset.get(dataset)
            line += [fmt_accuracy(row), fmt_latency(row)] if row else ["-", "-"]
        table_rows.append(line)
    return markdown_table(header, table_rows)


def measurement_notes(cells: pl.DataFrame) -> list[str]:
    """Written from what the cells recorded, so the text cannot drift from the numbers."""
    ok = cells.filter(pl.col("status") == "ok")
    if ok.is_empty():
        return ["No cell finished, so nothing was measured."]

    def values(column: str) -> str:
        return listed(ok.get_column(column).drop_nulls().unique().sort().to_list()) or "n/a"

    notes = [
        f"- Latency: wall time of `generate` for one batch (prefill + decode), after {values('warmup_batches')} "
        "untimed warm-up batch(es) per cell; "
        f"CUDA is synchronised around each batch, CPU uses `perf_counter`. Each cell times every batch of its samples "
        f"(batches per pass: {values('n_batches')}; timed batches per cell: {values('latency_n')}); the table shows "
        "the median, p90 and n.",
        "- Prefill is the time to the first generated token (TTFT); decode is seconds per further token, from "
        "per-token timestamps "
        "(CUDA events on GPU, read after the batch, so that no per-token wait on the GPU is counted; "
        "`perf_counter` on CPU).",
        f"- Generation: greedy, max_new_tokens {values('max_new_tokens')} by task; mean generated tokens per sample "
        f"{values('generated_tokens_mean')}; "
        f"share of rows that stopped at EOS: {values('eos_fraction')}.",
        f"- Energy methods used: {values('energy_method')}. Notes: {values('energy_note')}. Counter windows are "
        "extended to at least "
        f"the job's min_energy_window_s by repeating the cell's batches (repeats used: {values('energy_repeats')}).",
        "- FLOPs: counted by `torch.utils.flop_counter.FlopCounterMode` over one prefill forward of the cell's "
        "real first batch, "
        'divided by its rows. FLOPs = 2 x multiply-accumulates (the seed\'s "806.5 G" was MACs); `macs_per_sample` '
        "is in cells.parquet.",
        f"- Dtypes: {values('dtype')}; attention implementations: {values('attention')}; torch threads per CPU "
        f"worker: {values('torch_threads')}.",
        f"- Generation paths: {values('decoder')}. Warm-up is untimed: `first_call_s` is its first batch, "
        "`warmup_s` all of it "
        "(for a compiled path: the compiles, also in `compile_s`, and the CUDA-graph recording); `recompiles` counts "
        "compiles during the timed batches.",
        f"- Hosts: {values('hostname')}; CPU: {values('cpu_model')}; GPU: {values('gpu_name')} (driver "
        f"{values('driver_version')}).",
        f"- Accuracy metrics: {values('accuracy_metric')}; 95% intervals are Wilson for proportions and a "
        "percentile bootstrap (1000 resamples) "
        f"for VQA accuracy and CIDEr. Caption tokenizer: {values('caption_tokenizer')}.",
    ]
    return notes


SEED_SECTION_NAMES = {
    "batch": "Batch",
    "batch_size": "Batch",
    "seq_len": "Sequence Length",
}  # as the seed report names them


def section_title(sweep: str) -> str:
    return f"{SEED_SECTION_NAMES.get(sweep, sweep.replace('_', ' ').title())} Tests"


def rerun_command(run_info: dict[str, Any], *flags: str) -> str:
    """The driver's command for this job and this --out, as a user types it: a remedy that runs another job is none."""
    return " ".join(
        ["python -m fuyu_ray.grid", "--job", str(run_info.get("job_file")), "--out", str(run_info.get("out")), *flags]
    )


def disturbed_section(cells: pl.DataFrame, run_info: dict[str, Any]) -> list[str]:
    """The cells whose figures carry a mark, and why: what else used the machine, or how unsteady they were."""
    if cells.is_empty() or "measurement_quality" not in cells.columns:
        return []
    marked = cells.filter(pl.col("measurement_quality").str.starts_with("disturbed"))
    if marked.is_empty():
        return []
    rows = [
        (
            r["cell_id"],
            r["device"],
            r["optimization"],
            r["dataset"],
            r["batch_size"],
            r["measurement_quality"].removeprefix("disturbed: "),
        )
        for r in marked.iter_rows(named=True)
    ]
    return [
        "## Disturbed measurements",
        "",
        f"{marked.height} of {cells.filter(pl.col('status') == 'ok').height} measured cells carry a "
        f"{DISTURBED_MARK.strip()}: "
        "their figures were taken while other processes, throttling or unsteady timings disturbed them "
        "(thresholds in the README, 'Was a measurement disturbed?'). "
        f"`{rerun_command(run_info, '--remeasure-disturbed')}` measures them again.",
        "",
        *capped_table(["cell_id", "device", "optimization", "dataset", "batch", "reasons"], rows, "disturbed cells"),
    ]


def sweep_section(job: JobSpec, grid: Grid, cells: pl.DataFrame, sweep: str, plots: dict[str, str]) -> list[str]:
    lines = [f"## {section_title(sweep)}", "", f"Fixed: {fixed_settings(job, sweep)}", ""]
    if is_large(job, grid, sweep):
        lines += large_sweep_lines(job, grid, cells, sweep)
    else:
        rows = section_rows(cells, grid, sweep)
        lines += [sweep_table(job, sweep, rows), ""]
        cut = [
            f"{task_title(r['dataset'])} at seq_len {r['seq_len']}: {r['truncated_prompts']}/{r['n_samples']}"
            for r in rows
            if r.get("truncated_prompts")
        ]
        if cut:
            lines += ["Prompts cut to seq_len: " + listed(cut).replace(", ", "; ") + ".", ""]
    if job.model == "tiny" and "image_size" in varied_axes(job, sweep):
        lines += model_limits(job)
    if sweep in plots:
        lines += [f"![{sweep}]({plots[sweep]})", ""]
    return lines


def is_large(job: JobSpec, grid: Grid, sweep: str) -> bool:
    """More settings than a table with a row each can show readably (datasets side by side count once)."""
    rows = len(grid.sections[sweep])
    if "dataset" in varied_axes(job, sweep):
        rows = -(-rows // len(job.sweeps[sweep]["dataset"]))
    return rows > FULL_TABLE_ROWS


def notes(cells: pl.DataFrame, column: str) -> list[str]:
    """The distinct notes of a column, capped: "a; b and 3 more" reads as one list."""
    if cells.is_empty():
        return []
    values = cells.get_column(column).drop_nulls().unique(maintain_order=True).to_list()
    return [*values[:LISTED], *([f"and {len(values) - LISTED:,} more"] if len(values) > LISTED else [])]


def thinned(values: list, limit: int) -> list:
    """At most `limit` values: every k-th from the first, and the last."""
    step = thinning_step(len(values), limit)
    return [*values[:-1:step], values[-1]] if values else []


def thinning_step(count: int, limit: int) -> int:
    return max(1, -(-(count - 1) // (limit - 1)))


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def axis_key(axis: str) -> str:
    return f"_axis_{axis}"


def sweep_frame(job: JobSpec, grid: Grid, cells: pl.DataFrame, sweep: str) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """The sweep's cells on disk in the sweep's order, with each varied axis's value as the job writes it
    (_axis_<axis>; a "WxH" image, whose record has no image_size, as "WxH"), and each axis's values in
    the job's order."""
    varied = varied_axes(job, sweep)
    values = {a: list(dict.fromkeys(str(v) for v in job.sweeps[sweep][a])) for a in varied}
    order = pl.DataFrame({"cell_id": list(grid.sections[sweep])}, schema={"cell_id": pl.String})
    if cells.is_empty():
        return cells.with_columns(pl.lit(None, pl.String).alias(axis_key(a)) for a in varied), values
    frame = order.join(cells, on="cell_id", how="inner", maintain_order="left")

    def written(axis: str) -> pl.Expr:
        if axis == "image_size":
            return (
                pl.when(pl.col("image_size").is_null())
                .then(pl.format("{}x{}", pl.col("image_width"), pl.col("image_height")))
                .otherwise(pl.col("image_size").cast(pl.String))
            )
        return pl.col(axis).cast(pl.String)

    return frame.with_columns(written(a).alias(axis_key(a)) for a in varied), values


def main_axes(varied: list[str], values: dict[str, list[str]]) -> list[str]:
    """The crossed axes, datasets apart, most values first (ties in AXES order): the first two span the pivots."""
    axes = [a for a in varied if a != "dataset"]
    return sorted(axes, key=lambda a: -len(values[a]))


def large_sweep_lines(job: JobSpec, grid: Grid, cells: pl.DataFrame, sweep: str) -> list[str]:
    """A sweep too large for a row per cell: per metric, a pivot over its two main axes (the median over
    the others) and its best and worst cells. Every cell stays a row of cells.parquet."""
    varied = varied_axes(job, sweep)
    frame, values = sweep_frame(job, grid, cells, sweep)
    axes = main_axes(varied, values)
    total = len(grid.sections[sweep])
    shape = " x ".join(f"{AXIS_TITLES[a].lower()} {len(values[a])}" for a in varied)
    others = [a for a in axes[2:]]
    extremes = f"the {EXTREMES} best and {EXTREMES} worst cells"
    if len(axes) >= 2:
        how = (
            f"Per metric below: a table over {AXIS_TITLES[axes[0]].lower()} and {AXIS_TITLES[axes[1]].lower()}"
            + (f" (the median over {', '.join(AXIS_TITLES[a].lower() for a in others)})" if others else "")
            + f", then {extremes}."
        )
    else:
        step = ordinal(thinning_step(len(values[axes[0]]), FULL_TABLE_ROWS))
        how = (
            f"Below: {len(thinned(values[axes[0]], FULL_TABLE_ROWS))} of its {len(values[axes[0]])} "
            f"{AXIS_TITLES[axes[0]].lower()} "
            f"values (every {step} and the last), then per metric {extremes}."
        )
    lines = [
        f"{total:,} cells ({shape} values): too many for a row each. {how} Every cell is a row of cells.parquet "
        "(its samples are in samples.parquet), and the plot shows every value.",
        "",
    ]
    counts = frame.group_by("status").len().sort("len", descending=True).rows() if not frame.is_empty() else []
    missing = total - frame.height
    lines += [
        "Cells: "
        + ", ".join([f"{n:,} {status}" for status, n in counts] + ([f"{missing:,} not run yet"] if missing else []))
        + ".",
        "",
    ]
    ok = frame.filter(pl.col("status") == "ok") if not frame.is_empty() else frame
    datasets = values.get("dataset", [None])
    if len(axes) < 2:
        shown = set(thinned(values[axes[0]], FULL_TABLE_ROWS))
        rows = (
            frame.filter(pl.col(axis_key(axes[0])).is_in(shown)).drop([axis_key(a) for a in varied]).to_dicts()
            if not frame.is_empty()
            else []
        )
        lines += [sweep_table(job, sweep, rows), ""]
    for column, title, better in METRICS:
        for dataset in datasets:
            subset = ok.filter(pl.col("dataset") == dataset) if dataset is not None and not ok.is_empty() else ok
            data = subset.filter(pl.col(column).is_not_null()) if not subset.is_empty() else subset
            lines += [f"### {title}" + (f", {task_title(dataset)}" if dataset is not None else ""), ""]
            if data.is_empty():
                why = (
                    notes(frame, "energy_note" if column.startswith("energy") else "accuracy_note")
                    if column != "latency_s"
                    else []
                )
                lines += [f"No cell recorded it{' (' + '; '.join(why) + ')' if why else ''}.", ""]
                continue
            if len(axes) >= 2:
                lines += pivot_lines(data, column, axes[0], axes[1], values)
            lines += extremes_lines(data, column, title, better, [a for a in varied if a != "dataset"])
    truncated = frame.filter(pl.col("truncated_prompts") > 0).height if not frame.is_empty() else 0
    if truncated:
        lines += [f"Prompts cut to seq_len in {truncated:,} cells (`truncated_prompts` in cells.parquet).", ""]
    return lines


def metric_text(column: str, row: dict) -> str:
    return {"latency_s": fmt_latency, "energy_j_per_sample": fmt_energy, "accuracy": fmt_accuracy}[column](row)


def pivot_value(column: str, dataset: str | None, value: float | None) -> str:
    if value is None:
        return "-"
    if column == "latency_s":
        return fmt_seconds(value)
    if column == "accuracy":
        return f"{value * accuracy_scale(dataset):.1f}"
    return f"{value:.3f}"


def pivot_lines(
    data: pl.DataFrame, column: str, rows_axis: str, columns_axis: str, values: dict[str, list[str]]
) -> list[str]:
    """The median of `column` per (rows_axis, columns_axis) setting, on at most PIVOT_ROWS x PIVOT_COLUMNS values."""
    medians = data.group_by(axis_key(rows_axis), axis_key(columns_axis)).agg(pl.col(column).median())
    lookup = {(r, c): v for r, c, v in medians.rows()}
    dataset = data.get_column("dataset")[0]
    shown_rows, shown_columns = thinned(values[rows_axis], PIVOT_ROWS), thinned(values[columns_axis], PIVOT_COLUMNS)
    header = [f"{AXIS_TITLES[rows_axis]} ↓ {AXIS_TITLES[columns_axis]} →", *shown_columns]
    table = [[r, *(pivot_value(column, dataset, lookup.get((r, c))) for c in shown_columns)] for r in shown_rows]
    lines = [markdown_table(header, table), ""]
    left_out = [
        f"{len(shown)} of {len(values[a])} {AXIS_TITLES[a].lower()} values (every "
        f"{ordinal(thinning_step(len(values[a]), limit))} and the last)"
        for a, shown, limit in ((rows_axis, shown_rows, PIVOT_ROWS), (columns_axis, shown_columns, PIVOT_COLUMNS))
        if len(shown) < len(values[a])
    ]
    if left_out:
        lines += [f"Shown: {' and '.join(left_out)}; the plot has them all.", ""]
    return lines


def extremes_lines(data: pl.DataFrame, column: str, title: str, better: str, axes: list[str]) -> list[str]:
    ranked = data.sort(column, descending=better == "higher", maintain_order=True)
    n = ranked.height
    picks = list(range(n)) if n <= 2 * EXTREMES else [*range(EXTREMES), *range(n - EXTREMES, n)]
    rows = ranked[picks].to_dicts()
    header = ["Rank", *[AXIS_TITLES[a] for a in axes], title, "cell_id"]
    table = [
        [f"{i + 1:,} of {n:,}", *[row[axis_key(a)] for a in axes], metric_text(column, row), row["cell_id"]]
        for i, row in zip(picks, rows)
    ]
    return [f"Best and worst ({better} is better):", "", markdown_table(header, table), ""]


def grouped_problems(problems: pl.DataFrame, shown_ids: int = 4) -> list[tuple]:
    """One row per distinct error: a model that cannot load fails every cell of its variant alike."""
    groups = problems.group_by("status", "error", maintain_order=True).agg(pl.col("cell_id"))
    return [
        (
            status,
            shortened(error),
            len(ids),
            ", ".join(ids[:shown_ids]) + (f" and {len(ids) - shown_ids} more" if len(ids) > shown_ids else ""),
        )
        for status, error, ids in groups.rows()
    ]


def listed(values: list, limit: int = LISTED) -> str:
    """Values for a note: all of them, or the first `limit` and how many more."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit:,} more" if len(values) > limit else "")


def shortened(text: str | None, limit: int = 400) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + " …"


def capped_table(header: list[str], rows: list, what: str, limit: int = TABLE_ROWS) -> list[str]:
    """A table of at most `limit` rows; a line after it says how many were left out and where they are."""
    lines = [markdown_table(header, rows[:limit]), ""]
    if len(rows) > limit:
        lines += [f"{len(rows) - limit:,} more {what} are left out here; every cell is a row of cells.parquet.", ""]
    return lines


def summarize(job: JobSpec, grid: Grid, cells: pl.DataFrame, run_info: dict[str, Any], plots: dict[str, str]) -> str:
    labels = (
        listed(cells.get_column("model_label").drop_nulls().unique(maintain_order=True).to_list())
        if not cells.is_empty()
        else job.model
    )
    parts = [
        f"# {job.name}: {labels or job.model}",
        "",
        *completeness_lines(grid, cells, run_info),
        f"Job file `{run_info.get('job_file')}`, {counted(len(grid.cells), 'cell')}, model `{job.model}` "
        f"({model_words(job)}), {version_words(run_info)}{runs_line(run_info)}.",
        "",
        *[f"{line}" for line in model_limits(job)],
    ]
    sources = (
        cells.select("dataset", "dataset_description").unique().drop_nulls().sort("dataset").rows()
        if not cells.is_empty()
        else []
    )
    if sources:
        parts += ["Data: " + "; ".join(f"{task_title(d)} from {desc}" for d, desc in sources), ""]
        parts += [
            "Accuracy columns: "
            + "; ".join(f"{task_title(d)} = {TASKS[d].scoring.legend}" for d, _ in sources if d in TASKS)
            + ". Brackets hold the 95% interval; n is the number of scored samples.",
            "",
        ]
    budget = SECTIONS_BYTES
    for sweep in job.sweeps:
        section = sweep_section(job, grid, cells, sweep, plots)
        size = sum(len(line.encode()) + 1 for line in section)
        if size > budget:
            section = [
                f"## {section_title(sweep)}",
                "",
                f"Left out to keep this file short: its {len(grid.sections[sweep]):,} cells are rows of cells.parquet.",
                "",
            ]
        else:
            budget -= size
        parts += section
    if "pareto" in plots:
        parts += ["## Latency against accuracy", "", f"![pareto]({plots['pareto']})", ""]
    parts += published_section(job, cells) + roofline_section(cells) + per_node_section(cells)
    parts += ["¹ n/a energy: " + ("; ".join(notes(cells, "energy_note")) or "-"), ""]
    problems = cells.filter(pl.col("status").is_in(PROBLEM_STATUSES)) if not cells.is_empty() else cells
    skipped = cells.filter(pl.col("status") == "skipped") if not cells.is_empty() else cells
    if not problems.is_empty():
        parts += [
            "## Failed, out-of-memory and timed-out cells",
            "",
            "They are retried on the next run unless --no-retry-failed.",
            "",
        ]
        parts += capped_table(["status", "error", "cells", "cell ids"], grouped_problems(problems), "distinct errors")
    parts += disturbed_section(cells, run_info)
    if not skipped.is_empty():
        parts += ["## Skipped cells", ""]
        reasons = skipped.group_by("device", "optimization", "error").len().sort("device", "optimization").rows()
        parts += capped_table(
            ["device", "optimization", "reason", "cells"],
            [(d, o, shortened(e), n) for d, o, e, n in reasons],
            "reasons",
        )
    parts += ["## How this was measured", "", *measurement_notes(cells), ""]
    parts += ["## Prompts", "", *prompt_lines(cells), ""]
    parts += ["## Harness", "", *harness_lines(run_info), ""]
    parts += ["## How to read this report", "", *READING_NOTES, ""]
    return "\n".join(parts)


def roofline_section(cells: pl.DataFrame) -> list[str]:
    """How close each GPU cell came to the chip's limit: 1.0 is the best the hardware allows."""
    if cells.is_empty() or cells.get_column("decode_roofline_ratio").drop_nulls().is_empty():
        return []
    rows = (
        cells.filter(pl.col("decode_roofline_ratio").is_not_null())
        .group_by("optimization", "batch_size", "image_size")
        .agg(
            pl.col("decode_roofline_ratio").median(),
            pl.col("prefill_roofline_ratio").median(),
            pl.col("roofline_note").first(),
        )
        .sort("optimization", "batch_size", "image_size")
    )
    table = [[o, b, i, fmt_number(d, 2), fmt_number(p, 2), note] for o, b, i, d, p, note in rows.rows()]
    return [
        "## Roofline",
        "",
        "Decode: time to read the weights once at peak bandwidth / measured seconds per token. "
        "Prefill: its FLOPs at peak matrix rate / measured prefill time. 1.00 is the chip's limit.",
        "",
        *capped_table(
            ["Optimization", "Batch", "Image", "Decode / limit", "Prefill / limit", "Peaks"],
            table,
            "settings",
            FULL_TABLE_ROWS,
        ),
    ]


def per_node_section(cells: pl.DataFrame) -> list[str]:
    """Nodes differ, so a multi-node run says which node measured what."""
    if cells.is_empty() or cells.get_column("node_id").drop_nulls().n_unique() < 2:
        return []
    rows = (
        cells.filter(pl.col("node_id").is_not_null())
        .group_by("node_id", "hostname", "gpu_name")
        .agg(pl.len().alias("cells"), (pl.col("status") == "ok").sum().alias("ok"), pl.col("latency_s").median())
        .sort("node_id")
    )
    table = [[n[:12], h, g or "-", c, ok, fmt_seconds(lat)] for n, h, g, c, ok, lat in rows.rows()]
    return [
        "## Per node",
        "",
        *capped_table(["Node", "Host", "GPU", "Cells", "ok", "Median latency s"], table, "nodes", FULL_TABLE_ROWS),
    ]


PAPER_SCALE = 100  # papers give proportions in percent and CIDEr x 100


def published_section(job: JobSpec, cells: pl.DataFrame) -> list[str]:
    """The job's published figures beside ours, per task: the ok cell at the base point where there
    is one (else the first ok cell of the task), its 95% interval, and the difference."""
    if job.published is None:
        return []
    lines = ["## Beside the published figures", "", f"Published: {job.published.source}."]
    if job.published.note:
        lines += ["", job.published.note]
    lines += [
        "",
        "In the unit papers use (percent; CIDEr x 100). Our prompts are under Prompts; where the publisher's "
        "prompts, split, shots or image handling differ from ours, or are unknown, the figures measure different "
        "things, and the difference is not an error of either.",
        "",
        "| Task | published | ours [95% interval] | ours - published | n | prompt | cell |",
        "|---|---|---|---|---|---|---|",
    ]
    base = {axis: getattr(job.base, axis) for axis in AXES if axis != "dataset"}
    for task, figure in job.published.figures.items():
        row = published_counterpart(cells, task, base)
        if row is None:
            lines.append(f"| {task_title(task)} | {figure:g} | not measured in this run | - | - | - | - |")
            continue
        ours = row["accuracy"] * PAPER_SCALE
        interval = (
            f" [{row['accuracy_ci_low'] * PAPER_SCALE:.1f}, {row['accuracy_ci_high'] * PAPER_SCALE:.1f}]"
            if row["accuracy_ci_low"] is not None
            else ""
        )
        prompt = "the job's own" if task in job.tasks and job.tasks[task].template else "lmms-eval's"
        lines.append(
            f"| {task_title(task)} | {figure:g} | {ours:.1f}{interval} | {ours - figure:+.1f} | {row['accuracy_n']} | "
            f"{prompt} | {row['cell_id']} |"
        )
    return lines + [""]


def published_counterpart(cells: pl.DataFrame, task: str, base: dict[str, Any]) -> dict | None:
    if cells.is_empty():
        return None
    scored = cells.filter(
        (pl.col("dataset") == task) & (pl.col("status") == "ok") & pl.col("accuracy").is_not_null()
    ).to_dicts()
    at_base = [row for row in scored if all(str(row[axis]) == str(value) for axis, value in base.items())]
    return (at_base or scored or [None])[0]


def prompt_lines(cells: pl.DataFrame) -> list[str]:
    """The exact templates that ran, as recorded by the cells; the full prompt of every sample is in samples.parquet."""
    if cells.is_empty():
        return []
    used = (
        cells.filter(pl.col("prompt_template").is_not_null())
        .select("dataset", "prompt_template", "max_new_tokens")
        .unique()
        .sort("dataset")
    )
    lines = [
        "Fuyu's format: image tokens, `<s>`, the prompt below plus a newline, then the beginning-of-answer token "
        "`\\x04`; "
        "the answer is the decoded text after it, stripped, greedy decoding, stopping at `|ENDOFTEXT|`.",
        "",
    ]
    for dataset, template, max_new in used.rows():
        lines += [f"- {task_title(dataset)} (max_new_tokens {max_new}): `{template!r}`"]
    return lines


def harness_lines(run_info: dict[str, Any]) -> list[str]:
    """One line per run that wrote into this --out, oldest first: a rerun that reused every cell adds its own
    line and keeps the line of the run that measured them."""
    runs = [*run_info.get("earlier_runs", []), run_info]
    if len(runs) == 1:
        return [harness_line(run_info)]
    return [
        f"- Run {i} of {len(runs)} (started {run.get('started_at')}): {harness_line(run)}"
        for i, run in enumerate(runs, 1)
    ]


def runs_line(run_info: dict[str, Any]) -> str:
    earlier = run_info.get("earlier_runs") or []
    if not run_info.get("started_at"):  # cell files written by something other than the driver, e.g. the GPU check
        return run_info.get("note") or "no driver run recorded"
    if not earlier:
        return f"started {run_info.get('started_at')}, finished {run_info.get('finished_at')}"
    return (
        f"measured over {len(earlier) + 1} runs: the first started {earlier[0].get('started_at')}, "
        f"the last finished {run_info.get('finished_at')} (Harness has each)"
    )


def version_words(run_info: dict[str, Any]) -> str:
    if not run_info.get("fuyu_ray_version"):
        return ""
    return f"fuyu_ray {run_info['fuyu_ray_version']} at commit {run_info.get('git_commit')}, "


def completeness_lines(grid: Grid, cells: pl.DataFrame, run_info: dict[str, Any]) -> list[str]:
    """An incomplete or interrupted run says so first: a table with rows missing reads as a finished one."""
    total, present = len(grid.cells), cells.height
    missing = total - present
    if run_info.get("aborted"):
        why = f"the run aborted: {run_info['aborted']}"
    elif run_info.get("interrupted"):
        why = "the run was interrupted"
    else:
        why = "they have not run yet"
    if not missing and not run_info.get("aborted"):
        return []
    return [
        f"**Incomplete: {present:,} of {counted(total, 'cell')} have results; {missing:,} missing ({why}).** "
        f"`{rerun_command(run_info)}` runs the rest and keeps what is here.",
        "",
    ]


def model_words(job: JobSpec) -> str:
    if job.model.split(":")[0] == "standin":
        return "a stand-in: no model"
    return f"{job.weights} weights"


def model_limits(job: JobSpec) -> list[str]:
    """What the model under test cannot tell, said before the figures it shapes."""
    from fuyu_ray.bench.tiny import TRAINED_IMAGE_SIDE, trained_tasks_text  # light: tokenizers only

    lines = []
    if job.model.split(":")[0] == "standin":
        lines.append(
            "The model is a stand-in: no model runs, so these figures measure the harness (scheduling, timing, "
            "storage) and say nothing of fuyu-8b; accuracy is not measured."
        )
    elif job.weights == "random":
        lines.append(
            "Random weights: the answers are noise, so no accuracy is given; latency, energy and FLOPs are the "
            "architecture's."
        )
    elif job.model == "tiny":
        lines.append(tiny_limits(TRAINED_IMAGE_SIDE, trained_tasks_text()))
    return [f"> {line}" for line in lines] + ([""] if lines else [])


def tiny_limits(side: int, tasks: str) -> str:
    return (
        f"`tiny` is a 2-layer model trained only on built-in synthetic data ({tasks}) at {side} px: its latency "
        f"says nothing of fuyu-8b's, and its accuracy falls at image sizes other than {side} px because it never "
        "saw them in training, which is a fact about tiny, not about Fuyu."
    )


def harness_line(run_info: dict[str, Any]) -> str:
    ratio = run_info.get("busy_ratio")
    if not run_info.get("workers") and run_info.get("cells_run"):  # stopped before the workers' figures came back
        return (
            f"wall {fmt_number(run_info.get('wall_s'), 1)} s; {run_info.get('cells_run')} of "
            f"{run_info.get('cells_planned', run_info.get('cells_run'))} planned cell(s) run, "
            f"{run_info.get('cells_reused')} reused from disk; "
            f"{'interrupted' if run_info.get('interrupted') else 'aborted'} before the workers' figures came back."
        )
    return (
        f"wall {fmt_number(run_info.get('wall_s'), 1)} s over {run_info.get('workers')} worker(s); busy "
        f"{fmt_number(run_info.get('busy_s'), 1)} s (model loads + cells); busy / (wall x workers) = "
        f"{fmt_number(ratio, 2)}; "
        f"{run_info.get('model_loads')} model load(s); {run_info.get('cells_run')} cell(s) run, "
        f"{run_info.get('cells_reused')} reused from disk"
        f"{'; interrupted' if run_info.get('interrupted') else ''}. "
        f"Ray start-up took {fmt_number(run_info.get('ray_init_s'), 1)} s and is not in the wall time."
    )


READING_NOTES = [
    "- Each section varies one setting (named in its title) and holds the others at `Fixed:`; a cell shared by "
    "two sections is measured once.",
    "- Latency is per batch: the median over the timed batches, p90 and n beside it; Samples/s is the throughput "
    "those batches gave. A † marks a figure taken while something disturbed the machine (see Disturbed "
    "measurements); such figures say little about the code.",
    "- Accuracy carries its 95% interval and n: two figures whose intervals overlap may not differ. "
    "`python -m fuyu_ray.compare` tells a real change between two runs from noise.",
    "- Every cell is a row of cells.parquet, and every scored answer a row of samples.parquet, with its prompt.",
]


# --- plots ----------------------------------------------------------------------------------


def write_plots(store: ResultStore, job: JobSpec, grid: Grid, cells: pl.DataFrame) -> dict[str, str]:
    import matplotlib  # heavy: loaded only to draw

    matplotlib.use("Agg")

    plots: dict[str, str] = {}
    ok = cells.filter(pl.col("status") == "ok") if not cells.is_empty() else cells
    for sweep in job.sweeps:
        if is_large(job, grid, sweep):
            name = large_sweep_plot(store, job, grid, ok, sweep)
            if name:
                plots[sweep] = name
            continue
        rows = section_rows(ok, grid, sweep)
        if rows:
            plots[sweep] = sweep_plot(store, job, sweep, rows, cells)
    scored = ok.filter(pl.col("accuracy").is_not_null()) if not ok.is_empty() else ok
    if not scored.is_empty():
        plots["pareto"] = pareto_plot(store, scored)
    return plots


LABELLED_POINTS = 30  # a Pareto panel names each point's setting up to this many points
DISTURBED_RING = {"marker": "o", "markersize": 13, "markerfacecolor": "none", "markeredgecolor": "red", "linestyle": ""}


def mark_disturbed(panel, points: list[tuple[float, float, dict]]) -> bool:
    """A red ring and a dagger round each disturbed figure, as the tables mark it; whether there was one."""
    marked = [(x, y) for x, y, row in points if disturbed(row) and y is not None]
    for x, y in marked:
        panel.plot([x], [y], **DISTURBED_RING)
        panel.annotate(DISTURBED_MARK.strip(), (x, y), textcoords="offset points", xytext=(7, 5), color="red")
    return bool(marked)


def sweep_plot(store: ResultStore, job: JobSpec, sweep: str, rows: list[dict], cells: pl.DataFrame) -> str:
    """Latency per batch (the median, a whisker to p90) and energy per sample against the sweep's axis. Values
    are categories in the job's order, so points are not joined by lines; each series is nudged sideways."""
    import matplotlib.pyplot as plt  # heavy: loaded only to draw

    varied = varied_axes(job, sweep)
    axis = "optimization" if "optimization" in varied else next((a for a in varied if a != "dataset"), "dataset")
    series_axes = list(dict.fromkeys(a for a in ("dataset", *varied) if a != axis))  # one series per combination
    categories = list(dict.fromkeys(str(r[axis]) for r in rows))
    keys = sorted({tuple(r[a] for a in series_axes) for r in rows}, key=str)
    figure, left = plt.subplots(figsize=(6.5, 4.2))
    has_energy = any(r["energy_j_per_sample"] is not None for r in rows)
    right = left.twinx() if has_energy else None
    width = 0.5 / max(1, len(keys))
    any_disturbed = False
    for index, key in enumerate(keys):
        subset = [r for r in rows if tuple(r[a] for a in series_axes) == key]
        label = ", ".join(str(v) for v in key) or "latency"
        xs = [categories.index(str(r[axis])) + (index - (len(keys) - 1) / 2) * width for r in subset]
        medians = [r["latency_s"] for r in subset]
        spread = [max(0.0, (r["latency_p90_s"] or r["latency_s"]) - r["latency_s"]) for r in subset]
        left.errorbar(xs, medians, yerr=[[0.0] * len(xs), spread], fmt="o", capsize=3, color=f"C{index}", label=label)
        any_disturbed |= mark_disturbed(left, list(zip(xs, medians, subset)))
        if right is not None:
            energy = [(x, r["energy_j_per_sample"]) for x, r in zip(xs, subset) if r["energy_j_per_sample"] is not None]
            right.plot([x for x, _ in energy], [e for _, e in energy], "s", mfc="none", color=f"C{index}")
    left.set_xticks(range(len(categories)), categories)
    left.set_xlim(-0.5, len(categories) - 0.5)
    # From zero, with room above: a lone point or a 1% difference does not fill the axis, and no point sits on its edge.
    left.set_ylim(0, left.get_ylim()[1] * 1.12)
    left.set_xlabel(AXIS_TITLES[axis])
    left.set_ylabel("latency per batch (s): median, whisker to p90")
    if right is not None:
        right.set_ylim(0, right.get_ylim()[1] * 1.12)
        right.set_ylabel("energy per sample (J): open squares")
    handles, names = left.get_legend_handles_labels()
    if any_disturbed:
        handles.append(plt.Line2D([], [], **DISTURBED_RING))
        names.append(f"disturbed ({DISTURBED_MARK.strip()})")
    left.legend(handles, names, loc="upper left", fontsize=7)
    why = "" if right is not None else f"\nno energy: {'; '.join(notes(cells, 'energy_note')) or 'not measured'}"
    left.set_title(f"{sweep}: latency{' and energy' if right is not None else ''}{why}", fontsize=9)
    # The seed's file name for its one plot, which is the batch-size sweep's.
    name = "latency_energy_plot.png" if varied == ["batch_size"] else f"{sweep}.png"
    return _save(store, figure, name)


def pareto_plot(store: ResultStore, scored: pl.DataFrame) -> str:
    """Accuracy against latency per sample, one panel per dataset, each point labelled with its setting.
    Per sample, so that batch sizes compare; accuracy in the tables' units."""
    import matplotlib.pyplot as plt  # heavy: loaded only to draw

    datasets = sorted(scored.get_column("dataset").unique().to_list())
    figure, panels = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.2), squeeze=False)
    for panel, dataset in zip(panels[0], datasets):
        subset = scored.filter(pl.col("dataset") == dataset)
        scale = accuracy_scale(dataset)
        labelled: list[tuple[float, float]] = []
        spans = (
            (max(subset.get_column("latency_s") / subset.get_column("batch_size")) or 1.0),
            (max(subset.get_column("accuracy")) * scale or 1.0),
        )
        for optimization in sorted(subset.get_column("optimization").unique().to_list()):
            rows = subset.filter(pl.col("optimization") == optimization).to_dicts()
            xs = [r["latency_s"] / r["batch_size"] for r in rows]
            ys = [r["accuracy"] * scale for r in rows]
            colour = f"C{PRESET_NAMES.index(optimization)}" if optimization in PRESET_NAMES else None
            panel.scatter(xs, ys, label=optimization, color=colour)
            if subset.height <= LABELLED_POINTS:  # past that, labels hide the points they name
                for x, y, r in zip(xs, ys, rows):
                    if any(abs(x - a) < 0.12 * spans[0] and abs(y - b) < 0.06 * spans[1] for a, b in labelled):
                        continue  # a label over another is read as neither
                    labelled.append((x, y))
                    panel.annotate(point_label(r), (x, y), textcoords="offset points", xytext=(4, -9), fontsize=6)
            mark_disturbed(panel, list(zip(xs, ys, rows)))
        panel.set_title(task_title(dataset))
        panel.set_xlabel("latency per sample (s)")
        panel.set_ylabel(accuracy_axis(dataset))
        panel.margins(0.15)
        panel.legend(fontsize=7, loc="upper right")
    figure.suptitle("accuracy against latency per sample, by optimization")
    return _save(store, figure, "pareto_latency_accuracy.png")


def point_label(row: dict) -> str:
    image = row["image_size"] if row["image_size"] is not None else f"{row['image_width']}x{row['image_height']}"
    return f"{row['device']} b{row['batch_size']} {image}px s{row['seq_len']}"


def large_sweep_plot(store: ResultStore, job: JobSpec, grid: Grid, ok: pl.DataFrame, sweep: str) -> str | None:
    """Every value of a large sweep: heatmaps over its two main axes (the median over the others),
    one per metric and dataset; for a single axis, lines against it."""
    import matplotlib.pyplot as plt  # heavy: loaded only to draw

    varied = varied_axes(job, sweep)
    frame, values = sweep_frame(job, grid, ok, sweep)
    axes = main_axes(varied, values)
    panels = [
        (column, title, dataset)
        for column, title, _ in METRICS
        for dataset in values.get("dataset", [None])
        if not frame.is_empty()
        and not frame.filter(
            pl.col(column).is_not_null() & (pl.col("dataset") == dataset if dataset is not None else pl.lit(True))
        ).is_empty()
    ]
    if not panels:
        return None
    columns = min(3, len(panels))
    figure, grid_axes = plt.subplots(
        -(-len(panels) // columns),
        columns,
        figsize=(5.5 * columns, 4.5 * -(-len(panels) // columns)),
        squeeze=False,
        layout="constrained",
    )
    for panel, (column, title, dataset) in zip(grid_axes.flat, panels):
        data = frame.filter(
            pl.col(column).is_not_null() & (pl.col("dataset") == dataset if dataset is not None else pl.lit(True))
        )
        scale = accuracy_scale(data.get_column("dataset")[0]) if column == "accuracy" else 1  # as the tables show it
        label = title + (f", {task_title(dataset)}" if dataset is not None else "")
        if len(axes) >= 2:
            rows_axis, columns_axis = axes[0], axes[1]
            medians = data.group_by(axis_key(rows_axis), axis_key(columns_axis)).agg(pl.col(column).median())
            row_index = {v: i for i, v in enumerate(values[rows_axis])}
            column_index = {v: i for i, v in enumerate(values[columns_axis])}
            matrix = np.full((len(row_index), len(column_index)), np.nan)
            for r, c, v in medians.rows():
                matrix[row_index[r], column_index[c]] = v * scale
            image = panel.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
            figure.colorbar(image, ax=panel)
            for axis_values, set_ticks in (
                (values[columns_axis], panel.set_xticks),
                (values[rows_axis], panel.set_yticks),
            ):
                shown = thinned(list(range(len(axis_values))), 12)
                set_ticks(shown, [axis_values[i] for i in shown], fontsize=7)
            panel.set_xlabel(AXIS_TITLES[columns_axis])
            panel.set_ylabel(AXIS_TITLES[rows_axis])
            others = [AXIS_TITLES[a].lower() for a in axes[2:]]
            panel.set_title(label + (f"\n(median over {', '.join(others)})" if others else ""), fontsize=9)
        else:
            axis = axes[0]
            position = {v: i for i, v in enumerate(values[axis])}
            numeric = all(v.lstrip("-").isdigit() for v in values[axis])
            points = sorted((position[v], y) for v, y in data.select(axis_key(axis), column).rows())
            xs = [int(values[axis][i]) if numeric else i for i, _ in points]
            panel.plot(xs, [y * scale for _, y in points], marker="o" if len(points) <= 50 else None, linewidth=1)
            if not numeric:
                shown = thinned(list(range(len(values[axis]))), 12)
                panel.set_xticks(shown, [values[axis][i] for i in shown], fontsize=7)
            panel.set_xlabel(AXIS_TITLES[axis])
            panel.set_ylabel(label)
            panel.set_title(label, fontsize=9)
    for panel in list(grid_axes.flat)[len(panels) :]:
        panel.set_visible(False)
    figure.suptitle(f"{sweep}: {len(grid.sections[sweep]):,} cells")
    return _save(store, figure, f"{sweep}.png", tight=False)


def _save(store: ResultStore, figure, name: str, tight: bool = True) -> str:
    import matplotlib.pyplot as plt  # heavy: loaded only to draw

    buffer = io.BytesIO()
    if tight:  # the other figures are laid out by matplotlib's constrained layout as they are drawn
        figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    store.write_bytes(f"plots/{name}", buffer.getvalue())
    return f"plots/{name}"


def main(argv: list[str] | None = None) -> int:
    """Rebuild the report of a run from its cell files: after an interrupted run, for cells the GPU check
    wrote, or after an upgrade. The job is the one the run stored in run.json unless --job names another."""
    parser = argparse.ArgumentParser(prog="python -m fuyu_ray.report", description=main.__doc__)
    parser.add_argument("--out", required=True, help="the run's results folder or URI (grid's --out)")
    parser.add_argument("--job", help="job file (default: the job stored in the run's run.json)")
    args = parser.parse_args(argv)
    try:
        store, job, run_info = open_run(args.out, args.job)
    except JobError as exc:
        for line in exc.lines:
            print(f"fuyu_ray: {line}", file=sys.stderr)
        return 2
    write_report(store, job, expand(job), run_info)
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
