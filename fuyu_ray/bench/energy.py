"""Energy counters and measurement windows.

Zeus-style honesty: a counter that cannot be read is reported as ``None``
plus a reason, never estimated (no TDP substitution, no power*time guesses).

Each device kind has one ``EnergyMeter`` subclass, so supporting a new counter
means adding one class and one branch in ``meter_for``.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fuyu_ray.bench.device import Device, NvmlDevice, open_device

__all__ = [
    "EnergyUnavailable",
    "EnergyMeter",
    "NvmlEnergyMeter",
    "RaplEnergyMeter",
    "NoEnergyMeter",
    "meter_for",
    "EnergyWindow",
    "WindowResult",
    "measure_idle_power",
    "run_until_min_window",
]

Clock = Callable[[], float]


class EnergyUnavailable(RuntimeError):
    """Raised by ``read_joules`` when the meter's counter cannot be read."""


class EnergyMeter(ABC):
    """A cumulative energy counter in joules.

    Only differences between two readings are meaningful; the origin is
    whatever the underlying counter uses.
    """

    method: str = "none"
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    @abstractmethod
    def read_joules(self) -> float:
        """Current cumulative counter in joules; raises EnergyUnavailable."""

    def close(self) -> None:
        """Release resources; safe to call more than once."""

    def _raise_if_unavailable(self) -> None:
        if self.unavailable_reason is not None:
            raise EnergyUnavailable(self.unavailable_reason)


class NoEnergyMeter(EnergyMeter):
    """A meter that is always unavailable, for devices without a counter."""

    method = "none"

    def __init__(self, reason: str) -> None:
        self.unavailable_reason = reason

    def read_joules(self) -> float:
        raise EnergyUnavailable(self.unavailable_reason or "no energy counter")


# --------------------------------------------------------------------------- NVML


def _is_not_supported(error: BaseException, nvml: Any) -> bool:
    not_supported_code = getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3)
    return getattr(error, "value", None) == not_supported_code or "NotSupported" in type(error).__name__


class NvmlEnergyMeter(EnergyMeter):
    """GPU energy from ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules), read through an NvmlDevice.

    The driver refreshes this counter roughly every 100 ms, so windows should
    be >= 1 s for the granularity error to stay under ~10%
    (see ``run_until_min_window``).
    """

    method = "nvml-total-energy"

    def __init__(
        self, device_index: int = 0, nvml: Any = None, uuid: str | None = None, device: NvmlDevice | None = None
    ) -> None:
        self.owns_device = device is None  # a device it opened itself, it closes
        self.device = device if device is not None else NvmlDevice(device_index, nvml, uuid)
        self.unavailable_reason = self.device.unavailable_reason or self._energy_reason()

    @property
    def device_index(self) -> int:
        return self.device.device_index

    def _energy_reason(self) -> str | None:
        mig_reason = self._mig_reason()
        if mig_reason is not None:
            return mig_reason
        try:
            self.device.nvml.nvmlDeviceGetTotalEnergyConsumption(self.device.handle)
        except Exception as error:  # noqa: BLE001
            if _is_not_supported(error, self.device.nvml):
                return (
                    f"energy counter not supported on GPU {self.device_index}"
                    f" (nvmlDeviceGetTotalEnergyConsumption: {error!r})"
                )
            return f"energy counter unreadable on GPU {self.device_index}: {error!r}"
        return None

    def _mig_reason(self) -> str | None:
        nvml, handle = self.device.nvml, self.device.handle
        try:
            is_mig_instance = bool(nvml.nvmlDeviceIsMigDeviceHandle(handle))
        except Exception:  # noqa: BLE001 - old drivers/fakes lack the call
            is_mig_instance = False
        if is_mig_instance:
            return "energy counter not supported on MIG instances"
        try:
            current_mode, _pending_mode = nvml.nvmlDeviceGetMigMode(handle)
        except Exception:  # noqa: BLE001 - non-MIG-capable GPUs raise NotSupported
            return None
        mig_enabled = getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
        if current_mode == mig_enabled:
            # The parent GPU's counter includes every instance's work, so it
            # cannot be attributed to this benchmark.
            return (
                f"energy counter not supported on MIG instances: MIG mode is enabled"
                f" on GPU {self.device_index}, its counter covers all instances"
            )
        return None

    def read_joules(self) -> float:
        self._raise_if_unavailable()
        try:
            millijoules = self.device.nvml.nvmlDeviceGetTotalEnergyConsumption(self.device.handle)
        except Exception as error:  # noqa: BLE001
            raise EnergyUnavailable(f"energy counter read failed on GPU {self.device_index}: {error!r}") from error
        return float(millijoules) / 1000.0

    def close(self) -> None:
        if self.owns_device:
            self.device.close()


