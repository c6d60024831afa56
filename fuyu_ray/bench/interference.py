"""Was a measurement disturbed? What else used the machine while a cell was timed, and how
steady the timings were.

- Host: CPU time of every other process on the cores the worker runs on (the kernel's busy time
  there minus the worker's own, all its threads included), the load average, and the CPU
  frequency at both ends of the window.
- GPU: compute processes of others on the same device, clock-throttle reasons, and the lowest
  and highest SM clock, sampled through the window (not only at its ends).
- Stability: the coefficient of variation of the timed batches.

A verdict turns these into `clean` or `disturbed: <reasons>`, against thresholds that a job
file can set (`quality:`). Nothing here needs torch, Ray or Polars.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fuyu_ray.job.quality import QualityThresholds

try:
    import psutil
except ImportError:  # a bare GPU box may lack it: the host figures are then null, with the reason
    psutil = None

CLEAN = "clean"


# --- the host -----------------------------------------------------------------------------------


def _busy_seconds(times) -> float:
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal", "guest"))


def worker_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: every core
        return list(range(os.cpu_count() or 1))


@dataclass
class HostWindow:
    """CPU use on the worker's cores between start() and stop()."""

    cores: list[int] = field(default_factory=worker_cores)
    seconds: float | None = None
    other_cpu_s: float | None = None
    other_cpu_share: float | None = None
    load_average: float | None = None
    cpu_mhz_start: float | None = None
    cpu_mhz_end: float | None = None

    def start(self) -> "HostWindow":
        self._t0 = time.perf_counter()
        if psutil is None:
            return self
        self._process = psutil.Process()
        self._busy0 = self._cores_busy()
        self._own0 = self._own_cpu()
        self.cpu_mhz_start = _cpu_mhz()
        return self

    def stop(self) -> "HostWindow":
        self.seconds = time.perf_counter() - self._t0
        self.load_average = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        if psutil is None:
            return self
        busy = self._cores_busy() - self._busy0
        own = self._own_cpu() - self._own0
        self.other_cpu_s = max(0.0, busy - own)
        capacity = self.seconds * len(self.cores)
        self.other_cpu_share = min(1.0, self.other_cpu_s / capacity) if capacity > 0 else None
        self.cpu_mhz_end = _cpu_mhz()
        return self

    def _cores_busy(self) -> float:
        per_core = psutil.cpu_times(percpu=True)
        return sum(_busy_seconds(per_core[i]) for i in self.cores if i < len(per_core))

    def _own_cpu(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system  # every thread of the worker, torch's included

    def columns(self) -> dict[str, Any]:
        return {
            "other_cpu_s": self.other_cpu_s,
            "other_cpu_share": self.other_cpu_share,
            "load_average": self.load_average,
            "cpu_mhz_start": self.cpu_mhz_start,
            "cpu_mhz_end": self.cpu_mhz_end,
        }


def _cpu_mhz() -> float | None:
    try:
        frequency = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        return None
    return frequency.current if frequency else None


# --- the GPU --------------------------------------------------------------------------------------

# NVML's clock-event (throttle) reason bits that mean the chip was held back, by name.
THROTTLE_REASONS = {
    0x0000000000000004: "power cap",  # SW power cap
    0x0000000000000008: "slowdown",  # HW slowdown
    0x0000000000000020: "thermal",  # SW thermal slowdown
    0x0000000000000040: "thermal",  # HW thermal slowdown
    0x0000000000000080: "power brake",  # HW power brake slowdown
}


@dataclass
class GpuSamples:
    """What a sampler saw on one device: throttle reasons per sample, SM clocks, others' processes."""

    samples: int = 0
    throttled: dict[str, int] = field(default_factory=dict)  # reason -> samples that had it
    sm_clock_min_mhz: int | None = None
    sm_clock_max_mhz: int | None = None
    foreign_pids: set[int] = field(default_factory=set)
    note: str | None = None  # why nothing was sampled
    # In a container NVML lists host PIDs, so our own process is never among them and every process
    # would read as another's: the list only tells others apart once it has shown our own.
    own_process_seen: bool = False

    def add(self, reasons: int, sm_clock: int | None, pids: set[int], own_seen: bool = True) -> None:
        self.samples += 1
        self.own_process_seen |= own_seen
        for reason in {name for bit, name in THROTTLE_REASONS.items() if reasons & bit}:
            self.throttled[reason] = self.throttled.get(reason, 0) + 1
        if sm_clock is not None:
            self.sm_clock_min_mhz = sm_clock if self.sm_clock_min_mhz is None else min(self.sm_clock_min_mhz, sm_clock)
            self.sm_clock_max_mhz = sm_clock if self.sm_clock_max_mhz is None else max(self.sm_clock_max_mhz, sm_clock)
        self.foreign_pids |= pids

    def throttled_share(self) -> dict[str, float]:
        return {reason: count / self.samples for reason, count in self.throttled.items()} if self.samples else {}

    def columns(self) -> dict[str, Any]:
        shares = self.throttled_share()
        return {
            "gpu_foreign_processes": len(self.foreign_pids) if self.samples and self.own_process_seen else None,
            "gpu_throttle_reasons": ", ".join(f"{r} {s:.0%}" for r, s in sorted(shares.items())) or None,
            "sm_clock_min_mhz": self.sm_clock_min_mhz,
            "sm_clock_max_mhz": self.sm_clock_max_mhz,
        }


class GpuSampler:
    """Samples one NVML device on a thread every `every_s`, from start() to stop()."""

    def __init__(self, nvml: Any, handle: Any, own_pids: set[int] | None = None, every_s: float = 0.05):
        self.nvml, self.handle, self.every_s = nvml, handle, every_s
        self.own_pids = own_pids if own_pids is not None else {os.getpid()}
        self.result = GpuSamples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        nvml = self.nvml
        reasons = _first_available(
            nvml, self.handle, ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
        )
        sm_clock = _first_available(nvml, self.handle, ("nvmlDeviceGetClockInfo",), nvml.NVML_CLOCK_SM)
        processes = _first_available(nvml, self.handle, ("nvmlDeviceGetComputeRunningProcesses",)) or []
        listed = {p.pid for p in processes}
        self.result.add(int(reasons or 0), sm_clock, listed - self.own_pids, own_seen=bool(listed & self.own_pids))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.every_s)

    def start(self) -> "GpuSampler":
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> GpuSamples:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        return self.result


