"""The per-cell core: one warm model runs cells and returns Arrow records.

Deliberately free of Ray and Polars: a Ray actor wraps a CellRunner, and a bare GPU
machine can run the same code in-process (see fuyu_ray.driver.gpu_check).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import os
import socket
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from fuyu_ray.bench import energy, hardware
from fuyu_ray.bench.data import LoadedSamples, Sample, load_samples
from fuyu_ray.bench.decoding import StaticGreedyDecoder, first_token_agreement
from fuyu_ray.bench.device import Device, open_device
from fuyu_ray.bench.interference import (
    CLEAN,
    HostWindow,
    QualityThresholds,
    coefficient_of_variation,
    noise_series,
    settled,
    verdict,
)
from fuyu_ray.bench.measure import (
    BatchTiming,
    PeakMemory,
    count_flops,
    fuyu_prefill_flops,
    spread,
    synchronize,
    time_batch,
)
from fuyu_ray.bench.models import LoadedModel, PresetUnsupported, load_model
from fuyu_ray.bench.prompts import Prompt, TaskSettings, build_prompt
from fuyu_ray.bench.records import CUDA_FATAL, cell_batch, error_line, now_iso, outcome_row, sample_table
from fuyu_ray.job.cells import Cell, Variant
from fuyu_ray.job.spec import image_dims
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import TaskScore, score_answers, unscored

PATCH = 30  # Fuyu's image patch side in pixels


@dataclass
class CellResult:
    record: pa.RecordBatch
    samples: pa.Table


@dataclass
class Batch:
    inputs: dict[str, torch.Tensor]
    sample_indices: list[int]  # which samples fill the rows; cycled when the set is smaller than a batch
    prompt_length: int


class CellDeadline(Exception):
    """The cell ran past the deadline it was given; its record is a timeout with this reason."""


def padded_side(image_size: int) -> int:
    return math.ceil(image_size / PATCH) * PATCH


def padded_dims(image_size: int | str) -> tuple[int, int]:
    """(width, height) of the canvas the processor pads the image to: whole patches."""
    width, height = image_dims(image_size)
    return padded_side(width), padded_side(height)


def image_token_count(image_size: int | str) -> int:
    """rows * (cols + 1), rows = ceil(H / 30), cols = ceil(W / 30): each row of patches ends with a |NEWLINE| token."""
    width, height = padded_dims(image_size)
    return (height // PATCH) * (width // PATCH + 1)


class CellRunner:
    """Loads one variant once and keeps it warm for all of that variant's cells."""

    def __init__(
        self,
        variant: Variant,
        min_energy_window_s: float = 1.0,
        context: dict[str, Any] | None = None,
        cpu_package_shared: bool = False,
        quality: QualityThresholds | None = None,
        remeasure_disturbed: int = 0,
    ):
        self.variant = variant
        self.quality = quality or QualityThresholds()
        self.remeasure_disturbed = remeasure_disturbed
        self.cpu_package_shared = cpu_package_shared
        self.min_energy_window_s = min_energy_window_s
        self.context = {"hostname": socket.gethostname(), "cpu_model": hardware.cpu_model(), **(context or {})}
        self.decoders: dict[tuple[int, int, int, int], Any] = {}  # the one compiled decoder kept warm, by its shape
        started = time.perf_counter()
        self.loaded, self.load_outcome = self._load()
        self.load_s = time.perf_counter() - started
        self.device = self._device()
        self.meter = self._meter()
        # Three windows on a GPU, which is still settling from loading the model; one second elsewhere.
        idle_windows = 3 if variant.device == "cuda" else 1
        self.idle_power_w, _ = (
            energy.measure_idle_power(self.meter, windows=idle_windows) if self.load_outcome is None else (None, None)
        )
        self.device_info = self.device.info()

    def _load(self) -> tuple[LoadedModel | None, tuple[str, str] | None]:
        """The model, or the (status, error) that every cell of the variant gets instead.

        A load that raises fails the same way every time within a run (weights not in the cache,
        a bad path, a config that does not parse, a preset the model rejects), so it is recorded,
        not retried: the actor stays up and answers each cell at once. Only a crash of the process
        (a segfault, the OOM killer) restarts it. A rerun tries the load again.
        """
        try:
            return load_model(self.variant), None
        except Exception as exc:
            status, error = classify(exc)
            return None, (status, error if status == "skipped" else load_error_line(self.variant.model, error))

    def _device(self) -> Device:
        return open_device(self.variant.device)

    def close(self) -> None:
        """Release the device and its counters (NVML): when the worker that holds this runner ends."""
        self.meter.close()
        self.device.close()

    def _meter(self) -> energy.EnergyMeter:
        if self.variant.device == "cpu" and self.cpu_package_shared:
            return energy.NoEnergyMeter(
                "the CPU package counter is shared with other actors on this node; "
                "give cpus_per_actor a whole node to measure CPU energy"
            )
        return energy.meter_for(self.variant.device, self.device)

    def run(
        self,
        cell: Cell,
        deadline: float | None = None,
        hard_deadline: float | None = None,
        min_energy_window_s: float | None = None,
    ) -> CellResult:
        """One cell's record. With a `deadline` (a `time.perf_counter()` value), a cell still running
        past it stops at the next point where that is safe (after the warm-up, after any timed
        batch, before counting FLOPs) with a timeout record saying where. With a later `hard_deadline`
        too, a cell past its own deadline still times one pass while the hard one covers it, so that a
        long warm-up is not thrown away: `deadline_passed_at` says where it went past.
        `min_energy_window_s` overrides the runner's for this cell."""
        started_at, started = now_iso(), time.perf_counter()
        base = {**cell.settings(), **self.context, "variant_hash": self.variant.variant_hash, "load_s": self.load_s}
        if self.load_outcome is not None:
            return CellResult(
                cell_batch(outcome_row(base, *self.load_outcome, started_at=started_at)), sample_table([])
            )
        try:
            limits = CellLimits(deadline, hard_deadline, min_energy_window_s or self.min_energy_window_s)
            row, samples = self._measure_cleanest(cell, limits)
            row.update(base, status="ok", error=None, started_at=started_at, finished_at=now_iso())
        except Exception as exc:  # a cell's failure is its record, and the actor goes on to the next cell
            row, samples = outcome_row(base, *classify(exc), started_at=started_at), []
        if row["status"] != "ok":
            # Outside the except block: there the traceback still holds the cell's tensors.
            self._free_memory()
        row["cell_s"] = time.perf_counter() - started
        return CellResult(cell_batch(row), sample_table(samples))

    def _measure_cleanest(self, cell: Cell, limits: "CellLimits"):
        """Measure; while disturbed and retries are left, measure again. The cleanest attempt is kept:
        clean first, then the least taken by other processes, then the steadiest."""
        attempts = []
        for _ in range(1 + self.remeasure_disturbed):
            attempts.append(self._measure(cell, limits))
            if attempts[-1][0].get("measurement_quality", CLEAN) == CLEAN:
                break
        row, samples = min(
            attempts,
            key=lambda attempt: (
                attempt[0].get("measurement_quality", CLEAN) != CLEAN,
                attempt[0].get("other_cpu_share") or 0.0,
                attempt[0].get("latency_cv") or 0.0,
            ),
        )
        row["measurement_attempts"] = len(attempts)
        return row, samples

    def _free_memory(self) -> None:
        self.decoders.clear()  # a failed compile's cache and graph pool would stay for the actor's life
        gc.collect()
        if self.variant.device == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _decoder(self, batches: list[Batch], point, max_new_tokens: int):
        """The decoder for this cell's shape, kept warm for later cells of the same shape.

        A shape is (batch, the cell's longest prompt, image size, new tokens): every batch of the
        cell is padded to it, so all of them run the same two graphs. One decoder is kept at a
        time; its static cache and graph memory (gigabytes for fuyu-8b at batch 16) go when a
        cell of another shape arrives.
        """
        key = (point.batch_size, max(b.prompt_length for b in batches), point.image_size, max_new_tokens)
        if key not in self.decoders:
            self._free_memory()
            batch_size, prompt_len, _, new_tokens = key
            self.decoders[key] = StaticGreedyDecoder(
                self.loaded.model, batch_size, prompt_len, new_tokens, compiled=True, device=self.variant.device
            )
        return self.decoders[key]

    # --- one cell, in three phases: prepare the workload, time it, answer and score -------------

    def _measure(self, cell: Cell, limits: "CellLimits") -> tuple[dict[str, Any], list[dict[str, Any]]]:
        guard = DeadlineGuard(limits.deadline, limits.hard_deadline)
        workload = self._prepare(cell)
        timed = self._time(workload, cell.point, guard, limits.min_energy_window_s)
        answers = self._answer(workload, timed, cell.point.dataset)
        guard.check("before counting FLOPs")
        loaded = self.loaded
        flops = count_cell_flops(loaded, workload.batches[0])
        row = {
            "model_label": loaded.label,
            "attention": loaded.attention,
            "dtype": loaded.preset.dtype,
            "tokenizer_note": loaded.tokenizer_note,
            "torch_threads": torch.get_num_threads(),
            **workload.columns(answers.generated_mean, cell.point.image_size),
            "ttft_with_preprocess_s": with_preprocess(timed.latency["ttft_s"], workload.preprocess_s),
            "deadline_passed_at": guard.passed_at,
            **answers.columns(loaded),
            **timed.columns(self.meter, self.idle_power_w, self.quality),
            **flops,
            **first_token_columns(loaded, workload.decoder, workload.batches[0]),
            **hardware.roofline_columns(
                self.device_info.get("gpu_name"),
                loaded,
                timed.latency["prefill_compute_s"],
                timed.latency["decode_s_per_token"],
                flops,
                cell.point.batch_size,
                context_tokens=mean_context_tokens(workload.batches, answers.generated_mean),
            ),
            **self.device_info,
        }
        return row, answers.sample_rows(cell, workload)

    def _prepare(self, cell: Cell) -> Workload:
        """Samples, prompts and processed batches, and the decoder that runs them: outside any timed window."""
        loaded, point = self.loaded, cell.point
        settings = TaskSettings.for_task(point.dataset, cell.task_override)
        data = load_samples(point.dataset, cell.source, cell.limit)
        if not data.samples:
            raise ValueError(f"no readable samples in {data.description}")
        prompts = [build_prompt(settings, s, point.seq_len, loaded.count_text_tokens) for s in data.samples]
        batches, preprocess_batches_s = prepare_batches(
            loaded, data.samples, prompts, point.image_size, point.batch_size
        )
        if loaded.attention == "sdpa-flash" and any(bool((b.inputs["attention_mask"] == 0).any()) for b in batches):
            raise PresetUnsupported(
                "SDPA's flash backend takes no attention mask, and this cell's prompts are padded; install flash-attn"
            )
        decoder = self._decoder(batches, point, settings.max_new_tokens) if loaded.preset.compiled else None
        # Random weights answer nothing: every cell runs to max_new_tokens.
        return Workload(
            settings, data, prompts, batches, loaded.accuracy_note is not None, decoder, preprocess_batches_s
        )

    def _time(self, workload: Workload, point, guard: DeadlineGuard, min_window_s: float) -> TimedRun:
        """Warm up, then time every batch in passes until the energy window is long enough."""
        loaded, decoder, first, device = self.loaded, workload.decoder, workload.batches[0], point.device
        run_batch = batch_runner(loaded, workload)
        timed = TimedRun(
            batch_size=point.batch_size,
            batches_per_pass=len(workload.batches),
            decoder=decoder,
            clocks_start=self.device.clocks(),
            compile_s_before=decoder.compile_s if decoder else 0.0,
        )
        with PeakMemory(device) as memory:
            if decoder:  # until its graphs are compiled and (on CUDA) recorded
                timed.first_call_s, timed.warmup_s, timed.warmup_batches = decoder.warm_up(first.inputs)
            else:  # until the timings settle, within a cap: a cold cache or a busy start is not the cell
                timed.first_call_s, timed.warmup_s, timed.warmup_batches, timed.warmup_settled = settle(
                    lambda: warm_up(run_batch, first, device), self.quality
                )
            guard.check("after the warm-up", pass_s=timed.pass_estimate_s())
            timed.compilations_warm = decoder.compilations if decoder else 0

            def one_pass() -> None:
                before = read_joules(self.meter)
                for batch in workload.batches:
                    output, timing = time_batch(lambda clock: run_batch(batch, clock), device)
                    timed.timings.append(timing)
                    if len(timed.first_pass) < len(workload.batches):
                        timed.first_pass.append(output)
                    guard.check(f"after timed batch {len(timed.timings)}")
                after = read_joules(self.meter)
                if before is not None and after is not None:
                    timed.repeat_joules.append(after - before)

            host, sampler = HostWindow().start(), self.device.sampler()
            if sampler:
                sampler.start()
            # Past its own deadline, one pass is all a cell times: the budget it borrows from is the whole check's.
            timed.window = energy.run_until_min_window(
                one_pass, self.meter, min_window_s, stop=lambda: guard.passed_at is not None
            )
            timed.gpu = sampler.stop() if sampler else None
            host.stop()
        timed.host, timed.memory, timed.clocks_end = host, memory, self.device.clocks()
        return timed

    def _answer(self, workload: Workload, timed: TimedRun, dataset: str) -> Answers:
        """The answers of the first timed pass, and the task's score of them."""
        predictions, generations, generated, stopped = decode_outputs(
            self.loaded, workload.batches, timed.first_pass, len(workload.data.samples)
        )
        task = get_task(dataset)
        # Random weights answer nothing: skip scoring (and its pycocoevalcap import on bare GPU boxes).
        if self.loaded.accuracy_note is None:
            score = score_answers(task, workload.data.samples, predictions)
        else:
            score = unscored(task, len(workload.data.samples))
        return Answers(predictions, generations, generated, stopped, score)


