"""A report never reads better than the run was: an incomplete run says so first, a rerun keeps the facts
of the run that measured, the model's limits stand beside its figures, a disturbed pair is no verdict,
`report` refuses a folder or a job it would misdescribe, and every remedy printed is a command that works."""

from __future__ import annotations

import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT

from fuyu_ray.driver import compare as cmp
from fuyu_ray.driver import grid as grid_cli
from fuyu_ray.driver.progress import outcome_line
from fuyu_ray.job.cells import expand
from fuyu_ray.job.spec import JobError, load_job, parse_job
from fuyu_ray.presentation import formats, plots, report
from fuyu_ray.storage.records import cell_batch, sample_table
from fuyu_ray.storage.store import ResultStore

BASE = {"device": "cpu", "dataset": "scienceqa", "batch_size": 1, "image_size": 224, "seq_len": 200}


def make_job(tmp_path, model: str = "tiny", weights: str = "pretrained", name: str = "honest", **sweeps):
    raw = {
        "name": name,
        "model": model,
        "weights": weights,
        "limit": 4,
        "base": {**BASE, "optimization": "fp32"},
        "sweeps": sweeps or {"batch": {"batch_size": [1, 2, 4, 8]}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_job(path)


def ok_row(cell, latency_s: float = 0.5, quality: str = "clean", accuracy: float | None = 0.75, **extra) -> dict:
    return {
        **cell.settings(),
        "status": "ok",
        "error": None,
        "n_samples": 4,
        "latency_s": latency_s,
        "latency_p90_s": latency_s * 1.2,
        "latency_n": 4,
        "latency_batches_s": [latency_s] * 4,
        "samples_per_s": cell.point.batch_size / latency_s,
        "accuracy": accuracy,
        "accuracy_n": 4,
        "measurement_quality": quality,
        **extra,
    }


def store_with(tmp_path, rows: list[dict], name: str = "out") -> ResultStore:
    store = ResultStore.at(str(tmp_path / name))
    store.ensure_dirs()
    for row in rows:
        store.write_cell(cell_batch(row), sample_table([]))
    return store


def run_info(job, **facts) -> dict:
    return {
        "job_file": job.source_path,
        "job_name": job.name,
        "job_text": open(job.source_path).read(),
        "out": "somewhere",
        "started_at": "2026-12-06T01:00:00",
        "finished_at": "2026-12-06T01:05:00",
        "cells_run": 4,
        "cells_reused": 0,
        "workers": 1,
        "wall_s": 300.0,
        "earlier_runs": [],
        **facts,
    }


def summary_of(tmp_path, job, rows, info) -> str:
    store = store_with(tmp_path, rows)
    report.write_report(store, job, expand(job), {**info, "out": store.root})
    return (tmp_path / "out" / "summary.md").read_text()


# --- an incomplete run says so first ---------------------------------------------------------------


def test_a_stopped_run_says_in_its_first_lines_that_cells_are_missing_and_how_to_finish(tmp_path):
    job = make_job(tmp_path)
    grid = expand(job)
    summary = summary_of(tmp_path, job, [ok_row(grid.cells[0])], run_info(job, interrupted=True, cells_run=1))
    head = "\n".join(summary.splitlines()[:4])
    assert "Incomplete: 1 of 4 cells have results; 3 missing (the run was interrupted)" in head
    assert f"python -m fuyu_ray.grid --job {job.source_path} --out {tmp_path / 'out'}" in head


def test_a_complete_run_has_no_incomplete_line(tmp_path):
    job = make_job(tmp_path)
    summary = summary_of(tmp_path, job, [ok_row(c) for c in expand(job).cells], run_info(job))
    assert "Incomplete" not in summary and "4 cells" in summary


def test_one_cell_is_one_cell(tmp_path):
    job = make_job(tmp_path, batch={"batch_size": [1]})
    summary = summary_of(tmp_path, job, [ok_row(c) for c in expand(job).cells], run_info(job))
    assert "1 cell," in summary and "1 cells" not in summary


def test_a_rerun_keeps_the_measured_runs_facts_and_adds_its_own(tmp_path):
    job = make_job(tmp_path)
    store = store_with(tmp_path, [ok_row(c) for c in expand(job).cells])
    first = run_info(job, out=store.root)
    store.write_json("run.json", first)
    rerun = {**run_info(job, cells_run=0, cells_reused=4, wall_s=0.0, workers=0), **grid_cli.earlier_runs(store)}
    rerun["started_at"], rerun["finished_at"] = "2026-12-06T02:00:00", "2026-12-06T02:00:01"
    assert [r["started_at"] for r in rerun["earlier_runs"]] == ["2026-12-06T01:00:00"]
    assert "job_text" not in rerun["earlier_runs"][0]
    report.write_report(store, job, expand(job), {**rerun, "out": store.root})
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "measured over 2 runs: the first started 2026-12-06T01:00:00" in summary
    harness = summary.split("## Harness\n", 1)[1]
    assert "Run 1 of 2 (started 2026-12-06T01:00:00): wall 300.0 s over 1 worker(s)" in harness
    assert "Run 2 of 2 (started 2026-12-06T02:00:00): wall 0.0 s over 0 worker(s)" in harness
    # a third run still knows the first
    assert [r["started_at"] for r in grid_cli.earlier_runs(store)["earlier_runs"]] == [
        "2026-12-06T01:00:00",
        "2026-12-06T02:00:00",
    ]


# --- the model's limits beside its figures ---------------------------------------------------------


def test_tinys_training_size_is_stated_beside_an_image_size_sweep(tmp_path):
    job = make_job(tmp_path, image={"image_size": [224, 336, 448]})
    summary = summary_of(tmp_path, job, [ok_row(c) for c in expand(job).cells], run_info(job))
    section = summary.split("## Image Tests\n", 1)[1].split("\n## ", 1)[0]
    assert "trained only on built-in synthetic data" in section and "at 224 px" in section


def test_a_stand_in_says_it_measures_no_model_and_random_weights_say_no_accuracy(tmp_path):
    standin = make_job(tmp_path, model="standin:sleep=0.01", weights="random", name="s")
    summary = summary_of(tmp_path, standin, [ok_row(c) for c in expand(standin).cells], run_info(standin))
    assert "a stand-in: no model" in summary and "pretrained weights" not in summary
    assert "measure the harness" in summary
    random = make_job(tmp_path, model="adept/fuyu-8b", weights="random", name="r")
    lines = formats.model_limits(random)
    assert any("Random weights" in line and "no accuracy" in line for line in lines)


# --- units, words and remedies ------------------------------------------------------------------


def test_the_progress_line_gives_accuracy_in_the_tables_units():
    assert outcome_line({"status": "ok", "latency_s": 0.1, "dataset": "scienceqa", "accuracy": 0.8125}).endswith(
        "accuracy 81.2"
    )
    assert outcome_line({"status": "ok", "latency_s": 0.1, "dataset": "coco", "accuracy": 6.104}).endswith(
        "accuracy 6.1"
    )


def test_the_remeasure_remedy_names_this_job_and_this_out(tmp_path):
    job = make_job(tmp_path)
    cells = [ok_row(c, quality="disturbed: other processes took 40% of the CPU") for c in expand(job).cells]
    summary = summary_of(tmp_path, job, cells, run_info(job))
    command = f"python -m fuyu_ray.grid --job {job.source_path} --out {tmp_path / 'out'} --remeasure-disturbed"
    assert f"`{command}`" in summary


def test_throughput_is_a_column(tmp_path):
    job = make_job(tmp_path)
    cells = [ok_row(c, latency_s=0.5) for c in expand(job).cells]
    summary = summary_of(tmp_path, job, cells, run_info(job))
    header, *rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in summary.split("## Batch Tests\n", 1)[1].split("\n## ", 1)[0].splitlines()
        if line.startswith("| ")
    ]
    throughput = [dict(zip(header, row))["Samples/s"] for row in rows]
    assert throughput == ["2.0", "4.0", "8.0", "16.0"]  # batch / 0.5 s


def test_the_driver_help_says_whole_sentences():
    result = subprocess.run(
        [sys.executable, "-m", "fuyu_ray.grid", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1].replace("\n", " ")
    assert description.rstrip().endswith(".") and "[--force]" not in description


def test_a_ctrl_c_while_ray_stops_is_an_interrupt_not_a_traceback():
    class StoppingRay:
        def shutdown(self):
            raise KeyboardInterrupt

    assert grid_cli.shut_down(StoppingRay()) is True


# --- plots mark what the tables mark ---------------------------------------------------------------


def drawn_figures(tmp_path, job, rows) -> dict:
    """Each figure the report saves, by file name, as it stood when saved (the report closes them after)."""
    import matplotlib.pyplot as plt

    drawn = {}
    original = plots._save

    def keep(store, figure, name, tight=True):
        panel = figure.axes[0]
        drawn[name] = SimpleNamespace(
            lines=[line for axes in figure.axes for line in axes.lines],
            ylim=panel.get_ylim(),
            offsets=[tuple(point) for c in panel.collections for point in c.get_offsets()],
            texts=[t.get_text() for t in panel.texts],
            xlabel=panel.get_xlabel(),
            ylabel=panel.get_ylabel(),
        )
        return original(store, figure, name, tight)

    plots._save = keep
    try:
        summary_of(tmp_path, job, rows, run_info(job))
    finally:
        plots._save = original
        plt.close("all")
    return drawn


def test_plots_ring_disturbed_cells_start_latency_at_zero_and_do_not_join_categories(tmp_path):
    job = make_job(tmp_path, optimization={"optimization": ["fp32", "bf16"]})
    cells = expand(job).cells
    rows = [ok_row(cells[0], latency_s=2.0), ok_row(cells[1], latency_s=2.01, quality="disturbed: load")]
    figure = drawn_figures(tmp_path, job, rows)["optimization.png"]
    rings = [
        line for line in figure.lines if line.get_markeredgecolor() == "red" and line.get_markerfacecolor() == "none"
    ]
    assert len(rings) == 1  # the one disturbed cell
    assert figure.ylim[0] == 0
    assert all(line.get_linestyle() in ("None", "", " ") for line in figure.lines)  # points and whiskers, no line
    assert (tmp_path / "out" / "plots" / "optimization.png").stat().st_size > 0


def test_the_pareto_plot_is_per_sample_in_table_units_with_labelled_points(tmp_path):
    job = make_job(tmp_path)
    rows = [ok_row(c, latency_s=1.0, accuracy=0.5) for c in expand(job).cells]
    figure = drawn_figures(tmp_path, job, rows)["pareto_latency_accuracy.png"]
    assert sorted(x for x, _ in figure.offsets) == [1 / 8, 1 / 4, 1 / 2, 1.0]  # 1 s per batch of 1, 2, 4, 8
    assert {y for _, y in figure.offsets} == {50.0}
    assert "cpu b8 224px s200" in figure.texts
    assert figure.xlabel == "latency per sample (s)" and figure.ylabel == "accuracy (%)"


# --- report refuses what it would misdescribe -----------------------------------------------------


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fuyu_ray.report", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_report_on_an_empty_or_missing_folder_is_one_line_and_exit_2_writing_nothing(tmp_path):
    missing = tmp_path / "nope"
    result = run_report("--out", str(missing))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no cells here" in result.stderr
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_report("--out", str(empty))
    assert result.returncode == 2 and list(empty.iterdir()) == []


def test_report_refuses_a_job_whose_cells_are_not_on_disk_and_defaults_to_the_stored_job(tmp_path):
    job = make_job(tmp_path)
    store = store_with(tmp_path, [ok_row(c) for c in expand(job).cells])
    report.write_report(store, job, expand(job), run_info(job, out=store.root))
    before = (tmp_path / "out" / "summary.md").read_text()
    other = make_job(tmp_path, name="other", batch={"batch_size": [3, 5]})
    result = run_report("--job", other.source_path, "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "none of its cells are in" in result.stderr and "'honest'" in result.stderr
    assert (tmp_path / "out" / "summary.md").read_text() == before
    shutil.rmtree(tmp_path / "out" / "plots")  # as the GPU check leaves its --out: cell files, no plots/
    result = run_report("--out", str(tmp_path / "out"))  # no --job: the job stored in run.json
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "plots").is_dir()
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# honest:")


# --- compare: a disturbed pair is no verdict ----------------------------------------------------


def compare_runs(tmp_path, base_quality: str, new_quality: str) -> tuple[str, str]:
    job = make_job(tmp_path, batch={"batch_size": [1]})
    (cell,) = expand(job).cells
    base = store_with(tmp_path, [ok_row(cell, latency_s=1.0, quality=base_quality)], "base")
    new = store_with(tmp_path, [ok_row(cell, latency_s=0.05, quality=new_quality)], "new")
    for store in (base, new):
        store.write_samples([cell.cell_id])
    return base.root, new.root


def test_a_pair_disturbed_on_either_side_is_inconclusive_and_trips_no_regression_check(tmp_path, capsys):
    base, new = compare_runs(tmp_path, "disturbed: other processes took 60% of the CPU", "clean")
    # BASE 20 x slower than NEW and NEW slower as well must not count, whichever way
    assert cmp.main([new, base, "--fail-on-regression", "--out", str(tmp_path / "c1")]) == 0
    text = capsys.readouterr().out
    assert "0 slower, 0 faster" in text and "inconclusive" in text
    assert text.index("## Warnings") < text.index("## Changes")
    assert cmp.main([new, base, "--fail-on-regression", "--judge-disturbed", "--out", str(tmp_path / "c2")]) == 1
    assert "1 slower" in capsys.readouterr().out


def test_a_clean_pair_keeps_its_verdict(tmp_path, capsys):
    base, new = compare_runs(tmp_path, "clean", "clean")
    assert cmp.main([new, base, "--fail-on-regression", "--out", str(tmp_path / "c")]) == 1
    assert "1 slower" in capsys.readouterr().out


# --- dry run: unchecked is not resolved ------------------------------------------------------------


def test_sources_of_a_kind_without_workers_are_listed_as_unchecked(tmp_path):
    from fuyu_ray.driver.dryrun import unchecked_sources

    job = make_job(tmp_path, model="adept/fuyu-8b", device={"device": ["cuda"]})
    grid = expand(job)
    reasons = {variant: "no GPU in this cluster" for variant in grid.by_variant()}
    lines = unchecked_sources(job, grid, reasons, checked=set())
    assert lines == [
        "unchecked on a cuda worker: model 'adept/fuyu-8b': no GPU in this cluster",
    ]
    built_in = make_job(tmp_path, name="b", device={"device": ["cuda"]})
    assert unchecked_sources(built_in, expand(built_in), reasons, checked=set()) == []


# --- bad input, all of it, each named -------------------------------------------------------------


def test_a_scalar_sweep_says_to_give_a_list():
    raw = {"name": "x", "model": "tiny", "base": {**BASE, "optimization": "fp32"}, "sweeps": {"b": {"batch_size": 8}}}
    with pytest.raises(JobError, match=r"sweeps\.b\.batch_size: must be a list of values, got 8; write \[8\]"):
        parse_job(raw, "job.yaml")


def test_a_near_miss_of_a_built_in_model_asks_did_you_mean():
    raw = {"name": "x", "model": "tinyy", "base": {**BASE, "optimization": "fp32"}, "sweeps": {"b": {"seq_len": [1]}}}
    with pytest.raises(JobError, match="did you mean 'tiny'"):
        parse_job(raw, "job.yaml")
    assert parse_job({**raw, "model": "adept/fuyu-8b"}, "job.yaml").model == "adept/fuyu-8b"


def test_every_broken_part_of_a_job_is_named_at_once():
    raw = {
        "name": "x",
        "model": "tinyy",
        "limit": 0,
        "base": {**BASE, "optimization": "fp99"},
        "sweeps": {"b": {"batch_size": 8}},
    }
    with pytest.raises(JobError) as error:
        parse_job(raw, "job.yaml")
    lines = error.value.lines
    assert [line.split(": ")[1] for line in lines] == ["model", "limit", "base.optimization", "sweeps.b.batch_size"]
    assert all(line.startswith("job.yaml: ") for line in lines)


def test_the_driver_prints_each_problem_on_a_line_of_its_own(tmp_path):
    job = tmp_path / "bad.yaml"
    job.write_text("name: x\nmodel: tinyy\nlimit: 0\nbase: {}\nsweeps: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "fuyu_ray.grid", "--job", str(job), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and not (tmp_path / "o").exists()
    lines = result.stderr.splitlines()
    assert len(lines) >= 3 and all(line.startswith(f"fuyu_ray: {job}: ") for line in lines)


def test_an_interrupted_runs_harness_line_counts_the_cells_it_wrote_not_those_it_planned():
    line = report.harness_line(
        {"wall_s": 10.6, "workers": 0, "cells_run": 2, "cells_planned": 6, "cells_reused": 0, "interrupted": True}
    )
    assert "2 of 6 planned cell(s) run" in line and "interrupted" in line and "0 worker" not in line
