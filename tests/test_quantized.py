"""Quantized presets, whether a preset changes the answers, and the memory check before loading.

On the built-in tiny model, in-process, with the real torchao, transformers and result store; the default
job's run (the smoke_run fixture: fp32, bf16, int8 and int4 among its optimization sweep) shows them end to end.
"""

from __future__ import annotations

import polars as pl
import pytest
import torch
from conftest import BASE_POINT

from fuyu_ray.bench import models
from fuyu_ray.bench.decoding import StaticGreedyDecoder
from fuyu_ray.bench.measure import count_flops
from fuyu_ray.bench.models import PresetUnsupported, load_model, predicted_weight_bytes, quantize
from fuyu_ray.bench.runner import CellRunner
from fuyu_ray.job.cells import expand
from fuyu_ray.job.presets import PRESETS
from fuyu_ray.job.spec import JobError, parse_job
from fuyu_ray.presentation.agreement import (
    AGREEMENT_COLUMNS,
    first_difference,
    paired_figures,
    reference_pairs,
    with_agreement,
)
from fuyu_ray.storage.store import ResultStore


def job(sweeps: dict, weights: str = "pretrained", limit: int = 8, **base):
    return parse_job(
        {
            "name": "agreement",
            "model": "tiny",
            "weights": weights,
            "limit": limit,
            "base": {**BASE_POINT, **base},
            "sweeps": sweeps,
        },
        "test.yaml",
    )


# --- the pairing, on built data -----------------------------------------------------------------------


def test_each_cell_is_paired_with_its_sweeps_reference_of_the_same_settings():
    spec = job(
        {
            "first_listed": {"optimization": ["bf16", "fp32", "int8"], "batch_size": [1, 4]},
            "named": {"optimization": ["fp32", "bf16"], "dataset": ["scienceqa"], "reference": "bf16"},
            "no_optimization": {"batch_size": [8]},
        }
    )
    grid = expand(spec)
    by_id = {c.cell_id: c for c in grid.cells}
    pairs = reference_pairs(spec, grid)

    def settings(cell_id):
        p = by_id[cell_id].point
        return p.optimization, p.batch_size, p.dataset

    named = {settings(c): settings(pairs[c][0]) for c in grid.sections["named"]}
    assert named == {
        ("fp32", 1, "scienceqa"): ("bf16", 1, "scienceqa"),
        ("bf16", 1, "scienceqa"): ("bf16", 1, "scienceqa"),
    }
    first = {settings(c): settings(pairs[c][0]) for c in grid.sections["first_listed"]}
    assert first[("int8", 4, "textvqa")] == ("bf16", 4, "textvqa")
    assert first[("fp32", 1, "textvqa")] == ("bf16", 1, "textvqa")
    assert not set(grid.sections["no_optimization"]) & set(pairs)  # batch 8 fp32 is in no optimization sweep


def test_a_reference_the_sweep_does_not_list_is_one_line_naming_it():
    with pytest.raises(JobError) as error:
        job({"named": {"optimization": ["fp32", "bf16"], "reference": "int8"}})
    assert error.value.lines == [
        "test.yaml: sweeps.named.reference: must be one of the sweep's optimization values (fp32, bf16), got 'int8'"
    ]


def sample(sample_id, prediction, ids, score=None):
    return {"sample_id": sample_id, "prediction": prediction, "generated_ids": ids, "score": score}


def test_paired_figures_agreement_first_token_where_answers_part_and_mcnemar():
    reference = [sample(str(i), "A", [5, 9, 2], 1.0) for i in range(10)] + [sample("only-ref", "A", [5], 1.0)]
    cell = (
        [sample(str(i), "A", [5, 9, 2], 1.0) for i in range(6)]
        + [sample("6", "B", [6, 9, 2], 0.0), sample("7", "B", [6, 2], 0.0)]  # part at the first token
        + [sample("8", "AB", [5, 7, 2], 0.0), sample("9", "A", [5, 9, 2], 1.0)]  # part at the second
    )
    figures = paired_figures("scienceqa", reference, cell)
    assert figures["agreement_n"] == 10  # paired on sample_id: the reference's extra sample is left out
    assert figures["answer_agreement"] == pytest.approx(0.7)
    assert figures["first_token_agreement"] == pytest.approx(0.8)
    assert figures["first_difference_position"] == pytest.approx((1 + 1 + 2) / 3)
    assert figures["accuracy_difference"] == pytest.approx(-0.3)
    assert figures["accuracy_difference_ci_low"] < -0.3 < figures["accuracy_difference_ci_high"] <= 0
    assert figures["accuracy_difference_p"] == pytest.approx(0.25)  # exact McNemar: 3 lost, 0 gained
    assert first_difference([1, 2], [1, 2, 3]) == 3  # one answer ending first parts there
    no_scores = paired_figures("textvqa", [sample("a", "x", [1])], [sample("a", "x", [1])])
    assert no_scores["answer_agreement"] == 1 and no_scores["first_difference_position"] is None
    assert "accuracy_difference" not in no_scores  # random weights: nothing scored, no difference drawn


