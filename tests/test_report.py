"""summary.md from real cell records: one table row per cell in the sweep's order, and each optimization
as a percentage of the sweep's first (original) optimization at the same other settings."""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from fuyu_ray.job.cells import expand
from fuyu_ray.job.spec import parse_job
from fuyu_ray.presentation.report import summarize
from fuyu_ray.storage.records import CELL_SCHEMA, cell_batch, outcome_row

RUN_INFO = {
    "job_file": "jobs/report.yaml",
    "wall_s": 10.0,
    "workers": 1,
    "busy_s": 9.0,
    "busy_ratio": 0.9,
    "model_loads": 3,
}


def job_and_grid(sweeps: dict, **extra):
    job = parse_job(
        {
            "name": "report",
            "model": "tiny",
            "limit": 4,
            "base": {
                "device": "cpu",
                "dataset": "scienceqa",
                "batch_size": 1,
                "image_size": 224,
                "seq_len": 200,
                "optimization": "fp32",
            },
            "sweeps": sweeps,
            **extra,
        },
        "jobs/report.yaml",
    )
    return job, expand(job)


def ok_row(cell, latency_s: float, flops: float, energy: float | None, accuracy: float = 0.5) -> dict:
    return {
        **cell.settings(),
        "status": "ok",
        "error": None,
        "model_label": "tiny (built-in, trained on synthetic data)",
        "dataset_description": "synthetic scienceqa",
        "n_samples": 4,
        "latency_s": latency_s,
        "latency_p90_s": latency_s * 1.5,
        "latency_n": 4,
        "prefill_s": latency_s / 4,
        "decode_s_per_token": latency_s / 40,
        "flops_per_sample": flops,
        "energy_j_per_sample": energy,
        "energy_note": None if energy is not None else "no counter here",
        "accuracy": accuracy,
        "accuracy_ci_low": accuracy - 0.1,
        "accuracy_ci_high": accuracy + 0.1,
        "accuracy_n": 4,
        "max_new_tokens": 16,
        "prompt_template": "{question}",
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
    frame = cells_frame(
        [
            ok_row(
                cells["bf16"], latency_s=0.5, flops=2e9, energy=None
            ),  # written in any order: the sweep's order counts
            ok_row(cells["fp32"], latency_s=2.0, flops=4e9, energy=8.0, accuracy=0.75),
            ok_row(cells["fp16"], latency_s=1.0, flops=4e9, energy=2.0),
        ]
    )
    summary = summarize(job, grid, frame, RUN_INFO, {})
    header, *rows = section_table(summary, "Optimization Tests")
    assert header[0] == "Optimization" and header[-5:] == [
        "% latency",
        "% FLOPs",
        "% energy",
        "answers = original",
        "Δ accuracy [95% CI]",
    ]
    assert [row[0] for row in rows] == ["fp32", "fp16", "bf16"]
    assert [row[-5:-2] for row in rows] == [
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
    frame = cells_frame(
        [
            ok_row(by_id[i], latency[(by_id[i].point.optimization, by_id[i].point.batch_size)], 1e9, 1.0)
            for i in grid.sections["opt_by_batch"]
        ]
    )
    header, *rows = section_table(summarize(job, grid, frame, RUN_INFO, {}), "Opt By Batch Tests")
    assert header[:2] == ["Batch size", "Optimization"]
    percent = {(row[1], row[0]): row[header.index("% latency")] for row in rows}
    assert percent == {("fp32", "1"): "100.0", ("fp16", "1"): "50.0", ("fp32", "8"): "100.0", ("fp16", "8"): "75.0"}


def test_a_cell_that_did_not_finish_shows_its_status_and_is_listed():
    job, grid = job_and_grid({"optimization": {"optimization": ["fp32", "fp16", "compile"]}})
    cells = by_optimization(grid, "optimization")
    frame = cells_frame(
        [
            ok_row(cells["fp32"], latency_s=2.0, flops=4e9, energy=None),
            outcome_row(cells["fp16"].settings(), "oom", "OutOfMemoryError: CUDA out of memory"),
            outcome_row(cells["compile"].settings(), "skipped", "no compiler here"),
        ]
    )
    summary = summarize(job, grid, frame, RUN_INFO, {})
    header, *rows = section_table(summary, "Optimization Tests")
    assert [row[0] for row in rows] == ["fp32", "fp16", "compile"]
    assert rows[1][1] == "oom" and rows[1][-5:] == ["n/a", "n/a", "n/a", "oom", "oom"]
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
        rows.append(
            ok_row(
                cell,
                latency_s=cell.point.image_size.width / 1000,
                flops=1e9,
                energy=None,
                accuracy=0.5 if cell.point.dataset == "scienceqa" else 0.25,
            )
        )
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


def test_disturbed_figures_are_marked_and_listed_with_their_reasons():
    job, grid = job_and_grid({"batch": {"batch_size": [1, 2]}})
    first, second = grid.cells
    reason = "disturbed: other processes used 46% of the worker's cores"
    frame = cells_frame(
        [
            {**ok_row(first, latency_s=1.0, flops=1e9, energy=None), "measurement_quality": reason},
            {**ok_row(second, latency_s=1.0, flops=1e9, energy=None), "measurement_quality": "clean"},
        ]
    )
    summary = summarize(job, grid, frame, RUN_INFO, {})
    rows = section_table(summary, "Batch Tests")[1:]
    assert [("†" in " ".join(row)) for row in rows] == [True, False]
    listed = section_table(summary, "Disturbed measurements")
    assert listed[1][0] == first.cell_id and listed[1][-1] == "other processes used 46% of the worker's cores"
    assert len(listed) == 2


# --- sweeps too large for a row per cell ------------------------------------------------------


def table_in(text: str) -> list[list[str]]:
    """The cells of the first markdown table in `text`, header first."""
    lines = text.split("\n| ", 1)[1].split("\n\n", 1)[0].splitlines()
    table = ["| " + lines[0], *lines[1:]]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table if not line.startswith("|---")]


def grid_rows(grid, sweep: str, failed_every: int = 0) -> list[dict]:
    """A made-up latency that grows with batch size, image size and seq_len; energy and accuracy too."""
    by_id = {cell.cell_id: cell for cell in grid.cells}
    rows = []
    for index, cell_id in enumerate(grid.sections[sweep]):
        cell = by_id[cell_id]
        if failed_every and index % failed_every == 1:
            rows.append(
                outcome_row(cell.settings(), "failed", f"RuntimeError: simulated at batch {cell.point.batch_size}")
            )
            continue
        width, height = cell.point.image_size.width, cell.point.image_size.height
        latency = 0.001 * cell.point.batch_size * width * height / 224**2 * (1 + cell.point.seq_len / 100)
        rows.append(ok_row(cell, latency_s=latency, flops=1e9, energy=latency * 3, accuracy=1 / (1 + latency)))
    return rows


def test_a_crossed_sweep_too_large_for_a_row_per_cell_gets_pivots_and_extremes_per_metric():
    job, grid = job_and_grid(
        {"grid": {"batch_size": list(range(1, 31)), "seq_len": [16, 32, 64], "image_size": [224, 336, 448, 560]}}
    )
    summary = summarize(
        job, grid, cells_frame(grid_rows(grid, "grid", failed_every=50)), RUN_INFO, {"grid": "plots/grid.png"}
    )
    section = summary.split("## Grid Tests\n", 1)[1].split("\n## ", 1)[0]
    assert "360 cells (batch size 30 x image size 4 x seq len 3 values)" in section
    assert "Cells: 352 ok, 8 failed." in section
    assert "Every cell is a row of cells.parquet" in section and "![grid](plots/grid.png)" in section
    for title in ("Latency s/batch", "Energy J/sample", "Accuracy"):
        assert f"### {title}\n" in section
    pivot = table_in(section.split("### Latency s/batch\n", 1)[1].split("Best and worst")[0])  # the pivot's rows
    assert pivot[0] == ["Batch size ↓ Image size →", "224", "336", "448", "560"]
    assert [row[0] for row in pivot[1:]] == [str(b) for b in range(1, 30, 2)] + [
        "30"
    ]  # every 2nd batch size and the last
    # The median over seq_len at batch 1, 224 px, of the ok cells (seq_len 32 failed): 0.001 * (1.16 + 1.64) / 2.
    assert pivot[1][1] == "0.0014"
    assert (
        "(the median over seq len)" in section
        and "Shown: 16 of 30 batch size values (every 2nd and the last)" in section
    )
    extremes = table_in(
        section.split("### Latency s/batch\n", 1)[1].split("### Energy")[0].split("Best and worst", 1)[1]
    )
    assert extremes[0] == ["Rank", "Batch size", "Image size", "Seq len", "Latency s/batch", "cell_id"]
    assert extremes[1][:4] == ["1 of 352", "1", "224", "16"] and extremes[-1][:4] == ["352 of 352", "30", "560", "64"]
    accuracy = section.split("### Accuracy\n", 1)[1]
    assert "(higher is better)" in accuracy and table_in(accuracy.split("Best and worst", 1)[1])[1][1:4] == [
        "1",
        "224",
        "16",
    ]
    assert summary.count("\n| ") < 200  # no row per cell anywhere


def test_a_large_sweep_over_datasets_ranks_each_dataset_apart():
    job, grid = job_and_grid(
        {"grid": {"batch_size": list(range(1, 21)), "seq_len": [16, 32, 64], "dataset": ["scienceqa", "textvqa"]}}
    )
    summary = summarize(job, grid, cells_frame(grid_rows(grid, "grid")), RUN_INFO, {})
    for title in ("Latency s/batch, ScienceQA", "Latency s/batch, TextVQA", "Accuracy, ScienceQA", "Accuracy, TextVQA"):
        assert f"### {title}\n" in summary
    assert "Batch size ↓ Seq len →" in summary


def test_a_single_axis_too_long_for_a_row_each_shows_every_kth_value_and_the_extremes():
    job, grid = job_and_grid({"batch": {"batch_size": list(range(1, 201))}})
    summary = summarize(job, grid, cells_frame(grid_rows(grid, "batch")), RUN_INFO, {})
    table = table_in(summary.split("## Batch Tests\n", 1)[1].split("### ")[0])
    assert [row[0] for row in table[1:]] == [str(b) for b in range(1, 200, 5)] + ["200"]
    assert table[0][1] == "Latency s/batch (median, p90, n)"
    assert "Below: 41 of its 200 batch size values (every 5th and the last)" in summary
    assert "### Latency s/batch\n" in summary and "1 of 200" in summary and "200 of 200" in summary


def test_a_wxh_image_size_is_a_pivot_value_as_the_job_writes_it():
    job, grid = job_and_grid({"grid": {"batch_size": list(range(1, 26)), "image_size": ["1920x1080", 224]}})
    summary = summarize(job, grid, cells_frame(grid_rows(grid, "grid")), RUN_INFO, {})
    assert "| Batch size ↓ Image size → | 1920x1080 | 224 |" in summary


def test_summary_stays_small_for_any_grid_and_says_where_the_rest_is():
    sweeps = {f"sweep{i}": {"batch_size": list(range(1, 61)), "image_size": [224 + i]} for i in range(40)}
    job, grid = job_and_grid(sweeps)
    rows = []
    for sweep in sweeps:
        rows += grid_rows(grid, sweep, failed_every=3)
    for row in rows:  # every failure with its own message, and a long one
        if row["status"] == "failed":
            row["error"] += " " + row["cell_id"] + " x" * 400
    summary = summarize(job, grid, pl.from_arrow(pa.Table.from_pylist(rows, schema=CELL_SCHEMA)), RUN_INFO, {})
    assert 150_000 < len(summary.encode()) < 200_000
    assert "## Sweep39 Tests\n\nLeft out to keep this file short: its 60 cells are rows of cells.parquet." in summary
    assert "## Sweep0 Tests\n\nFixed:" in summary
    assert "more distinct errors are left out here; every cell is a row of cells.parquet." in summary


def test_large_sweep_plots_are_heatmaps_without_layout_warnings(tmp_path):
    import warnings

    from fuyu_ray.presentation.plots import write_plots
    from fuyu_ray.storage.store import ResultStore

    job, grid = job_and_grid(
        {
            "grid": {
                "batch_size": list(range(1, 41)),
                "seq_len": list(range(16, 216, 8)),
                "optimization": ["fp32", "bf16"],
            },
            "long": {"batch_size": list(range(1, 301))},
        }
    )
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    rows = {row["cell_id"]: row for sweep in grid.sections for row in grid_rows(grid, sweep)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots = write_plots(store, job, grid, cells_frame(list(rows.values())))
    assert plots["grid"] == "plots/grid.png" and plots["long"] == "plots/long.png"
    assert (tmp_path / "plots" / "grid.png").stat().st_size > 10_000


def test_a_failed_first_optimization_is_not_the_baseline_of_the_percentages():
    """The first optimization failed: the first one that finished is the 100% the others are held against."""
    job, grid = job_and_grid({"optimization": {"optimization": ["fp32", "fp16", "bf16"]}})
    cells = by_optimization(grid, "optimization")
    frame = cells_frame(
        [
            outcome_row(cells["fp32"].settings(), "failed", "RuntimeError: simulated"),
            ok_row(cells["fp16"], latency_s=2.0, flops=4e9, energy=8.0),
            ok_row(cells["bf16"], latency_s=1.0, flops=2e9, energy=2.0),
        ]
    )
    header, *rows = section_table(summarize(job, grid, frame, RUN_INFO, {}), "Optimization Tests")
    assert header[-5:-2] == ["% latency", "% FLOPs", "% energy"]
    assert [[row[0], row[1]] + row[-5:-2] for row in rows] == [
        ["fp32", "failed", "n/a", "n/a", "n/a"],
        ["fp16", "2.000 (p90 3.000, n=4)", "100.0", "100.0", "100.0"],
        ["bf16", "1.000 (p90 1.500, n=4)", "50.0", "50.0", "25.0"],
    ]


def test_prompts_cut_to_seq_len_are_counted_under_the_sweep():
    job, grid = job_and_grid({"seq_len": {"seq_len": [200, 32, 16]}})
    by_seq_len = {cell.point.seq_len: cell for cell in grid.cells}
    cut = {200: 0, 32: 1, 16: 3}
    frame = cells_frame([{**ok_row(by_seq_len[n], 1.0, 1e9, None), "truncated_prompts": cut[n]} for n in (200, 32, 16)])
    section = summarize(job, grid, frame, RUN_INFO, {}).split("## Sequence Length Tests\n", 1)[1].split("\n## ", 1)[0]
    [line] = [line for line in section.splitlines() if line.startswith("Prompts cut to seq_len")]
    assert "ScienceQA at seq_len 32: 1/4" in line and "ScienceQA at seq_len 16: 3/4" in line
    assert "seq_len 200" not in line
    # No prompt cut: no such line.
    uncut = cells_frame([{**ok_row(by_seq_len[n], 1.0, 1e9, None), "truncated_prompts": 0} for n in (200, 32, 16)])
    assert "Prompts cut" not in summarize(job, grid, uncut, RUN_INFO, {})


def test_prompts_cut_to_seq_len_are_counted_in_a_large_sweep():
    job, grid = job_and_grid({"grid": {"batch_size": list(range(1, 21)), "seq_len": [16, 32, 64]}})
    rows = [
        {**row, "truncated_prompts": 2 if row["seq_len"] == 16 and row["status"] == "ok" else 0}
        for row in grid_rows(grid, "grid")
    ]
    section = summarize(job, grid, cells_frame(rows), RUN_INFO, {}).split("## Grid Tests\n", 1)[1]
    assert "Prompts cut to seq_len in 20 cells (`truncated_prompts` in cells.parquet)." in section


def test_the_published_figures_are_set_beside_the_cell_at_the_base_point():
    """Two ScienceQA cells finished; the one at the job's base point (batch 1) is the one compared, though
    another comes first; a failed cell at the base point of TextVQA leaves TextVQA's row unmeasured."""
    job, grid = job_and_grid(
        {"batch": {"batch_size": [8, 1], "dataset": ["scienceqa", "textvqa"]}},
        published={"source": "a model card", "figures": {"scienceqa": 60.0, "textvqa": 50.0}},
    )
    cell = {(c.point.dataset, c.point.batch_size): c for c in grid.cells}
    frame = cells_frame(
        [
            ok_row(cell["scienceqa", 8], latency_s=1.0, flops=1e9, energy=None, accuracy=0.25),
            ok_row(cell["scienceqa", 1], latency_s=1.0, flops=1e9, energy=None, accuracy=0.75),
            outcome_row(cell["textvqa", 1].settings(), "failed", "RuntimeError: simulated"),
        ]
    )
    table = section_table(summarize(job, grid, frame, RUN_INFO, {}), "Beside the published figures")
    assert table[0] == ["Task", "published", "ours [95% interval]", "ours - published", "n", "prompt", "cell"]
    rows = {row[0]: row for row in table[1:]}
    assert rows["ScienceQA"] == [
        "ScienceQA",
        "60",
        "75.0 [65.0, 85.0]",
        "+15.0",
        "4",
        "lmms-eval's",
        cell["scienceqa", 1].cell_id,
    ]
    assert rows["TextVQA"][2] == "not measured in this run"