# --------------------------------------------------------------------------- RAPL

# Top-level zones only: "intel-rapl:0" is a package, "intel-rapl:0:0" is a
# subzone (core/uncore/dram) already included in its package's count.
_TOP_LEVEL_RAPL_ZONE = re.compile(r"^intel-rapl:\d+$")


def read_sysfs_text(path: Path) -> str:
    return path.read_text().strip()


class _SysfsReadError(Exception):
    """A sysfs read failure carrying the path, since OS errors often omit it."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {cause.__class__.__name__}: {cause}")


@dataclass
class _RaplZone:
    energy_path: Path
    max_range_uj: int
    last_raw_uj: int


class RaplEnergyMeter(EnergyMeter):
    """CPU package energy from Linux powercap RAPL (``energy_uj``), summed over packages.

    The raw counters wrap at ``max_energy_range_uj``; each zone keeps its last
    raw reading and accumulates deltas so ``read_joules`` stays monotone.
    A window spanning more than one full wrap (tens of minutes) would undercount.
    """

    method = "rapl-powercap"

    def __init__(
        self,
        root: str = "/sys/class/powercap",
        read_text: Callable[[Path], str] = read_sysfs_text,
    ) -> None:
        self.root = Path(root)
        self._read_text = read_text
        self._zones: list[_RaplZone] = []
        self._accumulated_uj = 0
        self.unavailable_reason = self._discover_zones()
        if self.unavailable_reason is None:
            self._accumulated_uj = sum(zone.last_raw_uj for zone in self._zones)

    def _discover_zones(self) -> str | None:
        if not self.root.is_dir():
            return f"RAPL powercap tree not found at {self.root}"
        try:
            zone_dirs = sorted(self.root.iterdir())
        except OSError as error:
            return f"RAPL powercap tree unreadable at {self.root}: {error!r}"
        package_dirs = [path for path in zone_dirs if _TOP_LEVEL_RAPL_ZONE.match(path.name) and self._is_package(path)]
        if not package_dirs:
            return f"no RAPL package zones (intel-rapl:N with name 'package*') under {self.root}"
        for zone_dir in package_dirs:
            try:
                self._zones.append(self._open_zone(zone_dir))
            except _SysfsReadError as error:
                return f"RAPL counter unreadable: {error}"
        return None

    def _is_package(self, zone_dir: Path) -> bool:
        try:
            return self._read_text(zone_dir / "name").startswith("package")
        except OSError:
            return False

    def _read_int(self, path: Path) -> int:
        try:
            return int(self._read_text(path))
        except (OSError, ValueError) as error:
            raise _SysfsReadError(path, error) from error

    def _open_zone(self, zone_dir: Path) -> _RaplZone:
        energy_path = zone_dir / "energy_uj"
        return _RaplZone(
            energy_path=energy_path,
            max_range_uj=self._read_int(zone_dir / "max_energy_range_uj"),
            last_raw_uj=self._read_int(energy_path),
        )

    @staticmethod
    def _delta_uj(zone: _RaplZone, raw_uj: int) -> int:
        if raw_uj >= zone.last_raw_uj:
            return raw_uj - zone.last_raw_uj
        return raw_uj + zone.max_range_uj - zone.last_raw_uj

    def read_joules(self) -> float:
        self._raise_if_unavailable()
        try:
            raw_readings = [self._read_int(zone.energy_path) for zone in self._zones]
        except _SysfsReadError as error:
            raise EnergyUnavailable(f"RAPL counter unreadable: {error}") from error
        for zone, raw_uj in zip(self._zones, raw_readings):
            self._accumulated_uj += self._delta_uj(zone, raw_uj)
            zone.last_raw_uj = raw_uj
        return self._accumulated_uj / 1e6


# --------------------------------------------------------------------------- selection


def meter_for(device: str, opened: Device | None = None) -> EnergyMeter:
    """The meter for a device kind ("cuda", "cuda:N", "cpu"), reading through `opened` where given.

    An unavailable meter is still returned: its ``unavailable_reason`` is the
    note recorded with the result.
    """
    kind, _, _ = device.partition(":")
    if kind == "cuda":
        return NvmlEnergyMeter(device=opened or open_device(device))
    if kind == "cpu":
        return RaplEnergyMeter()
    return NoEnergyMeter(f"no energy counter for device kind {device!r}")


# --------------------------------------------------------------------------- windows


class EnergyWindow:
    """Reads the counter at the start and end of one timed window.

    ``with EnergyWindow(meter) as window: ...`` then ``window.joules``
    (None when unreadable), ``window.seconds`` and ``window.note``.
    Never raises because of the meter; exceptions from the body propagate.
    """

    def __init__(self, meter: EnergyMeter, clock: Clock = time.perf_counter) -> None:
        self.meter = meter
        self.clock = clock
        self.joules: float | None = None
        self.seconds: float = 0.0
        self.note: str | None = None
        self._start_time: float | None = None
        self._start_joules: float | None = None

    def __enter__(self) -> EnergyWindow:
        self._start_joules = self._read_or_note()
        # Timing starts after the first read so the read's cost stays outside.
        self._start_time = self.clock()
        return self

    def elapsed(self) -> float:
        """Seconds since the window opened (valid inside the ``with`` block)."""
        if self._start_time is None:
            return 0.0
        return self.clock() - self._start_time

    def __exit__(self, *exc_info: object) -> bool:
        self.seconds = self.elapsed()
        end_joules = self._read_or_note() if self._start_joules is not None else None
        if self._start_joules is not None and end_joules is not None:
            self.joules = end_joules - self._start_joules
        return False

    def _read_or_note(self) -> float | None:
        if not self.meter.available:
            self.note = self.meter.unavailable_reason
            return None
        try:
            return self.meter.read_joules()
        except EnergyUnavailable as error:
            self.note = str(error)
            return None


@dataclass(frozen=True)
class WindowResult:
    joules: float | None
    seconds: float
    repeats: int
    note: str | None


def run_until_min_window(
    run_once: Callable[[], None],
    meter: EnergyMeter,
    min_seconds: float = 1.0,
    clock: Clock = time.perf_counter,
    max_repeats: int = 1000,
    stop: Callable[[], bool] = lambda: False,
) -> WindowResult:
    """Run ``run_once`` repeatedly inside one energy window until it lasts >= ``min_seconds``.

    Short runs are extended because NVML's counter updates only every ~100 ms;
    divide ``joules``/``seconds`` by ``repeats`` for per-run figures. The window is
    extended without a meter too: the timings gain batches enough to judge their
    spread, and interference is measured over a window long enough to mean something.
    `stop` ends the repeats early (a cell past its deadline): the window is then what it is, and says so.
    """
    if max_repeats < 1:
        raise ValueError(f"max_repeats must be >= 1, got {max_repeats}")
    repeats = 0
    with EnergyWindow(meter, clock=clock) as window:
        while True:
            run_once()
            repeats += 1
            if window.elapsed() >= min_seconds:
                break
            if repeats >= max_repeats or stop():
                break
    note = window.note
    if note is None and window.seconds < min_seconds and meter.available:
        note = (
            f"window {window.seconds:.3f} s shorter than {min_seconds} s after"
            f" max_repeats={max_repeats}; counter update granularity may dominate"
        )
    return WindowResult(joules=window.joules, seconds=window.seconds, repeats=repeats, note=note)


def measure_idle_power(
    meter: EnergyMeter,
    seconds: float = 1.0,
    windows: int = 1,
    sleep: Callable[[float], None] = time.sleep,
    clock: Clock = time.perf_counter,
) -> tuple[float | None, str | None]:
    """Average watts over an idle interval, the lowest of `windows` intervals, or (None, reason).

    The lowest, because a device that just finished work (a model loaded, weights initialised)
    settles for a while; its first idle second reads high and would shrink "energy above idle".
    """
    lowest: float | None = None
    for _ in range(max(1, windows)):
        with EnergyWindow(meter, clock=clock) as window:
            if meter.available:
                sleep(seconds)
        if window.joules is None:
            return None, window.note
        if window.seconds <= 0:
            return None, "idle interval had zero length; cannot compute power"
        watts = window.joules / window.seconds
        lowest = watts if lowest is None else min(lowest, watts)
    return lowest, None