# --- a preset that corrupts its answers is seen, with trained and with random weights ----------------


@pytest.mark.parametrize("weights", ["pretrained", "random"])
def test_a_preset_that_corrupts_its_answers_shows_answer_agreement_near_zero(weights, tmp_path):
    spec = job(
        {"optimization": {"optimization": ["fp32", "bf16"], "dataset": ["scienceqa"], "batch_size": [4]}},
        weights=weights,
        limit=8,
    )
    grid = expand(spec)
    store = ResultStore.at(str(tmp_path))
    store.ensure_dirs()
    for cell in grid.cells:
        runner = CellRunner(cell.variant, min_energy_window_s=0.01)
        if cell.point.optimization == "bf16":
            head = runner.loaded.model.lm_head
            head.weight.data = head.weight.data.roll(1, dims=0)  # every greedy token becomes its neighbour
        result = runner.run(cell)
        assert result.record.to_pylist()[0]["status"] == "ok"
        store.write_cell(result.record, result.samples)
    cells = with_agreement(
        pl.from_arrow(store.read_cells([c.cell_id for c in grid.cells])), spec, grid, store.read_samples
    )
    rows = {row["optimization"]: row for row in cells.to_dicts()}
    corrupted = rows["bf16"]
    assert corrupted["reference_optimization"] == "fp32" and corrupted["agreement_n"] == 8
    assert corrupted["answer_agreement"] <= 0.125 and corrupted["first_token_agreement"] == 0
    assert corrupted["first_difference_position"] == 1
    if weights == "pretrained":  # option letters: the difference, its interval and McNemar's p
        assert corrupted["accuracy_difference"] < 0 and corrupted["accuracy_difference_p"] is not None
    else:
        assert corrupted["accuracy_difference"] is None
    assert all(rows["fp32"][c] is None for c in AGREEMENT_COLUMNS[1:])  # the reference pairs with nothing


# --- weight bytes and the memory check ------------------------------------------------------------------


def test_quantized_weight_bytes_are_predicted_from_the_config_and_recorded():
    config = models.full_size_config(str(models.train_tiny.ensure_checkpoint()))
    bf16 = load_model(models.Variant("tiny", "pretrained", "cpu", "bf16"))
    int8 = load_model(models.Variant("tiny", "pretrained", "cpu", "int8"))
    assert predicted_weight_bytes(config, PRESETS["bf16"]) == (bf16.weight_bytes, bf16.weight_bytes)
    loading, loaded = predicted_weight_bytes(config, PRESETS["int8"])
    assert loading == bf16.weight_bytes  # loaded in bf16, then quantized in place
    assert loaded == pytest.approx(int8.weight_bytes, rel=0.03)  # the scales and zero points aside
    assert int8.weight_bytes < 0.75 * bf16.weight_bytes  # tiny's layer norms and biases stay bf16
    assert type(int8.model.lm_head.weight).__name__ == "Int8Tensor"


def test_int4_runs_on_cpu_through_torchaos_cpu_kernel():
    bf16 = load_model(models.Variant("tiny", "pretrained", "cpu", "bf16"))
    int4 = load_model(models.Variant("tiny", "pretrained", "cpu", "int4"))
    linears = {type(m.weight).__name__ for m in int4.model.modules() if isinstance(m, torch.nn.Linear)}
    assert "Int4OpaqueTensor" in linears  # the CPU kernel's own packing, not a CUDA layout
    config = models.full_size_config(str(models.train_tiny.ensure_checkpoint()))
    assert predicted_weight_bytes(config, PRESETS["int4"])[1] == pytest.approx(int4.weight_bytes, rel=0.03)
    # tiny's patch projection (2,700 wide) and its 610-word head stay bf16: the CPU kernel's widths
    assert int4.weight_bytes < predicted_weight_bytes(config, PRESETS["int8"])[1] < bf16.weight_bytes


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_a_quantized_matmul_counts_the_flops_of_the_matmul_it_stands_for(quantization):
    layer = torch.nn.Sequential(torch.nn.Linear(256, 64, bias=False)).to(torch.bfloat16)
    rows = torch.randn(3, 5, 256, dtype=torch.bfloat16)
    quantize(layer, quantization, "cpu")
    assert count_flops(lambda: layer(rows)) == 2 * 15 * 256 * 64
    int8 = torch.ones(32, 64, dtype=torch.int8)  # the int8 x int8 GEMM of int8's CPU prefill
    assert count_flops(lambda: torch._int_mm(int8, int8.t())) == 2 * 32 * 64 * 32


def test_a_quantization_without_a_kernel_for_the_device_is_refused_with_that_reason():
    # The meta device runs no kernel at all: what a device without torchao's kernel looks like to the check.
    with pytest.raises(PresetUnsupported, match=r"^torchao \S+ has no int4 kernel for meta \("):
        models.check_quantization_kernel("int4", "meta")


