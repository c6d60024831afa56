"""Records: the Arrow schemas that cells and scored samples travel in, from worker to report.

One schema for every outcome (ok, skipped, failed, oom, timeout), so a failed cell is a row
like any other and never a missing file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

STATUSES = ("ok", "skipped", "failed", "oom", "timeout")
PROBLEM_STATUSES = ("failed", "oom", "timeout")  # a cell that should have given figures and did not
RETRYABLE = PROBLEM_STATUSES  # what a rerun computes again, unless told not to; skipped cells are looked at anyway
CUDA_FATAL = "cuda-fatal: "  # marks an error that leaves the worker's CUDA context broken: the driver restarts it

# A one-row cell file is mostly footer: no copy of the Arrow schema (the reader has it, here),
# no min/max statistics and no dictionary pages, which one row cannot use: a cell file and its samples
# file take 14.9 KB instead of 32.9 KB (README, "Performance").
CELL_FILE_OPTIONS = {"store_schema": False, "write_statistics": False, "use_dictionary": False}

_str, _int, _float, _bool = pa.string(), pa.int64(), pa.float64(), pa.bool_()
_floats = pa.list_(_float)

CELL_SCHEMA = pa.schema(
    [
        # identity and settings
        ("cell_id", _str),
        ("model", _str),
        ("model_label", _str),
        ("weights", _str),
        ("device", _str),
        ("dataset", _str),
        ("batch_size", _int),
        ("image_size", _int),
        ("image_width", _int),
        ("image_height", _int),
        ("seq_len", _int),
        ("optimization", _str),
        ("limit", _int),
        ("dataset_source", _str),
        ("dataset_split", _str),
        ("dataset_description", _str),
        ("attention", _str),
        ("dtype", _str),
        ("tokenizer_note", _str),
        # outcome
        ("status", _str),
        ("error", _str),
        # workload
        ("n_samples", _int),
        ("n_skipped_samples", _int),
        ("skipped_samples_reason", _str),
        ("n_batches", _int),
        ("padded_rows", _int),
        ("image_tokens", _int),
        ("prompt_tokens_mean", _float),
        ("truncated_prompts", _int),
        ("max_new_tokens", _int),
        ("generated_tokens_mean", _float),
        ("eos_fraction", _float),
        ("ignore_eos", _bool),
        ("prompt_template", _str),
        # latency, seconds per batch
        ("latency_s", _float),
        ("latency_p90_s", _float),
        ("latency_mean_s", _float),
        ("latency_std_s", _float),
        ("latency_n", _int),
        ("prefill_s", _float),
        ("prefill_p90_s", _float),
        ("ttft_s", _float),
        ("ttft_p90_s", _float),
        ("preprocess_s", _float),  # the processor's time per batch, median: outside latency and TTFT
        ("ttft_with_preprocess_s", _float),  # what a user waits for the first token
        ("deadline_passed_at", _str),  # where a cell went past its own deadline and went on within a hard one
        ("prefill_compute_s", _float),
        ("prefill_compute_p90_s", _float),
        ("decode_s_per_token", _float),
        ("decode_p90_s_per_token", _float),
        ("samples_per_s", _float),
        ("tokens_per_s", _float),
        ("first_call_s", _float),
        ("warmup_s", _float),
        ("compile_s", _float),
        ("warmup_batches", _int),
        ("recompiles", _int),
        ("decoder", _str),
        ("first_token_top1_match", _float),
        ("first_token_max_logit_diff", _float),
        # every timed batch, in order (repeats of the energy window included): compare bootstraps over these
        ("latency_batches_s", _floats),
        ("prefill_batches_s", _floats),
        ("decode_batches_s_per_token", _floats),
        # energy
        ("energy_j_per_sample", _float),
        ("energy_j_per_batch", _float),
        ("energy_above_idle_j_per_sample", _float),
        ("energy_above_idle_j_per_batch", _float),
        ("idle_power_w", _float),
        ("energy_window_s", _float),
        ("energy_repeats", _int),
        ("energy_method", _str),
        ("energy_note", _str),
        ("energy_repeats_j", _floats),  # joules of each pass over the cell's batches inside the energy window
        # FLOPs
        ("flops_per_sample", _float),
        ("flops_analytic_per_sample", _float),
        ("macs_per_sample", _float),
        ("decode_flops_per_token", _float),
        ("prefill_tokens", _int),
        ("flops_note", _str),
        # memory
        ("model_weight_bytes", _int),  # the loaded weights, quantized ones with their scales
        ("peak_gpu_allocated_bytes", _int),
        ("peak_gpu_reserved_bytes", _int),
        ("peak_rss_bytes", _int),
        # roofline
        ("decode_roofline_ratio", _float),
        ("prefill_roofline_ratio", _float),
        ("roofline_note", _str),
        # accuracy
        ("accuracy", _float),
        ("accuracy_metric", _str),
        ("accuracy_ci_low", _float),
        ("accuracy_ci_high", _float),
        ("accuracy_n", _int),
        ("accuracy_lenient", _float),
        ("bleu4", _float),
        ("caption_tokenizer", _str),
        ("accuracy_note", _str),
        # answers against the sweep's reference preset, paired on sample_id: filled in by the report
        # (fuyu_ray/presentation/agreement.py) from both cells' samples, null in the cell files
        ("reference_optimization", _str),
        ("agreement_n", _int),  # samples both cells answered
        ("answer_agreement", _float),  # share whose answer text equals the reference's
        ("first_token_agreement", _float),  # share whose first generated token equals the reference's
        ("first_difference_position", _float),  # mean 1-based position of the first differing token, where one differs
        ("accuracy_difference", _float),  # this cell's accuracy less the reference's, over the paired samples
        ("accuracy_difference_ci_low", _float),
        ("accuracy_difference_ci_high", _float),
        ("accuracy_difference_p", _float),  # exact McNemar p, option letters only
        # where and when
        ("node_id", _str),
        ("hostname", _str),
        ("actor", _str),
        ("variant_hash", _str),
        ("gpu_name", _str),
        ("gpu_uuid", _str),
        ("driver_version", _str),
        ("cpu_model", _str),
        ("sm_clock_start_mhz", _int),
        ("sm_clock_end_mhz", _int),
        ("gpu_temp_start_c", _int),
        ("gpu_temp_end_c", _int),
        ("torch_threads", _int),
        ("started_at", _str),
        ("finished_at", _str),
        ("load_s", _float),
        ("cell_s", _float),
        # measurement quality: what else used the machine in the timed window, how steady it was
        ("measurement_quality", _str),
        ("measurement_attempts", _int),
        ("latency_cv", _float),
        ("other_cpu_s", _float),
        ("other_cpu_share", _float),
        ("load_average", _float),
        ("cpu_mhz_start", _float),
        ("cpu_mhz_end", _float),
        ("gpu_foreign_processes", _int),
        ("gpu_throttle_reasons", _str),
        ("sm_clock_min_mhz", _int),
        ("sm_clock_max_mhz", _int),
    ]
)

SAMPLE_SCHEMA = pa.schema(
    [
        ("cell_id", _str),
        ("dataset", _str),
        ("sample_id", _str),
        ("prompt", _str),
        ("generation", _str),
        ("prediction", _str),
        ("references", pa.list_(_str)),
        ("answer_index", _int),
        ("choices", pa.list_(_str)),
        ("score", _float),
        ("score_lenient", _float),
        ("prompt_tokens", _int),
        ("truncated", _bool),
        ("generated_tokens", _int),
        ("generated_ids", pa.list_(_int)),  # the generated token ids, end-of-text included
    ]
)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def cell_batch(row: dict[str, Any]) -> pa.RecordBatch:
    unknown = set(row) - set(CELL_SCHEMA.names)
    if unknown:
        raise KeyError(f"not in the cell schema: {sorted(unknown)}")
    if row.get("status") not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {row.get('status')!r}")
    return pa.RecordBatch.from_pylist([row], schema=CELL_SCHEMA)


def sample_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)


def outcome_row(settings: dict[str, Any], status: str, error: str | None, **extra: Any) -> dict[str, Any]:
    """A record for a cell that produced no figures: skipped, failed, oom or timeout."""
    stamp = now_iso()
    return {
        **settings,
        "status": status,
        "error": error,
        "started_at": extra.pop("started_at", stamp),
        "finished_at": stamp,
        **extra,
    }


@dataclass(frozen=True)
class FinishedCell:
    """A finished cell on its way from worker to driver: its record and samples as Arrow IPC streams,
    and the record's row for the driver's bookkeeping. Arrow's own pickling rebuilds a batch column by
    column, several milliseconds for a cell record's 145 columns; an IPC stream is one buffer each way."""

    row: dict[str, Any]
    record_ipc: bytes
    samples_ipc: bytes

    @property
    def cell_id(self) -> str:
        return self.row["cell_id"]

    def record(self) -> pa.RecordBatch:
        return pa.ipc.open_stream(self.record_ipc).read_next_batch()

    def samples(self) -> pa.Table:
        return pa.ipc.open_stream(self.samples_ipc).read_all()


def finished_cell(record: pa.RecordBatch, samples: pa.Table) -> FinishedCell:
    return FinishedCell(record.to_pylist()[0], _ipc_bytes(pa.Table.from_batches([record])), _ipc_bytes(samples))


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def error_line(exc: BaseException, *, typed: bool = True, last: bool = False, limit: int = 500) -> str:
    """An exception as the one line a record or a message shows: `Type: first line of its message`, or
    with `last` its last line (Ray puts the cause under its own traceback). Without `typed`, the line
    alone, or the type's name where the message is empty."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    line = (lines[-1] if last else lines[0]).strip() if lines else ""
    if not typed:
        return (line or type(exc).__name__)[:limit]
    return f"{type(exc).__name__}: {line}"[:limit]
