"""Optimization presets on CPU with the trained tiny model: applied as named, skipped with a reason,
and answering as fp32 eager does."""

from __future__ import annotations

import pytest
import torch

from fuyu_ray.bench.models import PresetUnsupported, load_model
from fuyu_ray.bench.runner import CellRunner
from fuyu_ray.job.cells import Cell, Variant
from fuyu_ray.job.presets import PRESETS
from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride

CPU_PRESETS = ["fp32", "fp16", "bf16", "eager", "sdpa", "compile"]


def cell(
    optimization: str, batch_size: int = 4, limit: int = 8, dataset: str = "scienceqa", seq_len: int = 200
) -> Cell:
    return Cell(
        "tiny",
        "pretrained",
        limit,
        Point("cpu", dataset, batch_size, 224, seq_len, optimization),
        DatasetSource(),
        TaskOverride(),
    )


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_preset_configuration_is_applied(name):
    loaded = load_model(Variant("tiny", "pretrained", "cpu", name))
    preset = PRESETS[name]
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, preset.dtype)}
    assert loaded.model.config._attn_implementation == preset.attention
    assert loaded.attention == preset.attention


def test_flash_attention_2_is_skipped_on_cpu_with_the_reason():
    with pytest.raises(PresetUnsupported, match="CUDA"):
        load_model(Variant("tiny", "pretrained", "cpu", "flash_attention_2"))
    record = (
        CellRunner(Variant("tiny", "pretrained", "cpu", "flash_attention_2"))
        .run(cell("flash_attention_2"))
        .record.to_pylist()[0]
    )
    assert record["status"] == "skipped" and "CUDA" in record["error"]


@pytest.fixture(scope="module")
def reference_predictions():
    runner = CellRunner(Variant("tiny", "pretrained", "cpu", "eager"))
    runner.loaded.model.to(torch.float32)  # the eager preset is fp16; the reference is eager in fp32
    result = runner.run(cell("eager"))
    assert result.record.to_pylist()[0]["status"] == "ok"
    return result.samples.column("prediction").to_pylist()


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_greedy_answers_agree_with_fp32_eager(name, reference_predictions):
    result = CellRunner(Variant("tiny", "pretrained", "cpu", name)).run(cell(name))
    row = result.record.to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    predictions = result.samples.column("prediction").to_pylist()
    agreement = sum(a == b for a, b in zip(predictions, reference_predictions)) / len(predictions)
    # fp32 presets must match exactly; half precision may flip a near-tie, not a whole answer set
    assert agreement >= (1.0 if PRESETS[name].dtype == "float32" else 0.85), (predictions, reference_predictions)


def test_compile_uses_a_static_cache_and_does_not_recompile_across_batches():
    runner = CellRunner(Variant("tiny", "pretrained", "cpu", "compile"))
    row = runner.run(cell("compile", batch_size=2, limit=6)).record.to_pylist()[0]  # three batches, the last padded
    assert row["status"] == "ok", row["error"]
    assert row["n_batches"] == 3 and row["recompiles"] == 0
    assert row["compile_s"] > 0 and "static cache" in row["decoder"]
    assert row["warmup_batches"] == 3 and row["warmup_s"] > row["first_call_s"] > row["compile_s"] / 2
    (decoder,) = runner.decoders.values()
    from transformers import StaticCache

    assert isinstance(decoder.cache, StaticCache)
    # A second cell of the same shape (a prompt cap that cuts nothing) reuses the warm graphs.
    again = runner.run(cell("compile", batch_size=2, limit=6, seq_len=190)).record.to_pylist()[0]
    assert again["truncated_prompts"] == 0 and again["cell_id"] != row["cell_id"]
    assert again["compile_s"] == 0.0 and again["recompiles"] == 0 and len(runner.decoders) == 1
    assert again["warmup_batches"] == 1 and again["first_call_s"] < row["first_call_s"]
    # Another prompt length is another shape: a decoder of its own, compiled once, replacing the first.
    other = runner.run(cell("compile", batch_size=2, limit=4, dataset="textvqa")).record.to_pylist()[0]
    assert other["compile_s"] > 0 and other["recompiles"] == 0
    assert len(runner.decoders) == 1 and decoder not in runner.decoders.values()
