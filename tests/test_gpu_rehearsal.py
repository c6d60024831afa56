"""The GPU check's first run on a lent GPU cannot be wasted: the stock target cells first, no finished
warm-up thrown away, a watchdog before the outside limit, few files that come back, target lines that
never vanish, and a rehearsal on CPU that proves the mechanics."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from conftest import ROOT
from test_gpu_check import row

from fuyu_ray.bench.interference import GpuSampler, verdict
from fuyu_ray.bench.runner import CellDeadline, DeadlineGuard
from fuyu_ray.bench.workload import with_preprocess
from fuyu_ray.driver.gpu_check import DEFAULT_JOB, Budget, load_plain_job, ordered_cells, run_one
from fuyu_ray.driver.gpu_check_output import OUTPUT_FILES
from fuyu_ray.job.presets import PRESETS
from fuyu_ray.job.quality import QualityThresholds
from fuyu_ray.presentation.gpu_check_summary import ENERGY_TARGET_WINDOW_S, target_lines


def rehearse(tmp_path, *options: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "fuyu_ray.gpu_check", "--rehearse", "--out", str(tmp_path / "out"), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.perf_counter() - began


def came_back(out) -> list[str]:
    """What a lent machine would return: plain files at most one folder deep."""
    names = sorted(p.name for p in out.iterdir())
    assert all((out / name).is_file() for name in names), names
    return names


# --- 1. the stock target cells first ------------------------------------------------------------


def test_the_stock_target_cells_run_before_any_compile():
    cells = ordered_cells(load_plain_job(DEFAULT_JOB, None, None))
    head = [(c.point.optimization, c.point.batch_size, c.point.image_size.job_value) for c in cells[:6]]
    assert head == [
        ("fp16", 1, 224),
        ("fp16", 16, 224),
        ("fp16", 1, "1920x1080"),
        ("compile", 1, 224),
        ("compile", 16, 224),
        ("compile", 1, "1920x1080"),
    ]
    assert not any(PRESETS[c.point.optimization].compiled for c in cells[:3])


# --- 2. no finished work thrown away ------------------------------------------------------------


class Clock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_past_its_own_deadline_a_cell_goes_on_while_the_hard_one_covers_a_pass_and_says_where():
    clock = Clock()
    guard = DeadlineGuard(deadline=10.0, hard_deadline=60.0, clock=clock)
    clock.now = 25.0
    guard.check("after the warm-up", pass_s=5.0)  # 30 <= 60: time a pass
    assert guard.passed_at == "after the warm-up, 15.0 s past its deadline"
    clock.now = 58.0
    with pytest.raises(CellDeadline, match="stopped after the warm-up: past its deadline by 48.0 s"):
        guard.check("after the warm-up", pass_s=5.0)  # 63 > 60: the whole budget cannot cover it
    without_hard = DeadlineGuard(deadline=10.0, clock=clock)
    with pytest.raises(CellDeadline):
        without_hard.check("after the warm-up")


def test_a_slow_compile_is_timed_once_when_the_budget_still_covers_it():
    from fuyu_ray.bench.standin import StandInRunner
    from fuyu_ray.job.cells import Cell, Variant
    from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride

    model = "standin:sleep=0.01,batches=2,compile_s=0.3"
    runner = StandInRunner(Variant(model, "random", "cpu", "compile"))
    cell = Cell(model, "random", 1, Point("cpu", "textvqa", 1, 224, 200, "compile"), DatasetSource(), TaskOverride())
    now = time.perf_counter()
    kept = runner.run(cell, deadline=now + 0.1, hard_deadline=now + 60).record.to_pylist()[0]
    assert kept["status"] == "ok" and kept["latency_n"] == 2
    assert kept["deadline_passed_at"].startswith("after the warm-up")
    lost = runner.run(cell, deadline=time.perf_counter() + 0.1).record.to_pylist()[0]
    assert lost["status"] == "timeout" and "after the warm-up" in lost["error"]


def test_past_its_deadline_a_cell_stops_repeating_passes_for_the_energy_window():
    from fuyu_ray.bench.energy import NoEnergyMeter, run_until_min_window

    passes = []
    window = run_until_min_window(lambda: passes.append(1), NoEnergyMeter("none"), 3600.0, stop=lambda: True)
    assert window.repeats == 1 and passes == [1]


def test_the_budget_expects_a_kind_of_cell_to_take_as_long_as_its_longest_so_far():
    cells = ordered_cells(load_plain_job(DEFAULT_JOB, None, None))
    compiled = next(c for c in cells if PRESETS[c.point.optimization].compiled)
    budget = Budget(started=0.0, seconds=450.0, clock=lambda: 300.0)
    assert budget.cell_times(compiled) == (100.0, 150.0)
    assert budget.refusal("this cell", budget.cell_times(compiled)[0]) is None  # 150 s left
    budget.learn(compiled, 170.0)
    assert budget.cell_times(compiled)[0] == 170.0
    assert "needs about 170 s and 150 s were left" in budget.refusal("this cell", budget.cell_times(compiled)[0])
    small = Budget(started=0.0, seconds=60.0, scale=60 / 450)
    assert small.cell_times(compiled) == pytest.approx((100 * 60 / 450, 150 * 60 / 450))


# --- 4. energy windows and verdicts that cannot vanish -------------------------------------------


def test_the_energy_target_cell_gets_a_three_second_window_and_the_others_their_own(tmp_path):
    job = load_plain_job(DEFAULT_JOB, None, None)
    cells = ordered_cells(job)
    asked = []

    class Runner:
        loaded = None

        def run(self, cell, **limits):
            asked.append((cell.point.batch_size, cell.point.image_size.job_value, cell.point.dataset, limits))
            from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table

            return SimpleNamespace(
                record=cell_batch(outcome_row(cell.settings(), "ok", None)), samples=sample_table([])
            )

    runners = {cell.variant: (Runner(), None) for cell in cells}
    budget = Budget(started=time.perf_counter(), seconds=None)
    for cell in (cells[1], cells[-1]):  # b16 224 px textvqa, then a seq_len cell
        run_one(cell, job, budget, runners, {}, print)
    assert asked[0][:2] == (16, 224) and asked[0][3]["min_energy_window_s"] == ENERGY_TARGET_WINDOW_S >= 3.0
    assert asked[1][3]["min_energy_window_s"] is None


def test_there_are_always_four_target_lines_with_a_verdict_or_why_not(monkeypatch):
    monkeypatch.setenv("FUYU_RAY_PEAK_TFLOPS", "700")
    rows = [
        row("fp16", 1, latency_s=0.080),
        row("compile", 1, latency_s=0.050),
        row("fp16", 16, energy_j_per_sample=None, energy_note="NVML: no energy counter on this GPU"),
        row("compile", 16, prefill_roofline_ratio=0.60, gpu_name="NVIDIA H200"),
        row("fp16", 1, (1920, 1080), ttft_s=0.070, preprocess_s=0.045, ttft_with_preprocess_s=0.115),
    ]
    lines = target_lines(rows, "judge")
    assert lines == [
        "target: b1 224 px latency: 50.0 ms (compile); target <= 66.0 ms: met",
        "target: b16 224 px energy: not measured: NVML: no energy counter on this GPU (target <= 3.00 J/sample)",
        "target: b16 224 px prefill: 60% (compile) of the measured matrix rate (700 TFLOP/s); 42% of the "
        "datasheet's (989 TFLOP/s); target >= 70%: missed by 10%",
        "target: b1 1920x1080 time to first token: 115.0 ms (fp16), of which the processor 45.0 ms and the model "
        "70.0 ms; target <= 100.0 ms: missed by 15.0 ms",
    ]
    assert [line.rsplit(": ", 1)[1] for line in target_lines(rows[:2], "rehearsal")][:1] == ["rehearsal"]
    assert all(line.startswith("target: ") for line in target_lines([], "judge"))
    assert len(target_lines([], "judge")) == 4


def test_the_processor_time_counts_in_what_a_user_waits_for():
    assert with_preprocess(0.070, 0.045) == pytest.approx(0.115)
    assert with_preprocess(None, 0.045) is None and with_preprocess(0.07, None) is None


class Nvml:
    NVML_CLOCK_SM = 1

    def __init__(self, pids):
        self.pids = pids

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return 0

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return 1980

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=p) for p in self.pids]


def test_a_process_list_that_never_shows_our_own_pid_makes_the_gpu_check_unknown_not_disturbed():
    thresholds = QualityThresholds()
    hidden = GpuSampler(Nvml([4242, 4343]), handle=None, own_pids={100})
    hidden.sample_once()
    assert verdict(thresholds, None, hidden.result, []).startswith("unknown: NVML's process list never showed")
    assert hidden.result.columns()["gpu_foreign_processes"] is None
    shown = GpuSampler(Nvml([100, 4242]), handle=None, own_pids={100})
    shown.sample_once()
    assert verdict(thresholds, None, shown.result, []) == "disturbed: 1 other compute process(es) on the GPU"


def test_the_gpu_is_named_by_cuda_when_nvml_gives_no_name(monkeypatch):
    import torch

    from fuyu_ray.bench.device import NvmlDevice

    class NoNvml:
        def nvmlInit(self):
            raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    device = NvmlDevice(device_index=5, nvml=NoNvml(), cuda_index=0)
    assert device.info()["gpu_name"] == "NVIDIA H200 #0"


# --- 3 and 6. the rehearsal: files that come back, target lines, the order, the watchdog ----------


@pytest.mark.slow
def test_a_rehearsal_leaves_few_files_prints_four_target_lines_and_exits_0(tmp_path):
    result, seconds = rehearse(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert seconds < 240
    names = came_back(tmp_path / "out")
    assert len(names) <= 8 and set(OUTPUT_FILES) <= set(names)
    targets = [line for line in result.stdout.splitlines() if line.startswith("target: ")]
    assert len(targets[-4:]) == 4 and all(line.endswith("rehearsal") or "not measured: " in line for line in targets)
    cells = pq.read_table(tmp_path / "out" / "cells.parquet").to_pylist()
    assert len(cells) == 32 and [c["optimization"] for c in cells[:3]] == ["fp16"] * 3


@pytest.mark.slow
def test_a_compile_slower_than_its_deadline_keeps_the_stock_targets_and_ends_inside_the_budget(tmp_path):
    # 30 s budget: a compiled cell is allowed 150 x 30/450 = 10 s, and each compile takes 11. The budget
    # counts from the start, torch's import included: room for a slow import on a busy machine.
    result, seconds = rehearse(tmp_path, "--budget-s", "30", "--simulated-compile-s", "11")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert seconds < 30 + 10 + 5  # the budget, its 10 s of grace, and the interpreter's start
    cells = pq.read_table(tmp_path / "out" / "cells.parquet").to_pylist()
    stock = [c for c in cells[:3] if c["optimization"] == "fp16"]
    assert len(stock) == 3 and all(c["status"] == "ok" for c in stock)
    compiled = [c for c in cells if c["optimization"] == "compile"]
    assert compiled[0]["status"] == "ok" and compiled[0]["deadline_passed_at"].startswith("after the warm-up")
    assert all(c["deadline_passed_at"] or c["error"] for c in compiled)  # each says where it stopped, or why not


@pytest.mark.slow
def test_the_watchdog_leaves_a_traceback_the_files_and_a_non_zero_exit(tmp_path):
    result, seconds = rehearse(tmp_path, "--simulated-compile-s", "30", "--watchdog-s", "15")
    assert result.returncode == 3 and seconds < 30  # fired inside the first compile
    assert "most recent call first" in result.stderr and "Thread" in result.stderr
    names = came_back(tmp_path / "out")
    assert set(OUTPUT_FILES) <= set(names)
    assert "Stopped by the watchdog" in (tmp_path / "out" / "summary.md").read_text()
    assert sum(line.startswith("target: ") for line in result.stdout.splitlines()) >= 4
    assert pq.read_table(tmp_path / "out" / "cells.parquet").num_rows >= 3  # the stock targets, kept
