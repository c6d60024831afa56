"""A stand-in model for scheduling, fault and throughput tests: it sleeps instead of computing.

`model: "standin:sleep=0.5,oom_at_batch=32,hang_at_batch=64,fail_at_batch=8,cuda_error_at_batch=4"` runs on any
node, on `cuda` cells too (Ray's GPU resource is only a number to it), so a cluster of
processes on one machine can stand in for a cluster of GPU nodes. Everything else, the
actor, the driver, the records and the report, is the real code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fuyu_ray import energy
from fuyu_ray.cells import Cell
from fuyu_ray.runner import CellRunner

PREFIX = "standin"


@dataclass(frozen=True)
class Behaviour:
    sleep_s: float = 0.1
    oom_at_batch: int | None = None
    hang_at_batch: int | None = None
    fail_at_batch: int | None = None
    cuda_error_at_batch: int | None = None


def is_standin(model: str) -> bool:
    return model == PREFIX or model.startswith(PREFIX + ":")


def parse_behaviour(model: str) -> Behaviour:
    settings: dict[str, Any] = {}
    _, _, options = model.partition(":")
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "sleep":
            settings["sleep_s"] = float(value)
        elif key in ("oom_at_batch", "hang_at_batch", "fail_at_batch", "cuda_error_at_batch"):
            settings[key] = int(value)
        else:
            raise ValueError(f"unknown stand-in option {key!r}")
    return Behaviour(**settings)


class StandInRunner(CellRunner):
    def _load(self):
        self.behaviour = parse_behaviour(self.variant.model)
        return None, None

    def _meter(self) -> energy.EnergyMeter:
        return energy.NoEnergyMeter("stand-in model: nothing is computed, so nothing is measured")

    def _measure(self, cell: Cell) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        batch = cell.point.batch_size
        if batch == self.behaviour.oom_at_batch:
            import torch

            raise torch.cuda.OutOfMemoryError("stand-in: CUDA out of memory (simulated)")
        if batch == self.behaviour.fail_at_batch:
            raise RuntimeError("stand-in: simulated failure")
        if batch == self.behaviour.cuda_error_at_batch:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (stand-in)")
        time.sleep(3600 if batch == self.behaviour.hang_at_batch else self.behaviour.sleep_s)
        return {
            "model_label": f"stand-in (sleeps {self.behaviour.sleep_s:g} s per cell)",
            "latency_s": self.behaviour.sleep_s, "latency_n": 1, "n_samples": 0,
            "energy_note": self.meter.unavailable_reason, "accuracy_note": "stand-in model",
        }, []
