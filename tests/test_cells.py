"""Grid expansion: stable cell ids, one cell per distinct setting, sections in the sweep's order."""

from __future__ import annotations

import subprocess
import sys

from fuyu_ray.cells import expand
from fuyu_ray.spec import load_job

from conftest import ROOT


def test_cell_ids_are_stable_across_processes():
    job = load_job(ROOT / "jobs/smoke.yaml")
    here = [c.cell_id for c in expand(job).cells]
    there = subprocess.run(
        [sys.executable, "-c", "from fuyu_ray.cells import expand; from fuyu_ray.spec import load_job;"
         "print(' '.join(c.cell_id for c in expand(load_job('jobs/smoke.yaml')).cells))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
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


def test_cell_id_changes_with_any_setting():
    grid = expand(load_job(ROOT / "jobs/smoke.yaml"))
    settings = [tuple(sorted(c.settings().items())) for c in grid.cells]
    assert len(set(settings)) == len(grid.cells)
