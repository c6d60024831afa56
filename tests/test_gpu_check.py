"""The GPU check script runs without Ray, Polars or datasets, on the same per-cell code."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pyarrow.parquet as pq
from conftest import BASE_POINT, ROOT

# PyYAML comes with transformers; psutil does not come with torch, and a bare GPU box may lack it.
BLOCKED = ("ray", "polars", "datasets", "rich", "matplotlib", "psutil")


def test_gpu_check_runs_in_process_without_the_cluster_stack(tmp_path):
    job = json.loads((ROOT / "jobs/gpu-check.json").read_text())
    job["limit"] = 2
    job["sweeps"] = {
        "target_b1_1920x1080": {"image_size": ["1920x1080"], "optimization": ["fp16", "compile"]},
        "batch": {"batch_size": [1, 2]},
        "optimization": {"optimization": ["fp16", "flash_attention_2"]},
        "seq_len": {"seq_len": [200, 50]},
    }
    small = tmp_path / "job.json"
    small.write_text(json.dumps(job))
    blocker = "import sys; sys.modules.update({name: None for name in %r}); " % (BLOCKED,)
    code = blocker + "from fuyu_ray.driver.gpu_check import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--job",
            str(small),
            "--out",
            str(tmp_path / "out"),
            "--model",
            "tiny",
            "--device",
            "cpu",
            # No budget: what runs and what is skipped then depends on the job alone, not on how busy the
            # machine is; the budget's refusals and deadlines are checked on a clock of the test's own below.
            "--budget-s",
            "0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cells = pq.read_table(tmp_path / "out" / "cells.parquet").to_pylist()
    by_status = Counter(c["status"] for c in cells)
    assert by_status == {"ok": 4, "skipped": 2}, [
        (c["optimization"], c["seq_len"], c["status"], c["error"]) for c in cells
    ]
    ok = [c for c in cells if c["status"] == "ok"]
    assert all(c["accuracy"] is None and c["accuracy_note"] == "random weights" for c in ok)
    assert all(c["generated_tokens_mean"] == 10 for c in ok)  # forced to 10, as the targets are
    assert {(c["optimization"], c["image_tokens"]) for c in ok if c["image_width"] == 1920} == {
        ("fp16", 2340),
        ("compile", 2340),
    }
    skipped = {c["optimization"]: c["error"] for c in cells if c["status"] == "skipped"}
    assert "FlashAttention-2" in skipped["flash_attention_2"] and "same workload" in skipped["fp16"]
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "| preset |" in text and "1920x1080" in text and "first-token agreement, compile vs stock" in text


def test_bad_gpu_check_job_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = subprocess.run(
        [sys.executable, "-m", "fuyu_ray.gpu_check", "--job", str(bad)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_the_targets_cells_run_first_then_the_presets_then_the_seeds_sweeps():
    from fuyu_ray.driver.gpu_check import DEFAULT_JOB, load_plain_job, ordered_cells

    cells = ordered_cells(load_plain_job(DEFAULT_JOB, None, None))
    points = [
        (c.point.optimization, c.point.batch_size, c.point.image_size.label, c.point.dataset, c.point.seq_len)
        for c in cells
    ]
    assert points[:6] == [  # the stock baseline first: a compile may take minutes
        ("fp16", 1, "224", "textvqa", 200),
        ("fp16", 16, "224", "textvqa", 200),
        ("fp16", 1, "1920x1080", "textvqa", 200),
        ("compile", 1, "224", "textvqa", 200),
        ("compile", 16, "224", "textvqa", 200),
        ("compile", 1, "1920x1080", "textvqa", 200),
    ]
    # The quantized presets, then the other presets at the targets' points, one model at a time, then the
    # seed's sweeps on the baseline.
    assert [p[:3] for p in points[6:16]] == [
        ("int8", 1, "224"),
        ("int8", 16, "224"),
        ("int4", 1, "224"),
        ("int4", 16, "224"),
        ("bf16", 1, "224"),
        ("bf16", 16, "224"),
        ("eager", 1, "224"),
        ("eager", 16, "224"),
        ("flash_attention_2", 1, "224"),
        ("flash_attention_2", 16, "224"),
    ]
    assert {p[0] for p in points[16:]} == {"fp16"}
    assert "sdpa" not in {p[0] for p in points}  # fp16 under another name: float16, SDPA, not compiled
    assert len(points) == len(set(points))  # a cell two sweeps share runs once


def test_a_cell_past_its_deadline_stops_with_the_reason():
    import time

    from fuyu_ray.bench.runner import CellRunner
    from fuyu_ray.job.cells import Cell, Variant
    from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride

    runner = CellRunner(Variant("tiny", "random", "cpu", "fp32"), min_energy_window_s=0.01)
    cell = Cell(
        "tiny",
        "random",
        2,
        Point("cpu", "textvqa", 1, 224, 200, "fp32"),
        DatasetSource(),
        TaskOverride(max_new_tokens=2),
    )
    row = runner.run(cell, deadline=time.perf_counter() - 5).record.to_pylist()[0]
    assert row["status"] == "timeout"
    assert row["error"].startswith("stopped after the warm-up: past its deadline by")
    assert runner.run(cell, deadline=time.perf_counter() + 600).record.to_pylist()[0]["status"] == "ok"
    # Past its own deadline with the whole budget's still ahead: one timed pass is kept, however long the energy
    # window asks for, and the record says where the deadline went by.
    now = time.perf_counter()
    kept = runner.run(cell, deadline=now - 5, hard_deadline=now + 600, min_energy_window_s=3600.0)
    row = kept.record.to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert row["energy_repeats"] == 1 and row["deadline_passed_at"].startswith("after the warm-up")


def test_the_budget_refuses_what_it_cannot_cover_and_caps_each_deadline():
    from fuyu_ray.driver.gpu_check import Budget

    now = [100.0]
    budget = Budget(started=100.0, seconds=450.0, clock=lambda: now[0])
    assert budget.refusal("this cell", 100.0) is None
    assert budget.deadline(60.0) == 160.0
    now[0] = 500.0  # 50 s left
    assert budget.deadline(60.0) == 550.0  # never past the budget's end
    assert budget.refusal("this cell", 100.0) == (
        "not started: this cell needs about 100 s and 50 s were left of the GPU check's 450 s budget"
    )
    unlimited = Budget(started=0.0, seconds=None, clock=lambda: 1e9)
    assert unlimited.refusal("this cell", 1e6) is None and unlimited.deadline(60.0) is None


def test_cells_the_budget_cannot_cover_are_skipped_with_the_reason_and_a_summary_is_left(tmp_path):
    from fuyu_ray.driver.gpu_check import load_plain_job, run

    job = load_plain_job(ROOT / "jobs/gpu-check.json", "tiny", "cpu")
    rows = run(job, str(tmp_path / "out"), log=lambda line: None, budget_s=1e-9)
    assert rows and all(
        r["status"] == "skipped" and "budget" in r["error"] and r["error"].startswith("not started") for r in rows
    )
    assert pq.read_table(tmp_path / "out" / "cells.parquet").num_rows == len(rows)
    assert "budget" in (tmp_path / "out" / "summary.md").read_text()


class StepClock:
    """The budget's clock, moved only by what the test says took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedRunner:
    """A loaded model whose every cell takes `cell_s` on the clock, stopping at its deadline as the real
    runner does; it keeps the deadline each cell was given."""

    loaded = None  # no tokenizer: the check cannot compare workloads, so every cell is a cell of its own

    def __init__(self, clock: StepClock, cell_s: float) -> None:
        self.clock, self.cell_s, self.deadlines = clock, cell_s, []

    def run(self, cell, deadline=None, hard_deadline=None, min_energy_window_s=None):
        from fuyu_ray.bench.runner import CellResult
        from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table

        self.deadlines.append(deadline)
        finish = self.clock.now + self.cell_s
        if deadline is not None and finish > deadline:
            self.clock.now = deadline
            row = outcome_row(cell.settings(), "timeout", "stopped after timed batch 1: past its deadline")
        else:
            self.clock.now = finish
            row = outcome_row(cell.settings(), "ok", None)
        return CellResult(cell_batch(row), sample_table([]))

    def close(self) -> None:
        pass


