"""A measured cell's figures as record columns: the timed window, the answers and their score, FLOPs."""

from __future__ import annotations

import functools
import gc
from dataclasses import dataclass, field
from typing import Any

import torch

from fuyu_ray.bench import energy
from fuyu_ray.bench.decoding import first_token_agreement
from fuyu_ray.bench.interference import (
    HostWindow,
    QualityThresholds,
    coefficient_of_variation,
    noise_series,
    verdict,
)
from fuyu_ray.bench.measure import (
    BatchTiming,
    PeakMemory,
    count_flops,
    fuyu_prefill_flops,
    spread,
)
from fuyu_ray.bench.models import LoadedModel
from fuyu_ray.bench.workload import Batch, Workload, attention_context
from fuyu_ray.job.cells import Cell
from fuyu_ray.job.spec import decode_context
from fuyu_ray.tasks.base import TaskScore


@dataclass
class TimedRun:
    """The timed window: each batch's timing, the energy window, memory, clocks, and what else ran."""

    batch_size: int
    batches_per_pass: int
    decoder: Any  # as the workload's: its compile time and recompilations are the window's
    clocks_start: dict[str, Any]
    compile_s_before: float
    first_call_s: float = 0.0
    warmup_s: float = 0.0
    warmup_batches: int = 0
    warmup_settled: bool = True
    compilations_warm: int = 0
    timings: list[BatchTiming] = field(default_factory=list)
    first_pass: list[torch.Tensor] = field(default_factory=list)  # the outputs answers are read from
    repeat_joules: list[float] = field(default_factory=list)  # each pass's own energy, for compare's intervals
    window: energy.WindowResult | None = None

    def pass_estimate_s(self) -> float:
        """One timed pass, guessed from the warm-up's last batches (the first may be a compile)."""
        later = (self.warmup_s - self.first_call_s) / (self.warmup_batches - 1) if self.warmup_batches > 1 else None
        return (later if later is not None else self.first_call_s) * self.batches_per_pass

    host: HostWindow | None = None
    gpu: Any = None  # the GPU sampler's findings, where the device has a sampler
    memory: PeakMemory | None = None
    clocks_end: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property  # read by the row's latency columns and by its roofline
    def latency(self) -> dict[str, Any]:
        return latency_columns(self.timings, self.batch_size, self.first_call_s, self.warmup_s, self.warmup_batches)

    def columns(self, meter, idle_power_w, quality: QualityThresholds) -> dict[str, Any]:
        decoder, window, batch_size = self.decoder, self.window, self.batch_size
        stability = noise_series(
            [t.total_s for t in self.timings], self.batches_per_pass, [t.decode_s_per_token for t in self.timings]
        )
        return {
            **self.latency,
            **energy_columns(window, meter, idle_power_w, len(self.timings), batch_size),
            "energy_repeats_j": self.repeat_joules if window.joules is not None and self.repeat_joules else None,
            "peak_gpu_allocated_bytes": self.memory.allocated_bytes,
            "peak_gpu_reserved_bytes": self.memory.reserved_bytes,
            "peak_rss_bytes": self.memory.rss_bytes,
            "compile_s": decoder.compile_s - self.compile_s_before if decoder else None,
            "recompiles": decoder.compilations - self.compilations_warm if decoder else None,
            "decoder": describe_decoder(decoder),
            "sm_clock_start_mhz": self.clocks_start.get("sm_clock_mhz"),
            "gpu_temp_start_c": self.clocks_start.get("temperature_c"),
            "sm_clock_end_mhz": self.clocks_end.get("sm_clock_mhz"),
            "gpu_temp_end_c": self.clocks_end.get("temperature_c"),
            **self.host.columns(),
            **(self.gpu.columns() if self.gpu else {}),
            "latency_cv": coefficient_of_variation(stability),
            "measurement_quality": verdict(
                quality,
                self.host,
                self.gpu,
                stability,
                unsettled_warmup=None if self.warmup_settled else self.warmup_batches,
            ),
        }


