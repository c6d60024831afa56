"""python -m fuyu_ray.compare: a known slowdown is found, identical settings show no change, a known
accuracy loss is found and sized, cells match across hardware, and bad input is one line and exit 2.

Result folders are real, written through ResultStore.write_cell with a cells.parquet and samples.parquet
beside them, as the grid leaves them (the report's plots and summary are not needed). The verdicts are
judged on recorded per-batch figures and per-sample scores made up for the case, so that no verdict
depends on how steady the machine was between two runs; cells measured by the trained tiny model, and
one grid run of the stand-in against a run ten times slower, check that real runs record what compare reads.
"""

from __future__ import annotations

import functools
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_grid, write_job

from fuyu_ray.bench import energy
from fuyu_ray.bench import runner as runner_module
from fuyu_ray.bench.energy import EnergyMeter
from fuyu_ray.bench.runner import CellResult, CellRunner
from fuyu_ray.bench.standin import StandInRunner, parse_behaviour
from fuyu_ray.driver import compare as compare_command
from fuyu_ray.job.cells import Cell
from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride
from fuyu_ray.presentation import compare as cmp
from fuyu_ray.storage.records import cell_batch, outcome_row, sample_table
from fuyu_ray.storage.store import ResultStore

# The stand-in's model name carries its sleep, so runs at two speeds match on everything else.
WITHOUT_MODEL = "device,dataset,batch_size,image_size,seq_len,optimization"


def standin_cell(sleep: float, batches: int = 20, device: str = "cpu", batch_size: int = 1) -> Cell:
    return Cell(
        f"standin:sleep={sleep},batches={batches}",
        "random",
        1,
        Point(device, "textvqa", batch_size, 224, 200, "fp32"),
        DatasetSource(),
        TaskOverride(),
    )


def write_folder(out: Path, results: list[CellResult]) -> Path:
    """What the grid leaves in --out: cells/ and samples/ per cell, cells.parquet and samples.parquet."""
    store = ResultStore.at(str(out))
    store.ensure_dirs()
    for result in results:
        store.write_cell(result.record, result.samples)
    store.write_table("cells.parquet", pa.Table.from_batches([r.record for r in results]))
    store.write_table("samples.parquet", pa.concat_tables([r.samples for r in results]))
    return out


def jittered(median_s: float, batches: int = 20, spread: float = 0.02, seed: int = 0) -> list[float]:
    """Per-batch latencies around `median_s`, each off by up to `spread` of it: a steady machine's figures."""
    rng = random.Random(seed)
    return [median_s * (1 + rng.uniform(-spread, spread)) for _ in range(batches)]


def recorded_cell(cell: Cell, latencies: list[float]) -> CellResult:
    """A finished cell's record with these per-batch latencies; prefill a quarter of each batch, decode a
    fortieth per token, as a cell of 40 generated tokens records them."""
    row = {
        **cell.settings(),
        "status": "ok",
        "error": None,
        "n_batches": len(latencies),
        "latency_n": len(latencies),
        "latency_s": statistics.median(latencies),
        "latency_batches_s": latencies,
        "prefill_batches_s": [value / 4 for value in latencies],
        "decode_batches_s_per_token": [value / 40 for value in latencies],
    }
    return CellResult(cell_batch(row), sample_table([]))


def scored_cell(cell: Cell, right: set[int]) -> CellResult:
    """A finished cell whose samples 0 .. limit-1 were scored right (1) where in `right`, wrong (0) elsewhere."""
    samples = [
        {"cell_id": cell.cell_id, "dataset": cell.point.dataset, "sample_id": str(i), "score": float(i in right)}
        for i in range(cell.limit)
    ]
    row = {**cell.settings(), "status": "ok", "error": None, "accuracy": len(right) / cell.limit}
    return CellResult(cell_batch(row), sample_table(samples))


def recorded_run(out: Path, *cells: tuple[Cell, float]) -> Path:
    """A result folder of cells, each with 20 batches jittered around its median latency (its seed the
    folder's name, so that two folders never share their noise)."""
    seed = sum(out.name.encode())
    return write_folder(
        out, [recorded_cell(cell, jittered(median, seed=seed + i)) for i, (cell, median) in enumerate(cells)]
    )


