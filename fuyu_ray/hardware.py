"""Hardware facts: what the chips can do at best, so each GPU cell can say how close it came.

Peaks are datasheet figures (dense, no sparsity), keyed by a substring of the NVML device
name; FUYU_RAY_PEAK_BANDWIDTH_GBPS and FUYU_RAY_PEAK_TFLOPS override them with measured values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChipPeak:
    bandwidth_gbps: float  # HBM/GDDR bytes per second, in GB/s
    fp16_tflops: float  # dense fp16/bf16 tensor-core rate


# Most specific names first: "H100 NVL" must not match the SXM entry.
GPU_PEAKS: tuple[tuple[str, ChipPeak], ...] = (
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


def chip_peak(gpu_name: str | None) -> tuple[ChipPeak | None, str | None]:
    if not gpu_name:
        return None, "no GPU name"
    known = next((peak for key, peak in GPU_PEAKS if key in gpu_name), None)
    bandwidth = os.environ.get("FUYU_RAY_PEAK_BANDWIDTH_GBPS")
    tflops = os.environ.get("FUYU_RAY_PEAK_TFLOPS")
    if known is None and not (bandwidth and tflops):
        return None, f"no peak figures for {gpu_name!r}; set FUYU_RAY_PEAK_BANDWIDTH_GBPS and FUYU_RAY_PEAK_TFLOPS"
    base = known or ChipPeak(0.0, 0.0)
    return ChipPeak(float(bandwidth or base.bandwidth_gbps), float(tflops or base.fp16_tflops)), None


def weight_bytes_per_token(model) -> int:
    """Bytes a decode step must read: every weight except the embedding tables, of which a
    step reads one row (the token embedding, and the patch projection that decode never runs)."""
    skipped = {id(model.get_input_embeddings().weight)}
    vision = getattr(getattr(model, "model", None), "vision_embed_tokens", None)
    if vision is not None:
        skipped |= {id(p) for p in vision.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skipped)


def roofline_columns(gpu_name: str | None, loaded, prefill: float | None, decode: float | None,
                     flops: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """limit / measured for decode (weights read once per token) and prefill (FLOPs at peak rate): 1.0 is the chip's best."""
    if loaded.variant.device != "cuda":
        return {"roofline_note": "roofline is for GPU cells"}
    peak, why_not = chip_peak(gpu_name)
    if peak is None:
        return {"roofline_note": why_not}
    decode_limit = weight_bytes_per_token(loaded.model) / (peak.bandwidth_gbps * 1e9)
    note = f"peaks: {peak.bandwidth_gbps:.0f} GB/s, {peak.fp16_tflops:.0f} TFLOP/s"
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
    import platform

    return platform.processor() or None