def test_int8_on_cpu_prefills_with_int8_activations_then_decodes_weight_only():
    from PIL import Image

    int8 = load_model(models.Variant("tiny", "pretrained", "cpu", "int8"))
    weights = [p for p in int8.model.parameters() if type(p).__name__ == "Int8Tensor"]
    assert weights and int8.prefill_mode.note == models.INT8_PREFILL_ACTIVATIONS
    image = Image.effect_noise((224, 224), 60).convert("RGB")
    inputs = {
        k: v
        for k, v in int8.processor(images=[image], text=["Which shape is shown?\n"], return_tensors="pt").items()
        if isinstance(v, torch.Tensor)
    }
    shape = {"max_batch": 1, "prompt_len": inputs["input_ids"].shape[1], "max_new_tokens": 4, "compiled": False}
    weight_only = StaticGreedyDecoder(int8.model, device="cpu", **shape)
    preset_own = StaticGreedyDecoder(int8.model, device="cpu", prefill_mode=int8.prefill_mode, **shape)
    during_decode = []
    with torch.inference_mode():
        weight_only.generate(inputs, 4, ignore_eos=True)
        preset_own.generate(
            inputs, 4, ignore_eos=True, on_token=lambda: during_decode.append(weights[0].act_quant_kwargs)
        )
    plain, rounded = weight_only.last_prefill_logits.float(), preset_own.last_prefill_logits.float()
    assert not torch.equal(plain, rounded)  # another kernel ran the prefill: the activations were rounded
    assert (rounded - plain).norm() / plain.norm() < 0.05  # by int8's rounding, nothing more
    assert during_decode == [None] * 4  # each decode step weight-only again
    assert models.INT8_PREFILL_ACTIVATIONS in preset_own.describe()
    with pytest.raises(RuntimeError), int8.prefill_mode.enter():
        assert all(w.act_quant_kwargs is not None for w in weights)
        raise RuntimeError("a prefill that fails")
    assert all(w.act_quant_kwargs is None for w in weights)  # restored all the same
    for preset, device in (("int8", "cuda"), ("int4", "cpu"), ("bf16", "cpu")):
        assert models.prefill_mode(int8.model, PRESETS[preset], device) == models.PrefillMode()


def test_a_preset_that_needs_more_memory_than_the_worker_has_is_skipped_before_loading(monkeypatch):
    free, _ = models.free_memory_bytes("cpu")
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    assert 0 < free <= int(meminfo["MemTotal"].split()[0]) * 1024

    def loads(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "free_memory_bytes", lambda device: (1_000_000, "available to this worker (test)"))
    monkeypatch.setattr(models, "_pretrained_model", loads)
    variant = models.Variant("tiny", "pretrained", "cpu", "fp32")
    record = CellRunner(variant).run(expand(job({"one": {"batch_size": [1]}})).cells[0]).record.to_pylist()[0]
    assert record["status"] == "skipped"
    assert (
        "(3,595,776 bytes)" in record["error"] and "(1,000,000 bytes) are available to this worker" in record["error"]
    )


# --- end to end: the default job's optimization sweep (fp32, ..., bf16, ..., int8, int4) on tiny ------


def test_the_default_jobs_optimization_sweep_shows_int8_and_int4_with_their_agreement(smoke_run):
    out, _ = smoke_run
    cells = pl.read_parquet(out / "cells.parquet")
    sweep = cells.filter(pl.col("reference_optimization").is_not_null()).to_dicts()
    by_preset = {row["optimization"]: row for row in sweep}
    assert {"fp32", "bf16", "int8", "int4"} <= set(by_preset)
    assert all(row["status"] == "ok" or (row["status"] == "skipped" and row["error"]) for row in sweep)
    assert (
        by_preset["int8"]["status"] == "ok"
        and by_preset["int8"]["model_weight_bytes"] < by_preset["bf16"]["model_weight_bytes"]
    )
    assert by_preset["int4"]["status"] == "ok"
    assert by_preset["int4"]["model_weight_bytes"] < by_preset["int8"]["model_weight_bytes"]
    flops = {by_preset[p]["flops_per_sample"] for p in ("fp32", "bf16", "int8", "int4")}
    assert len(flops) == 1  # the same matmuls, whatever the weights are stored in
    assert models.INT8_PREFILL_ACTIVATIONS in by_preset["int8"]["decoder"]
    for row in sweep:
        assert row["reference_optimization"] == "fp32"
        if row["status"] == "ok" and row["optimization"] != "fp32":
            assert row["answer_agreement"] is not None and row["first_token_agreement"] is not None, row
            assert row["accuracy_difference"] is not None  # trained tiny, option letters: a paired difference
    summary = (out / "summary.md").read_text()
    table = summary[summary.index("## Optimization Tests") :].split("\n\n")[2].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[-2:] == ["answers = original", "Δ accuracy [95% CI]"]
    int8 = next([c.strip() for c in line.strip("|").split("|")] for line in table if line.startswith("| int8 |"))
    assert int8[-2].endswith(f"n={by_preset['int8']['agreement_n']})") and "pts" in int8[-1]