def standin_run(out: Path, *cells: Cell) -> Path:
    runners: dict = {}
    results = []
    for cell in cells:
        runner = runners.setdefault(cell.variant, StandInRunner(cell.variant))
        results.append(runner.run(cell))
    assert all(r.record.column("status")[0].as_py() == "ok" for r in results)
    return write_folder(out, results)


def run_compare(capsys, *args: str) -> tuple[int, str, str]:
    code = compare_command.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(out: Path) -> list[dict]:
    return pq.read_table(out / "compare.parquet").to_pylist()


# --- the stand-in records what compare needs -----------------------------------------------------


def test_standin_records_every_timed_batch_with_real_jitter():
    assert parse_behaviour("standin:sleep=0.05,batches=20").batches == 20
    assert parse_behaviour("standin:sleep=0.05").batches == 1
    with pytest.raises(ValueError):
        parse_behaviour("standin:batches=0")
    cell = standin_cell(0.01, batches=12)
    row = StandInRunner(cell.variant).run(cell).record.to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    latencies = row["latency_batches_s"]
    assert len(latencies) == row["latency_n"] == 12
    assert all(value >= 0.01 for value in latencies)
    assert len(set(latencies)) > 1  # real sleeps: no two alike to the nanosecond
    assert row["latency_s"] == pytest.approx(statistics.median(latencies))


def test_setting_keys_are_the_cells_settings():
    settings = set(standin_cell(0.01).settings())
    assert set(cmp.SETTING_KEYS) == settings - {"cell_id", "image_width", "image_height"}


# --- acceptance: a known slowdown, and no change where there is none ------------------------------


@pytest.fixture(scope="module")
def speed_runs(tmp_path_factory):
    """Three runs of one cell: 50 ms a batch, 60 ms a batch, and 50 ms again; each batch within 2%."""
    root = tmp_path_factory.mktemp("speed")
    return {
        "base": recorded_run(root / "base", (standin_cell(0.05), 0.05)),
        "slower": recorded_run(root / "slower", (standin_cell(0.06), 0.06)),
        "again": recorded_run(root / "again", (standin_cell(0.05), 0.05)),
    }


def recorded_latencies(folder: Path) -> list[float]:
    [row] = pq.read_table(folder / "cells.parquet", columns=["latency_batches_s"]).to_pylist()
    return row["latency_batches_s"]


def test_a_20_percent_slowdown_is_found(speed_runs, capsys):
    code, out, err = run_compare(capsys, speed_runs["base"], speed_runs["slower"], "--match", WITHOUT_MODEL)
    assert code == 0, err
    [row] = rows(speed_runs["slower"] / "compare")
    medians = [statistics.median(recorded_latencies(speed_runs[run])) for run in ("base", "slower")]
    assert row["latency_ratio"] == pytest.approx(medians[1] / medians[0]) == pytest.approx(1.20, abs=0.03)
    assert 1.0 < row["latency_ci_low"] <= row["latency_ratio"] <= row["latency_ci_high"] < 1.25
    assert row["latency_n_base"] == row["latency_n_new"] == 20
    assert row["speed_verdict"] == row["latency_verdict"] == "slower"
    assert row["prefill_verdict"] == row["decode_verdict"] == "slower"
    assert row["accuracy_verdict"] == "n/a" and row["regression"] is True
    assert f"{(row['latency_ratio'] - 1) * 100:+.1f}% [" in out and "**slower**" in out
    assert (speed_runs["slower"] / "compare" / "compare.png").stat().st_size > 1000
    assert (speed_runs["slower"] / "compare" / "compare.md").read_text() in out

    code, _, _ = run_compare(
        capsys,
        speed_runs["base"],
        speed_runs["slower"],
        "--match",
        WITHOUT_MODEL,
        "--fail-on-regression",
        "--out",
        speed_runs["slower"] / "gate",
    )
    assert code == 1
    # The other way round it is a speed-up, and not a regression.
    code, _, _ = run_compare(
        capsys,
        speed_runs["slower"],
        speed_runs["base"],
        "--match",
        WITHOUT_MODEL,
        "--fail-on-regression",
        "--out",
        speed_runs["base"] / "reverse",
    )
    assert code == 0
    assert rows(speed_runs["base"] / "reverse")[0]["speed_verdict"] == "faster"


