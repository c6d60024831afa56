"""Local folders copied from the hub: split and config honoured, splits without answers timed but
not scored, text-only configs named, and a split or config that does not exist is bad input."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import run_grid
from hub_layout import (
    SCIENCEQA_FEATURES,
    TEXTVQA_FEATURES,
    make_coco,
    make_scienceqa,
    make_textvqa,
    readme,
    scienceqa_rows,
    textvqa_rows,
    write_shards,
)

from fuyu_ray.bench.data import DatasetNotFound, load_samples
from fuyu_ray.job.spec import DatasetSource
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import NO_REFERENCES, score_answers


@pytest.fixture(scope="module", params=[True, False], ids=["with-readme", "without-readme"])
def hub(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {
        "textvqa": make_textvqa(root, with_readme=request.param),
        "scienceqa": make_scienceqa(root, with_readme=request.param),
        "coco": make_coco(root, with_readme=request.param),
    }


def test_textvqa_reads_the_named_split_only(hub):
    validation = load_samples("textvqa", DatasetSource(str(hub["textvqa"]), split="validation"), limit=6)
    assert [int(s.sample_id) for s in validation.samples] == list(range(200_000, 200_006))
    assert all(len(s.references) == 10 for s in validation.samples)
    assert (
        "split validation" in validation.description
        and "data/validation-00000-of-00002.parquet" in validation.description
    )
    assert "data/test-" not in validation.description and "data/train-" not in validation.description

    test = load_samples("textvqa", DatasetSource(str(hub["textvqa"]), split="test"), limit=3)
    assert [int(s.sample_id) for s in test.samples] == [300_000, 300_001, 300_002]
    assert all(s.references == () for s in test.samples)


def test_the_default_split_is_the_tasks_own(hub):
    assert load_samples("textvqa", DatasetSource(str(hub["textvqa"])), limit=1).samples[0].sample_id == "200000"
    assert load_samples("coco", DatasetSource(str(hub["coco"])), limit=1).samples[0].sample_id == "val-000000.jpg"


@pytest.mark.parametrize("split", ["validation", "test"])
def test_scienceqa_reads_the_named_config_and_split(hub, split):
    loaded = load_samples(
        "scienceqa", DatasetSource(str(hub["scienceqa"]), split=split, config="ScienceQA-IMG"), limit=5
    )
    expected = scienceqa_rows(split, "ScienceQA-IMG", 5)
    assert [(s.choices, s.answer_index) for s in loaded.samples] == [
        (tuple(r["choices"]), r["answer"]) for r in expected
    ]
    assert not loaded.skipped
    assert (
        "[ScienceQA-IMG]" in loaded.description
        and f"ScienceQA-IMG/{split}-00000-of-00001.parquet" in loaded.description
    )


def test_text_only_rows_are_skipped_and_rows_with_images_take_their_place(hub):
    loaded = load_samples(
        "scienceqa", DatasetSource(str(hub["scienceqa"]), split="test", config="ScienceQA-FULL"), limit=3
    )
    with_images = [r for r in scienceqa_rows("test", "ScienceQA-FULL", 8) if r["image"] is not None][:3]
    assert [s.choices for s in loaded.samples] == [tuple(r["choices"]) for r in with_images]
    assert len(loaded.skipped) == 3 and all("no image" in reason for _, reason in loaded.skipped)


def test_a_config_without_images_names_itself_and_the_one_with_images(tmp_path):
    folder = tmp_path / "ScienceQA"
    rows = [{**r, "image": None} for r in scienceqa_rows("test", "ScienceQA-FULL", 4)]
    write_shards(rows, SCIENCEQA_FEATURES, folder / "ScienceQA-FULL", "test", shards=1)
    with pytest.raises(ValueError) as error:
        load_samples("scienceqa", DatasetSource(str(folder), split="test", config="ScienceQA-FULL"), limit=2)
    message = str(error.value)
    assert "none of the 4 rows read has an image" in message
    assert "config ScienceQA-FULL holds text-only questions: use config ScienceQA-IMG" in message


def test_coco_test_split_has_no_references_and_is_not_scored(hub):
    loaded = load_samples("coco", DatasetSource(str(hub["coco"]), split="test"), limit=3)
    assert [s.sample_id for s in loaded.samples] == ["test-000000.jpg", "test-000001.jpg", "test-000002.jpg"]
    result = score_answers(get_task("coco"), loaded.samples, ["a caption"] * 3)
    assert result.accuracy is None and result.note == NO_REFERENCES and result.per_sample == [None] * 3


@pytest.mark.parametrize(
    "task, source, expected",
    [
        ("textvqa", {"split": "validaton"}, "no split 'validaton'"),
        ("coco", {"split": "validation"}, "it has splits ['test', 'val']"),
        ("scienceqa", {"config": "ScienceQA-IMAGE"}, "no config 'ScienceQA-IMAGE'"),
        ("scienceqa", {"config": "ScienceQA-IMG", "split": "dev"}, "it has splits ['test', 'train', 'validation']"),
    ],
)
def test_a_split_or_config_that_does_not_exist_names_the_ones_that_do(hub, task, source, expected):
    with pytest.raises(DatasetNotFound) as error:
        load_samples(task, DatasetSource(str(hub[task]), **source), limit=1)
    assert expected in str(error.value)


@pytest.mark.parametrize("with_readme", [True, False], ids=["with-readme", "without-readme"])
def test_a_folder_holding_one_split_is_read_only_when_that_split_is_asked(tmp_path, monkeypatch, with_readme):
    """A copy of the test split alone: a job that names the validation split must not be
    scored on the test rows in its place; one that names no split reads the one there is."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # its lock files, not the home's
    folder = tmp_path / "textvqa"
    write_shards(textvqa_rows("test", 4), TEXTVQA_FEATURES, folder / "data", "test")
    if with_readme:
        (folder / "README.md").write_text(readme({"default": {"test": "data/test-*"}}))
    with pytest.raises(DatasetNotFound) as error:
        load_samples("textvqa", DatasetSource(str(folder), split="validation"), limit=2)
    assert "no split 'validation'" in str(error.value) and "it has splits ['test']" in str(error.value)

    named = load_samples("textvqa", DatasetSource(str(folder), split="test"), limit=2)
    unnamed = load_samples("textvqa", DatasetSource(str(folder)), limit=2)
    assert [s.sample_id for s in named.samples] == [s.sample_id for s in unnamed.samples] == ["300000", "300001"]
    assert "split test" in named.description


