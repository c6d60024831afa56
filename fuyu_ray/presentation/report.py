"""Report: Polars aggregates the cell files into cells.parquet, samples.parquet, summary.md and plots.

Only cells that belong to the current job are reported, so an --out directory reused with
an edited job file never shows stale cells.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from fuyu_ray.job.cells import Grid
from fuyu_ray.job.prices import Prices
from fuyu_ray.job.spec import AXES, JobSpec
from fuyu_ray.presentation.agreement import with_agreement
from fuyu_ray.presentation.cost import cost_lines, priced, with_costs
from fuyu_ray.presentation.cost_model import fit_all, fits_section
from fuyu_ray.presentation.formats import (
    DISTURBED_MARK,
    counted,
    fmt_number,
    fmt_seconds,
    listed,
    model_limits,
    model_words,
    shortened,
    task_title,
)
from fuyu_ray.presentation.plots import write_plots
from fuyu_ray.presentation.sweeps import FULL_TABLE_ROWS, capped_table, notes, section_title, sweep_section
from fuyu_ray.storage.records import PROBLEM_STATUSES
from fuyu_ray.storage.store import ResultStore
from fuyu_ray.tasks import TASKS

SECTIONS_BYTES = 150_000  # sweep sections past this are named, with where their cells are


def write_report(
    store: ResultStore, job: JobSpec, grid: Grid, run_info: dict[str, Any], prices: Prices | None = None
) -> pl.DataFrame:
    """`prices`: the job's unless given (the report command's options over the job's)."""
    prices = job.prices if prices is None else prices
    ids = list(
        dict.fromkeys(cell_id for section in grid.sections.values() for cell_id in section)
    )  # grid.cells' order, no hashing
    cells = with_agreement(in_order(pl.from_arrow(store.read_cells(ids)), ids), job, grid, store.read_samples)
    cells = with_costs(cells, prices)
    store.write_table("cells.parquet", cells.to_arrow())
    store.write_samples(ids, "samples.parquet")  # streamed from the cell files: never all in memory
    plots = write_plots(store, job, grid, cells)
    store.write_bytes("summary.md", summarize(job, grid, cells, run_info, plots, prices).encode())
    store.write_json("run.json", run_info)
    return cells


def in_order(cells: pl.DataFrame, ids: list[str]) -> pl.DataFrame:
    """The cells in the job's order, whatever order their files were listed in."""
    rank = {cell_id: index for index, cell_id in enumerate(ids)}
    order = pl.col("cell_id").replace_strict(rank, default=len(rank), return_dtype=pl.Int64)
    return cells.sort(order, maintain_order=True)


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


def summarize(
    job: JobSpec,
    grid: Grid,
    cells: pl.DataFrame,
    run_info: dict[str, Any],
    plots: dict[str, str],
    prices: Prices | None = None,
) -> str:
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
    if priced(cells):
        parts += cost_lines(cells, prices)
        if "cost" in plots:
            parts += [f"![cost against accuracy]({plots['cost']})", ""]
    parts += fits_section(fit_all(cells))
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
