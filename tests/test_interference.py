"""Disturbed measurements: the host window sees a real busy loop, the GPU sampler reads a fake
NVML (foreign processes, throttle-reason bits, falling clocks), and the verdict names each reason."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from types import SimpleNamespace

import pytest

from fuyu_ray.bench import interference
from fuyu_ray.bench.interference import (
    CLEAN,
    GpuSampler,
    GpuSamples,
    HostWindow,
    QualityThresholds,
    noise_series,
    settled,
    verdict,
)


def spin_on(core: int, go, cpu_seconds: float) -> None:
    """Pinned to `core`, spin until this process has used `cpu_seconds` of CPU time: the same work
    however busy the machine is, which a spin for so many seconds of the wall clock is not."""
    os.sched_setaffinity(0, [core])
    go.wait()
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


def test_a_process_spinning_on_the_workers_core_is_seen_by_the_real_counters():
    """The kernel's counters, read for real. All of the other process's CPU time falls inside the
    window on the measured core, so its share there is near 1 on an idle machine and nearer 1 on a
    busy one (whatever else runs on that core counts too); the threshold is 0.15."""
    core = sorted(os.sched_getaffinity(0))[0]
    go = multiprocessing.Event()
    other = multiprocessing.Process(target=spin_on, args=(core, go, 0.5))
    other.start()
    window = HostWindow(cores=[core]).start()
    go.set()
    other.join(timeout=60)
    window.stop()
    assert other.exitcode == 0
    assert window.other_cpu_s >= 0.4  # 0.5 s of CPU, less the counters' tick granularity
    assert window.other_cpu_share > 0.5
    assert "other processes used" in verdict(QualityThresholds(), window, None, [])


class ScriptedWindow(HostWindow):
    """The kernel's busy seconds on the cores, and the worker's own CPU seconds, as scripted."""

    def __init__(self, busy: list[float], own: list[float], cores: list[int]):
        super().__init__(cores=cores)
        self.busy, self.own = iter(busy), iter(own)

    def _cores_busy(self) -> float:
        return next(self.busy)

    def _own_cpu(self) -> float:
        return next(self.own)


@pytest.fixture
def two_second_window(monkeypatch):
    """The window's clock reads 100 s at start() and 102 s at stop(): shares are exact."""
    readings = iter([100.0, 102.0])
    monkeypatch.setattr(interference, "time", SimpleNamespace(perf_counter=lambda: next(readings)))


def test_the_workers_own_threads_are_not_other_processes(two_second_window):
    window = ScriptedWindow(busy=[10.0, 13.9], own=[3.0, 6.6], cores=[0, 1]).start().stop()
    assert window.seconds == 2.0
    assert window.other_cpu_s == pytest.approx(0.3)  # 3.9 busy, 3.6 of it the worker's
    assert window.other_cpu_share == pytest.approx(0.075)  # of 4 core-seconds
    assert verdict(QualityThresholds(), window, None, []) == CLEAN


def test_other_processes_above_the_threshold_are_named_with_their_share(two_second_window):
    window = ScriptedWindow(busy=[10.0, 13.5], own=[3.0, 3.3], cores=[0, 1]).start().stop()
    assert window.other_cpu_share == pytest.approx(0.8)  # 3.2 of 4 core-seconds
    assert verdict(QualityThresholds(), window, None, []) == "disturbed: other processes used 80% of the worker's cores"
    assert verdict(QualityThresholds(max_other_cpu_share=0.85), window, None, []) == CLEAN


class FakeNvml:
    """The three NVML calls the sampler makes, scripted per sample."""

    NVML_CLOCK_SM = 1

    def __init__(self, script: list[tuple[int, int, list[int]]]):
        self.script, self.index = script, 0

    def _current(self):
        return self.script[min(self.index, len(self.script) - 1)]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._current()[0]

    def nvmlDeviceGetClockInfo(self, handle, clock):
        return self._current()[1]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        reasons, clock, pids = self._current()
        self.index += 1
        return [SimpleNamespace(pid=p) for p in pids]


def sampled(script, own=frozenset({100})) -> GpuSamples:
    sampler = GpuSampler(FakeNvml(script), handle=None, own_pids=set(own))
    for _ in script:
        sampler.sample_once()
    return sampler.result


POWER_CAP, HW_SLOWDOWN, SW_THERMAL = 0x4, 0x8, 0x20


def test_power_cap_throttling_for_part_of_the_window_is_named_with_its_share():
    samples = sampled([(0, 1980, [100])] * 7 + [(POWER_CAP, 1400, [100])] * 3)
    assert samples.sm_clock_min_mhz == 1400 and samples.sm_clock_max_mhz == 1980
    assert verdict(QualityThresholds(), None, samples, []) == "disturbed: power cap throttling for 30% of the window"


