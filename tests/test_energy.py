from __future__ import annotations

from pathlib import Path

import pytest

from fuyu_ray.bench.device import NvmlDevice, open_device
from fuyu_ray.bench.energy import (
    EnergyMeter,
    EnergyUnavailable,
    EnergyWindow,
    NoEnergyMeter,
    NvmlEnergyMeter,
    RaplEnergyMeter,
    WindowResult,
    measure_idle_power,
    meter_for,
    run_until_min_window,
)

FAKE_WATTS = 250
COUNTER_STEP_MS = 100  # NVML refreshes its energy counter about every 100 ms


class FakeClock:
    """Time kept in integer milliseconds so counter steps are exact."""

    def __init__(self) -> None:
        self.milliseconds = 0

    def __call__(self) -> float:
        return self.milliseconds / 1000

    def advance(self, seconds: float) -> None:
        self.milliseconds += round(seconds * 1000)


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"fake NVML error {value}")
        self.value = value


class FakeNvml:
    """Stands in for pynvml: energy advances at FAKE_WATTS in 100 ms steps of a FakeClock."""

    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(
        self,
        clock: FakeClock,
        *,
        init_error: Exception | None = None,
        is_mig_instance: bool = False,
        mig_mode_enabled: bool = False,
        energy_error: Exception | None = None,
    ) -> None:
        self.clock = clock
        self.init_error = init_error
        self.is_mig_instance = is_mig_instance
        self.mig_mode_enabled = mig_mode_enabled
        self.energy_error = energy_error
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        if not uuid.startswith("GPU-fake-"):
            raise FakeNvmlError(13)  # NVML_ERROR_NOT_FOUND
        return int(uuid.rsplit("-", 1)[1])

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index  # 0 is a legitimate handle; the meter must not treat it as missing

    def nvmlDeviceIsMigDeviceHandle(self, handle: int) -> bool:
        return self.is_mig_instance

    def nvmlDeviceGetMigMode(self, handle: int) -> tuple[int, int]:
        mode = 1 if self.mig_mode_enabled else 0
        return mode, mode

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: int) -> int:
        if self.energy_error is not None:
            raise self.energy_error
        completed_steps = self.clock.milliseconds // COUNTER_STEP_MS
        return completed_steps * COUNTER_STEP_MS * FAKE_WATTS  # ms * W = mJ

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA H200"

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return "GPU-1234"

    def nvmlSystemGetDriverVersion(self) -> str:
        raise FakeNvmlError(3)

    def nvmlDeviceGetClockInfo(self, handle: int, clock_type: int) -> int:
        return 1980

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        raise FakeNvmlError(3)


# --------------------------------------------------------------------------- NVML


def test_run_until_min_window_extends_short_runs_to_one_second() -> None:
    clock = FakeClock()
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))

    result = run_until_min_window(lambda: clock.advance(0.3), meter, min_seconds=1.0, clock=clock)

    assert isinstance(result, WindowResult)
    assert result.repeats == 4
    assert result.seconds == pytest.approx(1.2)
    assert result.joules == pytest.approx(FAKE_WATTS * 1.2)
    assert result.note is None


def test_run_until_min_window_is_within_one_counter_step_when_unaligned() -> None:
    clock = FakeClock()
    clock.advance(0.05)  # start between two counter updates
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))

    result = run_until_min_window(lambda: clock.advance(0.37), meter, min_seconds=1.0, clock=clock)

    assert result.repeats == 3
    assert result.seconds == pytest.approx(1.11)
    one_step_joules = FAKE_WATTS * COUNTER_STEP_MS / 1000
    assert abs(result.joules - FAKE_WATTS * result.seconds) <= one_step_joules


def test_run_until_min_window_stops_at_max_repeats_and_notes_short_window() -> None:
    clock = FakeClock()
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))

    result = run_until_min_window(lambda: clock.advance(0.1), meter, min_seconds=1.0, clock=clock, max_repeats=3)

    assert result.repeats == 3
    assert result.joules == pytest.approx(FAKE_WATTS * 0.3)
    assert result.note is not None and "max_repeats=3" in result.note


