"""Disturbed measurements: the host window sees a real busy loop, the GPU sampler reads a fake
NVML (foreign processes, throttle-reason bits, falling clocks), and the verdict names each reason."""

from __future__ import annotations

import multiprocessing
import os
import time
from types import SimpleNamespace

import pytest

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


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_busy_loop_on_the_workers_cores_is_seen_as_other_processes():
    core = os.sched_getaffinity(0)
    one = sorted(core)[:1]
    window = HostWindow(cores=one)
    busy = multiprocessing.Process(target=spin, args=(0.8,))  # another process, pinned to the measured core
    window.start()
    busy.start()
    os.sched_setaffinity(busy.pid, one)
    busy.join()
    window.stop()
    assert window.other_cpu_share > 0.5  # the loop had the core for most of the window
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


def test_the_workers_own_threads_are_not_other_processes():
    window = ScriptedWindow(busy=[10.0, 11.9], own=[3.0, 4.8], cores=[0, 1]).start()
    window._t0 -= 1.0  # a one-second window on two cores
    window.stop()
    assert window.other_cpu_s == pytest.approx(0.1, abs=1e-9)  # 1.9 busy, 1.8 of it the worker's
    assert window.other_cpu_share == pytest.approx(0.05, rel=0.05)


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


def test_the_sampler_thread_samples_through_the_window():
    nvml = FakeNvml([(0, 1980 - 10 * i, []) for i in range(1000)])
    sampler = GpuSampler(nvml, handle=None, every_s=0.01).start()
    time.sleep(0.2)
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


def test_the_store_finds_the_disturbed_cells_on_disk(tmp_path):
    from fuyu_ray.bench.records import cell_batch, outcome_row, sample_table
    from fuyu_ray.driver.store import ResultStore

    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    cells = [standin_cell(batch) for batch in (1, 2, 3)]
    for cell, quality in zip(cells, ["clean", "disturbed: CV 0.40 over 8 batches", None]):
        store.write_cell(
            cell_batch(outcome_row(cell.settings(), "ok", None, measurement_quality=quality)), sample_table([])
        )
    assert store.disturbed_cells() == {cells[1].cell_id}