def _first_available(nvml: Any, handle: Any, names: tuple[str, ...], *args):
    for name in names:
        call = getattr(nvml, name, None)
        if call is None:
            continue
        try:
            return call(handle, *args)
        except Exception:  # a counter this chip or driver lacks: nothing to say about it
            return None
    return None


# --- stability ----------------------------------------------------------------------------------


def coefficient_of_variation(values: list[float]) -> float | None:
    """The robust kind: 1.4826 x the median absolute deviation over the median. It equals the usual
    CV for normal noise, but one hiccup among many batches moves it as little as it moves the
    median latency that the report leads with."""
    if len(values) < 2:
        return None
    middle = statistics.median(values)
    deviation = statistics.median(abs(value - middle) for value in values)
    return 1.4826 * deviation / middle if middle > 0 else None


def noise_series(
    batch_seconds: list[float], batches_per_pass: int, decode_s_per_token: list[float | None]
) -> list[float]:
    """What the timings' spread is judged on: how each batch varied from its own median across the
    repeated passes of the window; with a single pass, the decode time per token. Either way a cell
    whose batches differ in length (prompts, answers that stop early) is not taken for unsteady."""
    passes = len(batch_seconds) // batches_per_pass if batches_per_pass else 0
    if passes >= 2:
        series = []
        for position in range(batches_per_pass):
            runs = batch_seconds[position::batches_per_pass][:passes]
            middle = statistics.median(runs)
            series += [value / middle for value in runs] if middle > 0 else []
        return series
    return [value for value in decode_s_per_token if value is not None]


def settled(recent: list[float], tolerance: float, window: int = 3) -> bool:
    """The last `window` warm-up batches agree within `tolerance` of their median."""
    if len(recent) < window:
        return False
    last = recent[-window:]
    middle = statistics.median(last)
    return middle > 0 and all(abs(value - middle) <= tolerance * middle for value in last)


# --- the verdict --------------------------------------------------------------------------------


def verdict(
    thresholds: QualityThresholds,
    host: HostWindow | None,
    gpu: GpuSamples | None,
    series: list[float],
    unsettled_warmup: int | None = None,
) -> str:
    """`clean`, or `disturbed: ` and every reason that crossed its threshold, or `unknown: ` and why
    another GPU process could not be ruled out when nothing else crossed one. `series` is what the
    timings' spread is judged on (see noise_series); `unsettled_warmup`, the warm-up batches spent
    without the timings ever settling: whatever kept them from it may not have stopped."""
    reasons = []
    if unsettled_warmup:
        reasons.append(f"warm-up never settled in {unsettled_warmup} batches")
    if host is not None and host.other_cpu_share is not None and host.other_cpu_share > thresholds.max_other_cpu_share:
        reasons.append(f"other processes used {host.other_cpu_share:.0%} of the worker's cores")
    unknown = None
    if gpu is not None and gpu.samples:
        if not gpu.own_process_seen:
            unknown = "NVML's process list never showed this process, so other GPU processes cannot be told apart"
        elif len(gpu.foreign_pids) > thresholds.foreign_gpu_processes:
            reasons.append(f"{len(gpu.foreign_pids)} other compute process(es) on the GPU")
        for reason, share in sorted(gpu.throttled_share().items()):
            if share > thresholds.max_throttled_share:
                reasons.append(f"{reason} throttling for {share:.0%} of the window")
    cv = coefficient_of_variation(series)
    if cv is not None and len(series) >= thresholds.min_batches_for_cv and cv > thresholds.max_cv:
        reasons.append(f"CV {cv:.2f} over {len(series)} batches")
    if reasons:
        return f"disturbed: {'; '.join(reasons)}"
    return f"unknown: {unknown}" if unknown else CLEAN
