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

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import constants, hf_hub_url
from huggingface_hub.utils import get_session

from fuyu_ray.bench import tiny, train_tiny
from fuyu_ray.bench.processor_compat import adapt
from fuyu_ray.job.cells import Variant
from fuyu_ray.job.presets import INT4_GROUP_SIZE, PRESETS, QUANTIZED_BYTES, Preset, resolve_attention
from fuyu_ray.storage.records import error_line

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# adept/fuyu-8b's early generation configs named the wrong end-of-text id.
FUYU_8B_END_OF_TEXT_ID = 71013


class PresetUnsupported(RuntimeError):
    """The preset cannot run on this device; its cells are skipped with this reason."""


@dataclass(frozen=True)
class PrefillMode:
    """How a preset's prefill differs from its decode: entered around each prefill, and said in the record."""

    enter: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    note: str | None = None


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
    weight_bytes: int | None = None  # the weights as they sit in memory, quantized ones with their scales
    prefill_mode: PrefillMode = PrefillMode()

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
    if preset.quantization:
        check_quantization_kernel(preset.quantization, variant.device)  # before minutes of loading
    dtype = DTYPES[preset.dtype]
    hf_attention = "sdpa" if attention == "sdpa-flash" else attention

    source = str(train_tiny.ensure_checkpoint()) if variant.model == "tiny" else variant.model
    processor, tokenizer_note = resolve_processor(source, stand_in_allowed=variant.weights == "random")
    check_memory(full_size_config(source), preset, variant.device)
    if variant.weights == "random":
        model = _random_model(source, processor, dtype, hf_attention, variant.device)
        accuracy_note = "random weights"
    else:
        model = _pretrained_model(source, dtype, hf_attention, variant.device)
        accuracy_note = None
    model.eval()
    if preset.quantization:
        quantize(model, preset.quantization, variant.device)
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
        weight_bytes=weight_bytes(model),
        prefill_mode=prefill_mode(model, preset, variant.device),
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


# --- quantization (torchao), weight bytes and the memory check before loading ----------------------


def quantized_kind(module, quantization: str | None) -> str | None:
    """How a quantized preset stores this module's weight: the preset's own quantization for a linear
    layer, int8 rows for an embedding table (a lookup reads one row per token: no kernel to speed up,
    but a quarter of fuyu-8b's bytes), None where the weight stays in the preset's dtype (layer norms,
    biases, and a linear whose widths the kernel cannot take: fuyu's patch projection, 2,700 wide)."""
    if quantization is None:
        return None
    if isinstance(module, torch.nn.Embedding):
        return "int8"
    if not isinstance(module, torch.nn.Linear):
        return None
    inputs, outputs = WIDTH_MULTIPLES[quantization]
    if module.in_features % inputs or module.out_features % outputs:
        return None
    return quantization


# The (input, output) widths each kernel takes: int4 quantizes in groups along the input, and torch's CPU
# int4 packing takes outputs in multiples of 16; torch's CPU int8 kernel (_weight_int8pack_mm, which
# compiled int8 weight-only matmuls lower to) crashes the process on an input width not a multiple of 16.
WIDTH_MULTIPLES = {"int8": (16, 1), "int4": (INT4_GROUP_SIZE, 16)}


def _torchao_config(kind: str, device: str):
    from torchao.quantization import (  # optional: only the quantized presets need it
        Int4WeightOnlyConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerAxis,
    )

    if kind == "int4" and device == "cpu":
        # The CPU's int4 weight-only kernel (torch's _weight_int4pack_mm_for_cpu, its own packed layout) is in
        # torchao's prototype namespace in 0.18; Int4WeightOnlyConfig's layouts are CUDA kernels'.
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP_SIZE)
    return {
        "int8": lambda: Int8WeightOnlyConfig(),
        "int4": lambda: Int4WeightOnlyConfig(group_size=INT4_GROUP_SIZE, int4_packing_format="tile_packed_to_4d"),
        "embedding": lambda: IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
    }[kind]()


def quantize(model, quantization: str, device: str) -> None:
    """Quantize in place, module by module: each bf16 weight is freed as its quantized copy is made."""
    from torchao.quantization import quantize_

    quantize_(
        model,
        _torchao_config(quantization, device),
        filter_fn=lambda module, _: isinstance(module, torch.nn.Linear) and quantized_kind(module, quantization),
    )
    quantize_(
        model, _torchao_config("embedding", device), filter_fn=lambda module, _: isinstance(module, torch.nn.Embedding)
    )


# torchao's int8 weight (Int8Tensor) runs a matmul one of two ways, chosen by its act_quant_kwargs:
# weight-only, with bf16 activations (compiled: torch's _weight_int8pack_mm), or with the activations
# rounded to int8 per token at run time (an int8 x int8 GEMM: AMX or VNNI on x86). On CPU the weight-only
# kernel is one for a few rows: fuyu-8b's 4096 x 16384 layer takes 82 ms on a prefill's 89 rows, bf16
# 14 ms, the int8 GEMM 10 ms; on one row the weight-only kernel is the faster. So on CPU the int8 preset
# prefills with int8 activations and decodes weight-only, from the same weights: nothing is stored twice.
# What the rounded activations cost shows in its first-token agreement with the sweep's reference.
INT8_PREFILL_ACTIVATIONS = "prefill with int8 activations (dynamic, per token), decode weight-only"


