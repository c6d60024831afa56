"""Hardware facts: what the chips can do at best, so each GPU cell can say how close it came.

Peaks are datasheet figures (dense, no sparsity), keyed by a substring of the NVML device
name; FUYU_RAY_PEAK_BANDWIDTH_GBPS and FUYU_RAY_PEAK_TFLOPS override them with measured values,
such as `measure_peaks` gives (the GPU check measures them first, in the same run).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable

BANDWIDTH_ENV = "FUYU_RAY_PEAK_BANDWIDTH_GBPS"
TFLOPS_ENV = "FUYU_RAY_PEAK_TFLOPS"


@dataclass(frozen=True)
class ChipPeak:
    bandwidth_gbps: float  # HBM/GDDR bytes per second, in GB/s
    fp16_tflops: float  # dense fp16/bf16 tensor-core rate


# Keyed by a substring of the NVML name; `chip_peak` tries the longest key first, so "H200 NVL"
# and "H100 NVL" never fall to their SXM entries, whatever the order here.
GPU_PEAKS: tuple[tuple[str, ChipPeak], ...] = (
    ("H200 NVL", ChipPeak(4800, 835)),  # PCIe card, 600 W: the SXM part's bandwidth, a lower tensor rate
    ("H200", ChipPeak(4800, 989)),
    ("H100 NVL", ChipPeak(3900, 835)),
    ("H100 PCIe", ChipPeak(2000, 756)),
    ("H100", ChipPeak(3350, 989)),
    ("A100-SXM4-80GB", ChipPeak(2039, 312)),
    ("A100 80GB PCIe", ChipPeak(1935, 312)),
    ("A100", ChipPeak(1555, 312)),  # the 40 GB parts
    ("L40S", ChipPeak(864, 362)),
    ("L4", ChipPeak(300, 121)),
    ("A10G", ChipPeak(600, 70)),
    ("A10", ChipPeak(600, 125)),
)


def datasheet_peak(gpu_name: str | None) -> ChipPeak | None:
    """The datasheet's peaks for this chip, whatever the environment overrides."""
    if not gpu_name:
        return None
    return next((peak for key, peak in sorted(GPU_PEAKS, key=lambda entry: -len(entry[0])) if key in gpu_name), None)


def chip_peak(gpu_name: str | None) -> tuple[ChipPeak | None, str]:
    """The peaks to judge `gpu_name` against, and where they came from (or why there are none)."""
    if not gpu_name:
        return None, "no GPU name"
    known = datasheet_peak(gpu_name)
    bandwidth = os.environ.get(BANDWIDTH_ENV)
    tflops = os.environ.get(TFLOPS_ENV)
    if known is None and not (bandwidth and tflops):
        return None, f"no peak figures for {gpu_name!r}; set {BANDWIDTH_ENV} and {TFLOPS_ENV}"
    base = known or ChipPeak(0.0, 0.0)
    source = (
        ", ".join(
            [
                f"{what} from {name}"
                for what, name, value in (("bandwidth", BANDWIDTH_ENV, bandwidth), ("rate", TFLOPS_ENV, tflops))
                if value
            ]
        )
        or "datasheet"
    )
    return ChipPeak(float(bandwidth or base.bandwidth_gbps), float(tflops or base.fp16_tflops)), source


