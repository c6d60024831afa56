"""The default job end to end: real CLI, real local Ray, real tiny FuyuForCausalLM, real parquet."""

from __future__ import annotations

import json
import re
import time

import polars as pl
import pytest
import torch
from conftest import run_grid, write_job

pytestmark = pytest.mark.slow

REQUIRED_CELL_COLUMNS = {
    "cell_id",
    "model",
    "weights",
    "device",
    "batch_size",
    "image_size",
    "seq_len",
    "optimization",
    "dataset",
    "status",
    "error",
    "n_samples",
    "latency_s",
    "energy_j_per_sample",
    "flops_per_sample",
    "accuracy",
    "node_id",
    "started_at",
    "finished_at",
    "energy_note",
    "accuracy_note",
}
REQUIRED_SAMPLE_COLUMNS = {"cell_id", "sample_id", "prompt", "prediction", "references", "score"}


def test_default_job_writes_every_output(smoke_run):
    out, result = smoke_run
    for name in ("cells.parquet", "samples.parquet", "summary.md", "run.json", "plots/latency_energy_plot.png"):
        assert (out / name).is_file(), name
    cells = pl.read_parquet(out / "cells.parquet")
    assert REQUIRED_CELL_COLUMNS <= set(cells.columns)
    assert REQUIRED_SAMPLE_COLUMNS <= set(pl.read_parquet(out / "samples.parquet").columns)
    assert set(cells.get_column("status")) <= {"ok", "skipped"}
    assert len(list((out / "cells").glob("*.parquet"))) == cells.height


def test_every_section_of_the_seed_is_in_the_summary(smoke_run):
    out, _ = smoke_run
    summary = (out / "summary.md").read_text()
    for title in (
        "Device Tests",
        "Batch Tests",
        "Image Size Tests",
        "Sequence Length Tests",
        "Optimization Tests",
        "How this was measured",
        "Harness",
    ):
        assert f"## {title}" in summary, title


def test_cuda_cells_run_on_a_gpu_and_are_skipped_with_the_reason_without_one(smoke_run):
    out, _ = smoke_run
    cuda = pl.read_parquet(out / "cells.parquet").filter(pl.col("device") == "cuda")
    assert cuda.height >= 1
    if torch.cuda.is_available():
        assert cuda.get_column("status").to_list() == ["ok"] * cuda.height, cuda.get_column("error").to_list()
        assert cuda.get_column("latency_s").min() > 0
    else:
        assert cuda.get_column("status").to_list() == ["skipped"] * cuda.height
        assert all("GPU" in reason for reason in cuda.get_column("error").to_list())


def test_cpu_cells_have_figures(smoke_run):
    out, _ = smoke_run
    ok = pl.read_parquet(out / "cells.parquet").filter(pl.col("status") == "ok")
    assert ok.height >= 10
    assert ok.get_column("latency_s").min() > 0
    assert ok.get_column("flops_per_sample").min() > 0
    # No RAPL counter here: energy must be null with the reason, never a guess.
    for energy, note in ok.select("energy_j_per_sample", "energy_note").rows():
        assert (energy is None) == (note is not None)


def test_run_json_records_the_harness(smoke_run):
    out, _ = smoke_run
    run = json.loads((out / "run.json").read_text())
    for key in ("wall_s", "workers", "busy_s", "model_loads", "packages", "ray_address", "job_file"):
        assert key in run, key
    cells = pl.read_parquet(out / "cells.parquet")
    # One load per variant an actor loaded (flash_attention_2 is refused on CPU before loading), not per cell.
    loaded = cells.filter(pl.col("load_s").is_not_null()).select("device", "optimization").unique().height
    assert run["model_loads"] == loaded


def test_progress_is_one_plain_line_per_cell_off_a_terminal(smoke_run):
    out, result = smoke_run
    cells = pl.read_parquet(out / "cells.parquet")
    lines = [line for line in result.stdout.splitlines() if re.match(r"\[\d+/\d+\] ", line)]
    assert len(lines) == cells.height


def test_rerun_skips_done_cells_and_force_recomputes(tmp_path):
    job = write_job(
        tmp_path,
        "resume",
        "standin:sleep=0.01",  # what is reused is the driver's business: the model only has to be quick
        "  batch: {batch_size: [1, 2]}\n  again: {batch_size: [2]}\n",
        "weights: random\nlimit: 2\n",
    )
    out = tmp_path / "out"
    first = run_grid("--job", str(job), "--out", str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 cells, 2 to run" in first.stdout  # the shared batch-2 cell runs once
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")}

    second = run_grid("--job", str(job), "--out", str(out))
    assert second.returncode == 0
    assert "2 cells, 0 to run" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.parquet")} == stamps

    # An edited job adds its new cell and reports only cells that still belong to it.
    job.write_text(job.read_text().replace("batch_size: [1, 2]", "batch_size: [2, 3]"))
    third = run_grid("--job", str(job), "--out", str(out))
    assert "2 cells, 1 to run" in third.stdout
    reported = pl.read_parquet(out / "cells.parquet")
    assert sorted(reported.get_column("batch_size").to_list()) == [2, 3]
    assert len(list((out / "cells").glob("*.parquet"))) == 3  # nothing on disk was lost

    forced = run_grid("--job", str(job), "--out", str(out), "--force")
    assert "2 cells, 2 to run" in forced.stdout


def test_gpu_cells_on_a_cluster_without_gpus_are_skipped_not_waited_on(tmp_path):
    job = write_job(
        tmp_path,
        "gpu",
        "standin:sleep=0.1",
        "  batch: {batch_size: [1, 2]}\n",
        "weights: random\nlimit: 1\n",
        device="cuda",
        optimization="fp16",
    )
    started = time.monotonic()
    # A fresh local Ray that sees no GPU, on any machine: Ray counts only the GPUs CUDA_VISIBLE_DEVICES lists.
    result = run_grid("--job", str(job), "--out", str(tmp_path / "out"), timeout=300, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0
    assert time.monotonic() - started < 240
    table = pl.read_parquet(tmp_path / "out" / "cells.parquet")
    assert table.get_column("status").to_list() == ["skipped", "skipped"]
    assert "GPU=1" in table.get_column("error")[0]