@dataclass
class Answers:
    """What the model answered on the first timed pass, and the task's score of it."""

    predictions: list[str | None]
    generations: list[str | None]
    generated: list[int | None]  # new tokens per sample, the end-of-text token included
    stopped: list[bool]  # whether the sample ended with end-of-text before max_new_tokens
    score: TaskScore
    token_ids: list[list[int] | None]  # the generated ids, end-of-text included: where two presets' answers part

    @property
    def generated_mean(self) -> float | None:
        lengths = [g for g in self.generated if g is not None]
        return sum(lengths) / len(lengths) if lengths else None

    def columns(self, loaded: LoadedModel) -> dict[str, Any]:
        return {"eos_fraction": sum(self.stopped) / len(self.stopped), **accuracy_columns(self.score, loaded)}

    def sample_rows(self, cell: Cell, workload: Workload) -> list[dict[str, Any]]:
        return sample_rows(
            cell,
            workload.data.samples,
            workload.prompts,
            self.generations,
            self.predictions,
            self.score,
            self.generated,
            self.token_ids,
        )


def describe_decoder(decoder) -> str:
    return "transformers generate" if decoder is None else decoder.describe()


def first_token_columns(loaded: LoadedModel, decoder, batch: Batch) -> dict[str, Any]:
    """A compiled path's first-token agreement with stock `generate` on the cell's first batch
    (same weights, same inputs); nothing for the stock paths themselves."""
    if decoder is None:
        return {}
    return first_token_agreement(loaded.model, decoder, batch.inputs, context=lambda: attention_context(loaded))


def decode_outputs(loaded: LoadedModel, batches: list[Batch], outputs: list[torch.Tensor], n_samples: int):
    """The answer is what follows the beginning-of-answer token, which ends every prompt."""
    tokenizer = loaded.tokenizer
    predictions: list[str | None] = [None] * n_samples
    generations: list[str | None] = [None] * n_samples
    generated: list[int | None] = [None] * n_samples
    stopped: list[bool] = [False] * n_samples
    token_ids: list[list[int] | None] = [None] * n_samples
    for batch, output in zip(batches, outputs):
        new_tokens = output[:, batch.prompt_length :].cpu()
        for row, index in enumerate(batch.sample_indices):
            if predictions[index] is not None:
                continue
            ids = new_tokens[row].tolist()
            stopped[index] = loaded.eos_token_id in ids
            length = ids.index(loaded.eos_token_id) + 1 if stopped[index] else len(ids)
            generations[index] = tokenizer.decode(ids[:length], skip_special_tokens=False)
            predictions[index] = tokenizer.decode(ids[:length], skip_special_tokens=True).strip()
            generated[index] = length
            token_ids[index] = ids[:length]
    return predictions, generations, generated, stopped, token_ids


def count_cell_flops(loaded: LoadedModel, batch: Batch) -> dict[str, Any]:
    """Counted on the cell's own first batch: one prefill forward, then one decode step.

    Logits only for the last position, as `generate` computes them: the LM head over every
    prompt position would add work (and a B x T x vocab tensor) that generation never does.
    """
    model, rows = loaded.model, batch.inputs["input_ids"].shape[0]
    try:
        with torch.inference_mode(), attention_context(loaded):
            prefill_flops = count_flops(lambda: model(**batch.inputs, use_cache=False, logits_to_keep=1))
            prefill = model(**batch.inputs, use_cache=True, logits_to_keep=1)
            next_ids, cache = prefill.logits[:, -1:].argmax(-1), prefill.past_key_values
            del prefill
            mask = torch.cat([batch.inputs["attention_mask"], torch.ones_like(next_ids)], dim=1)
            decode_flops = count_flops(
                lambda: model(input_ids=next_ids, attention_mask=mask, past_key_values=cache, use_cache=True)
            )
    except torch.cuda.OutOfMemoryError:
        # The timing is already done and sound; losing only the FLOPs is better than losing the cell.
        gc.collect()
        torch.cuda.empty_cache()
        return {"prefill_tokens": batch.prompt_length, "flops_note": "out of memory while counting FLOPs"}
    patches_per_row = batch.inputs["image_patches"].shape[0] // rows
    return {
        "flops_per_sample": prefill_flops / rows,
        "flops_analytic_per_sample": fuyu_prefill_flops(
            model.config, patches_per_row, batch.prompt_length, logits_positions=1
        ),
        "macs_per_sample": prefill_flops / rows / 2,
        "decode_flops_per_token": decode_flops / rows,
        "prefill_tokens": batch.prompt_length,
    }


def mean_context_tokens(batches: list[Batch], generated_tokens_mean: float | None) -> float:
    """Tokens a decode step attends to, per row, on average: the prompt plus half the generation."""
    prompt = sum(b.prompt_length for b in batches) / len(batches)
    return decode_context(prompt, generated_tokens_mean or 0.0)


