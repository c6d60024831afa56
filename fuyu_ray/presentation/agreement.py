"""Does a preset change the answers? Each cell of an optimization sweep against the sweep's reference cell.

The reference is the cell with the same settings and the sweep's `reference:` optimization (by default
the first it lists). Cells run on separate actors, often on separate machines, so the pairing is done
here, when the report is built, from the samples both cells already wrote: no worker waits for
another, and a rerun of either cell is paired again with the other's answers as they are on disk.
The figures mean something with random weights too: two presets that compute the same function give
the same greedy tokens, whatever the weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Collection

import polars as pl
import pyarrow as pa

from fuyu_ray.job.cells import Grid
from fuyu_ray.job.spec import JobSpec
from fuyu_ray.presentation.compare import DEFAULT_THRESHOLD_PCT, accuracy_change, is_proportion_task
from fuyu_ray.presentation.formats import NOT_AVAILABLE, accuracy_scale
from fuyu_ray.storage.records import CELL_SCHEMA

AGREEMENT_COLUMNS = (
    "reference_optimization",
    "agreement_n",
    "answer_agreement",
    "first_token_agreement",
    "first_difference_position",
    "accuracy_difference",
    "accuracy_difference_ci_low",
    "accuracy_difference_ci_high",
    "accuracy_difference_p",
)
SAMPLE_COLUMNS = ["cell_id", "sample_id", "prediction", "generated_ids", "score"]


def reference_optimization(job: JobSpec, sweep: str) -> str | None:
    """The optimization a sweep's other presets are paired with; None where the sweep varies no optimization."""
    listed = job.sweeps[sweep].get("optimization", [])
    if len(listed) < 2:
        return None
    return job.references.get(sweep, listed[0])


def reference_pairs(job: JobSpec, grid: Grid) -> dict[str, tuple[str, str]]:
    """cell_id -> (its reference's cell_id, the reference optimization), for every cell of a sweep that
    varies the optimization; a reference cell is paired with itself. A cell two such sweeps share takes
    the first sweep's reference."""
    by_id = {cell.cell_id: cell for cell in grid.cells}
    pairs: dict[str, tuple[str, str]] = {}
    for sweep, ids in grid.sections.items():
        reference = reference_optimization(job, sweep)
        if reference is None:
            continue
        for cell_id in ids:
            cell = by_id[cell_id]
            counterpart = replace(cell, point=replace(cell.point, optimization=reference))
            pairs.setdefault(cell_id, (counterpart.cell_id, reference))
    return pairs


def paired_figures(dataset: str | None, reference: list[dict], cell: list[dict]) -> dict[str, Any]:
    """The agreement of one cell's samples with its reference's, paired on sample_id."""
    theirs = {row["sample_id"]: row for row in reference}
    pairs = [(theirs[row["sample_id"]], row) for row in cell if row["sample_id"] in theirs]
    figures: dict[str, Any] = {"agreement_n": len(pairs)}
    if not pairs:
        return figures
    figures["answer_agreement"] = sum(a["prediction"] == b["prediction"] for a, b in pairs) / len(pairs)
    tokens = [(a["generated_ids"], b["generated_ids"]) for a, b in pairs if a["generated_ids"] and b["generated_ids"]]
    if tokens:  # records written before the generated ids were kept have none
        figures["first_token_agreement"] = sum(a[0] == b[0] for a, b in tokens) / len(tokens)
        parted = [first_difference(a, b) for a, b in tokens if a != b]
        figures["first_difference_position"] = sum(parted) / len(parted) if parted else None
    scores = [(a["score"], b["score"]) for a, b in pairs if a["score"] is not None and b["score"] is not None]
    if scores:
        change = accuracy_change(
            dataset,
            {i: a for i, (a, _) in enumerate(scores)},
            {i: b for i, (_, b) in enumerate(scores)},
            DEFAULT_THRESHOLD_PCT,
        )
        figures.update(
            accuracy_difference=change.estimate,
            accuracy_difference_ci_low=change.low,
            accuracy_difference_ci_high=change.high,
            accuracy_difference_p=change.p_value,
        )
    return figures