def run_on_the_clock(monkeypatch, tmp_path, budget_s: float, load_s: float, cell_s: float, batches: list[int]):
    """gpu_check.run over one variant's stock cells, with the budget read off a StepClock."""
    import functools

    from fuyu_ray.driver import gpu_check
    from fuyu_ray.job.spec import parse_job

    clock = StepClock()
    runner = TimedRunner(clock, cell_s)

    def load(variant, job, log):
        clock.now += load_s
        return runner, None

    monkeypatch.setattr(gpu_check, "Budget", functools.partial(gpu_check.Budget, clock=clock))
    monkeypatch.setattr(gpu_check, "_load", load)
    job = parse_job(
        {
            "name": "budget",
            "model": "tiny",
            "weights": "random",
            "limit": 1,
            "base": dict(BASE_POINT),
            "sweeps": {"batch": {"batch_size": batches}},
        },
        "budget.json",
    )
    budget = gpu_check.Budget(started=0.0, seconds=budget_s)
    rows = gpu_check.run(job, str(tmp_path / "out"), log=lambda line: None, budget=budget)
    return rows, runner


def test_each_cell_runs_under_a_deadline_of_its_own_capped_by_the_budget(monkeypatch, tmp_path):
    from fuyu_ray.driver.gpu_check import STOCK_CELL

    _, allowance_s = STOCK_CELL
    # Loaded at 10 s, each cell 30 s on the clock: the first may run to 10 + its allowance, the later
    # ones only to the budget's end.
    rows, runner = run_on_the_clock(monkeypatch, tmp_path, budget_s=100.0, load_s=10.0, cell_s=30.0, batches=[1, 2])
    assert runner.deadlines == [10.0 + allowance_s, 100.0]
    assert [r["status"] for r in rows] == ["ok", "ok"]
    # A cell that outlasts its deadline is stopped there, and the check goes on.
    rows, runner = run_on_the_clock(
        monkeypatch, tmp_path, budget_s=1000.0, load_s=0.0, cell_s=allowance_s + 1, batches=[1, 2]
    )
    assert runner.deadlines == [allowance_s, 2 * allowance_s]
    assert [r["status"] for r in rows] == ["timeout", "timeout"]


