"""Grid expansion: stable cell ids, one cell per distinct setting, sections in the sweep's order."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import fields

import pytest
from conftest import ROOT

from fuyu_ray.job.cells import Cell, expand
from fuyu_ray.job.spec import AXES, DatasetSource, TaskOverride, load_job, parse_job


def test_cell_ids_are_stable_across_processes():
    job = load_job(ROOT / "jobs/smoke.yaml")
    here = [c.cell_id for c in expand(job).cells]
    there = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fuyu_ray.job.cells import expand; from fuyu_ray.job.spec import load_job;"
            "print(' '.join(c.cell_id for c in expand(load_job('jobs/smoke.yaml')).cells))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert here == there
    assert len(set(here)) == len(here)


def test_a_cell_shared_by_two_sweeps_runs_once_and_shows_in_both():
    grid = expand(load_job(ROOT / "jobs/smoke.yaml"))
    base_cpu = grid.sections["device"][1]  # device: [cuda, cpu] -> the cpu cell is the base point
    assert base_cpu == grid.sections["batch"][0]  # batch_size 1 is the base's batch size
    # image_size 224 and seq_len 200 at batch 16 are the same three cells in both sweeps
    assert set(grid.sections["image_size"]) & set(grid.sections["seq_len"])
    total = sum(len(ids) for ids in grid.sections.values())
    assert len(grid.cells) < total
    assert {c.cell_id for c in grid.cells} == {i for ids in grid.sections.values() for i in ids}


def test_sweeps_cross_only_their_own_axes():
    grid = expand(load_job(ROOT / "jobs/smoke.yaml"))
    by_id = {c.cell_id: c for c in grid.cells}
    image_cells = [by_id[i] for i in grid.sections["image_size"]]
    assert len(image_cells) == 9  # 3 sizes x 3 datasets
    assert {c.point.batch_size for c in image_cells} == {16}
    assert {c.point.seq_len for c in image_cells} == {200}


RAW = {
    "name": "ids",
    "model": "tiny",
    "weights": "pretrained",
    "limit": 4,
    "base": {
        "device": "cpu",
        "dataset": "textvqa",
        "batch_size": 2,
        "image_size": 224,
        "seq_len": 200,
        "optimization": "fp32",
    },
    "sweeps": {"only": {"batch_size": [2]}},
}

# Each change touches one thing that feeds the cell's result, and must give the cell a new id.
CHANGES = {
    "model": lambda raw: raw.update(model="adept/fuyu-8b"),
    "weights": lambda raw: raw.update(weights="random"),
    "limit": lambda raw: raw.update(limit=5),
    "device": lambda raw: raw["base"].update(device="cuda"),
    "dataset": lambda raw: raw["base"].update(dataset="coco"),
    "batch_size": lambda raw: raw["base"].update(batch_size=3) or raw["sweeps"]["only"].update(batch_size=[3]),
    "image_size": lambda raw: raw["base"].update(image_size=336),
    "seq_len": lambda raw: raw["base"].update(seq_len=100),
    "optimization": lambda raw: raw["base"].update(optimization="fp16"),
    "dataset_source": lambda raw: raw.update(datasets={"textvqa": "lmms-lab/textvqa"}),
    "dataset_split": lambda raw: raw.update(datasets={"textvqa": {"source": "synthetic", "split": "train"}}),
    "dataset_config": lambda raw: raw.update(datasets={"textvqa": {"source": "synthetic", "config": "other"}}),
    "prompt_template": lambda raw: raw.update(tasks={"textvqa": {"template": "{question}?"}}),
    "max_new_tokens": lambda raw: raw.update(tasks={"textvqa": {"max_new_tokens": 3}}),
}


def only_cell(raw: dict):
    cells = expand(parse_job(raw, "ids.yaml")).cells
    assert len(cells) == 1
    return cells[0]


def test_the_axes_and_fields_checked_are_all_there_are():
    # A new axis or a new per-task or per-dataset field must be added to CHANGES above.
    assert set(AXES) <= set(CHANGES)
    assert {f"dataset_{f.name}" for f in fields(DatasetSource)} <= set(CHANGES)
    assert {f.name for f in fields(TaskOverride)} == {"template", "max_new_tokens"}  # prompt_template, max_new_tokens
    assert {f.name for f in fields(Cell)} == {"model", "weights", "limit", "point", "source", "task_override"}


def test_identical_settings_give_identical_ids():
    first, second = only_cell(copy.deepcopy(RAW)), only_cell(copy.deepcopy(RAW))
    assert first is not second and first.cell_id == second.cell_id


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_cell_id_changes_with_each_setting(change):
    raw = copy.deepcopy(RAW)
    CHANGES[change](raw)
    changed = only_cell(raw)
    assert changed != only_cell(copy.deepcopy(RAW))  # the change reached the cell
    assert changed.cell_id != only_cell(copy.deepcopy(RAW)).cell_id, change


@pytest.mark.parametrize(
    "other",
    [
        {"datasets": {"coco": "lmms-lab/COCO-Caption2017"}},
        {"tasks": {"scienceqa": {"max_new_tokens": 3}}},
        {"name": "renamed"},
    ],
)
def test_settings_of_another_task_or_the_report_leave_the_id_alone(other):
    """Else an edit for one dataset would make every other cell run again."""
    assert only_cell({**copy.deepcopy(RAW), **other}).cell_id == only_cell(copy.deepcopy(RAW)).cell_id