def latency_columns(
    timings: list[BatchTiming], batch_size: int, first_call_s, warmup_s, warmup_batches
) -> dict[str, Any]:
    total = spread([t.total_s for t in timings])
    prefill = spread([t.prefill_s for t in timings])
    compute = spread([t.prefill_compute_s for t in timings])
    decode = spread([t.decode_s_per_token for t in timings])
    busy = sum(t.total_s for t in timings)
    tokens = sum(t.steps for t in timings) * batch_size
    return {
        "latency_s": total.median,
        "latency_p90_s": total.p90,
        "latency_mean_s": total.mean,
        "latency_std_s": total.std,
        "latency_n": total.n,
        "prefill_s": prefill.median,
        "prefill_p90_s": prefill.p90,
        "ttft_s": prefill.median,
        "ttft_p90_s": prefill.p90,
        "prefill_compute_s": compute.median,
        "prefill_compute_p90_s": compute.p90,
        "decode_s_per_token": decode.median,
        "decode_p90_s_per_token": decode.p90,
        "samples_per_s": len(timings) * batch_size / busy if busy else None,
        "tokens_per_s": tokens / busy if busy else None,
        "first_call_s": first_call_s,
        "warmup_s": warmup_s,
        "warmup_batches": warmup_batches,
        # The raw figures behind the medians, one per timed batch, for compare's intervals.
        "latency_batches_s": [t.total_s for t in timings],
        "prefill_batches_s": [t.prefill_s for t in timings],
        "decode_batches_s_per_token": [t.decode_s_per_token for t in timings],
    }


def energy_columns(
    window: energy.WindowResult, meter: energy.EnergyMeter, idle_w, n_batches: int, batch_size: int
) -> dict[str, Any]:
    columns = {
        "energy_window_s": window.seconds,
        "energy_repeats": window.repeats,
        "energy_method": meter.method,
        "energy_note": window.note,
        "idle_power_w": idle_w,
    }
    if window.joules is None:
        return columns
    per_batch = window.joules / n_batches
    columns.update(energy_j_per_batch=per_batch, energy_j_per_sample=per_batch / batch_size)
    if idle_w is not None:
        above = (window.joules - idle_w * window.seconds) / n_batches
        columns.update(energy_above_idle_j_per_batch=above, energy_above_idle_j_per_sample=above / batch_size)
    return columns


def read_joules(meter: energy.EnergyMeter) -> float | None:
    """The meter's counter now, or None where it cannot be read."""
    if not meter.available:
        return None
    try:
        return meter.read_joules()
    except energy.EnergyUnavailable:
        return None


def accuracy_columns(task_score, loaded: LoadedModel) -> dict[str, Any]:
    if loaded.accuracy_note is not None:
        return {"accuracy_metric": task_score.metric, "accuracy_note": loaded.accuracy_note}
    return {
        "accuracy": task_score.accuracy,
        "accuracy_metric": task_score.metric,
        "accuracy_ci_low": task_score.ci_low,
        "accuracy_ci_high": task_score.ci_high,
        "accuracy_n": task_score.n,
        "accuracy_lenient": task_score.lenient,
        "bleu4": task_score.bleu4,
        "caption_tokenizer": task_score.tokenizer,
        "accuracy_note": task_score.note,
    }


def sample_rows(
    cell: Cell, samples, prompts, generations, predictions, task_score, generated, token_ids
) -> list[dict[str, Any]]:
    lenient = task_score.per_sample_lenient or [None] * len(samples)
    return [
        {
            "cell_id": cell.cell_id,
            "dataset": cell.point.dataset,
            "sample_id": sample.sample_id,
            "prompt": prompt.text,
            "generation": generation,
            "prediction": prediction,
            "references": list(sample.references),
            "answer_index": sample.answer_index,
            "choices": list(sample.choices),
            "score": per_sample,
            "score_lenient": lenient_score,
            "prompt_tokens": prompt.text_tokens,
            "truncated": prompt.truncated,
            "generated_tokens": length,
            "generated_ids": ids,
        }
        for sample, prompt, generation, prediction, per_sample, lenient_score, length, ids in zip(
            samples, prompts, generations, predictions, task_score.per_sample, lenient, generated, token_ids
        )
    ]
