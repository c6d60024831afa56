"""summary.md from real cell records: one table row per cell in the sweep's order, and each optimization
as a percentage of the sweep's first (original) optimization at the same other settings."""

from __future__ import annotations

import pyarrow as pa
import polars as pl

from fuyu_ray.cells import expand
from fuyu_ray.records import cell_batch, outcome_row
from fuyu_ray.report import summarize
from fuyu_ray.spec import parse_job

RUN_INFO = {"job_file": "jobs/report.yaml", "wall_s": 10.0, "workers": 1, "busy_s": 9.0, "busy_ratio": 0.9, "model_loads": 3}


def job_and_grid(sweeps: dict):
    job = parse_job({
        "name": "report", "model": "tiny", "limit": 4,
        "base": {"device": "cpu", "dataset": "scienceqa", "batch_size": 1, "image_size": 224, "seq_len": 200, "optimization": "fp32"},
        "sweeps": sweeps,
    }, "jobs/report.yaml")
    return job, expand(job)


def ok_row(cell, latency_s: float, flops: float, energy: float | None, accuracy: float = 0.5) -> dict:
    return {
        **cell.settings(), "status": "ok", "error": None, "model_label": "tiny (built-in, trained on synthetic data)",
        "dataset_description": "synthetic scienceqa", "n_samples": 4, "latency_s": latency_s, "latency_p90_s": latency_s * 1.5,
        "latency_n": 4, "prefill_s": latency_s / 4, "decode_s_per_token": latency_s / 40, "flops_per_sample": flops,
        "energy_j_per_sample": energy, "energy_note": None if energy is not None else "no counter here",
        "accuracy": accuracy, "accuracy_ci_low": accuracy - 0.1, "accuracy_ci_high": accuracy + 0.1, "accuracy_n": 4,
        "max_new_tokens": 16, "prompt_template": "{question}",
    }


def cells_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_batches([cell_batch(row) for row in rows]))


def section_table(summary: str, title: str) -> list[list[str]]:
    """The cells of the markdown table under `## <title>`, header first."""
    body = summary.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in body.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table]


def by_optimization(grid, sweep: str) -> dict:
    by_id = {cell.cell_id: cell for cell in grid.cells}
    return {by_id[i].point.optimization: by_id[i] for i in grid.sections[sweep]}


def test_each_optimization_is_a_percentage_of_the_first_one():
    job, grid = job_and_grid({"optimization": {"optimization": ["fp32", "fp16", "bf16"]}})
    cells = by_optimization(grid, "optimization")
    frame = cells_frame([
        ok_row(cells["bf16"], latency_s=0.5, flops=2e9, energy=None),  # written in any order: the sweep's order counts
        ok_row(cells["fp32"], latency_s=2.0, flops=4e9, energy=8.0, accuracy=0.75),
        ok_row(cells["fp16"], latency_s=1.0, flops=4e9, energy=2.0),
    ])
    summary = summarize(job, grid, frame, RUN_INFO, {})
    header, *rows = section_table(summary, "Optimization Tests")
    assert header[0] == "Optimization" and header[-3:] == ["% latency", "% FLOPs", "% energy"]
    assert [row[0] for row in rows] == ["fp32", "fp16", "bf16"]
    assert [row[-3:] for row in rows] == [
        ["100.0", "100.0", "100.0"],
        ["50.0", "100.0", "25.0"],
        ["25.0", "50.0", "n/a"],  # no energy reading: no percentage either
    ]
    fp32 = dict(zip(header, rows[0]))
    assert fp32["Latency s/batch (median, p90, n)"] == "2.000 (p90 3.000, n=4)"
    assert fp32["FLOPs/sample"] == "4.0 G"
    assert fp32["Energy J/sample"] == "8.000" and dict(zip(header, rows[2]))["Energy J/sample"] == "n/a¹"
    assert fp32["Accuracy [95% CI]"] == "75.0 [65.0, 85.0] (n=4)"
    assert "Fixed: Device: cpu, Dataset: scienceqa, Batch size: 1, Image size: 224, Seq len: 200" in summary