def test_run_until_min_window_extends_the_window_without_a_meter_too() -> None:
    """Timings and interference need the window even where no counter gives joules."""
    clock = FakeClock()
    calls: list[int] = []

    def run_once() -> None:
        calls.append(1)
        clock.advance(0.3)

    result = run_until_min_window(run_once, NoEnergyMeter("no counter here"), clock=clock)

    assert calls == [1, 1, 1, 1]
    assert result == WindowResult(joules=None, seconds=pytest.approx(1.2), repeats=4, note="no counter here")


def test_idle_power_reports_fake_wattage() -> None:
    clock = FakeClock()
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))

    watts, note = measure_idle_power(meter, seconds=1.0, sleep=clock.advance, clock=clock)

    assert note is None
    assert watts == pytest.approx(FAKE_WATTS)


class SettlingMeter(EnergyMeter):
    """A counter whose device draws 300 W, then 200 W, then 150 W over three idle seconds."""

    method = "scripted"

    def __init__(self) -> None:
        self.readings = iter([0.0, 300.0, 300.0, 500.0, 500.0, 650.0])

    def read_joules(self) -> float:
        return next(self.readings)


def test_idle_power_is_the_lowest_window_while_the_device_settles() -> None:
    clock = FakeClock()
    watts, note = measure_idle_power(SettlingMeter(), seconds=1.0, windows=3, sleep=clock.advance, clock=clock)
    assert note is None
    assert watts == pytest.approx(150.0)


def test_idle_power_on_unavailable_meter_gives_reason_without_sleeping() -> None:
    slept: list[float] = []

    watts, note = measure_idle_power(NoEnergyMeter("nothing to read"), sleep=slept.append)

    assert watts is None
    assert note == "nothing to read"
    assert slept == []


def test_nvml_read_joules_converts_millijoules() -> None:
    clock = FakeClock()
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))
    clock.advance(2.0)

    assert meter.method == "nvml-total-energy"
    assert meter.unavailable_reason is None
    assert meter.read_joules() == pytest.approx(FAKE_WATTS * 2.0)


def test_nvml_init_failure_is_unavailable_with_reason() -> None:
    fake = FakeNvml(FakeClock(), init_error=RuntimeError("driver not loaded"))
    meter = NvmlEnergyMeter(nvml=fake)

    assert meter.unavailable_reason is not None
    assert meter.unavailable_reason.startswith("NVML not available")
    assert "driver not loaded" in meter.unavailable_reason
    with pytest.raises(EnergyUnavailable):
        meter.read_joules()
    meter.close()
    assert fake.shutdown_calls == 0  # never initialised, so nothing to shut down


@pytest.mark.parametrize(
    "fake_kwargs",
    [{"is_mig_instance": True}, {"mig_mode_enabled": True}],
    ids=["mig-instance-handle", "mig-mode-enabled"],
)
def test_nvml_on_mig_is_unavailable_with_mig_reason(fake_kwargs: dict) -> None:
    meter = NvmlEnergyMeter(nvml=FakeNvml(FakeClock(), **fake_kwargs))

    assert meter.unavailable_reason is not None
    assert "MIG" in meter.unavailable_reason
    with pytest.raises(EnergyUnavailable, match="MIG"):
        meter.read_joules()


def test_nvml_energy_not_supported_is_unavailable() -> None:
    meter = NvmlEnergyMeter(nvml=FakeNvml(FakeClock(), energy_error=FakeNvmlError(3)))

    assert meter.unavailable_reason is not None
    assert "not supported" in meter.unavailable_reason


def test_nvml_device_info_and_clocks_give_none_where_unreadable() -> None:
    device = NvmlDevice(nvml=FakeNvml(FakeClock()))

    assert device.info() == {
        "gpu_name": "NVIDIA H200",
        "gpu_uuid": "GPU-1234",
        "driver_version": None,
    }
    assert device.clocks() == {"sm_clock_mhz": 1980, "temperature_c": None}


