"""How a cell's timed batches and its energy window become the record's latency, throughput and energy columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fuyu_ray.bench.cell_columns import energy_columns, latency_columns
from fuyu_ray.bench.data import LoadedSamples
from fuyu_ray.bench.energy import NoEnergyMeter, RaplEnergyMeter, WindowResult, run_until_min_window
from fuyu_ray.bench.measure import BatchTiming
from fuyu_ray.bench.prompts import TaskSettings, build_prompt
from fuyu_ray.bench.workload import Batch, Workload
from fuyu_ray.job.spec import ImageSize, TaskOverride
from fuyu_ray.tasks.base import Sample

BATCH = 4


def timing(total_s: float, prefill_s: float | None, per_token_s: float | None, steps: int) -> BatchTiming:
    return BatchTiming(total_s, prefill_s, per_token_s, steps)


TIMINGS = [  # five batches of four rows; the last is slow, as a straggler is
    timing(0.10, 0.04, 0.010, 7),
    timing(0.20, 0.05, 0.020, 8),
    timing(0.30, 0.06, 0.030, 9),
    timing(0.40, 0.07, 0.040, 8),
    timing(1.00, 0.08, 0.050, 8),
]


def test_latency_is_per_batch_median_p90_mean_and_n():
    columns = latency_columns(TIMINGS, BATCH, first_call_s=2.5, warmup_s=3.0, warmup_batches=2)
    assert columns["latency_s"] == pytest.approx(0.30)  # the median, not the mean the straggler pulls up
    assert columns["latency_p90_s"] == pytest.approx(1.00)  # nearest rank of five
    assert columns["latency_mean_s"] == pytest.approx(0.40)
    assert columns["latency_n"] == 5
    assert columns["prefill_s"] == pytest.approx(0.06) and columns["prefill_p90_s"] == pytest.approx(0.08)
    assert columns["decode_s_per_token"] == pytest.approx(0.030) and columns["decode_p90_s_per_token"] == pytest.approx(
        0.050
    )
    assert (columns["first_call_s"], columns["warmup_s"], columns["warmup_batches"]) == (2.5, 3.0, 2)


def test_throughput_is_rows_and_tokens_over_the_busy_time():
    columns = latency_columns(TIMINGS, BATCH, first_call_s=None, warmup_s=None, warmup_batches=1)
    busy = 0.10 + 0.20 + 0.30 + 0.40 + 1.00
    assert columns["samples_per_s"] == pytest.approx(5 * BATCH / busy)
    assert columns["tokens_per_s"] == pytest.approx((7 + 8 + 9 + 8 + 8) * BATCH / busy)


def test_no_timed_batch_gives_no_figures_rather_than_a_division_by_zero():
    columns = latency_columns([], BATCH, None, None, 0)
    assert columns["latency_s"] is None and columns["latency_n"] == 0
    assert columns["samples_per_s"] is None and columns["tokens_per_s"] is None


def test_energy_is_the_window_shared_out_over_its_batches_and_rows():
    window = WindowResult(joules=120.0, seconds=3.0, repeats=2, note=None)
    meter = NoEnergyMeter("unused here")  # only its method name is recorded
    columns = energy_columns(window, meter, idle_w=10.0, n_batches=6, batch_size=BATCH)
    assert columns["energy_j_per_batch"] == pytest.approx(20.0)
    assert columns["energy_j_per_sample"] == pytest.approx(5.0)
    # above idle: (120 J - 10 W x 3 s) over 6 batches, then over 4 rows
    assert columns["energy_above_idle_j_per_batch"] == pytest.approx(15.0)
    assert columns["energy_above_idle_j_per_sample"] == pytest.approx(3.75)
    assert (columns["energy_window_s"], columns["energy_repeats"], columns["idle_power_w"]) == (3.0, 2, 10.0)
    assert columns["energy_method"] == "none" and columns["energy_note"] is None


def test_no_idle_power_gives_no_above_idle_figures():
    columns = energy_columns(
        WindowResult(60.0, 2.0, 1, None), NoEnergyMeter("x"), idle_w=None, n_batches=3, batch_size=2
    )
    assert columns["energy_j_per_sample"] == pytest.approx(10.0)
    assert "energy_above_idle_j_per_batch" not in columns and "energy_above_idle_j_per_sample" not in columns


def test_an_unread_counter_gives_no_energy_and_its_reason():
    meter = NoEnergyMeter("no counter on this device")
    columns = energy_columns(
        WindowResult(None, 2.0, 1, meter.unavailable_reason), meter, idle_w=None, n_batches=3, batch_size=2
    )
    assert columns["energy_note"] == "no counter on this device"
    assert not any(key.startswith("energy_j") or key.startswith("energy_above") for key in columns)


def test_a_window_extended_by_repeats_is_shared_out_over_every_batch_it_timed(tmp_path: Path):
    """The runner hands energy_columns the batches of every repeat: a cell's two batches, repeated until the
    counter window reaches its minimum, each draw the same energy on a real RAPL meter over a fake powercap tree."""
    zone = tmp_path / "powercap" / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("1000000000\n")
    (zone / "energy_uj").write_text("0\n")
    meter = RaplEnergyMeter(root=str(tmp_path / "powercap"))
    now = [0.0]
    timings: list[BatchTiming] = []

    def timed_pass():  # two batches of 0.25 s at 40 W: 10 J each
        for _ in range(2):
            now[0] += 0.25
            energy_uj = int((zone / "energy_uj").read_text()) + 10_000_000
            (zone / "energy_uj").write_text(f"{energy_uj}\n")
            timings.append(timing(0.25, 0.05, 0.01, 5))

    window = run_until_min_window(timed_pass, meter, min_seconds=1.0, clock=lambda: now[0])
    assert window.repeats == 2 and len(timings) == 4
    columns = energy_columns(window, meter, idle_w=8.0, n_batches=len(timings), batch_size=2)
    assert columns["energy_method"] == "rapl-powercap"
    assert columns["energy_j_per_batch"] == pytest.approx(10.0)
    assert columns["energy_j_per_sample"] == pytest.approx(5.0)
    assert columns["energy_above_idle_j_per_batch"] == pytest.approx(10.0 - 8.0 * 0.25)
    latency = latency_columns(timings, 2, None, None, 1)
    assert latency["latency_n"] == 4 and latency["samples_per_s"] == pytest.approx(8.0)


def test_the_record_counts_the_prompts_that_seq_len_cut():
    """Four ScienceQA prompts whose contexts differ in length, capped at the length of the one with a
    two-word context: the two with longer contexts are cut, and the record says two."""
    settings = TaskSettings.for_task("scienceqa", TaskOverride())
    image = Image.new("RGB", (8, 8))
    samples = [
        Sample(f"s{n}", image, question="Which colour is the shape?", hint="word " * n, choices=("red", "blue"))
        for n in (0, 30, 2, 40)
    ]

    def words(text: str) -> int:  # a token counter whose counts are easy to follow: one token per word
        return len(text.split())

    seq_len = build_prompt(settings, samples[2], 10_000, words).text_tokens
    prompts = [build_prompt(settings, sample, seq_len, words) for sample in samples]
    assert [prompt.truncated for prompt in prompts] == [False, True, False, True]
    batches = [Batch({}, [0, 1], seq_len), Batch({}, [2, 3], seq_len)]
    data = LoadedSamples(samples, [], "four samples")
    columns = Workload(settings, data, prompts, batches, False, None).columns(None, ImageSize(224, 224))
    assert columns["truncated_prompts"] == 2
    assert columns["prompt_tokens_mean"] == pytest.approx(sum(p.text_tokens for p in prompts) / 4)
    assert (columns["n_samples"], columns["n_batches"], columns["padded_rows"]) == (4, 2, 0)