def test_a_slowdown_under_the_threshold_is_no_clear_change(speed_runs, capsys):
    code, _, _ = run_compare(
        capsys,
        speed_runs["base"],
        speed_runs["slower"],
        "--match",
        WITHOUT_MODEL,
        "--threshold",
        "25",
        "--out",
        speed_runs["slower"] / "t25",
    )
    assert code == 0
    row = rows(speed_runs["slower"] / "t25")[0]
    assert row["latency_ci_low"] > 1 and row["speed_verdict"] == "no clear change"


def test_two_runs_of_the_same_settings_show_no_change(speed_runs, capsys):
    code, out, err = run_compare(capsys, speed_runs["base"], speed_runs["again"], "--fail-on-regression")
    assert code == 0, err  # same settings, same cell: matched on all of them
    [row] = rows(speed_runs["again"] / "compare")
    assert row["speed_verdict"] == "no clear change"
    assert abs(row["latency_ratio"] - 1) < 0.05


def test_a_steady_shift_under_the_threshold_counts_only_once_the_threshold_is_lowered(tmp_path, capsys):
    """3% slower on every batch, within 0.5% each: the interval excludes no change, the threshold decides."""
    cell = standin_cell(0.05)
    base = write_folder(tmp_path / "base", [recorded_cell(cell, jittered(0.05, spread=0.005, seed=1))])
    new = write_folder(tmp_path / "new", [recorded_cell(cell, jittered(0.0515, spread=0.005, seed=2))])
    code, _, err = run_compare(capsys, base, new, "--fail-on-regression")
    assert code == 0, err
    [row] = rows(new / "compare")
    assert row["latency_ci_low"] > 1 and row["latency_change_pct"] < 5
    assert row["latency_verdict"] == "no clear change"
    code, _, _ = run_compare(capsys, base, new, "--fail-on-regression", "--threshold", "2", "--out", tmp_path / "t2")
    assert code == 1 and rows(tmp_path / "t2")[0]["latency_verdict"] == "slower"


# --- acceptance: a known accuracy loss, found and sized -------------------------------------------


class BatchMeter(EnergyMeter):
    """A counter that gains 10 J with every batch timed, and nothing in between: every energy figure the
    runner derives from it is exact, however fast or busy the machine."""

    method = "test-batches"
    batches = 0  # timed batches run so far, in this process

    def read_joules(self) -> float:
        return 10.0 * BatchMeter.batches


class MeteredRunner(CellRunner):
    def _meter(self):
        return BatchMeter()


@pytest.fixture(scope="module")
def tiny_scienceqa(tmp_path_factory):
    """A real run of the trained tiny model on ScienceQA (48 samples), and one small cell whose energy
    window is repeated, both through the real CellRunner. The energy window's clock counts timed batches
    too, so the window closes after a set number of batches rather than of seconds."""
    timed_batch = runner_module.time_batch

    def counted(*args, **kwargs):
        BatchMeter.batches += 1
        return timed_batch(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner_module, "time_batch", counted)
        patch.setattr(
            energy,
            "run_until_min_window",
            functools.partial(energy.run_until_min_window, clock=lambda: float(BatchMeter.batches)),
        )
        cell = Cell(
            "tiny", "pretrained", 48, Point("cpu", "scienceqa", 16, 224, 200, "fp32"), DatasetSource(), TaskOverride()
        )
        runner = MeteredRunner(cell.variant, min_energy_window_s=0.0)
        result = runner.run(cell)
        runner.min_energy_window_s = 2.0  # two batches on the window's clock: two passes of one sample
        small = Cell(
            "tiny", "pretrained", 1, Point("cpu", "scienceqa", 1, 224, 200, "fp32"), DatasetSource(), TaskOverride()
        )
        repeated = runner.run(small)
    return tmp_path_factory.mktemp("tiny"), result, repeated


