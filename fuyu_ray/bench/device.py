"""The device a cell runs on, as the runner asks about it: name, clocks, a throttling sampler.

Zeus-style: a `Device` answers every question, with None and `unavailable_reason` where it
cannot, so the runner asks a CPU, a GPU that NVML opens and one it does not the same way. The
energy counter is a separate meter (`energy.py`) that reads through the device.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from fuyu_ray.bench.interference import GpuSampler

NO_INFO = {"gpu_name": None, "gpu_uuid": None, "driver_version": None}
NO_CLOCKS = {"sm_clock_mhz": None, "temperature_c": None}


class Device:
    """A device that tells nothing: a CPU (its energy is RAPL's, see energy.py), or a stand-in."""

    unavailable_reason: str | None = "no device counters"

    def info(self) -> dict[str, str | None]:
        return dict(NO_INFO)

    def clocks(self) -> dict[str, int | None]:
        return dict(NO_CLOCKS)

    def sampler(self):
        """A sampler of clocks, throttle reasons and other processes over a timed window, or None."""
        return None

    def close(self) -> None:
        """Release what the device holds; safe to call more than once."""


def decode(value: Any) -> str:
    # Older pynvml releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def cuda_name(index: int) -> str | None:
    """The name CUDA gives the device, for when NVML gives none: a report names the GPU it ran on."""
    try:
        return torch.cuda.get_device_name(index) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a device CUDA cannot describe has no name to give
        return None


class NvmlDevice(Device):
    """A GPU through NVML, opened by its UUID (the one identity CUDA and NVML agree on) or its index."""

    def __init__(
        self, device_index: int = 0, nvml: Any = None, uuid: str | None = None, cuda_index: int | None = None
    ) -> None:
        self.device_index, self.uuid = device_index, uuid
        self.cuda_index = device_index if cuda_index is None else cuda_index  # CUDA's numbering may differ
        self.unavailable_reason = None
        self.handle: Any = None
        self.initialized = False
        self.nvml = nvml if nvml is not None else self._import_pynvml()
        if self.nvml is None:
            return
        try:
            self.nvml.nvmlInit()
        except Exception as error:  # noqa: BLE001
            self.unavailable_reason = f"NVML not available: {error!r}"
            return
        self.initialized = True
        try:
            self.handle = self._open_handle()
        except Exception as error:  # noqa: BLE001
            self.unavailable_reason = f"NVML cannot open GPU index {self.device_index}: {error!r}"

    def _import_pynvml(self) -> Any:
        # Imported here so that importing this module never fails on a machine without NVML.
        try:
            import pynvml
        except Exception as error:  # noqa: BLE001 - any import failure means "no NVML"
            self.unavailable_reason = f"NVML not available: {error!r}"
            return None
        return pynvml

    def _open_handle(self) -> Any:
        if self.uuid:
            try:
                return self.nvml.nvmlDeviceGetHandleByUUID(self.uuid)
            except Exception:  # noqa: BLE001 - e.g. a MIG instance's UUID: fall back to the index
                pass
        return self.nvml.nvmlDeviceGetHandleByIndex(self.device_index)

    def query(self, call) -> Any:
        """One NVML field, or None where it cannot be read: each is optional on its own."""
        if not self.initialized:
            return None
        try:
            return call()
        except Exception:  # noqa: BLE001
            return None

    def info(self) -> dict[str, str | None]:
        nvml, handle = self.nvml, self.handle
        name = self.query(lambda: nvml.nvmlDeviceGetName(handle)) if handle is not None else None
        uuid = self.query(lambda: nvml.nvmlDeviceGetUUID(handle)) if handle is not None else None
        driver = self.query(lambda: nvml.nvmlSystemGetDriverVersion())
        return {
            "gpu_name": decode(name) if name is not None else cuda_name(self.cuda_index),
            "gpu_uuid": None if uuid is None else decode(uuid),
            "driver_version": None if driver is None else decode(driver),
        }

    def clocks(self) -> dict[str, int | None]:
        nvml, handle = self.nvml, self.handle
        if handle is None:
            return dict(NO_CLOCKS)
        sm_clock = self.query(lambda: nvml.nvmlDeviceGetClockInfo(handle, getattr(nvml, "NVML_CLOCK_SM", 1)))
        temperature = self.query(
            lambda: nvml.nvmlDeviceGetTemperature(handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        )
        return {
            "sm_clock_mhz": None if sm_clock is None else int(sm_clock),
            "temperature_c": None if temperature is None else int(temperature),
        }

    def sampler(self):
        return GpuSampler(self.nvml, self.handle) if self.handle is not None else None

    def close(self) -> None:
        if not self.initialized:
            return
        self.initialized = False
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - a failed shutdown changes no measurement
            pass


def nvml_index(cuda_index: int, environ=os.environ) -> int:
    """NVML counts every GPU in the machine; CUDA only the visible ones (Ray sets CUDA_VISIBLE_DEVICES
    per actor). Without this, every actor on a multi-GPU node would read GPU 0's counter."""
    visible = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if cuda_index < len(visible) and visible[cuda_index].isdigit():
        return int(visible[cuda_index])
    return cuda_index


def cuda_uuid(cuda_index: int) -> str | None:
    """NVML's UUID ("GPU-…") of CUDA device `cuda_index` as this process numbers it, or None.

    Matching by UUID holds where index arithmetic does not: UUIDs in CUDA_VISIBLE_DEVICES,
    or a CUDA_DEVICE_ORDER that is not NVML's PCI order.
    """
    try:
        if not torch.cuda.is_available():
            return None
        uuid = str(torch.cuda.get_device_properties(cuda_index).uuid)
    except Exception:  # noqa: BLE001 - no CUDA, an old torch without the field
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def open_device(device: str, device_index: int = 0) -> Device:
    """The device of a kind ("cuda", "cuda:N", "cpu"); one that cannot be opened still answers, with None."""
    kind, _, index_text = device.partition(":")
    if kind == "cuda":
        index = int(index_text) if index_text.isdigit() else device_index
        return NvmlDevice(device_index=nvml_index(index), uuid=cuda_uuid(index), cuda_index=index)
    return Device()
