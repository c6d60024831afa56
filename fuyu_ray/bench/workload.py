"""What a cell runs, prepared before anything is timed: its batches through the processor (whose own time
is kept), image geometry, and the call that generates one batch."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fuyu_ray.bench.data import LoadedSamples, Sample
from fuyu_ray.bench.measure import (
    synchronize,
)
from fuyu_ray.bench.models import LoadedModel
from fuyu_ray.bench.prompts import Prompt, TaskSettings
from fuyu_ray.job.spec import ImageSize, image_token_count, padded_dims


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    sample_indices: list[int]  # which samples fill the rows; cycled when the set is smaller than a batch
    prompt_length: int


@dataclass
class Workload:
    """What a cell runs, prepared before anything is timed."""

    settings: TaskSettings
    data: LoadedSamples
    prompts: list[Prompt]
    batches: list[Batch]
    ignore_eos: bool
    decoder: Any  # a compiled StaticGreedyDecoder, or None for transformers' generate
    preprocess_batches_s: list[float] = field(default_factory=list)  # the processor's time per batch

    @property
    def preprocess_s(self) -> float | None:
        return statistics.median(self.preprocess_batches_s) if self.preprocess_batches_s else None

    def columns(self, generated_tokens_mean: float | None, image_size: ImageSize) -> dict[str, Any]:
        data = self.data
        return {
            "dataset_description": data.description,
            "n_samples": len(data.samples),
            "n_skipped_samples": len(data.skipped),
            "skipped_samples_reason": "; ".join(f"{i}: {r}" for i, r in data.skipped[:5]) or None,
            "n_batches": len(self.batches),
            "padded_rows": sum(len(b.sample_indices) for b in self.batches) - len(data.samples),
            "image_tokens": image_token_count(image_size),
            "prompt_tokens_mean": sum(p.text_tokens for p in self.prompts) / len(self.prompts),
            "truncated_prompts": sum(p.truncated for p in self.prompts),
            "max_new_tokens": self.settings.max_new_tokens,
            "generated_tokens_mean": generated_tokens_mean,
            "ignore_eos": self.ignore_eos,
            "prompt_template": self.settings.template,
            "preprocess_s": self.preprocess_s,
        }


def prepare_batches(
    loaded: LoadedModel, samples: list[Sample], prompts: list[Prompt], image_size: ImageSize, batch_size: int
) -> tuple[list[Batch], list[float]]:
    """Processor work happens here, outside any timed window: latency is generate's time alone. Its own
    time per batch (resize, patches, tokens, the copy to the device) comes back beside the batches: a user
    waits for it too.

    Each image is resized to the cell's image_size (S x S, or W x H); the processor pads it to
    whole patches and cuts rows * (cols + 1) image tokens."""
    width, height = image_size.width, image_size.height
    padded_width, padded_height = padded_dims(image_size)
    count = math.ceil(len(samples) / batch_size) * batch_size
    order = [i % len(samples) for i in range(count)]
    dtype = next(loaded.model.parameters()).dtype
    batches, seconds = [], []
    for start in range(0, count, batch_size):
        indices = order[start : start + batch_size]
        began = time.perf_counter()
        inputs = loaded.processor(
            images=[samples[i].image.resize((width, height)) for i in indices],
            text=[prompts[i].text for i in indices],
            return_tensors="pt",
            # The processor pads to this canvas before cutting patches; the 1080x1920 default
            # gives the same tokens for a smaller image and costs far more time.
            size={"height": padded_height, "width": padded_width},
        )
        inputs = {k: v.to(loaded.variant.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        inputs["image_patches"] = inputs["image_patches"].to(dtype)
        synchronize(loaded.variant.device)
        seconds.append(time.perf_counter() - began)
        batches.append(Batch(inputs, indices, inputs["input_ids"].shape[1]))
    return batches, seconds


def with_preprocess(ttft_s: float | None, preprocess_s: float | None) -> float | None:
    """Time to first token as a user waits for it: the processor's batch, then the model's first token."""
    return None if ttft_s is None or preprocess_s is None else ttft_s + preprocess_s


def attention_context(loaded: LoadedModel):
    if loaded.attention == "sdpa-flash":
        return sdpa_kernel(SDPBackend.FLASH_ATTENTION)
    return contextlib.nullcontext()


def generate(loaded: LoadedModel, batch: Batch, max_new_tokens: int, ignore_eos: bool, token_clock) -> torch.Tensor:
    from transformers import StoppingCriteria, StoppingCriteriaList  # slow to import: not in stand-in workers

    class ClockCriterion(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return token_clock(input_ids, scores)

    options: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "eos_token_id": loaded.eos_token_id,
        "pad_token_id": loaded.tokenizer.pad_token_id,
        "stopping_criteria": StoppingCriteriaList([ClockCriterion()]),
    }
    if ignore_eos:
        options["min_new_tokens"] = max_new_tokens
    # The first forward of `generate` is the prefill: hooks mark it, apart from generate's host set-up.
    pre_hook = loaded.model.register_forward_pre_hook(lambda module, args: token_clock.prefill_started())
    hook = loaded.model.register_forward_hook(lambda module, args, output: token_clock.prefill_finished())
    try:
        with torch.inference_mode(), attention_context(loaded):
            return loaded.model.generate(**batch.inputs, **options)
    finally:
        pre_hook.remove()
        hook.remove()


def batch_runner(loaded: LoadedModel, workload: Workload):
    """One batch through the cell's decoder: transformers' generate, or the compiled static-cache one."""
    max_new_tokens, ignore_eos, decoder = workload.settings.max_new_tokens, workload.ignore_eos, workload.decoder

    def run_batch(batch: Batch, token_clock) -> torch.Tensor:
        if decoder is None:
            return generate(loaded, batch, max_new_tokens, ignore_eos, token_clock)
        with attention_context(loaded):
            return decoder.generate(
                batch.inputs,
                max_new_tokens,
                loaded.eos_token_id,
                ignore_eos,
                on_token=token_clock,
                prefill_timer=token_clock.prefill,
            )

    return run_batch
