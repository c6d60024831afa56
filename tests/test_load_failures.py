"""A model or dataset that cannot be loaded says why in every cell, once and fast, on a real local
Ray; `--dry-run` names each missing source beforehand and writes nothing."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import run_grid, write_job
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    yield cluster.address
    cluster.shutdown()


@pytest.fixture(scope="module")
def broken_processor(tmp_path_factory):
    """A checkpoint folder whose config parses but whose tokenizer file is garbage."""
    from transformers import FuyuConfig

    folder = tmp_path_factory.mktemp("broken-processor")
    FuyuConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, vocab_size=512
    ).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"processor_class": "FuyuProcessor", "image_processor_type": "FuyuImageProcessor"})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"processor_class": "FuyuProcessor", "tokenizer_class": "LlamaTokenizer"})
    )
    (folder / "tokenizer.json").write_text("{ this is not json")
    return folder


def grid_cells(out) -> pl.DataFrame:
    return pl.read_parquet(out / "cells.parquet")


@pytest.mark.parametrize("model", ["missing", "broken"])
def test_a_model_that_cannot_load_fails_each_cell_with_the_cause_without_restarts(
    local_ray, tmp_path, broken_processor, model
):
    path = tmp_path / "no-such-model" if model == "missing" else broken_processor
    job = write_job(tmp_path, "unloadable", str(path), "  batch: {batch_size: [1, 2, 3]}\n", "limit: 1\n")
    out = tmp_path / "out"
    result = run_grid("--job", str(job), "--out", str(out), "--address", local_ray)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    table = grid_cells(out)
    assert table.get_column("status").to_list() == ["failed"] * 3
    errors = set(table.get_column("error"))
    assert len(errors) == 1  # one cause, said the same way in every cell
    error = errors.pop()
    assert error.startswith(f"model {str(path)!r} could not be loaded: ")
    assert ("no such folder" if model == "missing" else "transformers checkpoint") in error
    assert table.get_column("actor").n_unique() == 1 and table.get_column("actor")[0].endswith(tuple("0123456789"))
    assert "restarting" not in result.stdout and "dead for good" not in result.stdout  # no restarts, no fresh actors
    failures = (
        (out / "summary.md")
        .read_text()
        .split("## Failed, out-of-memory and timed-out cells", 1)[1]
        .split("\n## ", 1)[0]
    )
    assert failures.count("could not be loaded") == 1  # once, grouped

    rerun = run_grid("--job", str(job), "--out", str(out), "--address", local_ray)
    assert "3 cells, 3 to run" in rerun.stdout  # a rerun tries the load again


def test_a_dataset_path_that_does_not_exist_fails_its_cells_with_the_path(local_ray, tmp_path):
    job = write_job(
        tmp_path,
        "no-data",
        "tiny",
        "  batch: {batch_size: [1, 2]}\n",
        f"limit: 2\ndatasets:\n  textvqa: {tmp_path / 'gone'}\n",
    )
    out = tmp_path / "out"
    result = run_grid("--job", str(job), "--out", str(out), "--address", local_ray)
    assert result.returncode == 1
    errors = grid_cells(out).get_column("error").to_list()
    assert all(f"dataset folder {tmp_path / 'gone'} does not exist on this worker" in e for e in errors), errors


def test_dry_run_names_each_missing_source_on_a_worker_and_writes_nothing(local_ray, tmp_path):
    job = write_job(
        tmp_path,
        "dry",
        str(tmp_path / "no-such-model"),
        "  tasks: {dataset: [textvqa, coco]}\n",
        f"limit: 2\ndatasets:\n  textvqa: {tmp_path / 'gone'}\n  coco: synthetic\n",
    )
    out = tmp_path / "out"
    result = run_grid("--job", str(job), "--out", str(out), "--address", local_ray, "--dry-run")
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    problems = [line for line in result.stderr.splitlines() if line.startswith("fuyu_ray:")]
    assert len(problems) == 2
    assert any("model" in p and "no such folder" in p and "on a cpu worker" in p for p in problems)
    assert any("dataset textvqa" in p and "no such folder" in p for p in problems)
    assert "2 would run, 0 reused from --out, 0 skipped" in result.stdout
    assert not out.exists()


def test_dry_run_of_the_default_job_lists_27_cells_with_the_skips_and_exits_0(local_ray, tmp_path):
    result = run_grid("--job", "jobs/smoke.yaml", "--out", str(tmp_path / "out"), "--address", local_ray, "--dry-run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cells = [
        line for line in result.stdout.splitlines() if line.startswith("  ") and ": " in line and "worker" not in line
    ]
    assert len(cells) == 27
    skipped = [line for line in cells if ": skip: " in line]
    assert any(" cuda " in line and "no node in the cluster has" in line for line in skipped)
    assert "on a cpu worker: model 'tiny': built in" in result.stdout
    assert not (tmp_path / "out").exists()


def test_dry_run_of_a_gpu_job_without_a_gpu_worker_lists_each_unchecked_source_once_and_exits_3(local_ray, tmp_path):
    out = tmp_path / "out"
    result = run_grid(
        "--job",
        "jobs/model-card.yaml",
        "--out",
        str(out),
        "--address",
        local_ray,
        "--dry-run",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    unchecked = [line for line in result.stderr.splitlines() if "unchecked on a cuda worker" in line]
    assert len(unchecked) == 5 and len(set(unchecked)) == 5  # the model and four datasets, once each
    assert any("model 'adept/fuyu-8b'" in line for line in unchecked)
    assert (result.stdout + result.stderr).count("model 'adept/fuyu-8b'") == 1
    assert not out.exists()