def test_nvml_device_info_all_none_when_init_failed() -> None:
    device = NvmlDevice(nvml=FakeNvml(FakeClock(), init_error=RuntimeError("x")))

    assert device.info() == {"gpu_name": None, "gpu_uuid": None, "driver_version": None}
    assert device.clocks() == {"sm_clock_mhz": None, "temperature_c": None}
    assert "NVML not available" in device.unavailable_reason and device.sampler() is None


def test_a_cpu_or_stand_in_device_answers_none_to_everything() -> None:
    device = open_device("cpu")
    assert device.info() == {"gpu_name": None, "gpu_uuid": None, "driver_version": None}
    assert device.clocks() == {"sm_clock_mhz": None, "temperature_c": None}
    assert device.sampler() is None and device.unavailable_reason


def test_a_meter_reading_through_a_device_leaves_closing_it_to_its_owner() -> None:
    fake = FakeNvml(FakeClock())
    device = NvmlDevice(nvml=fake)
    meter = NvmlEnergyMeter(device=device)
    meter.close()
    assert fake.shutdown_calls == 0 and meter.available
    device.close()
    device.close()
    assert fake.shutdown_calls == 1


def test_nvml_close_shuts_down_once() -> None:
    fake = FakeNvml(FakeClock())
    meter = NvmlEnergyMeter(nvml=fake)

    meter.close()
    meter.close()

    assert fake.shutdown_calls == 1


# --------------------------------------------------------------------------- windows


def test_energy_window_on_unavailable_meter_gives_none_and_note() -> None:
    clock = FakeClock()
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock, is_mig_instance=True))

    with EnergyWindow(meter, clock=clock) as window:
        clock.advance(0.5)

    assert window.joules is None
    assert window.note == meter.unavailable_reason
    assert window.seconds == pytest.approx(0.5)


def test_energy_window_reports_delta_over_window() -> None:
    clock = FakeClock()
    clock.advance(3.0)  # non-zero counter origin must cancel out
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))

    with EnergyWindow(meter, clock=clock) as window:
        clock.advance(2.0)

    assert window.joules == pytest.approx(FAKE_WATTS * 2.0)
    assert window.note is None


def test_energy_window_does_not_swallow_body_exceptions() -> None:
    with pytest.raises(ValueError):
        with EnergyWindow(NoEnergyMeter("none")):
            raise ValueError("from the benchmark body")


def test_energy_window_notes_a_read_failure_at_window_end() -> None:
    clock = FakeClock()
    fake = FakeNvml(clock)
    meter = NvmlEnergyMeter(nvml=fake)

    with EnergyWindow(meter, clock=clock) as window:
        fake.energy_error = FakeNvmlError(15)  # e.g. GPU fell off the bus mid-run

    assert window.joules is None
    assert window.note is not None and "read failed" in window.note


# --------------------------------------------------------------------------- RAPL


