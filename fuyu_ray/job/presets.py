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
    # torchao weight-only quantization applied after loading (fuyu_ray.bench.models): "int8" or "int4";
    # activations stay in `dtype`.
    quantization: str | None = None

    @property
    def load_dtype_bytes(self) -> int:
        """Bytes per element of the weights as loaded, before any quantization."""
        return DTYPE_BYTES[self.dtype]


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Bytes per element of a quantized weight: the integers, plus torchao's scales (one bf16 per row for int8;
# for int4 a bf16 scale and zero point per group of INT4_GROUP_SIZE, so 4 bytes per group).
INT4_GROUP_SIZE = 128
QUANTIZED_BYTES = {"int8": 1.0, "int4": 0.5 + 4 / INT4_GROUP_SIZE}


PRESETS: dict[str, Preset] = {
    "fp32": Preset("fp32", "float32", "sdpa"),
    "fp16": Preset("fp16", "float16", "sdpa"),
    "bf16": Preset("bf16", "bfloat16", "sdpa"),
    "eager": Preset("eager", "float16", "eager"),
    "sdpa": Preset("sdpa", "float16", "sdpa"),
    "flash_attention_2": Preset("flash_attention_2", "float16", "sdpa", flash_only=True),
    "compile": Preset("compile", "float16", "sdpa", compiled=True),
    # Quantized kernels pay off only compiled: eager, torchao's int8 weight-only matmul dequantizes the whole
    # weight at every call (5x slower than bf16 on CPU); compiled, inductor fuses the dequantization into
    # the matmul, which then reads half the bytes. No dynamic int8 (activations too): torchao 0.18's compiled
    # CPU path for it gives other first tokens than the same model eager (first_token_top1_match 0), and
    # decode, bound by reading the weights, gains nothing from int8 activations. bf16, not fp16: CPUs have
    # bf16 matmul kernels and no fast fp16 ones, and torchao's int4 kernels take bf16 activations.
    "int8": Preset("int8", "bfloat16", "sdpa", compiled=True, quantization="int8"),
    "int4": Preset("int4", "bfloat16", "sdpa", compiled=True, quantization="int4"),
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
