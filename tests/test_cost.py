"""Cost per 1,000 answers and the fitted cost model: the arithmetic by hand, missing parts, and fits on
figures whose law is known."""

from __future__ import annotations

import argparse

import numpy as np
import polars as pl
import pytest
from conftest import BASE_POINT

from fuyu_ray.job.prices import Prices, add_price_options, prices_from_options
from fuyu_ray.job.spec import ImageSize, JobError, image_token_count, parse_job
from fuyu_ray.presentation.cost import COST_COLUMNS, fmt_cost, with_costs
from fuyu_ray.presentation.cost_model import DECODE, PREFILL, fit, fit_all, fits_section
from fuyu_ray.presentation.plots import pareto_front
from fuyu_ray.presentation.recommendation import Setting, predict


def cells(*rows: dict) -> pl.DataFrame:
    base = {
        "status": "ok",
        "device": "cpu",
        "samples_per_s": None,
        "energy_j_per_sample": None,
        "energy_note": None,
    }
    return pl.DataFrame([{**base, **row} for row in rows])


def test_the_cost_of_1000_answers_is_worker_time_plus_electricity_by_hand():
    # 2 answers/s: 500 s for 1,000, at 0.36 per hour = 0.05; 90 J each: 90 kJ = 0.025 kWh, at 0.20 = 0.005.
    costed = with_costs(
        cells({"samples_per_s": 2.0, "energy_j_per_sample": 90.0}), Prices({"cpu": 0.36}, 0.20)
    ).to_dicts()[0]
    assert costed["cost_worker_per_1k_answers"] == pytest.approx(0.05)
    assert costed["cost_energy_per_1k_answers"] == pytest.approx(0.005)
    assert costed["cost_per_1k_answers"] == pytest.approx(0.055)
    assert costed["cost_note"] is None
    assert fmt_cost(costed) == "0.055"


def test_a_missing_energy_reading_gives_a_null_part_and_a_note_never_a_number():
    costed = with_costs(
        cells({"samples_per_s": 2.0, "energy_note": "RAPL not readable"}), Prices({"cpu": 0.36}, 0.20)
    ).to_dicts()[0]
    assert costed["cost_energy_per_1k_answers"] is None
    assert costed["cost_per_1k_answers"] == pytest.approx(0.05)  # the known part, marked as partial
    assert costed["cost_note"] == "electricity not counted: no energy reading (RAPL not readable)"
    assert fmt_cost(costed) == "0.05‡"


def test_a_device_without_a_price_has_no_worker_part_and_no_total_without_electricity():
    costed = with_costs(cells({"device": "cuda", "samples_per_s": 2.0}), Prices({"cpu": 0.36})).to_dicts()[0]
    assert costed["cost_worker_per_1k_answers"] is None
    assert costed["cost_energy_per_1k_answers"] is None
    assert costed["cost_per_1k_answers"] is None
    assert "no per-hour price for cuda" in costed["cost_note"]
    assert "no price per kWh" in costed["cost_note"]


def test_cells_that_did_not_run_cost_nothing_and_no_prices_add_no_columns():
    frame = cells({"status": "skipped"}, {"samples_per_s": 4.0})
    costed = with_costs(frame, Prices({"cpu": 3.6})).to_dicts()
    assert costed[0]["cost_per_1k_answers"] is None and costed[0]["cost_note"] is None
    assert costed[1]["cost_per_1k_answers"] == pytest.approx(0.25)
    for nothing in (None, Prices()):
        assert with_costs(frame, nothing).columns == frame.columns
        assert not set(COST_COLUMNS) & set(with_costs(frame, nothing).columns)


JOB = {
    "name": "priced",
    "model": "tiny",
    "base": BASE_POINT,
    "sweeps": {"batch": {"batch_size": [1, 2]}},
}


def test_the_job_gives_prices_per_device_and_per_kwh():
    job = parse_job({**JOB, "prices": {"cpu": {"per_hour": 0.4}, "electricity_per_kwh": 0.15}}, "priced.yaml")
    assert job.prices == Prices({"cpu": 0.4}, 0.15)
    assert parse_job(JOB, "plain.yaml").prices is None


@pytest.mark.parametrize(
    "prices, line",
    [
        ({"tpu": {"per_hour": 1}}, "priced.yaml: prices.tpu: unknown key (known: cpu, cuda, electricity_per_kwh)"),
        ({"cpu": {"per_hour": -1}}, "priced.yaml: prices.cpu.per_hour: must be a number >= 0, got -1"),
        ({"cpu": 0.4}, "priced.yaml: prices.cpu: must be {per_hour: price}, got 0.4"),
        (
            {"electricity_per_kwh": "cheap"},
            "priced.yaml: prices.electricity_per_kwh: must be a number >= 0, got 'cheap'",
        ),
    ],
)
def test_a_bad_price_in_the_job_is_one_line_naming_its_key(prices, line):
    with pytest.raises(JobError) as caught:
        parse_job({**JOB, "prices": prices}, "priced.yaml")
    assert caught.value.lines == [line]


