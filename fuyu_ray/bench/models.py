"""Model loading: one warm model per variant (model, weights, device, optimization preset).

`tiny` is a directory this package trains and saves; a hub id or a local directory loads
with `from_pretrained`. `weights: random` builds the model's full-size config with random
weights, downloading nothing: cost figures do not depend on weight values.

Hub look-ups are resolved once per source and process (`hub_access`): with HF_HUB_OFFLINE set,
or when one probe request finds the hub unreachable, every later load of that source reads the
local cache only (`local_files_only`), so a network that drops packets costs one timeout per
source, not one per file and variant. Processors and configs are kept per source too, and the
built-in stand-in tokenizer is built once.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import get_session

from fuyu_ray.bench import tiny, train_tiny
from fuyu_ray.bench.processor_compat import adapt
from fuyu_ray.job.cells import Variant
from fuyu_ray.job.presets import PRESETS, Preset, resolve_attention

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

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_model(variant: Variant) -> LoadedModel:
    preset = PRESETS[variant.optimization]
    attention, reason = resolve_attention(preset, variant.device)
    if attention is None:
        raise PresetUnsupported(reason)
    if variant.device == "cuda" and not torch.cuda.is_available():
        raise PresetUnsupported("no CUDA device visible to this worker")
    dtype = DTYPES[preset.dtype]
    hf_attention = "sdpa" if attention == "sdpa-flash" else attention

    source = str(train_tiny.ensure_checkpoint()) if variant.model == "tiny" else variant.model
    processor, tokenizer_note = resolve_processor(source, stand_in_allowed=variant.weights == "random")
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
    )


def _label(variant: Variant) -> str:
    if variant.model == "tiny":
        return tiny.TINY_LABEL if variant.weights == "pretrained" else f"{tiny.TINY_UNTRAINED_LABEL}, random weights"
    return variant.model if variant.weights == "pretrained" else f"{variant.model} architecture, random weights"


# --- hub look-ups, once per source and process ------------------------------------------------

_TRUE = {"1", "on", "yes", "true"}
_hub_access: dict[str, tuple[bool, str | None]] = {}
_processors: dict[str, tuple[Any, None] | tuple[None, OSError]] = {}
_configs: dict[str, Any] = {}
_stand_in: list[Any] = []


def hub_offline(environ=os.environ) -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now: the hub reads it once, at import."""
    return environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_access(source: str) -> tuple[bool, str | None]:
    """(local_files_only, why) for loading `source`; decided once per source and process.

    A local directory needs no network. With HF_HUB_OFFLINE set, nothing tries it. Otherwise one
    request without retries asks the hub whether it answers at all; if not, later loads of this
    source read the cache only, instead of waiting out a timeout (and its retries) per file.
    """
    if Path(source).is_dir():
        return False, None
    if hub_offline():
        return True, "HF_HUB_OFFLINE is set"
    if source not in _hub_access:
        why = _probe_hub(source)
        _hub_access[source] = (why is not None, why)
    return _hub_access[source]


def _probe_hub(source: str) -> str | None:
    """None when the hub answers a request for the source's config (any HTTP status), else why not."""
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or constants.HF_HUB_ETAG_TIMEOUT)
    try:
        # No auth headers: a private repository's 401 is an answer too.
        get_session().head(hf_hub_url(source, "config.json"), timeout=timeout, follow_redirects=False)
    except Exception as exc:  # any transport failure: timeout, refused, DNS, TLS
        return f"the hub did not answer ({type(exc).__name__})"
    return None


def resolve_processor(source: str, stand_in_allowed: bool):
    """(processor, note): the source's own processor, or for random weights, the built-in stand-in."""
    if source not in _processors:
        local_only, _ = hub_access(source)
        try:
            from transformers import AutoProcessor  # slow to import: not in stand-in workers

            processor = AutoProcessor.from_pretrained(source, local_files_only=local_only)
            _processors[source] = (adapt(processor), None)
        except OSError as exc:
            _processors[source] = (None, exc)
    processor, error = _processors[source]
    if processor is not None:
        return processor, None
    if not stand_in_allowed:
        raise error
    # Random weights answer nothing, so cost figures need only a processor of the same shape.
    note = f"tokenizer of {source} not reachable ({type(error).__name__}); built-in tiny tokenizer used"
    return stand_in_processor(), note


def stand_in_processor():
    """The built-in tokenizer in a Fuyu processor, built once per process."""
    if not _stand_in:
        _stand_in.append(tiny.build_processor(tiny.build_tokenizer()))
    return _stand_in[0]


def _pretrained_model(source: str, dtype, attention: str, device: str):
    from transformers import FuyuForCausalLM  # slow to import: not in stand-in workers

    local_only, _ = hub_access(source)
    return FuyuForCausalLM.from_pretrained(
        source, dtype=dtype, attn_implementation=attention, local_files_only=local_only
    ).to(device)


def full_size_config(source: str):
    """The model's own config when it can be read, else the fuyu-8b defaults that FuyuConfig() gives.

    A fresh copy every call: the caller edits it.
    """
    from transformers import AutoConfig, FuyuConfig  # slow to import: not in stand-in workers

    if source not in _configs:
        local_only, _ = hub_access(source)
        try:
            _configs[source] = AutoConfig.from_pretrained(source, local_files_only=local_only)
        except OSError:
            _configs[source] = FuyuConfig()
    return copy.deepcopy(_configs[source])


def _random_model(source: str, processor, dtype, attention: str, device: str):
    from transformers import FuyuForCausalLM  # slow to import: not in stand-in workers

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
