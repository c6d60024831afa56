"""A sweep's section of summary.md: a row per cell, or for a large sweep pivots and its best and worst cells."""

from __future__ import annotations

import polars as pl

from fuyu_ray.job.cells import Grid
from fuyu_ray.job.spec import AXES, ImageSize, JobSpec
from fuyu_ray.presentation.agreement import accuracy_difference_text, agreement_text
from fuyu_ray.presentation.cost import fmt_cost
from fuyu_ray.presentation.formats import (
    AXIS_TITLES,
    LISTED,
    accuracy_scale,
    fmt_accuracy,
    fmt_energy,
    fmt_flops,
    fmt_latency,
    fmt_seconds,
    fmt_throughput,
    listed,
    markdown_table,
    model_limits,
    ordinal,
    percent_of,
    task_title,
    thinned,
    thinning_step,
)

# A report stays readable, and summary.md under ~200 KB, however large the grid: every list and
# table below is capped, and the cells it leaves out are rows of cells.parquet.
PIVOT_ROWS, PIVOT_COLUMNS = 24, 10  # a larger sweep's pivot shows at most this many values per axis, evenly spaced
FULL_TABLE_ROWS = 48  # a sweep with at most this many settings gets a row each, as the seed's sections do


EXTREMES = 5  # best and worst cells listed per metric in a larger sweep


TABLE_ROWS = 20  # rows of the failures, skipped-cells, roofline and per-node tables


METRICS = (  # column, title, which way is better
    ("latency_s", "Latency s/batch", "lower"),
    ("energy_j_per_sample", "Energy J/sample", "lower"),
    ("accuracy", "Accuracy", "higher"),
)


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
    costed = any("cost_per_1k_answers" in row for row in rows)
    if costed:
        header += ["Cost/1k answers"]
    compare = "optimization" in varied
    if compare:
        header += ["% latency", "% FLOPs", "% energy", "answers = original", "Δ accuracy [95% CI]"]
    references: dict[tuple, dict] = {}  # per group that differs only in optimization: its reference's row
    for row in rows:
        if row["status"] == "ok" and row["optimization"] == (row.get("reference_optimization") or row["optimization"]):
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
        if costed:
            line += [fmt_cost(row)]
        if compare:
            line += [
                percent_of(row["latency_s"], reference.get("latency_s")),
                percent_of(row["flops_per_sample"], reference.get("flops_per_sample")),
                percent_of(row["energy_j_per_sample"], reference.get("energy_j_per_sample")),
                agreement_text(row),
                accuracy_difference_text(row),
            ]
        table_rows.append(line)
    return markdown_table(header, table_rows)


def dataset_pivot_table(varied: list[str], rows: list[dict]) -> str:
    """The seed's layout: one row per setting, accuracy and latency side by side per dataset."""
    keys = [a for a in varied if a != "dataset"]
    datasets = sorted({row["dataset"] for row in rows})
    header = [AXIS_TITLES[a] for a in keys]
    costed = any("cost_per_1k_answers" in row for row in rows)
    for dataset in datasets:
        header += [task_title(dataset), f"{task_title(dataset)} latency"]
        header += [f"{task_title(dataset)} cost/1k"] if costed else []
    grouped: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[a] for a in keys), {})[row["dataset"]] = row
    table_rows = []
    for setting, by_dataset in grouped.items():
        line = list(setting)
        for dataset in datasets:
            row = by_dataset.get(dataset)
            line += [fmt_accuracy(row), fmt_latency(row)] if row else ["-", "-"]
            line += ([fmt_cost(row)] if row else ["-"]) if costed else []
        table_rows.append(line)
    return markdown_table(header, table_rows)


SEED_SECTION_NAMES = {
    "batch": "Batch",
    "batch_size": "Batch",
    "seq_len": "Sequence Length",
}  # as the seed report names them


def section_title(sweep: str) -> str:
    return f"{SEED_SECTION_NAMES.get(sweep, sweep.replace('_', ' ').title())} Tests"


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
        if axis == "image_size":  # a "WxH" image's record has no image_size: its label, as the job wrote it
            return pl.struct("image_size", "image_width", "image_height").map_elements(
                lambda record: ImageSize.of_record(record).label, return_dtype=pl.String
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


def capped_table(header: list[str], rows: list, what: str, limit: int = TABLE_ROWS) -> list[str]:
    """A table of at most `limit` rows; a line after it says how many were left out and where they are."""
    lines = [markdown_table(header, rows[:limit]), ""]
    if len(rows) > limit:
        lines += [f"{len(rows) - limit:,} more {what} are left out here; every cell is a row of cells.parquet.", ""]
    return lines
