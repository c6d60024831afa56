"""Dataset loaders on local fixtures in the real schema, through the same code a hub id takes."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from fuyu_ray.bench.data import load_samples
from fuyu_ray.job.spec import DatasetSource
from fuyu_ray.tasks import TASKS as REGISTRY
from fuyu_ray.tasks import get_task
from fuyu_ray.tasks.base import synthetic_rows
from fuyu_ray.tasks.synthetic import EVAL_SPLIT

TASKS = tuple(REGISTRY)
REAL_COLUMNS = {
    "textvqa": {"question_id", "question", "image", "answers", "image_id", "ocr_tokens"},
    "scienceqa": {"image", "question", "choices", "answer", "hint", "subject"},
    "coco": {"question_id", "image", "question", "answer", "id", "width", "height"},
    # As the hub's dataset cards list them (dataset_info features).
    "vqav2": {
        "question_type",
        "multiple_choice_answer",
        "answers",
        "image_id",
        "answer_type",
        "question_id",
        "question",
        "image",
    },
    "okvqa": {"question_id", "image", "question", "answers", "question_type", "answer_type"},
    "ai2d": {"question", "options", "answer", "image"},
}


def as_image_bytes(rows):
    """What a parquet export of the real sets holds: images as {'bytes', 'path'}."""
    converted = []
    for row in rows:
        buffer = io.BytesIO()
        row["image"].save(buffer, format="PNG")
        converted.append({**row, "image": {"bytes": buffer.getvalue(), "path": None}})
    return converted


def fixture_dataset(task: str, count: int = 5) -> datasets.Dataset:
    dataset = datasets.Dataset.from_list(as_image_bytes(synthetic_rows(get_task(task), count, EVAL_SPLIT)))
    return dataset.cast_column("image", datasets.Image())


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_rows_have_the_real_columns(task):
    assert REAL_COLUMNS[task] <= set(synthetic_rows(get_task(task), 1, EVAL_SPLIT)[0])


@pytest.mark.parametrize("task", TASKS)
def test_save_to_disk_fixture_loads_like_the_real_set(tmp_path, task):
    path = tmp_path / task
    datasets.DatasetDict(
        {split: fixture_dataset(task) for split in {"validation", "test", "val", get_task(task).split}}
    ).save_to_disk(str(path))
    loaded = load_samples(task, DatasetSource(str(path)), limit=3)
    expected = load_samples(task, DatasetSource("synthetic"), limit=3).samples
    assert [s.question for s in loaded.samples] == [s.question for s in expected]
    assert [s.references for s in loaded.samples] == [s.references for s in expected]
    assert [s.answer_index for s in loaded.samples] == [s.answer_index for s in expected]
    assert loaded.samples[0].image.size == (224, 224)
    assert "save_to_disk" in loaded.description


@pytest.mark.parametrize("task", TASKS)
def test_parquet_fixture_loads(tmp_path, task):
    fixture_dataset(task).to_parquet(str(tmp_path / f"{task}-00000.parquet"))
    loaded = load_samples(task, DatasetSource(str(tmp_path)), limit=10)
    assert len(loaded.samples) == 5 and not loaded.skipped


def test_corrupt_or_missing_image_skips_that_sample_with_the_reason(tmp_path):
    rows = as_image_bytes(synthetic_rows(get_task("textvqa"), 4, EVAL_SPLIT))
    rows[1]["image"] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}
    rows[2]["image"] = {"bytes": None, "path": str(tmp_path / "gone.png")}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part.parquet")  # as a crawler would leave it
    loaded = load_samples("textvqa", DatasetSource(str(tmp_path / "part.parquet")), limit=10)
    assert len(loaded.samples) == 2
    assert [sample_id for sample_id, _ in loaded.skipped] == [rows[1]["question_id"], rows[2]["question_id"]]
    assert all(reason for _, reason in loaded.skipped)


def test_hub_id_honours_offline_mode():
    """HF_HUB_OFFLINE is read when `datasets` is imported, so set it where a user would: in the environment."""
    code = (
        "from fuyu_ray.bench.data import load_samples; from fuyu_ray.job.spec import DatasetSource\n"
        "try:\n    load_samples('textvqa', DatasetSource('lmms-lab/textvqa-not-cached-here'), 1)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert "offline" in result.stdout.lower(), result.stdout + result.stderr
    assert time.monotonic() - started < 120  # no network retries