@dataclass(frozen=True)
class CellLimits:
    deadline: float | None  # the cell's own, a time.perf_counter() value
    hard_deadline: float | None  # past the cell's own, what a finished warm-up may still use to time a pass
    min_energy_window_s: float


class DeadlineGuard:
    """Stops a cell at the next safe point once a `time.perf_counter()` deadline has passed. With a later
    hard deadline, a cell past its own goes on while the hard one covers what it is about to do, and
    `passed_at` says where it went past its own."""

    def __init__(self, deadline: float | None, hard_deadline: float | None = None, clock=time.perf_counter):
        self.deadline, self.hard_deadline, self.clock = deadline, hard_deadline, clock
        self.started = clock()
        self.passed_at: str | None = None

    def check(self, where: str, pass_s: float = 0.0) -> None:
        now = self.clock()
        if self.deadline is None or now <= self.deadline:
            return
        if self.hard_deadline is not None and now + pass_s <= self.hard_deadline:
            if self.passed_at is None:
                self.passed_at = f"{where}, {now - self.deadline:.1f} s past its deadline"
            return
        raise CellDeadline(
            f"stopped {where}: past its deadline by {now - self.deadline:.1f} s "
            f"({now - self.started:.1f} s into the cell)"
        )


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

    def columns(self, generated_tokens_mean: float | None, image_size: int | str) -> dict[str, Any]:
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
        )


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