def prefill_mode(model, preset: Preset, device: str) -> PrefillMode:
    if preset.quantization != "int8" or device != "cpu":
        return PrefillMode()
    from torchao.quantization import Int8Tensor, PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import QuantizeTensorToInt8Kwargs

    weights = [parameter for parameter in model.parameters() if isinstance(parameter, Int8Tensor)]
    per_token = QuantizeTensorToInt8Kwargs(granularity=PerRow())

    @contextlib.contextmanager
    def int8_activations():
        # A compiled step guards on these, so the prefill's graph and the decode step's each keep their own.
        for weight in weights:
            weight.act_quant_kwargs = per_token
        try:
            yield
        finally:
            for weight in weights:
                weight.act_quant_kwargs = None

    return PrefillMode(int8_activations, INT8_PREFILL_ACTIVATIONS)


_kernel_checks: dict[tuple[str, str], str | None] = {}


def check_quantization_kernel(quantization: str, device: str) -> None:
    """Raise PresetUnsupported where torchao has no kernel for this quantization on this device.

    Asked of a small linear layer, once per process: quantized and run, as the model's layers will be.
    """
    key = (quantization, device)
    if key not in _kernel_checks:
        _kernel_checks[key] = _kernel_problem(quantization, device)
    if _kernel_checks[key]:
        raise PresetUnsupported(_kernel_checks[key])


def _kernel_problem(quantization: str, device: str) -> str | None:
    try:
        import torchao
    except ImportError:
        return "torchao is not installed on this worker (pip install torchao; see pyproject.toml for the version)"
    try:
        layer = torch.nn.Sequential(torch.nn.Linear(2 * INT4_GROUP_SIZE, 2 * INT4_GROUP_SIZE)).to(
            device, torch.bfloat16
        )
        quantize(layer, quantization, device)
        with torch.inference_mode():
            layer(torch.ones(2, 2 * INT4_GROUP_SIZE, dtype=torch.bfloat16, device=device))
    except Exception as exc:  # whatever torchao raises for a device it has no kernel for
        return f"torchao {torchao.__version__} has no {quantization} kernel for {device} ({error_line(exc)})"
    return None


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor holds; for a torchao tensor subclass, those of the tensors inside it (integers, scales)."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter) and hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(model) -> int:
    return sum(tensor_bytes(parameter) for parameter in model.parameters())


def predicted_weight_bytes(config, preset: Preset) -> tuple[int, int]:
    """(bytes while loading, bytes once loaded) of a model with this config under this preset, from the
    parameters' shapes alone: the model is built on the meta device, which allocates nothing. A quantized
    preset loads in its dtype and then quantizes in place, so loading needs its unquantized bytes."""
    from transformers import FuyuForCausalLM  # slow to import: not in stand-in workers

    with torch.device("meta"):
        model = FuyuForCausalLM._from_config(config)
    loading = loaded = 0.0
    for module in model.modules():
        kind = quantized_kind(module, preset.quantization)
        for name, parameter in module.named_parameters(recurse=False):
            loading += parameter.numel() * preset.load_dtype_bytes
            per_element = QUANTIZED_BYTES[kind] if kind and name == "weight" else preset.load_dtype_bytes
            loaded += parameter.numel() * per_element
    return int(loading), int(loaded)


def free_memory_bytes(device: str) -> tuple[int, str]:
    """(bytes this worker can still allocate, where that figure comes from) on `device`."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free, "free on the GPU (torch.cuda.mem_get_info)"
    figures = {"MemAvailable": _meminfo_available()}
    limit = _cgroup_headroom()
    if limit is not None:
        figures["the cgroup's memory limit less its usage"] = limit
    where = min((f for f in figures if figures[f] is not None), key=lambda f: figures[f])
    return figures[where], f"available to this worker ({where})"


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> int | None:
    """The memory limit of this process's cgroup less what it uses (v2, else v1); None where there is no limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - int(usage))
    return None


def check_memory(config, preset: Preset, device: str) -> None:
    """Raise PresetUnsupported where the weights cannot fit what the worker has free: better a skipped cell
    naming both figures than a worker the system kills mid-load, which would read as a crash."""
    loading, loaded = predicted_weight_bytes(config, preset)
    available, where = free_memory_bytes(device)
    if loading > available:
        quantized = f" (in {preset.dtype} before quantizing to {loaded / 1e9:.1f} GB)" if loading != loaded else ""
        raise PresetUnsupported(
            f"the weights need {loading / 1e9:.1f} GB ({loading:,} bytes){quantized}, "
            f"and {available / 1e9:.1f} GB ({available:,} bytes) are {where}"
        )