def measure_peaks(
    device: str = "cuda",
    matrix_side: int = 8192,
    copy_bytes: int = 2 << 30,
    repeats: int = 200,
    trials: int = 3,
    warm_up_s: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> ChipPeak:
    """What this chip really reaches: an fp16 matrix product's rate and a device copy's bandwidth.

    Datasheet peaks are not reachable (the H200's 4.8 TB/s copies at about 4.3), so a ratio
    against them understates how close a path came. Each figure is the best of `trials` timed
    loops after `warm_up_s` of the same work, so that clocks have ramped up from idle: a low peak
    would flatter every ratio judged against it. Bandwidth counts the bytes read plus written.
    """
    timing = (device, repeats, trials, warm_up_s, clock)
    # One function each: its tensors are freed on return, before the next one's are made.
    matmul_s = _matmul_seconds(matrix_side, *timing)
    copy_s = _copy_seconds(copy_bytes, *timing)
    return ChipPeak(
        bandwidth_gbps=2 * copy_bytes * repeats / copy_s / 1e9,
        fp16_tflops=2 * matrix_side**3 * repeats / matmul_s / 1e12,
    )


def _matmul_seconds(matrix_side: int, device: str, *timing) -> float:
    import torch  # here: the driver reads this module's peak tables, and runs without torch

    dtype = torch.float16 if device.startswith("cuda") else torch.float32  # CPUs have no fast fp16 matmul
    left = torch.randn(matrix_side, matrix_side, dtype=dtype, device=device)
    right = torch.randn(matrix_side, matrix_side, dtype=dtype, device=device)
    product = torch.empty_like(left)
    return best_loop_seconds(lambda: torch.mm(left, right, out=product), device, *timing)


def _copy_seconds(copy_bytes: int, device: str, *timing) -> float:
    import torch  # here: the driver reads this module's peak tables, and runs without torch

    source = torch.empty(copy_bytes // 2, dtype=torch.float16, device=device)
    target = torch.empty_like(source)
    return best_loop_seconds(lambda: target.copy_(source), device, *timing)


def best_loop_seconds(
    work: Callable[[], object], device: str, repeats: int, trials: int, warm_up_s: float, clock: Callable[[], float]
) -> float:
    """The fastest of `trials` loops of `repeats` calls, after calling `work` for `warm_up_s`."""
    from fuyu_ray.bench.measure import synchronize  # measure imports torch: see _matmul_seconds

    deadline = clock() + warm_up_s
    while True:
        work()
        synchronize(device)
        if clock() >= deadline:
            break
    best = float("inf")
    for _ in range(trials):
        started = clock()
        for _ in range(repeats):
            work()
        synchronize(device)
        best = min(best, clock() - started)
    return best


def peak_overrides(peak: ChipPeak) -> dict[str, str]:
    """The environment that makes `chip_peak` use `peak` (the driver hands it on to Ray actors)."""
    return {BANDWIDTH_ENV: f"{peak.bandwidth_gbps:.0f}", TFLOPS_ENV: f"{peak.fp16_tflops:.0f}"}


def peak_overrides_in(environ) -> dict[str, str]:
    """The peak overrides set in `environ`, if any."""
    return {name: environ[name] for name in (BANDWIDTH_ENV, TFLOPS_ENV) if environ.get(name)}


def weight_bytes_per_token(model) -> int:
    """Bytes a decode step must read: every weight except the embedding tables, of which a
    step reads one row (the token embedding, and the patch projection that decode never runs)."""
    skipped = {id(model.get_input_embeddings().weight)}
    vision = getattr(getattr(model, "model", None), "vision_embed_tokens", None)
    if vision is not None:
        skipped |= {id(p) for p in vision.parameters()}
    from fuyu_ray.bench.models import tensor_bytes  # a quantized weight's bytes are its integers' and scales'

    return sum(tensor_bytes(p) for p in model.parameters() if id(p) not in skipped)


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token of context holds in the KV cache, over all layers."""
    import torch

    from fuyu_ray.bench.models import kv_cache_shape  # models imports torch: see _matmul_seconds

    layers, kv_heads, head_dim = kv_cache_shape(model.config)
    # The cache holds activations, in the model's dtype, whatever the weights are quantized to.
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=model.dtype).element_size()


def roofline_columns(
    gpu_name: str | None,
    loaded,
    prefill: float | None,
    decode: float | None,
    flops: dict[str, Any],
    batch_size: int,
    context_tokens: float | None = None,
) -> dict[str, Any]:
    """limit / measured for decode and prefill: 1.0 is the chip's best.

    Decode's limit is reading, once per token, the weights and the KV cache of the real context
    (`context_tokens` per row, averaged over the decode steps): a cache that reads padded slots
    pays for them. Prefill's limit is its counted FLOPs at the peak matrix rate, against `prefill`:
    the seconds of the first forward alone (`prefill_compute_s`), not the time to first token.
    """
    if loaded.variant.device != "cuda":
        return {"roofline_note": "roofline is for GPU cells"}
    peak, source = chip_peak(gpu_name)
    if peak is None:
        return {"roofline_note": source}
    cache_bytes = batch_size * kv_bytes_per_token(loaded.model) * context_tokens if context_tokens else 0
    decode_limit = (weight_bytes_per_token(loaded.model) + cache_bytes) / (peak.bandwidth_gbps * 1e9)
    note = f"peaks: {peak.bandwidth_gbps:.0f} GB/s, {peak.fp16_tflops:.0f} TFLOP/s ({source})"
    # The tensor-core peak is a 16-bit figure: an fp32 cell has no honest matrix-rate limit here.
    sixteen_bit = loaded.preset.dtype in ("float16", "bfloat16") and flops.get("flops_per_sample")
    prefill_limit = flops["flops_per_sample"] * batch_size / (peak.fp16_tflops * 1e12) if sixteen_bit else None
    return {
        "decode_roofline_ratio": decode_limit / decode if decode else None,
        "prefill_roofline_ratio": prefill_limit / prefill if prefill and prefill_limit else None,
        "roofline_note": note if sixteen_bit else note + "; no prefill ratio (fp32 or FLOPs not counted)",
    }


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