def test_the_runner_keeps_every_batch_and_every_energy_repeat(tiny_scienceqa):
    _, result, repeated = tiny_scienceqa
    row = result.record.to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    for column in ("latency_batches_s", "prefill_batches_s", "decode_batches_s_per_token"):
        assert len(row[column]) == row["n_batches"] == row["latency_n"] == 3, column
    assert sorted(row["latency_batches_s"])[1] == pytest.approx(row["latency_s"])
    # One pass of three batches in the big cell's window; two passes of one batch in the small cell's.
    assert row["energy_repeats"] == 1 and row["energy_repeats_j"] == [30.0]
    assert row["energy_j_per_batch"] == 10.0 and row["energy_j_per_sample"] == 10.0 / 16
    small = repeated.record.to_pylist()[0]
    assert small["energy_repeats"] == 2 and small["energy_repeats_j"] == [10.0, 10.0]
    assert small["latency_n"] == 2 and small["energy_j_per_batch"] == 10.0


def corrupt(result: CellResult, fraction: float, seed: int = 0) -> tuple[CellResult, float]:
    """The same cell with a wrong letter on `fraction` of its samples, drawn among those it got right."""
    samples = result.samples.to_pylist()
    right = [i for i, s in enumerate(samples) if s["score"] == 1.0]
    chosen = random.Random(seed).sample(right, round(fraction * len(samples)))
    letters = "ABCDEFGH"
    for i in chosen:
        sample = samples[i]
        sample["prediction"] = next(
            letter for letter in letters[: len(sample["choices"])] if letter != letters[sample["answer_index"]]
        )
        sample["generation"] = sample["prediction"]
        sample["score"] = 0.0
    row = result.record.to_pylist()[0]
    row["accuracy"] = sum(s["score"] for s in samples) / len(samples)
    return CellResult(cell_batch(row), sample_table(samples)), -len(chosen) / len(samples)


def test_a_quarter_of_answers_corrupted_is_found_and_sized(tiny_scienceqa, capsys):
    root, result, _ = tiny_scienceqa
    base = write_folder(root / "fp32", [result])
    corrupted, expected = corrupt(result, 0.25)
    assert expected == -0.25
    new = write_folder(root / "fp32-corrupted", [corrupted])
    code, out, err = run_compare(capsys, base, new, "--fail-on-regression")
    assert code == 1, err
    [row] = rows(new / "compare")
    with capsys.disabled():
        print(
            f"\naccuracy: {row['accuracy_base']:.4f} -> {row['accuracy_new']:.4f}, difference "
            f"{row['accuracy_difference']:+.4f} "
            f"[{row['accuracy_ci_low']:+.4f}, {row['accuracy_ci_high']:+.4f}], McNemar "
            f"p={row['accuracy_p_value']:.2g}, "
            f"{row['accuracy_test']}"
        )
    assert row["accuracy_verdict"] == "worse"
    assert row["accuracy_difference"] == pytest.approx(expected)
    assert row["accuracy_ci_low"] <= expected <= row["accuracy_ci_high"] < 0
    assert row["accuracy_test"].startswith("exact McNemar (12 lost, 0 gained)")
    assert row["accuracy_p_value"] == pytest.approx(2 * 0.5**12)
    assert row["accuracy_n_base"] == 48
    assert "McNemar p=" in out and "**worse**" in out
    # The same samples against themselves: no change at all.
    code, _, _ = run_compare(capsys, base, base, "--out", root / "self")
    assert code == 0 and rows(root / "self")[0]["accuracy_verdict"] == "no clear change"
    assert rows(root / "self")[0]["accuracy_difference"] == 0.0


def scienceqa_cell(limit: int = 100) -> Cell:
    return Cell(
        "tiny", "pretrained", limit, Point("cpu", "scienceqa", 16, 224, 200, "fp32"), DatasetSource(), TaskOverride()
    )


def test_a_large_loss_on_few_discordant_answers_needs_mcnemar_too():
    """5 of 100 answers lost, none gained: 10% of BASE's accuracy, and the paired bootstrap's interval
    excludes 0, but five discordant pairs cannot make McNemar's p < 0.05 (it is 2 x 0.5^5)."""
    base = {str(i): float(i < 50) for i in range(100)}
    new = {**base, **{str(i): 0.0 for i in range(5)}}
    change = cmp.accuracy_change("scienceqa", base, new, 5.0)
    assert change.high < 0 and change.relative_pct == pytest.approx(-10.0)
    assert change.test == "exact McNemar (5 lost, 0 gained)" and change.p_value == pytest.approx(2 * 0.5**5)
    assert change.verdict == "no clear change"
    # A sixth lost answer brings p under 0.05: the loss counts.
    new["5"] = 0.0
    change = cmp.accuracy_change("scienceqa", base, new, 5.0)
    assert change.p_value == pytest.approx(2 * 0.5**6) and change.verdict == "worse"