def describe_decoder(decoder) -> str:
    return "transformers generate" if decoder is None else decoder.describe()


def first_token_columns(loaded: LoadedModel, decoder, batch: Batch) -> dict[str, Any]:
    """A compiled path's first-token agreement with stock `generate` on the cell's first batch
    (same weights, same inputs); nothing for the stock paths themselves."""
    if decoder is None:
        return {}
    return first_token_agreement(loaded.model, decoder, batch.inputs, context=lambda: attention_context(loaded))


def prepare_batches(
    loaded: LoadedModel, samples: list[Sample], prompts: list[Prompt], image_size: int | str, batch_size: int
) -> tuple[list[Batch], list[float]]:
    """Processor work happens here, outside any timed window: latency is generate's time alone. Its own
    time per batch (resize, patches, tokens, the copy to the device) comes back beside the batches: a user
    waits for it too.

    Each image is resized to the cell's image_size (S x S, or W x H); the processor pads it to
    whole patches and cuts rows * (cols + 1) image tokens."""
    width, height = image_dims(image_size)
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


def settle(run_once, thresholds: QualityThresholds) -> tuple[float, float, int, bool]:
    """Warm-up batches until the last few agree, at most `max_warmup_batches`:
    (first batch's seconds, all of them, how many, whether they settled)."""
    seconds = [run_once()]
    while len(seconds) < thresholds.max_warmup_batches and not settled(seconds, thresholds.settle_tolerance):
        seconds.append(run_once())
    return seconds[0], sum(seconds), len(seconds), settled(seconds, thresholds.settle_tolerance)


