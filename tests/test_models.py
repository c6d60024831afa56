"""Model loading through the real from_pretrained path: a local directory, a hub id offline, random weights."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import ROOT

from fuyu_ray.bench import tiny, train_tiny
from fuyu_ray.bench.models import full_size_config, load_model
from fuyu_ray.bench.runner import CellRunner
from fuyu_ray.job.cells import Cell, Variant
from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride


def test_a_local_directory_loads_with_from_pretrained_and_runs_a_cell():
    directory = str(train_tiny.ensure_checkpoint())
    runner = CellRunner(Variant(directory, "pretrained", "cpu", "fp32"))
    cell = Cell(
        directory, "pretrained", 4, Point("cpu", "textvqa", 2, 224, 200, "fp32"), DatasetSource(), TaskOverride()
    )
    row = runner.run(cell).record.to_pylist()[0]
    assert row["status"] == "ok" and row["model_label"] == directory
    assert row["accuracy"] >= 0.5  # the trained weights came through


def test_random_weights_take_the_full_size_config_and_null_accuracy():
    loaded = load_model(Variant("tiny", "random", "cpu", "fp32"))
    assert loaded.accuracy_note == "random weights"
    assert loaded.model.config.text_config.hidden_size == tiny.TINY_SHAPE["hidden_size"]


def test_fuyu_8b_config_offline_is_the_full_size_architecture():
    config = full_size_config("adept/fuyu-8b-not-in-any-cache")
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers, config.text_config.vocab_size) == (
        4096,
        36,
        262144,
    )


def test_a_hub_id_with_hf_hub_offline_fails_the_cell_fast_with_the_reason():
    code = (
        "from fuyu_ray.job.cells import Variant\n"
        "from fuyu_ray.bench.models import load_model\n"
        "try:\n    load_model(Variant('adept/fuyu-8b', 'pretrained', 'cpu', 'fp16'))\n"
        "except OSError as exc:\n    print('OSError', exc)\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(ROOT / ".no-such-hf-home")},
    )
    assert "OSError" in result.stdout, result.stdout + result.stderr[-2000:]
    assert time.monotonic() - started < 60