def write_zone(root: Path, zone: str, name: str, energy_uj: int, max_range_uj: int) -> Path:
    zone_dir = root / zone
    zone_dir.mkdir(parents=True)
    (zone_dir / "name").write_text(f"{name}\n")
    (zone_dir / "energy_uj").write_text(f"{energy_uj}\n")
    (zone_dir / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return zone_dir


def set_energy(zone_dir: Path, energy_uj: int) -> None:
    (zone_dir / "energy_uj").write_text(f"{energy_uj}\n")


MAX_RANGE_UJ = 1_000_000


@pytest.fixture
def powercap_tree(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    return {
        "root": root,
        "package0": write_zone(root, "intel-rapl:0", "package-0", 100_000, MAX_RANGE_UJ),
        "package1": write_zone(root, "intel-rapl:1", "package-1", 900_000, MAX_RANGE_UJ),
        # The core subzone is already counted inside package-0.
        "core0": write_zone(root, "intel-rapl:0:0", "core", 50_000, MAX_RANGE_UJ),
        # psys is a top-level zone but not a package.
        "psys": write_zone(root, "intel-rapl:2", "psys", 10_000, MAX_RANGE_UJ),
    }


def test_rapl_sums_packages_ignores_subzones_and_handles_wrap(powercap_tree: dict[str, Path]) -> None:
    meter = RaplEnergyMeter(root=str(powercap_tree["root"]))
    assert meter.unavailable_reason is None
    assert meter.method == "rapl-powercap"
    start = meter.read_joules()

    set_energy(powercap_tree["package0"], 400_000)  # +300_000 uJ
    set_energy(powercap_tree["package1"], 200_000)  # wrapped: +100_000 + 200_000 = +300_000 uJ
    set_energy(powercap_tree["core0"], 999_999)  # must not count
    set_energy(powercap_tree["psys"], 999_999)  # must not count
    after_wrap = meter.read_joules()

    assert after_wrap - start == pytest.approx(0.6)

    set_energy(powercap_tree["package1"], 250_000)  # +50_000 uJ, no wrap
    assert meter.read_joules() - start == pytest.approx(0.65)


def test_rapl_ignores_subzones_by_path_not_only_by_name(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    write_zone(root, "intel-rapl:0", "package-0", 0, MAX_RANGE_UJ)
    # A subzone whose name looks like a package must still not be double-counted.
    subzone = write_zone(root, "intel-rapl:0:0", "package-0", 0, MAX_RANGE_UJ)
    meter = RaplEnergyMeter(root=str(root))
    start = meter.read_joules()

    set_energy(subzone, 500_000)

    assert meter.read_joules() - start == 0.0


def test_rapl_window_spanning_a_wrap_is_positive(powercap_tree: dict[str, Path]) -> None:
    meter = RaplEnergyMeter(root=str(powercap_tree["root"]))

    with EnergyWindow(meter) as window:
        set_energy(powercap_tree["package1"], 100_000)  # wrapped: +200_000 uJ

    assert window.joules == pytest.approx(0.2)
    assert window.note is None


def test_rapl_unreadable_energy_names_the_path(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    zone_dir = root / "intel-rapl:0"
    zone_dir.mkdir(parents=True)
    (zone_dir / "name").write_text("package-0\n")
    (zone_dir / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    # A directory where the file should be fails to read even as root (unlike chmod 000).
    (zone_dir / "energy_uj").mkdir()

    meter = RaplEnergyMeter(root=str(root))

    assert meter.unavailable_reason is not None
    assert str(zone_dir / "energy_uj") in meter.unavailable_reason
    with pytest.raises(EnergyUnavailable):
        meter.read_joules()


def test_rapl_permission_error_is_reported_with_path(powercap_tree: dict[str, Path]) -> None:
    def deny_energy_reads(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return path.read_text().strip()

    meter = RaplEnergyMeter(root=str(powercap_tree["root"]), read_text=deny_energy_reads)

    assert meter.unavailable_reason is not None
    assert "PermissionError" in meter.unavailable_reason
    assert "intel-rapl:0" in meter.unavailable_reason


def test_rapl_missing_root_is_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-powercap"

    meter = RaplEnergyMeter(root=str(missing))

    assert meter.unavailable_reason is not None
    assert str(missing) in meter.unavailable_reason
    with pytest.raises(EnergyUnavailable):
        meter.read_joules()


def test_rapl_tree_without_packages_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    write_zone(root, "intel-rapl:0:0", "core", 1, MAX_RANGE_UJ)

    meter = RaplEnergyMeter(root=str(root))

    assert meter.unavailable_reason is not None
    assert "no RAPL package zones" in meter.unavailable_reason


# --------------------------------------------------------------------------- selection


def exactly_a_reading_or_a_reason(meter: EnergyMeter, reason_names: tuple[str, ...]) -> None:
    """A meter either reads (and has no reason), or has a reason that says what failed (and never reads)."""
    if meter.unavailable_reason is None:
        assert meter.available
        first = meter.read_joules()
        assert isinstance(first, float) and first >= 0.0
        assert meter.read_joules() >= first  # a cumulative counter
    else:
        assert not meter.available
        assert any(name in meter.unavailable_reason for name in reason_names), meter.unavailable_reason
        with pytest.raises(EnergyUnavailable) as raised:
            meter.read_joules()
        assert str(raised.value) == meter.unavailable_reason


def test_meter_for_cpu_reads_the_powercap_tree_or_says_why_not_naming_it() -> None:
    meter = meter_for("cpu")

    assert isinstance(meter, RaplEnergyMeter)
    assert meter.method == "rapl-powercap"
    assert meter.root == Path("/sys/class/powercap")
    exactly_a_reading_or_a_reason(meter, ("/sys/class/powercap",))


@pytest.mark.parametrize("tree", ["missing", "no packages", "packages"])
def test_rapl_meter_on_a_fake_powercap_tree_reads_or_names_the_tree(tmp_path: Path, tree: str) -> None:
    root = tmp_path / "powercap"
    if tree == "no packages":
        write_zone(root, "intel-rapl:0:0", "core", 1, MAX_RANGE_UJ)
    elif tree == "packages":
        write_zone(root, "intel-rapl:0", "package-0", 1_000, MAX_RANGE_UJ)

    meter = RaplEnergyMeter(root=str(root))

    assert meter.available == (tree == "packages")
    exactly_a_reading_or_a_reason(meter, (str(root),))


def test_meter_for_cuda_returns_nvml_meter_even_when_unavailable() -> None:
    meter = meter_for("cuda:0")
    try:
        assert isinstance(meter, NvmlEnergyMeter)
        assert meter.method == "nvml-total-energy"
        # Either a real GPU is readable, or a reason says why not: never silent, never a made-up reading.
        exactly_a_reading_or_a_reason(meter, ("NVML", "energy counter", "MIG"))
    finally:
        meter.close()


def test_an_unavailable_nvml_meter_gives_its_reason_not_a_reading() -> None:
    meter = NvmlEnergyMeter(nvml=FakeNvml(FakeClock(), init_error=RuntimeError("driver not loaded")))
    exactly_a_reading_or_a_reason(meter, ("driver not loaded",))
    assert meter.unavailable_reason.startswith("NVML not available")


def test_an_available_nvml_meter_reads_and_has_no_reason() -> None:
    clock = FakeClock()
    meter = NvmlEnergyMeter(nvml=FakeNvml(clock))
    clock.advance(1.0)
    exactly_a_reading_or_a_reason(meter, ())
    assert meter.read_joules() == pytest.approx(FAKE_WATTS * 1.0)


def test_meter_for_unknown_device_is_no_meter() -> None:
    meter = meter_for("tpu")

    assert isinstance(meter, NoEnergyMeter)
    assert meter.method == "none"
    assert "tpu" in (meter.unavailable_reason or "")


def test_nvml_handle_is_found_by_the_cuda_uuid_first_then_by_index():
    by_uuid = NvmlEnergyMeter(device_index=0, nvml=FakeNvml(FakeClock()), uuid="GPU-fake-5")
    assert by_uuid.available and by_uuid.device.handle == 5
    unknown = NvmlEnergyMeter(device_index=2, nvml=FakeNvml(FakeClock()), uuid="MIG-something")
    assert unknown.available and unknown.device.handle == 2


def test_nvml_index_follows_the_gpu_ray_assigned():
    from fuyu_ray.bench.device import nvml_index

    assert nvml_index(0, {"CUDA_VISIBLE_DEVICES": "3"}) == 3
    assert nvml_index(1, {"CUDA_VISIBLE_DEVICES": "5,7"}) == 7
    assert nvml_index(0, {}) == 0
    assert nvml_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-1234"}) == 0  # UUIDs: NVML's own index is unknown here