def warm_up(run_batch, batch: Batch, device: str) -> float:
    """One untimed batch; its seconds."""
    return time_batch(lambda clock: run_batch(batch, clock), device)[1].total_s


def decode_outputs(loaded: LoadedModel, batches: list[Batch], outputs: list[torch.Tensor], n_samples: int):
    """The answer is what follows the beginning-of-answer token, which ends every prompt."""
    tokenizer = loaded.tokenizer
    predictions: list[str | None] = [None] * n_samples
    generations: list[str | None] = [None] * n_samples
    generated: list[int | None] = [None] * n_samples
    stopped: list[bool] = [False] * n_samples
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
    return predictions, generations, generated, stopped


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
    return prompt + (generated_tokens_mean or 0.0) / 2


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


def sample_rows(cell: Cell, samples, prompts, generations, predictions, task_score, generated) -> list[dict[str, Any]]:
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
        }
        for sample, prompt, generation, prediction, per_sample, lenient_score, length in zip(
            samples, prompts, generations, predictions, task_score.per_sample, lenient, generated
        )
    ]


def load_error_line(model: str, cause: str) -> str:
    """What went wrong loading the model, and what fixes it, in one line."""
    path = Path(model)
    if path.is_dir():
        fix = "check that the folder holds a transformers checkpoint (config.json, processor files, weights)"
    elif model.startswith((".", "/", "~")) or os.sep in model.strip("/").split("/", 1)[-1]:
        fix = "no such folder on this worker: check the path, or stage it on every node"
    else:
        fix = (
            f"download it into HF_HOME first (`hf download {model}` on a machine with network, then run with "
            "HF_HUB_OFFLINE=1; see the README, 'Before the seed job')"
        )
    return f"model {model!r} could not be loaded: {cause}; {fix}"


def classify(exc: Exception) -> tuple[str, str]:
    """(status, error): skipped where the preset cannot run here, oom, or failed; a sticky CUDA
    error is marked so that the actor is replaced rather than failing every later cell.

    The exception's causes count too: Dynamo and Inductor wrap what fails inside a compile.
    """
    if isinstance(exc, PresetUnsupported):
        return "skipped", str(exc)
    if isinstance(exc, CellDeadline):
        return "timeout", str(exc)
    chain = _causes(exc)
    accelerator_error = getattr(torch, "AcceleratorError", ())
    # First: a broken CUDA context outranks an OOM it may have been raised while handling.
    if any((accelerator_error and isinstance(e, accelerator_error)) or "CUDA error" in str(e) for e in chain):
        return "failed", CUDA_FATAL + _one_line(exc)
    if any(isinstance(e, torch.cuda.OutOfMemoryError) for e in chain):
        return "oom", _one_line(exc)
    return "failed", _one_line(exc)


def _causes(exc: BaseException, limit: int = 10) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and len(chain) < limit and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _one_line(exc: BaseException) -> str:
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    location = f" ({where.filename.rsplit('/', 1)[-1]}:{where.lineno})" if where else ""
    return f"{error_line(exc)}{location}"[:500]
