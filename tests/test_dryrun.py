"""`--dry-run`'s plan and its source checks, without a cluster: a rerun lists the cells already in --out as
reused, and a local model or dataset folder that exists is looked into, not only looked for.

The cluster is a single CPU node (its resources stated, not read from Ray); the source checks run in
this process, as a worker runs them."""

from __future__ import annotations

import pytest
from conftest import BASE_POINT
from hub_layout import make_textvqa

from fuyu_ray.driver import dryrun, execute
from fuyu_ray.driver.sources import check_dataset, check_model, check_sources
from fuyu_ray.job.cells import expand
from fuyu_ray.job.spec import DatasetSource, parse_job
from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table
from fuyu_ray.storage.store import ResultStore, cells_to_run


def job_of(model: str, sweeps: dict, datasets: dict | None = None):
    raw = {
        "name": "dry",
        "model": model,
        "weights": "pretrained",
        "limit": 2,
        "base": dict(BASE_POINT),
        "sweeps": sweeps,
        **({"datasets": datasets} if datasets else {}),
    }
    job = parse_job(raw, "dry.yaml")
    return job, expand(job)


@pytest.fixture
def one_cpu_node(monkeypatch):
    monkeypatch.setattr(execute, "node_resources", lambda: [{"CPU": 2.0}])

    def check_here(job, grid, variants):
        datasets = {task: job.dataset_source(task) for task in {cell.point.dataset for cell in grid.cells}}
        return {variant.device: check_sources(job.model, job.weights, datasets) for variant in variants}

    monkeypatch.setattr(dryrun, "check_on_workers", check_here)


def planned(output: str, grid) -> dict[str, str]:
    """cell_id -> what the plan says of it."""
    verdicts = {}
    for cell in grid.cells:
        [line] = [line for line in output.splitlines() if line.startswith(f"  {cell.cell_id} ")]
        verdicts[cell.cell_id] = line.split(f"{cell.description}: ", 1)[1]
    return verdicts


def test_a_rerun_plans_to_reuse_finished_cells_and_to_run_the_rest(one_cpu_node, tmp_path, capsys):
    job, grid = job_of("tiny", {"batch": {"batch_size": [1, 2, 3, 4]}, "gpu": {"device": ["cuda"]}})
    by_batch = {(c.point.device, c.point.batch_size): c for c in grid.cells}
    store = ResultStore.at(str(tmp_path / "out"))
    store.ensure_dirs()
    for batch, status in ((1, "ok"), (2, "failed"), (3, "skipped")):  # batch 4 has not run yet
        record = outcome_row(by_batch["cpu", batch].settings(), status, None if status == "ok" else "earlier")
        store.write_cell(cell_batch(record), sample_table([]))
    done = store.done_cells()
    todo = {cell.cell_id for cell in cells_to_run(grid.cells, done, force=False, retry_failed=True)}

    assert dryrun.dry_run(job, grid, done, todo, store.root) == 0
    output = capsys.readouterr().out
    verdicts = planned(output, grid)
    assert verdicts[by_batch["cpu", 1].cell_id] == "reuse (ok in --out)"
    assert verdicts[by_batch["cpu", 2].cell_id] == "run again (was failed)"
    assert verdicts[by_batch["cpu", 3].cell_id] == "run again (was skipped)"
    assert verdicts[by_batch["cpu", 4].cell_id] == "run"
    assert verdicts[by_batch["cuda", 1].cell_id].startswith("skip: no node in the cluster has")
    assert "3 would run, 1 reused from --out, 1 skipped" in output
    assert "on a cpu worker: model 'tiny': built in" in output

    # --force runs every cell again, the finished one too.
    forced = {cell.cell_id for cell in cells_to_run(grid.cells, done, force=True, retry_failed=True)}
    assert dryrun.dry_run(job, grid, done, forced, store.root) == 0
    output = capsys.readouterr().out
    assert planned(output, grid)[by_batch["cpu", 1].cell_id] == "run again (was ok)"
    assert "4 would run, 0 reused from --out, 1 skipped" in output


def test_a_local_model_folder_is_looked_into(tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    assert check_model(str(folder), "pretrained").problem == (
        f"{folder} has no config.json: not a transformers checkpoint"
    )
    (folder / "config.json").write_text("{}")
    check = check_model(str(folder), "pretrained")
    assert check.problem is None and check.detail == f"local folder {folder}"
    assert (
        check_model(str(tmp_path / "gone"), "pretrained").problem
        == f"no such folder {tmp_path / 'gone'} on this worker"
    )


def test_a_local_dataset_folder_is_looked_into(tmp_path):
    folder = make_textvqa(tmp_path, count=2)
    check = check_dataset("textvqa", DatasetSource(str(folder)))
    assert check.problem is None and check.detail == "local folder, split validation, 2 files"
    check = check_dataset("textvqa", DatasetSource(str(folder), split="dev"))
    assert check.problem and "dev" in check.problem and "validation" in check.problem
    gone = tmp_path / "gone"
    assert check_dataset("textvqa", DatasetSource(str(gone))).problem == f"no such folder {gone} on this worker"


def test_a_dry_run_names_a_local_folder_that_is_not_a_checkpoint(one_cpu_node, tmp_path, capsys):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    data = make_textvqa(tmp_path, count=2)
    job, grid = job_of(str(folder), {"batch": {"batch_size": [1]}}, {"textvqa": str(data)})
    assert dryrun.dry_run(job, grid, {}, {cell.cell_id for cell in grid.cells}, str(tmp_path / "out")) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"fuyu_ray: on a cpu worker: model {str(folder)!r}: {folder} has no config.json: "
        "not a transformers checkpoint\n"
    )
    assert f"on a cpu worker: dataset textvqa {str(data)!r}: local folder, split validation, 2 files" in captured.out
    assert not (tmp_path / "out").exists()