def test_the_command_lines_prices_stand_over_the_jobs():
    parser = argparse.ArgumentParser()
    add_price_options(parser)
    given = prices_from_options(parser.parse_args(["--cpu-per-hour", "1.5"]))
    assert given.over(Prices({"cpu": 0.4, "cuda": 3.5}, 0.15)) == Prices({"cpu": 1.5, "cuda": 3.5}, 0.15)
    with pytest.raises(ValueError, match="--electricity-per-kwh: must be a number >= 0"):
        prices_from_options(parser.parse_args(["--electricity-per-kwh", "-2"]))


def test_the_pareto_front_keeps_each_point_no_cheaper_one_beats():
    points = [(1.0, 50.0), (2.0, 40.0), (3.0, 70.0), (3.0, 60.0), (4.0, 70.0), (5.0, 90.0)]
    assert pareto_front(points) == [0, 2, 5]


# --- the cost model ------------------------------------------------------------------------------

PREFILL_LAW = (0.01, 2e-5, 3e-9)  # seconds: constant, per row-token, per row-token²
DECODE_LAW = (0.02, 0.001, 1e-6)  # seconds per token: constant, per row, per row x context
TEXT_TOKENS, STEPS = 17, 5


def measured(batch_size: int, side: int, optimization: str = "fp32") -> dict:
    """A cell whose figures follow the laws above exactly, as a run on a perfectly steady machine records them."""
    tokens = image_token_count(ImageSize(side, side)) + TEXT_TOKENS
    prefill = float(np.dot(PREFILL_LAW, PREFILL.features(batch_size, tokens)))
    decode = float(np.dot(DECODE_LAW, DECODE.features(batch_size, tokens + (STEPS - 1) / 2)))
    return {
        "status": "ok",
        "device": "cpu",
        "optimization": optimization,
        "dataset": "textvqa",
        "batch_size": batch_size,
        "image_tokens": tokens - TEXT_TOKENS,
        "prefill_tokens": tokens,
        "generated_tokens_mean": float(STEPS - 1),
        "prefill_s": prefill,
        "decode_s_per_token": decode,
        "latency_s": prefill + decode * (STEPS - 1),
    }


def test_a_fit_to_figures_that_follow_a_law_finds_the_law_and_predicts_a_size_not_run():
    run = pl.DataFrame([measured(b, side) for b, side in [(1, 224), (2, 224), (4, 224), (2, 336), (2, 448)]])
    prefill = fit(run, PREFILL, "cpu", "fp32")
    assert prefill.coefficients == pytest.approx(PREFILL_LAW, rel=1e-4)
    assert prefill.worst_error < 1e-4
    # The decode law's context is the prompt plus half the generated tokens: the fit reads the same context.
    assert fit(run, DECODE, "cpu", "fp32").coefficients == pytest.approx(DECODE_LAW, rel=1e-4)
    fits = fit_all(run)
    missing = measured(2, 560)
    prediction = predict(run, fits, "textvqa", Setting("cpu", "fp32", 2, ImageSize(560, 560)), Prices({"cpu": 3.6}))
    assert prediction.prefill_s == pytest.approx(missing["prefill_s"], rel=1e-3)
    assert prediction.latency_s == pytest.approx(missing["latency_s"], rel=1e-3)
    assert prediction.cost_per_1k_answers == pytest.approx(1000 * missing["latency_s"] / 2 / 3600 * 3.6, rel=1e-3)
    assert prediction.why_none is None


def test_fewer_than_three_cells_give_no_fit_and_say_so():
    run = pl.DataFrame([measured(1, 224), measured(2, 224), measured(1, 224, "bf16")])
    unfitted = fit(run, PREFILL, "cpu", "fp32")
    assert unfitted.coefficients is None and unfitted.why_none == "2 cell(s) measured it; a fit needs 3"
    section = "\n".join(fits_section(fit_all(run)))
    assert "No fit (fewer than 3 cells measured it): cpu fp32, cpu bf16." in section
    assert "| Prefill s/batch |" not in section
    prediction = predict(run, fit_all(run), "textvqa", Setting("cpu", "fp32", 8, ImageSize(1920, 1080)), None)
    assert prediction.latency_s is None and "too few cells for a fit" in prediction.why_none