def first_difference(a: list[int], b: list[int]) -> int:
    """The 1-based position of the first generated token where two answers differ (one ending first counts)."""
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) + 1)


def with_agreement(
    cells: pl.DataFrame, job: JobSpec, grid: Grid, read_samples: Callable[[Collection[str]], pa.Table]
) -> pl.DataFrame:
    """The cells with their agreement columns filled in, from `read_samples(cell_ids)` (the store's)."""
    pairs = reference_pairs(job, grid)
    if cells.is_empty() or not pairs:
        return cells
    rows = {row["cell_id"]: row for row in cells.select("cell_id", "status", "dataset").to_dicts()}
    measured = {
        cell_id: pair
        for cell_id, pair in pairs.items()
        if cell_id in rows
        and pair[0] != cell_id
        and rows[cell_id]["status"] == "ok"
        and rows.get(pair[0], {}).get("status") == "ok"
    }
    wanted = sorted({i for cell_id, (reference, _) in measured.items() for i in (cell_id, reference)})
    samples: dict[str, list[dict]] = {}
    if wanted:
        for row in read_samples(wanted).select(SAMPLE_COLUMNS).to_pylist():
            samples.setdefault(row["cell_id"], []).append(row)
    figures = []
    for cell_id, (reference_id, reference) in pairs.items():
        if cell_id not in rows:
            continue
        row = {"cell_id": cell_id, "reference_optimization": reference}
        if cell_id in measured:
            dataset = rows[cell_id]["dataset"]
            row.update(paired_figures(dataset, samples.get(reference_id, []), samples.get(cell_id, [])))
        figures.append(row)
    schema = {name: pl.from_arrow(CELL_SCHEMA.empty_table()).schema[name] for name in ("cell_id", *AGREEMENT_COLUMNS)}
    update = pl.DataFrame(figures, schema=schema)
    order = cells.columns + [c for c in AGREEMENT_COLUMNS if c not in cells.columns]
    kept = cells.drop([c for c in AGREEMENT_COLUMNS if c in cells.columns])
    return kept.join(update, on="cell_id", how="left", maintain_order="left").select(order)


REFERENCE = "reference"  # what the reference cell's own agreement columns show


def agreement_text(row: dict) -> str:
    """The share of answers equal to the reference's, with the first token's share and where they part."""
    if row["status"] != "ok":
        return row["status"]
    if row.get("optimization") == row.get("reference_optimization"):
        return REFERENCE
    if row.get("answer_agreement") is None:
        return NOT_AVAILABLE
    parts = []
    if row.get("first_token_agreement") is not None:
        parts.append(f"1st token {100 * row['first_token_agreement']:.0f}%")
    if row.get("first_difference_position") is not None:
        parts.append(f"parts at token {row['first_difference_position']:.1f}")
    parts.append(f"n={row['agreement_n']}")
    return f"{100 * row['answer_agreement']:.0f}% ({', '.join(parts)})"


def accuracy_difference_text(row: dict) -> str:
    """This cell's accuracy less the reference's on the same samples, with its paired 95% interval (and
    McNemar's p for option letters)."""
    if row["status"] != "ok":
        return row["status"]
    if row.get("optimization") == row.get("reference_optimization"):
        return REFERENCE
    if row.get("accuracy_difference") is None:
        return f"n/a ({row['accuracy_note']})" if row.get("accuracy_note") else NOT_AVAILABLE
    scale = accuracy_scale(row["dataset"])
    unit = " pts" if is_proportion_task(row["dataset"]) else ""
    text = f"{row['accuracy_difference'] * scale:+.1f}{unit}"
    if row.get("accuracy_difference_ci_low") is not None:
        text += (
            f" [{row['accuracy_difference_ci_low'] * scale:+.1f}, {row['accuracy_difference_ci_high'] * scale:+.1f}]"
        )
    if row.get("accuracy_difference_p") is not None:
        text += f" McNemar p={row['accuracy_difference_p']:.2g}"
    return text