def test_the_threshold_decides_a_significant_accuracy_change(tmp_path, capsys):
    """90 -> 80 right of 100, ten answers lost: certain (McNemar p = 0.002), and 11% of BASE's accuracy."""
    cell = scienceqa_cell()
    base = write_folder(tmp_path / "base", [scored_cell(cell, set(range(90)))])
    new = write_folder(tmp_path / "new", [scored_cell(cell, set(range(10, 90)))])
    code, _, err = run_compare(capsys, base, new, "--fail-on-regression")
    assert code == 1, err
    [row] = rows(new / "compare")
    assert row["accuracy_verdict"] == "worse"
    assert row["accuracy_change_pct"] == pytest.approx(-100 / 9)
    assert row["accuracy_p_value"] < 0.01 and row["accuracy_ci_high"] < 0
    code, _, err = run_compare(
        capsys, base, new, "--fail-on-regression", "--threshold", "12", "--out", tmp_path / "t12"
    )
    assert code == 0, err
    [row] = rows(tmp_path / "t12")
    assert row["accuracy_p_value"] < 0.01 and row["accuracy_ci_high"] < 0
    assert row["accuracy_verdict"] == "no clear change" and row["regression"] is False
    # The other way round, a gain of 12.5% of BASE's 80 counts under the same threshold.
    code, _, _ = run_compare(capsys, new, base, "--threshold", "12", "--out", tmp_path / "gain")
    assert code == 0 and rows(tmp_path / "gain")[0]["accuracy_verdict"] == "better"


def test_vqa_and_cider_scores_use_the_paired_bootstrap():
    rng = random.Random(1)
    base = {str(i): rng.choice([0.0, 0.3, 0.6, 0.9, 1.0]) for i in range(80)}
    worse = dict(base)
    for key in rng.sample(sorted(k for k, v in base.items() if v > 0), 20):
        worse[key] = 0.0
    change = cmp.accuracy_change("textvqa", base, worse, 5.0)
    expected = (sum(worse.values()) - sum(base.values())) / len(base)
    assert change.test == "paired bootstrap" and change.p_value is None
    assert change.estimate == pytest.approx(expected)
    assert change.low <= expected <= change.high < 0
    assert change.verdict == "worse"
    assert cmp.accuracy_change("coco", base, dict(base), 5.0).verdict == "no clear change"
    # Samples scored on one side only are left out, and said so.
    partial = cmp.accuracy_change("textvqa", base, {k: v for k, v in base.items() if int(k) < 60}, 5.0)
    assert partial.n_base == 60 and "20 samples scored in one run only" in partial.note


def test_energy_ratio_bootstraps_over_repeats():
    def cell(joules: list[float] | None, per_sample: float | None = None) -> dict:
        return {"n_batches": 2, "batch_size": 4, "energy_repeats_j": joules, "energy_j_per_sample": per_sample}

    more = cmp.energy_change(cell([80.0, 81.0, 79.0, 80.5]), cell([96.0, 97.0, 95.5, 96.5]), 5.0)
    assert more.estimate == pytest.approx(1.2, abs=0.01) and more.low > 1 and more.verdict == "worse"
    assert more.base == pytest.approx(80.125 / 8)
    single = cmp.energy_change(cell([80.0]), cell([96.0]), 5.0)
    assert single.estimate == pytest.approx(1.2) and single.low is None and single.verdict == "no clear change"
    assert "no interval" in single.note or "without interval" in single.note
    none = cmp.energy_change({"energy_note": "no counter"}, {"energy_note": "no counter"}, 5.0)
    assert none.verdict == "n/a" and "no counter" in none.note


# --- matching ------------------------------------------------------------------------------------