def test_a_cell_the_rest_of_the_budget_cannot_cover_is_skipped_though_its_model_is_loaded(monkeypatch, tmp_path):
    from fuyu_ray.driver.gpu_check import STOCK_CELL

    # Loaded at 10 s, cells of 30 s: at 70 s the third still has 30 s (>= 30 s, the longest cell so far), the
    # fourth none.
    expected_s = 30.0
    assert STOCK_CELL[0] < expected_s
    rows, runner = run_on_the_clock(
        monkeypatch, tmp_path, budget_s=100.0, load_s=10.0, cell_s=30.0, batches=[1, 2, 3, 4]
    )
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "skipped"]
    assert len(runner.deadlines) == 3  # the fourth never started
    assert rows[3]["error"] == (
        f"not started: this cell needs about {expected_s:.0f} s and 0 s were left of the GPU check's 100 s budget"
    )
    cells = pq.read_table(tmp_path / "out" / "cells.parquet").to_pylist()
    assert sorted(c["status"] for c in cells) == ["ok", "ok", "ok", "skipped"]


def row(optimization, batch, image=(224, 224), status="ok", **figures):
    """A GPU-check record at a target's point, with the figures given."""
    return {
        "status": status,
        "error": None,
        "dataset": "textvqa",
        "image_size": image[0] if image[0] == image[1] else None,
        "image_width": image[0],
        "image_height": image[1],
        "seq_len": 200,
        "batch_size": batch,
        "optimization": optimization,
        **figures,
    }


def test_targets_are_read_off_the_best_preset_at_each_point(monkeypatch):
    from fuyu_ray.presentation.gpu_check_summary import target_lines

    monkeypatch.delenv("FUYU_RAY_PEAK_TFLOPS", raising=False)
    rows = [
        row("fp16", 1, latency_s=0.236),
        row("compile", 1, latency_s=0.050, first_token_top1_match=1.0, first_token_max_logit_diff=0.0312),
        row("fp16", 16, energy_j_per_sample=6.5, prefill_roofline_ratio=0.57),
        row("compile", 16, energy_j_per_sample=3.2, prefill_roofline_ratio=0.72),
        {**row("compile", 16, energy_j_per_sample=0.1), "dataset": "coco"},  # another point: not a target
        row("fp16", 1, (1920, 1080), ttft_s=0.101, preprocess_s=0.030, ttft_with_preprocess_s=0.131),
        row("compile", 1, (1920, 1080), ttft_s=0.0574, preprocess_s=0.030, ttft_with_preprocess_s=0.0874),
    ]
    assert target_lines(rows, "judge") == [
        "target: b1 224 px latency: 50.0 ms (compile); target <= 66.0 ms: met",
        "target: b16 224 px energy: 3.20 J/sample (compile); target <= 3.00 J/sample: missed by 0.20 J/sample",
        "target: b16 224 px prefill: 72% (compile) of the datasheet's matrix rate (none measured in this run); "
        "target >= 70%: met",
        "target: b1 1920x1080 time to first token: 87.4 ms (compile), of which the processor 30.0 ms and the model "
        "57.4 ms; target <= 100.0 ms: met",
    ]
    assert target_lines(rows[:1], "not judged (no GPU)")[0] == (
        "target: b1 224 px latency: 236.0 ms (fp16); target <= 66.0 ms: not judged (no GPU)"
    )
