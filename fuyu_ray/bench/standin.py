"""A stand-in model for scheduling, fault and throughput tests: it sleeps instead of computing.

`model: "standin:sleep=0.5,batches=20,oom_at_batch=32,hang_at_batch=64,fail_at_batch=8,cuda_error_at_batch=4"`
runs on any node, on `cuda` cells too (Ray's GPU resource is only a number to it), so a cluster of
processes on one machine can stand in for a cluster of GPU nodes. Everything else, the
actor, the driver, the records and the report, is the real code.

`batches=N` (default 1) makes a cell N timed sleeps of `sleep` seconds each: each one is timed
with the host clock and recorded in `latency_batches_s`, so the latencies carry the real jitter
of sleeping on a busy machine (what `python -m fuyu_ray.compare` has to tell from a change).
`compile_s=S` gives a compiled preset a warm-up of S seconds, as a slow compile would (the GPU
check's rehearsal uses it). The warm-up and every timed sleep honour the cell's deadlines as the
real runner does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fuyu_ray.bench import energy
from fuyu_ray.bench.device import Device
from fuyu_ray.bench.measure import spread
from fuyu_ray.bench.runner import CellLimits, CellRunner, DeadlineGuard
from fuyu_ray.job.cells import Cell
from fuyu_ray.job.presets import PRESETS
from fuyu_ray.job.spec import is_stand_in


@dataclass(frozen=True)
class Behaviour:
    sleep_s: float = 0.1
    batches: int = 1  # timed sleeps per cell, each recorded as one batch's latency
    oom_at_batch: int | None = None
    hang_at_batch: int | None = None
    fail_at_batch: int | None = None
    cuda_error_at_batch: int | None = None
    compile_s: float = 0.0  # extra warm-up of a compiled preset: a compile that takes this long


def parse_behaviour(model: str) -> Behaviour:
    settings: dict[str, Any] = {}
    _, _, options = model.partition(":")
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "sleep":
            settings["sleep_s"] = float(value)
        elif key == "compile_s":
            settings["compile_s"] = float(value)
        elif key == "batches":
            settings["batches"] = int(value)
            if settings["batches"] < 1:
                raise ValueError(f"stand-in option batches must be >= 1, got {value!r}")
        elif key in ("oom_at_batch", "hang_at_batch", "fail_at_batch", "cuda_error_at_batch"):
            settings[key] = int(value)
        else:
            raise ValueError(f"unknown stand-in option {key!r}")
    return Behaviour(**settings)


class StandInRunner(CellRunner):
    def _load(self):
        self.behaviour = parse_behaviour(self.variant.model)
        return None, None

    def _device(self) -> Device:
        return Device()  # nothing runs on it: even on a GPU node, nothing of the GPU is the stand-in's

    def _meter(self) -> energy.EnergyMeter:
        return energy.NoEnergyMeter("stand-in model: nothing is computed, so nothing is measured")

    def _measure(self, cell: Cell, limits: CellLimits) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        guard = DeadlineGuard(limits.deadline, limits.hard_deadline)
        batch = cell.point.batch_size
        if batch == self.behaviour.oom_at_batch:
            raise torch.cuda.OutOfMemoryError("stand-in: CUDA out of memory (simulated)")
        if batch == self.behaviour.fail_at_batch:
            raise RuntimeError("stand-in: simulated failure")
        if batch == self.behaviour.cuda_error_at_batch:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (stand-in)")
        if batch == self.behaviour.hang_at_batch:
            time.sleep(3600)
        compiled = PRESETS[cell.point.optimization].compiled
        if compiled and self.behaviour.compile_s:
            time.sleep(self.behaviour.compile_s)  # the warm-up's compile
        guard.check("after the warm-up", pass_s=self.behaviour.sleep_s * self.behaviour.batches)
        latencies = []
        for index in range(self.behaviour.batches):
            started = time.perf_counter()
            time.sleep(self.behaviour.sleep_s)
            latencies.append(time.perf_counter() - started)
            guard.check(f"after timed batch {index + 1}")
        timed = spread(latencies)
        return {
            "model_label": f"stand-in (sleeps {self.behaviour.sleep_s:g} s per batch)",
            "latency_s": timed.median,
            "latency_p90_s": timed.p90,
            "latency_mean_s": timed.mean,
            "latency_std_s": timed.std,
            "latency_n": timed.n,
            "latency_batches_s": latencies,
            "deadline_passed_at": guard.passed_at,
            "n_batches": self.behaviour.batches,
            "n_samples": 0,
            "energy_note": self.meter.unavailable_reason,
            "accuracy_note": "stand-in model",
        }, []


def runner_class(model: str) -> type[CellRunner]:
    """The runner for a model: the stand-in's for a stand-in, the real one for every other."""
    return StandInRunner if is_stand_in(model) else CellRunner
