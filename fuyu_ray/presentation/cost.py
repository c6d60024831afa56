"""Cost per 1,000 answers: the worker's time and the electricity a cell's answers took, at the given prices.

Built at report time from what each cell recorded, so an old run can be priced. Each part is a column
of its own; a part whose price or figure is missing is null and the cell's `cost_note` says which. The
total adds the parts that are known and never a guessed one; the note marks a total that leaves one out.
"""

from __future__ import annotations

import polars as pl

from fuyu_ray.job.prices import Prices

ANSWERS = 1000
SECONDS_PER_HOUR = 3600.0
JOULES_PER_KWH = 3.6e6
COST_COLUMNS = ("cost_per_1k_answers", "cost_worker_per_1k_answers", "cost_energy_per_1k_answers", "cost_note")
PARTIAL_MARK = "‡"  # beside a total that leaves a part out, as the cost section explains


def worker_cost_per_1k(samples_per_s, per_hour):
    """What the worker's time for 1,000 answers costs: for figures or for Polars expressions alike."""
    return ANSWERS / samples_per_s / SECONDS_PER_HOUR * per_hour


def with_costs(cells: pl.DataFrame, prices: Prices | None) -> pl.DataFrame:
    """The cells with the cost columns added (ok cells only), or as they are when no price was given."""
    if prices is None or not prices.given or cells.is_empty():
        return cells
    ok = pl.col("status") == "ok"
    hourly = pl.col("device").replace_strict(prices.per_hour, default=None, return_dtype=pl.Float64)
    electricity = pl.lit(prices.electricity_per_kwh, dtype=pl.Float64)
    worker = worker_cost_per_1k(pl.col("samples_per_s"), hourly)
    energy = ANSWERS * pl.col("energy_j_per_sample") / JOULES_PER_KWH * electricity
    missing = pl.concat_list(
        pl.when(hourly.is_null()).then(pl.format("worker time not counted: no per-hour price for {}", "device")),
        pl.when(hourly.is_not_null() & pl.col("samples_per_s").is_null()).then(
            pl.lit("worker time not counted: no throughput measured")
        ),
        pl.when(electricity.is_null()).then(pl.lit("electricity not counted: no price per kWh")),
        pl.when(electricity.is_not_null() & pl.col("energy_j_per_sample").is_null()).then(
            pl.format("electricity not counted: no energy reading ({})", pl.col("energy_note").fill_null("no note"))
        ),
    ).list.drop_nulls()
    known = worker.is_not_null() | energy.is_not_null()
    return cells.with_columns(
        pl.when(ok & known).then(worker.fill_null(0.0) + energy.fill_null(0.0)).alias("cost_per_1k_answers"),
        pl.when(ok).then(worker).alias("cost_worker_per_1k_answers"),
        pl.when(ok).then(energy).alias("cost_energy_per_1k_answers"),
        pl.when(ok & (missing.list.len() > 0)).then(missing.list.join("; ")).alias("cost_note"),
    )


def priced(cells: pl.DataFrame) -> bool:
    return "cost_per_1k_answers" in cells.columns


def fmt_cost(row: dict) -> str:
    value = row.get("cost_per_1k_answers")
    if value is None:
        return "-"
    return f"{value:.4g}{PARTIAL_MARK if row.get('cost_note') else ''}"


def cost_lines(cells: pl.DataFrame, prices: Prices) -> list[str]:
    """How the column was built, at which prices, and what each marked total leaves out."""
    ok = cells.filter(pl.col("status") == "ok")
    notes = ok.get_column("cost_note").drop_nulls().unique(maintain_order=True).to_list()
    costed = ok.filter(pl.col("cost_per_1k_answers").is_not_null()).height
    lines = [
        "## Cost per 1,000 answers",
        "",
        f"Prices: {prices.words()}. {costed} of {ok.height} measured cells are costed.",
        "",
        f"Cost/1k answers = worker time + electricity for {ANSWERS:,} answers: 1,000 / Samples/s (the timed "
        "batches' throughput; model load and warm-up are not in it) / 3,600 x the device's price per hour, "
        "plus 1,000 x energy per sample / 3,600,000 J per kWh x the price per kWh. Both parts are columns of "
        "cells.parquet (`cost_worker_per_1k_answers`, `cost_energy_per_1k_answers`). A part without its price "
        "or its figure is left out, never guessed; "
        f"a total marked {PARTIAL_MARK} leaves one out, and `cost_note` says which.",
        "",
    ]
    if notes:
        lines += [f"{PARTIAL_MARK} " + "; ".join(notes[:5]) + (f" and {len(notes) - 5} more" if len(notes) > 5 else "")]
        lines += [""]
    return lines
