"""Model loading: one warm model per variant (model, weights, device, optimization preset).

`tiny` is a directory this package trains and saves; a hub id or a local directory loads
with `from_pretrained` (HF_HUB_OFFLINE and HF_HOME are honoured by huggingface_hub itself).
`weights: random` builds the model's full-size config with random weights, downloading
nothing: cost figures do not depend on weight values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fuyu_ray import tiny
from fuyu_ray.cells import Variant
from fuyu_ray.presets import PRESETS, Preset, resolve_attention

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# adept/fuyu-8b's early generation configs named the wrong end-of-text id.
FUYU_8B_END_OF_TEXT_ID = 71013


class PresetUnsupported(RuntimeError):
    """The preset cannot run on this device; its cells are skipped with this reason."""


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    variant: Variant
    preset: Preset
    label: str  # what the report calls the model
    attention: str  # the attention implementation that really runs
    eos_token_id: int
    accuracy_note: str | None  # why accuracy means nothing for this model, if it does not
    tokenizer_note: str | None
    load_s: float

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_model(variant: Variant) -> LoadedModel:
    started = time.perf_counter()
    preset = PRESETS[variant.optimization]
    attention, reason = resolve_attention(preset, variant.device)
    if attention is None:
        raise PresetUnsupported(reason)
    if variant.device == "cuda" and not torch.cuda.is_available():
        raise PresetUnsupported("no CUDA device visible to this worker")
    dtype = DTYPES[preset.dtype]
    hf_attention = "sdpa" if attention == "sdpa-flash" else attention

    source = str(tiny.ensure_checkpoint()) if variant.model == "tiny" else variant.model
    processor, tokenizer_note = _load_processor(source, stand_in_allowed=variant.weights == "random")
    if variant.weights == "random":
        model = _random_model(source, processor, dtype, hf_attention, variant.device)
        accuracy_note = "random weights"
    else:
        model = _pretrained_model(source, dtype, hf_attention, variant.device)
        accuracy_note = None
    model.eval()
    return LoadedModel(
        model=model,
        processor=processor,
        variant=variant,
        preset=preset,
        label=_label(variant),
        attention=attention,
        eos_token_id=_end_of_text_id(variant.model, processor),
        accuracy_note=accuracy_note,
        tokenizer_note=tokenizer_note,
        load_s=time.perf_counter() - started,
    )


def _label(variant: Variant) -> str:
    if variant.model == "tiny":
        return tiny.TINY_LABEL if variant.weights == "pretrained" else f"{tiny.TINY_UNTRAINED_LABEL}, random weights"
    return variant.model if variant.weights == "pretrained" else f"{variant.model} architecture, random weights"


def _load_processor(source: str, stand_in_allowed: bool):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source), None
    except OSError as exc:
        if not stand_in_allowed:
            raise
        # Random weights answer nothing, so cost figures need only a processor of the same shape.
        note = f"tokenizer of {source} not reachable ({type(exc).__name__}); built-in tiny tokenizer used"
        return tiny.build_processor(tiny.build_tokenizer()), note


def _pretrained_model(source: str, dtype, attention: str, device: str):
    from transformers import FuyuForCausalLM

    return FuyuForCausalLM.from_pretrained(source, dtype=dtype, attn_implementation=attention).to(device)


def full_size_config(source: str):
    """The model's own config when it can be read, else the fuyu-8b defaults that FuyuConfig() gives."""
    from transformers import AutoConfig, FuyuConfig

    try:
        return AutoConfig.from_pretrained(source)
    except OSError:
        return FuyuConfig()


def _random_model(source: str, processor, dtype, attention: str, device: str):
    from transformers import FuyuForCausalLM

    config = full_size_config(source)
    # The processor marks image positions with its own |SPEAKER| id; the model must agree.
    config.image_token_id = processor.tokenizer.convert_tokens_to_ids("|SPEAKER|")
    config._attn_implementation = attention
    torch.manual_seed(0)
    with torch.device(device):
        return FuyuForCausalLM._from_config(config, dtype=dtype, attn_implementation=attention)


def kv_cache_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of the decoder's KV cache."""
    text = config.get_text_config(decoder=True)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return text.num_hidden_layers, getattr(text, "num_key_value_heads", None) or heads, head_dim


def _end_of_text_id(model: str, processor) -> int:
    if model.rstrip("/").endswith("fuyu-8b"):
        return FUYU_8B_END_OF_TEXT_ID
    return processor.tokenizer.convert_tokens_to_ids("|ENDOFTEXT|")
