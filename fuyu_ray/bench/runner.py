"""The per-cell core: one warm model runs cells and returns Arrow records.

Deliberately free of Ray and Polars: a Ray actor wraps a CellRunner, and a bare GPU
machine can run the same code in-process (see fuyu_ray.driver.gpu_check).
"""

from __future__ import annotations

import gc
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from fuyu_ray.bench import energy, hardware
from fuyu_ray.bench.cell_columns import (
    Answers,
    TimedRun,
    count_cell_flops,
    decode_outputs,
    first_token_columns,
    mean_context_tokens,
    read_joules,
)
from fuyu_ray.bench.data import load_samples
from fuyu_ray.bench.decoding import StaticGreedyDecoder
from fuyu_ray.bench.device import Device, open_device
from fuyu_ray.bench.interference import (
    CLEAN,
    HostWindow,
    QualityThresholds,
    settled,
)
from fuyu_ray.bench.measure import (
    PeakMemory,
    time_batch,
)
from fuyu_ray.bench.models import LoadedModel, PresetUnsupported, load_model
from fuyu_ray.bench.prompts import TaskSettings, build_prompt
from fuyu_ray.bench.workload import Batch, Workload, batch_runner, prepare_batches, with_preprocess
from fuyu_ray.job.cells import Cell, Variant
from fuyu_ray.storage.records import CUDA_FATAL, cell_batch, error_line, now_iso, outcome_row, sample_table
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import score_answers, unscored


@dataclass
class CellResult:
    record: pa.RecordBatch
    samples: pa.Table


class CellDeadline(Exception):
    """The cell ran past the deadline it was given; its record is a timeout with this reason."""


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
                self.loaded.model,
                batch_size,
                prompt_len,
                new_tokens,
                compiled=True,
                device=self.variant.device,
                prefill_mode=self.loaded.prefill_mode,
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
            "model_weight_bytes": loaded.weight_bytes,
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
        predictions, generations, generated, stopped, token_ids = decode_outputs(
            self.loaded, workload.batches, timed.first_pass, len(workload.data.samples)
        )
        task = get_task(dataset)
        # Random weights answer nothing: skip scoring (and its pycocoevalcap import on bare GPU boxes).
        if self.loaded.accuracy_note is None:
            score = score_answers(task, workload.data.samples, predictions)
        else:
            score = unscored(task, len(workload.data.samples))
        return Answers(predictions, generations, generated, stopped, score, token_ids)


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