def test_cells_match_across_hardware_with_match(tmp_path, capsys):
    cpu = recorded_run(tmp_path / "cpu", (standin_cell(0.02, batches=10, device="cpu"), 0.02))
    gpu = recorded_run(tmp_path / "gpu", (standin_cell(0.02, batches=10, device="cuda"), 0.02))
    code, _, err = run_compare(capsys, cpu, gpu)
    assert code == 2 and err.startswith("fuyu_ray: no common cells") and err.count("\n") == 1
    assert not (gpu / "compare").exists()
    code, out, err = run_compare(
        capsys, cpu, gpu, "--match", "model,dataset,batch_size,image_size,seq_len,optimization"
    )
    assert code == 0, err
    [row] = rows(gpu / "compare")
    assert row["side"] == "both" and (row["base_device"], row["new_device"]) == ("cpu", "cuda")
    assert row["latency_verdict"] == "no clear change"
    assert "device: cpu -> cuda" in out


def test_cells_on_one_side_are_listed(tmp_path, capsys):
    base = recorded_run(
        tmp_path / "base", (standin_cell(0.01, 5, batch_size=1), 0.01), (standin_cell(0.01, 5, batch_size=2), 0.01)
    )
    new = recorded_run(
        tmp_path / "new", (standin_cell(0.01, 5, batch_size=1), 0.01), (standin_cell(0.01, 5, batch_size=4), 0.01)
    )
    code, out, err = run_compare(capsys, base, new)
    assert code == 0, err
    sides = {(r["side"], r["base_batch_size"] or r["new_batch_size"]) for r in rows(new / "compare")}
    assert sides == {("both", "1"), ("base only", "2"), ("new only", "4")}
    assert "## Only in BASE" in out and "## Only in NEW" in out


def test_an_ambiguous_match_is_bad_input(tmp_path, capsys):
    base = recorded_run(
        tmp_path / "base", (standin_cell(0.01, 2, batch_size=1), 0.01), (standin_cell(0.01, 2, batch_size=2), 0.01)
    )
    code, _, err = run_compare(capsys, base, base, "--match", "dataset")
    assert code == 2 and "more than one cell of BASE" in err and err.count("\n") == 1


def test_a_cell_broken_in_new_is_listed_and_a_regression(tmp_path, capsys):
    cell = standin_cell(0.01, 5)
    base = recorded_run(tmp_path / "base", (cell, 0.01))
    failed = CellResult(
        cell_batch(outcome_row({**cell.settings(), "model_label": "x"}, "oom", "CUDA out of memory")), sample_table([])
    )
    new = write_folder(tmp_path / "new", [failed])
    code, out, _ = run_compare(capsys, base, new, "--fail-on-regression")
    assert code == 1
    assert "## Not compared" in out and "NEW oom: CUDA out of memory" in out
    assert rows(new / "compare")[0]["regression"] is True


def with_quality(path: Path, quality: str | None) -> None:
    """cells.parquet with a measurement_quality column of this value, or without that column at all."""
    table = pq.read_table(path)
    if "measurement_quality" in table.column_names:
        table = table.drop_columns(["measurement_quality"])
    if quality is not None:
        table = table.append_column("measurement_quality", pa.array([quality] * table.num_rows, pa.string()))
    pq.write_table(table, path)


def test_measurement_quality_warns_when_present_and_not_clean(tmp_path, capsys):
    base = recorded_run(tmp_path / "base", (standin_cell(0.01, 5), 0.01))
    new = recorded_run(tmp_path / "new", (standin_cell(0.01, 5), 0.01))
    with_quality(base / "cells.parquet", None)
    with_quality(new / "cells.parquet", None)
    code, out, _ = run_compare(capsys, base, new)  # no such column on either side: no warning
    assert code == 0 and "## Warnings" not in out and rows(new / "compare")[0]["warnings"] is None
    with_quality(new / "cells.parquet", "disturbed: other processes took 30% of the CPU")
    code, out, _ = run_compare(capsys, base, new)
    assert code == 0
    assert (
        rows(new / "compare")[0]["warnings"]
        == "NEW measurement_quality: disturbed: other processes took 30% of the CPU"
    )
    assert "## Warnings" in out and "(see warnings)" in out
    with_quality(new / "cells.parquet", "clean")
    run_compare(capsys, base, new)
    assert rows(new / "compare")[0]["warnings"] is None