def test_foreign_processes_and_two_reasons_are_all_named():
    samples = sampled([(SW_THERMAL | HW_SLOWDOWN, 1500, [100, 4242])] * 4)
    result = verdict(QualityThresholds(), None, samples, [])
    assert "1 other compute process(es) on the GPU" in result
    assert "thermal throttling for 100% of the window" in result and "slowdown throttling for 100%" in result


def test_a_clean_gpu_window_is_clean():
    samples = sampled([(0, 1980, [100])] * 10)
    assert verdict(QualityThresholds(), None, samples, [0.1] * 6) == CLEAN
    assert samples.columns()["gpu_foreign_processes"] == 0 and samples.columns()["gpu_throttle_reasons"] is None


class CountingNvml(FakeNvml):
    """Says when it has been sampled `enough` times, so a test waits for samples, not for time."""

    def __init__(self, script, enough: int):
        super().__init__(script)
        self.enough, self.reached = enough, threading.Event()

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        processes = super().nvmlDeviceGetComputeRunningProcesses(handle)
        if self.index >= self.enough:
            self.reached.set()
        return processes


def test_the_sampler_thread_samples_through_the_window():
    nvml = CountingNvml([(0, 1980 - 10 * i, []) for i in range(1000)], enough=5)
    sampler = GpuSampler(nvml, handle=None, every_s=0.001).start()
    assert nvml.reached.wait(timeout=60), "the sampler thread took no samples"
    result = sampler.stop()
    assert result.samples >= 5 and result.sm_clock_min_mhz < result.sm_clock_max_mhz


@pytest.mark.parametrize(
    "batches, disturbed",
    [
        ([0.10, 0.11, 0.10, 0.09, 0.10, 0.10], False),
        ([0.10, 0.20, 0.30, 0.15, 0.25, 0.10], True),
        ([0.10, 0.30], False),  # too few batches to judge
    ],
)
def test_unsteady_timings_are_flagged_only_with_enough_batches(batches, disturbed):
    result = verdict(QualityThresholds(), None, None, batches)
    assert result.startswith("disturbed: CV") == disturbed


def test_warm_up_settles_when_the_last_batches_agree():
    assert not settled([0.9, 0.3, 0.12], tolerance=0.1)
    assert settled([0.9, 0.3, 0.101, 0.1, 0.099], tolerance=0.1)


def test_thresholds_come_from_the_job_and_refuse_nonsense():
    assert QualityThresholds.from_mapping({"max_cv": 0.5, "min_batches_for_cv": 8}).min_batches_for_cv == 8
    with pytest.raises(ValueError, match="unknown key 'max_cpu'"):
        QualityThresholds.from_mapping({"max_cpu": 1})
    with pytest.raises(ValueError, match="max_cv: must be a non-negative number"):
        QualityThresholds.from_mapping({"max_cv": "high"})


def test_batches_of_different_lengths_are_not_unsteady_when_each_repeats_alike():
    """Two passes over three batches of very different lengths, each batch the same both times."""
    series = noise_series([0.1, 0.9, 0.3, 0.1, 0.9, 0.3], batches_per_pass=3, decode_s_per_token=[None] * 6)
    assert series == pytest.approx([1.0] * 6)
    unsteady = noise_series([0.1, 0.9, 0.3, 0.3, 0.3, 0.9], batches_per_pass=3, decode_s_per_token=[None] * 6)
    assert "CV" in verdict(QualityThresholds(min_batches_for_cv=6), None, None, unsteady)


def test_a_single_pass_is_judged_on_decode_time_per_token():
    assert noise_series([0.1, 0.9], batches_per_pass=2, decode_s_per_token=[0.01, None]) == [0.01]


def test_one_hiccup_among_many_batches_is_not_unsteadiness_but_many_are():
    steady = [0.027] * 33 + [0.284]  # one batch ten times slower: the median does not move
    assert verdict(QualityThresholds(), None, None, steady) == CLEAN
    unsteady = [0.027, 0.06] * 17
    assert verdict(QualityThresholds(), None, None, unsteady).startswith("disturbed: CV")


def test_a_warm_up_that_never_settled_is_a_reason():
    assert verdict(QualityThresholds(), None, None, [], unsettled_warmup=10) == (
        "disturbed: warm-up never settled in 10 batches"
    )


def standin_cell(batch: int):
    from fuyu_ray.job.cells import Cell
    from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride

    return Cell(
        "standin:sleep=0",
        "random",
        1,
        Point("cpu", "textvqa", batch, 224, 200, "fp32"),
        DatasetSource(),
        TaskOverride(),
    )


