"""Optimization presets: what each value of the `optimization` axis means.

Kept free of a torch import at module level so that the job spec can validate names
without loading torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class Preset:
    name: str
    dtype: str  # a torch dtype name: float32 | float16 | bfloat16
    attention: str  # the attn_implementation handed to transformers
    compiled: bool = False  # fuyu_ray.bench.decoding: a static KV cache, compiled prefill and decode
    flash_only: bool = False  # restrict attention to FlashAttention-2 kernels


PRESETS: dict[str, Preset] = {
    "fp32": Preset("fp32", "float32", "sdpa"),
    "fp16": Preset("fp16", "float16", "sdpa"),
    "bf16": Preset("bf16", "bfloat16", "sdpa"),
    "eager": Preset("eager", "float16", "eager"),
    "sdpa": Preset("sdpa", "float16", "sdpa"),
    "flash_attention_2": Preset("flash_attention_2", "float16", "sdpa", flash_only=True),
    "compile": Preset("compile", "float16", "sdpa", compiled=True),
}
PRESET_NAMES = tuple(PRESETS)


def flash_attn_package_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(preset: Preset, device: str) -> tuple[str | None, str | None]:
    """The attention implementation this preset really gets on `device`, or None plus why not.

    A preset that cannot run is skipped with the reason, never replaced by another one.
    """
    if not preset.flash_only:
        return preset.attention, None
    if device != "cuda":
        return (
            None,
            "FlashAttention-2 kernels need a CUDA device (neither flash-attn nor SDPA's flash backend runs on CPU)",
        )
    if flash_attn_package_available():
        return "flash_attention_2", None
    return "sdpa-flash", None
