"""When a measurement counts as disturbed: the thresholds a job sets under `quality:`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class QualityThresholds:
    """When a figure counts as disturbed. Documented in the README; a job sets any of them under `quality:`."""

    max_other_cpu_share: float = 0.15  # of the worker's cores, taken by other processes over the window
    max_cv: float = 0.25  # coefficient of variation of the timed batches
    min_batches_for_cv: int = 5  # fewer timed batches say nothing about stability
    max_throttled_share: float = 0.10  # of GPU samples with a thermal, power-cap or slowdown reason
    foreign_gpu_processes: int = 0  # compute processes of others on the device
    max_warmup_batches: int = 10  # warm-up runs until timings settle, at most this many batches
    settle_tolerance: float = 0.10  # warm-up is settled when the last batches agree within this

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> "QualityThresholds":
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(known))})")
        values = {}
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key}: must be a non-negative number, got {value!r}")
            values[key] = int(value) if known[key] == "int" else float(value)
        return cls(**values)