def test_a_disturbed_cell_is_measured_again_and_the_cleanest_attempt_kept():
    from fuyu_ray.bench.standin import StandInRunner

    qualities = iter(
        ["disturbed: other processes used 60% of the worker's cores", "disturbed: CV 0.40 over 8 batches", CLEAN]
    )
    shares = iter([0.6, 0.05, 0.01])

    class Scripted(StandInRunner):
        def _measure(self, cell, deadline=None):
            row, samples = super()._measure(cell, deadline)
            return {**row, "measurement_quality": next(qualities), "other_cpu_share": next(shares)}, samples

    cell = standin_cell(1)
    row = Scripted(cell.variant, remeasure_disturbed=1).run(cell).record.to_pylist()[0]
    assert row["measurement_attempts"] == 2 and row["measurement_quality"] == "disturbed: CV 0.40 over 8 batches"
    row = Scripted(cell.variant, remeasure_disturbed=5).run(cell).record.to_pylist()[0]
    assert row["measurement_attempts"] == 1 and row["measurement_quality"] == CLEAN  # the third attempt, now first


def test_a_clean_attempt_is_kept_over_disturbed_ones_that_look_better_by_the_numbers():
    """Throttling disturbs a window without another process or unsteady batches: the disturbed
    attempts here have the lower CPU share and CV, and the clean one must still win."""
    from fuyu_ray.bench.standin import StandInRunner

    attempts = iter(
        [
            ("disturbed: power cap throttling for 40% of the window", 0.0, 0.01),
            ("disturbed: thermal throttling for 10% of the window", 0.01, 0.02),
            (CLEAN, 0.10, 0.08),
        ]
    )

    class Scripted(StandInRunner):
        def _measure(self, cell, deadline=None):
            row, samples = super()._measure(cell, deadline)
            quality, share, cv = next(attempts)
            return {**row, "measurement_quality": quality, "other_cpu_share": share, "latency_cv": cv}, samples

    cell = standin_cell(1)
    row = Scripted(cell.variant, remeasure_disturbed=4).run(cell).record.to_pylist()[0]
    assert row["measurement_attempts"] == 3  # measuring stops at the first clean attempt
    assert (row["measurement_quality"], row["other_cpu_share"], row["latency_cv"]) == (CLEAN, 0.10, 0.08)


def test_the_store_finds_the_disturbed_cells_on_disk(tmp_path):
    from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table
    from fuyu_ray.storage.store import ResultStore

    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    cells = [standin_cell(batch) for batch in (1, 2, 3)]
    for cell, quality in zip(cells, ["clean", "disturbed: CV 0.40 over 8 batches", None]):
        store.write_cell(
            cell_batch(outcome_row(cell.settings(), "ok", None, measurement_quality=quality)), sample_table([])
        )
    assert store.disturbed_cells() == {cells[1].cell_id}


def test_remeasure_disturbed_adds_the_disturbed_cells_of_the_job_to_what_runs(tmp_path, monkeypatch):
    """The driver's choice of cells, up to where Ray would start: a disturbed cell already on disk
    runs again only with --remeasure-disturbed, beside the failed cell that runs again anyway."""
    from conftest import write_job

    from fuyu_ray.driver import dryrun, grid
    from fuyu_ray.job.cells import expand
    from fuyu_ray.job.spec import load_job
    from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table
    from fuyu_ray.storage.store import ResultStore

    job_path = write_job(tmp_path, "remeasure", "standin:sleep=0", "  batch: {batch_size: [1, 2, 3]}\n", "limit: 1\n")
    cells = {cell.point.batch_size: cell for cell in expand(load_job(job_path)).cells}
    store = ResultStore.at(str(tmp_path / "out"))
    store.ensure_dirs()
    on_disk = [
        (cells[1].settings(), "ok", "clean"),
        (cells[2].settings(), "ok", "disturbed: CV 0.40 over 8 batches"),
        (cells[3].settings(), "failed", None),
        ({**cells[1].settings(), "cell_id": "of-another-job"}, "ok", "disturbed: CV 0.40 over 8 batches"),
    ]
    for settings, status, quality in on_disk:
        store.write_cell(cell_batch(outcome_row(settings, status, None, measurement_quality=quality)), sample_table([]))

    chosen: list[set[str]] = []  # the ids of the cells each run would start
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(grid, "connect", lambda address, origin, facts: (SimpleNamespace(dashboard_url=None), 0.0))
    monkeypatch.setattr(dryrun, "dry_run", lambda job, cells, done, todo_ids, out: chosen.append(todo_ids) or 0)
    for flags in ([], ["--remeasure-disturbed"]):
        assert grid.main(["--job", str(job_path), "--out", str(tmp_path / "out"), "--dry-run", *flags]) == 0
    assert chosen == [{cells[3].cell_id}, {cells[3].cell_id, cells[2].cell_id}]