def test_the_baseline_is_taken_within_each_setting_of_the_other_axes():
    job, grid = job_and_grid({"opt_by_batch": {"optimization": ["fp32", "fp16"], "batch_size": [1, 8]}})
    by_id = {cell.cell_id: cell for cell in grid.cells}
    latency = {("fp32", 1): 1.0, ("fp16", 1): 0.5, ("fp32", 8): 4.0, ("fp16", 8): 3.0}
    frame = cells_frame([
        ok_row(by_id[i], latency[(by_id[i].point.optimization, by_id[i].point.batch_size)], 1e9, 1.0)
        for i in grid.sections["opt_by_batch"]
    ])
    header, *rows = section_table(summarize(job, grid, frame, RUN_INFO, {}), "Opt By Batch Tests")
    assert header[:2] == ["Batch size", "Optimization"]
    percent = {(row[1], row[0]): row[header.index("% latency")] for row in rows}
    assert percent == {("fp32", "1"): "100.0", ("fp16", "1"): "50.0", ("fp32", "8"): "100.0", ("fp16", "8"): "75.0"}


def test_a_cell_that_did_not_finish_shows_its_status_and_is_listed():
    job, grid = job_and_grid({"optimization": {"optimization": ["fp32", "fp16", "compile"]}})
    cells = by_optimization(grid, "optimization")
    frame = cells_frame([
        ok_row(cells["fp32"], latency_s=2.0, flops=4e9, energy=None),
        outcome_row(cells["fp16"].settings(), "oom", "OutOfMemoryError: CUDA out of memory"),
        outcome_row(cells["compile"].settings(), "skipped", "no compiler here"),
    ])
    summary = summarize(job, grid, frame, RUN_INFO, {})
    header, *rows = section_table(summary, "Optimization Tests")
    assert [row[0] for row in rows] == ["fp32", "fp16", "compile"]
    assert rows[1][1] == "oom" and rows[1][-3:] == ["n/a", "n/a", "n/a"]
    assert rows[2][1] == "skipped"
    assert "## Failed, out-of-memory and timed-out cells" in summary
    problems = section_table(summary, "Failed, out-of-memory and timed-out cells")
    assert problems[1:] == [["oom", "OutOfMemoryError: CUDA out of memory", "1", cells["fp16"].cell_id]]
    skipped = section_table(summary, "Skipped cells")
    assert skipped[1] == ["cpu", "compile", "no compiler here", "1"]


def test_a_cell_in_two_sweeps_is_a_row_of_both():
    job, grid = job_and_grid({"batch": {"batch_size": [1, 2]}, "again": {"batch_size": [2]}})
    by_batch = {cell.point.batch_size: cell for cell in grid.cells}
    assert len(grid.cells) == 2
    frame = cells_frame([ok_row(by_batch[1], 1.0, 1e9, None), ok_row(by_batch[2], 3.0, 1e9, None)])
    summary = summarize(job, grid, frame, RUN_INFO, {})
    assert [row[0] for row in section_table(summary, "Batch Tests")[1:]] == ["1", "2"]
    again = section_table(summary, "Again Tests")  # one value only pins the axis: no axis column
    assert [row[0] for row in again[1:]] == ["3.000 (p90 4.500, n=4)"]
    assert "Fixed: Device: cpu, Dataset: scienceqa, Batch size: 2," in summary
    assert summary.splitlines()[0] == "# report: tiny (built-in, trained on synthetic data)"
    assert "2 cells" in summary.splitlines()[2]


def test_a_dataset_sweep_puts_datasets_side_by_side():
    job, grid = job_and_grid({"image_size": {"image_size": [224, 336], "dataset": ["scienceqa", "textvqa"]}})
    rows = []
    for cell in grid.cells:
        rows.append(ok_row(cell, latency_s=cell.point.image_size / 1000, flops=1e9, energy=None,
                           accuracy=0.5 if cell.point.dataset == "scienceqa" else 0.25))
    header, *table = section_table(summarize(job, grid, cells_frame(rows), RUN_INFO, {}), "Image Size Tests")
    assert header == ["Image size", "ScienceQA", "ScienceQA latency", "TextVQA", "TextVQA latency"]
    assert [row[0] for row in table] == ["224", "336"]
    assert table[0][1].startswith("50.0 ") and table[0][3].startswith("25.0 ")
    assert table[1][2].startswith("0.336 ")


def test_one_error_shared_by_many_cells_is_one_row_of_the_failures_section():
    """A model that cannot load fails every cell of its variant with the same line."""
    job, grid = job_and_grid({"batch": {"batch_size": [1, 2, 3, 4, 5, 6]}})
    error = "model 'adept/fuyu-8b' could not be loaded: OSError: not in the cache"
    frame = cells_frame([outcome_row(cell.settings(), "failed", error) for cell in grid.cells])
    problems = section_table(summarize(job, grid, frame, RUN_INFO, {}), "Failed, out-of-memory and timed-out cells")
    assert len(problems) == 2 and problems[1][:3] == ["failed", error, "6"]
    assert problems[1][3].endswith("and 2 more")