def test_uris_and_folders_without_aggregates(tmp_path, capsys):
    base = recorded_run(tmp_path / "base", (standin_cell(0.01, 5), 0.01))
    new = recorded_run(tmp_path / "new", (standin_cell(0.01, 5), 0.01))
    (new / "cells.parquet").unlink()  # a run stopped before its report: the cells/ files are read
    (new / "samples.parquet").unlink()
    code, _, err = run_compare(capsys, f"file://{base}", f"file://{new}", "--out", f"file://{tmp_path}/out")
    assert code == 0, err
    assert rows(tmp_path / "out")[0]["side"] == "both"


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "{run}"], "BASE {missing}: no such folder"),
        (["{run}", "{empty}"], "NEW {empty}: no cells here"),
        (["{run}", "{run}", "--match", "dataset,gpu"], "--match: unknown key 'gpu'"),
        (["{run}", "{run}", "--match", ","], "--match needs at least one key"),
        (["{run}", "{run}", "--threshold", "-1"], "--threshold must be a percentage >= 0"),
        (["{run}", "{run}", "--threshold", "five"], "argument --threshold: invalid float value"),
        (["{run}"], "the following arguments are required: NEW"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    run = recorded_run(tmp_path / "run", (standin_cell(0.01, 2), 0.01))
    (tmp_path / "empty").mkdir()
    paths = {"run": run, "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    before = sorted(p for p in tmp_path.rglob("*"))
    code, out, err = run_compare(capsys, *[a.format(**paths) for a in args])
    assert code == 2
    assert err.startswith("fuyu_ray: ") and err.count("\n") == 1, err
    assert message.format(**paths) in err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fuyu_ray.compare", str(tmp_path / "nope"), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == f"fuyu_ray: BASE {tmp_path / 'nope'}: no such folder\n"
    assert list(tmp_path.iterdir()) == []


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_grid_run_against_a_slower_one(tmp_path):
    """BASE from the real driver (Ray, actor, report); NEW the same cell measured in-process with ten times
    the sleep, compared from the command line: a change far above any machine's noise."""
    job = write_job(
        tmp_path,
        "compare-base",
        "standin:sleep=0.01,batches=20",
        "  batch: {batch_size: [1]}\n",
        "weights: random\nlimit: 1\n",
    )
    result = run_grid("--job", str(job), "--out", str(tmp_path / "base"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    standin_run(tmp_path / "new", standin_cell(0.1))
    compared = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuyu_ray.compare",
            str(tmp_path / "base"),
            str(tmp_path / "new"),
            "--match",
            WITHOUT_MODEL,
            "--fail-on-regression",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compared.returncode == 1, compared.stderr
    [row] = rows(tmp_path / "new" / "compare")
    assert row["latency_n_base"] == row["latency_n_new"] == 20 and row["latency_verdict"] == "slower"
    assert 5 < row["latency_ci_low"] <= row["latency_ratio"] <= row["latency_ci_high"] < 12


# --- the verdict's edges, on figures built for them -------------------------------------------------


def test_one_batch_on_a_side_gives_a_ratio_but_no_interval_and_no_verdict():
    change = cmp.ratio_change("latency", [1.0], [2.0, 2.1, 1.9], threshold_pct=5)
    assert change.estimate == pytest.approx(2.0) and change.low is None and change.verdict == cmp.NO_CHANGE
    both = cmp.ratio_change("latency", [1.0, 1.01, 0.99], [2.0, 2.1, 1.9], threshold_pct=5)
    assert both.low is not None and both.verdict == "slower"


def test_a_cell_broken_in_both_runs_is_no_regression_but_ok_then_broken_is(tmp_path):
    cell = standin_cell(0.01)
    broken = outcome_row(cell.settings(), "failed", "RuntimeError: boom")
    fine = outcome_row(cell.settings(), "ok", None)
    runs = {}
    for name, row in (("broken", broken), ("fine", fine), ("again", broken)):
        runs[name] = write_folder(tmp_path / name, [CellResult(cell_batch(row), sample_table([]))])
    both_broken = cmp.compare(
        cmp.open_run(str(runs["broken"]), "BASE"), cmp.open_run(str(runs["again"]), "NEW"), cmp.SETTING_KEYS, 5.0
    )
    assert not both_broken.regressed
    newly = cmp.compare(
        cmp.open_run(str(runs["fine"]), "BASE"), cmp.open_run(str(runs["broken"]), "NEW"), cmp.SETTING_KEYS, 5.0
    )
    assert newly.regressed and newly.matched[0].regression_by_status