# --- through the driver, as a user runs it ------------------------------------------------------


def job_file(tmp_path, name: str, datasets_block: str, sweep: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nmodel: tiny\nlimit: 4\ndatasets:\n{datasets_block}"
        "base: {device: cpu, dataset: textvqa, batch_size: 2, image_size: 224, seq_len: 200, optimization: fp32}\n"
        f"sweeps:\n  tasks: {sweep}\n"
    )
    return str(path)


@pytest.fixture(scope="module")
def hub_with_readme(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub-readme")
    return {"textvqa": make_textvqa(root), "scienceqa": make_scienceqa(root), "coco": make_coco(root)}


@pytest.mark.slow
def test_a_job_naming_splits_and_configs_runs_every_cell_on_them(hub_with_readme, tmp_path):
    hub = hub_with_readme
    job = job_file(
        tmp_path,
        "hub-copies",
        f"  textvqa: {{source: {hub['textvqa']}, split: validation}}\n"
        f"  scienceqa: {{source: {hub['scienceqa']}, config: ScienceQA-IMG, split: test}}\n"
        f"  coco: {{source: {hub['coco']}, split: val}}\n",
        "{dataset: [textvqa, scienceqa, coco]}",
    )
    out = tmp_path / "out"
    result = run_grid("--job", job, "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = pl.read_parquet(out / "cells.parquet")
    assert cells.get_column("status").to_list() == ["ok"] * 3
    assert cells.get_column("accuracy").null_count() == 0
    samples = pl.read_parquet(out / "samples.parquet")
    ids = dict(samples.group_by("dataset").agg(pl.col("sample_id")).rows())
    assert all(200_000 <= int(i) < 300_000 for i in ids["textvqa"])
    assert all(i.startswith("val-") for i in ids["coco"])
    expected = {tuple(r["choices"]) for r in scienceqa_rows("test", "ScienceQA-IMG", 8)}
    assert set(map(tuple, samples.filter(pl.col("dataset") == "scienceqa").get_column("choices").to_list())) <= expected
    summary = (out / "summary.md").read_text()
    assert (
        "ScienceQA-IMG/test-00000-of-00001.parquet" in summary and "data/validation-00000-of-00002.parquet" in summary
    )


@pytest.mark.slow
def test_splits_without_answers_are_timed_with_null_accuracy_and_a_missing_split_is_bad_input(
    hub_with_readme, tmp_path
):
    hub = hub_with_readme
    job = job_file(
        tmp_path,
        "test-splits",
        f"  textvqa: {{source: {hub['textvqa']}, split: test}}\n  coco: {{source: {hub['coco']}, split: test}}\n",
        "{dataset: [textvqa, coco]}",
    )
    out = tmp_path / "out"
    result = run_grid("--job", job, "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = pl.read_parquet(out / "cells.parquet")
    assert cells.get_column("status").to_list() == ["ok", "ok"]
    assert cells.get_column("accuracy").to_list() == [None, None]
    assert cells.get_column("accuracy_note").to_list() == [NO_REFERENCES] * 2
    assert cells.get_column("latency_s").null_count() == 0 and cells.get_column("flops_per_sample").null_count() == 0

    bad = job_file(tmp_path, "bad-split", f"  textvqa: {{source: {hub['textvqa']}, split: dev}}\n", "{batch_size: [1]}")
    refused = run_grid("--job", bad, "--out", str(tmp_path / "bad-out"))
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0 and "no split 'dev'" in refused.stderr
    assert "['test', 'train', 'validation']" in refused.stderr
    assert not (tmp_path / "bad-out").exists()
