"""Job spec edge cases, straight through parse_job: each is a JobError whose one line names the file and the culprit."""

from __future__ import annotations

import copy

import pytest
from conftest import BASE_POINT

from fuyu_ray.job.spec import AXES, JobError, load_job, parse_job

ORIGIN = "jobs/edge.yaml"
GOOD = {
    "name": "edge",
    "model": "tiny",
    "limit": 2,
    "base": dict(BASE_POINT),
    "sweeps": {"batch": {"batch_size": [1, 2]}},
}


def edited(**top) -> dict:
    raw = copy.deepcopy(GOOD)
    raw.update(top)
    return raw


def without(key: str) -> dict:
    raw = copy.deepcopy(GOOD)
    del raw[key]
    return raw


def base_without(axis: str) -> dict:
    raw = copy.deepcopy(GOOD)
    del raw["base"][axis]
    return raw


def job_error(raw) -> str:
    with pytest.raises(JobError) as raised:
        parse_job(raw, ORIGIN)
    message = str(raised.value)
    assert message.startswith(f"{ORIGIN}: ") and "\n" not in message, message
    return message


def test_the_good_job_parses():
    job = parse_job(copy.deepcopy(GOOD), ORIGIN)
    assert job.limit == 2 and job.base.batch_size == 1 and job.sweeps == {"batch": {"batch_size": [1, 2]}}
    assert job.source_path == ORIGIN


@pytest.mark.parametrize("key", ["name", "model", "base", "sweeps"])
def test_a_missing_required_key_is_named(key):
    assert job_error(without(key)) == f"{ORIGIN}: {key}: missing"


@pytest.mark.parametrize("raw", [None, [], "just text", 3], ids=["empty", "list", "text", "number"])
def test_a_job_that_is_not_a_mapping_names_the_file(raw):
    assert "must be a YAML mapping" in job_error(raw)


def test_an_empty_file_names_the_file(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(JobError) as raised:
        load_job(empty)
    assert str(raised.value).startswith(f"{empty}: ") and "mapping" in str(raised.value)


BOOLEANS = {
    "limit": (edited(limit=True), "limit"),
    "cpus_per_actor": (edited(cpus_per_actor=True), "cpus_per_actor"),
    "cell_timeout_s": (edited(cell_timeout_s=True), "cell_timeout_s"),
    "min_energy_window_s": (edited(min_energy_window_s=False), "min_energy_window_s"),
    "max_actors_per_variant": (edited(max_actors_per_variant=True), "max_actors_per_variant"),
    "base.batch_size": (edited(base={**GOOD["base"], "batch_size": True}), "base.batch_size"),
    "base.image_size": (edited(base={**GOOD["base"], "image_size": False}), "base.image_size"),
    "base.seq_len": (edited(base={**GOOD["base"], "seq_len": True}), "base.seq_len"),
    "sweep value": (edited(sweeps={"batch": {"batch_size": [1, True]}}), "sweeps.batch.batch_size"),
    "max_new_tokens": (edited(tasks={"coco": {"max_new_tokens": True}}), "tasks.coco.max_new_tokens"),
}


@pytest.mark.parametrize("case", sorted(BOOLEANS))
def test_a_boolean_where_a_number_belongs_is_named(case):
    raw, culprit = BOOLEANS[case]
    message = job_error(raw)
    assert message.startswith(f"{ORIGIN}: {culprit}: "), message
    assert "True" in message or "False" in message


def test_an_unknown_sweep_axis_is_named_with_the_known_ones():
    message = job_error(edited(sweeps={"batch": {"batch_size": [1], "colour": ["red"]}}))
    assert message.startswith(f"{ORIGIN}: sweeps.batch.colour: unknown axis"), message
    assert all(axis in message for axis in AXES)


@pytest.mark.parametrize("axis", AXES)
def test_a_base_missing_an_axis_is_named(axis):
    assert job_error(base_without(axis)) == f"{ORIGIN}: base.{axis}: missing"


def test_an_unknown_base_axis_is_named():
    assert job_error(edited(base={**GOOD["base"], "colour": "red"})).startswith(f"{ORIGIN}: base.colour: unknown axis")


@pytest.mark.parametrize(
    "raw, culprit",
    [
        (edited(sweeps={}), "sweeps"),
        (edited(sweeps={"batch": {"batch_size": []}}), "sweeps.batch.batch_size"),
        (edited(sweeps={"batch": {"batch_size": 4}}), "sweeps.batch.batch_size"),
        (edited(base=[1, 2]), "base"),
        (edited(datasets={"textvqa": {"split": "test"}}), "datasets.textvqa.source"),
        (edited(tasks={"textvqa": None}), "tasks.textvqa"),
        (edited(tasks={"textvqa": {"template": False}}), "tasks.textvqa.template"),
        (edited(weights=True), "weights"),
    ],
    ids=[
        "no-sweeps",
        "empty-list",
        "scalar-not-list",
        "base-list",
        "source-missing",
        "task-null",
        "template-bool",
        "weights-bool",
    ],
)
def test_other_malformed_values_are_named(raw, culprit):
    assert job_error(raw).startswith(f"{ORIGIN}: {culprit}: ")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("key", ["cell_timeout_s", "min_energy_window_s"])
def test_nan_or_infinity_where_a_positive_number_belongs_is_named(key, value):
    """NaN compares false with everything; infinity would switch the limit off."""
    assert job_error(edited(**{key: value})).startswith(f"{ORIGIN}: {key}: ")


@pytest.mark.parametrize("key, value", [("datasets", []), ("datasets", False), ("tasks", 0), ("tasks", "")])
def test_a_falsy_non_mapping_for_datasets_or_tasks_is_named(key, value):
    assert job_error(edited(**{key: value})).startswith(f"{ORIGIN}: {key}: ")


def test_every_cell_column_is_in_the_readmes_column_list():
    from conftest import ROOT

    from fuyu_ray.storage.records import CELL_SCHEMA

    columns = (ROOT / "README.md").read_text().split("## Columns of `cells.parquet`", 1)[1].split("\n## ", 1)[0]
    assert [name for name in CELL_SCHEMA.names if f"`{name}`" not in columns] == []


def test_quality_thresholds_and_remeasure_come_from_the_job():
    job = parse_job(edited(quality={"max_cv": 0.5}, remeasure_disturbed=2), ORIGIN)
    assert job.quality.max_cv == 0.5 and job.quality.max_other_cpu_share == 0.15 and job.remeasure_disturbed == 2
    assert job_error(edited(quality={"max_cpu": 1})).startswith(f"{ORIGIN}: quality: unknown key 'max_cpu'")
    assert job_error(edited(remeasure_disturbed=-1)).startswith(f"{ORIGIN}: remeasure_disturbed: ")
