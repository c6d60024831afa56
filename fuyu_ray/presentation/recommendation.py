"""From figures to a decision: per task, the cell that meets every constraint at the least cost (or energy, or
latency), the next ones, what each constraint ruled out, and, where nothing meets them, what came closest.

Measured figures only; `predicted_lines` answers for settings that were not run, under a heading that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from fuyu_ray.job.prices import Prices
from fuyu_ray.job.spec import ImageSize, decode_context, image_token_count
from fuyu_ray.presentation.cost import fmt_cost, worker_cost_per_1k
from fuyu_ray.presentation.cost_model import DECODE, PREFILL, Fit
from fuyu_ray.presentation.formats import (
    DISTURBED_MARK,
    accuracy_scale,
    disturbed,
    fmt_accuracy,
    fmt_seconds,
    markdown_table,
    task_title,
)

RUNNERS_UP = 3
LATENCY_STATISTICS = {"p90": ("latency_p90_s", "ttft_p90_s"), "median": ("latency_s", "ttft_s")}
RANKED_BY = {"cost": "cost_per_1k_answers", "energy": "energy_j_per_sample", "latency": None}  # None: the latency


@dataclass(frozen=True)
class Constraints:
    max_latency_s: float | None = None  # per batch
    max_ttft_s: float | None = None
    min_accuracy: dict[str, float] = field(default_factory=dict)  # task -> floor, in the report's units
    latency: str = "p90"  # which statistic the latency limits read: p90 or median
    by: str = "latency"
    include_disturbed: bool = False  # a busy machine's figures, taken as they are (and marked)

    @property
    def latency_column(self) -> str:
        return LATENCY_STATISTICS[self.latency][0]

    @property
    def ttft_column(self) -> str:
        return LATENCY_STATISTICS[self.latency][1]

    @property
    def rank_column(self) -> str:
        return RANKED_BY[self.by] or self.latency_column

    def words(self) -> str:
        parts = []
        if self.max_latency_s is not None:
            parts.append(f"latency {self.latency} <= {self.max_latency_s:g} s per batch")
        if self.max_ttft_s is not None:
            parts.append(f"TTFT {self.latency} <= {self.max_ttft_s:g} s")
        parts += [f"{task_title(task)} accuracy >= {floor:g}" for task, floor in self.min_accuracy.items()]
        return "; ".join(parts) or "none"


@dataclass
class Miss:
    """One constraint a cell fails: what, by how much (relative), and the words for it."""

    constraint: str
    relative: float
    words: str


def misses(row: dict, constraints: Constraints) -> list[Miss]:
    """Every constraint the cell fails; an empty list: it meets them all."""
    found = []
    for column, limit, name in (
        (constraints.latency_column, constraints.max_latency_s, f"latency {constraints.latency} > limit"),
        (constraints.ttft_column, constraints.max_ttft_s, f"TTFT {constraints.latency} > limit"),
    ):
        if limit is None:
            continue
        value = row.get(column)
        if value is None:
            found.append(Miss(name, float("inf"), f"{column} not measured"))
        elif value > limit:
            found.append(Miss(name, (value - limit) / limit, f"{column} {value:.4g} s > {limit:g} s"))
    floor = constraints.min_accuracy.get(row["dataset"])
    if floor is not None:
        scale = accuracy_scale(row["dataset"])
        accuracy, low = row.get("accuracy"), row.get("accuracy_ci_low")
        if accuracy is None:
            found.append(Miss("no accuracy figure", float("inf"), f"no accuracy ({row.get('accuracy_note')})"))
        elif accuracy * scale < floor:
            found.append(
                Miss(
                    "accuracy < floor",
                    (floor - accuracy * scale) / floor,
                    f"accuracy {accuracy * scale:.1f} < {floor:g}",
                )
            )
        elif low is None or low * scale < floor:
            shown = "no interval" if low is None else f"{low * scale:.1f}"
            missed = (floor - low * scale) / floor if low is not None else float("inf")
            found.append(Miss("accuracy interval below the floor", missed, f"95% interval low {shown} < {floor:g}"))
    if row.get(constraints.rank_column) is None:
        found.append(Miss(f"no {constraints.by} figure", float("inf"), f"{constraints.rank_column} not measured"))
    if disturbed(row) and not constraints.include_disturbed:
        found.append(Miss("disturbed", float("inf"), "measured while disturbed"))
    return found


COUNTED_APART = ("disturbed", "accuracy interval below the floor")


@dataclass
class TaskAnswer:
    task: str
    ranked: list[dict]  # the cells that meet every constraint, best first
    candidates: int  # the ok cells of the task
    ruled_out: dict[str, int]  # constraint -> cells it ruled out
    closest: tuple[dict, list[Miss]] | None  # where none meets them: the least miss

    @property
    def found(self) -> bool:
        return bool(self.ranked)


def recommend(cells: pl.DataFrame, task: str, constraints: Constraints) -> TaskAnswer:
    rows = cells.filter((pl.col("status") == "ok") & (pl.col("dataset") == task)).to_dicts()
    judged = [(row, misses(row, constraints)) for row in rows]
    meeting = [row for row, missed in judged if not missed]
    ranked = sorted(meeting, key=lambda r: (r[constraints.rank_column], r[constraints.latency_column]))
    ruled_out: dict[str, int] = {}
    for _, missed in judged:
        for miss in missed:
            ruled_out[miss.constraint] = ruled_out.get(miss.constraint, 0) + 1
    closest = None
    if not ranked and judged:
        closest = min(judged, key=lambda pair: (max(m.relative for m in pair[1]), len(pair[1])))
    return TaskAnswer(task, ranked, len(rows), ruled_out, closest)


def settings_words(row: dict) -> str:
    return (
        f"{row['device']}, {row['optimization']}, batch {row['batch_size']}, image {ImageSize.of_record(row).label}, "
        f"seq_len {row['seq_len']}"
    )


def figures_table(rows: list[dict], constraints: Constraints) -> str:
    header = [
        "Rank",
        "Device",
        "Optimization",
        "Batch",
        "Image",
        "Seq len",
        "Cost/1k answers",
        f"Latency {constraints.latency} s/batch",
        f"TTFT {constraints.latency} s",
        "Energy J/sample",
        "Accuracy [95% CI]",
        "cell_id",
    ]
    table = [
        [
            str(i),
            r["device"],
            r["optimization"],
            str(r["batch_size"]),
            ImageSize.of_record(r).label,
            str(r["seq_len"]),
            fmt_cost(r),
            fmt_seconds(r[constraints.latency_column]) + (DISTURBED_MARK if disturbed(r) else ""),
            fmt_seconds(r[constraints.ttft_column]),
            "-" if r["energy_j_per_sample"] is None else f"{r['energy_j_per_sample']:.3f}",
            fmt_accuracy(r),
            r["cell_id"],
        ]
        for i, r in enumerate(rows, 1)
    ]
    return markdown_table(header, table)


def answer_lines(answer: TaskAnswer, constraints: Constraints) -> list[str]:
    lines = [f"## {task_title(answer.task)}", ""]
    if answer.found:
        best = answer.ranked[0]
        lines += [f"Best: {settings_words(best)} (cell {best['cell_id']}).", ""]
        lines += [figures_table(answer.ranked[: 1 + RUNNERS_UP], constraints), ""]
    else:
        lines += [f"**No cell meets every constraint** ({answer.candidates} measured cells).", ""]
        if answer.closest is not None:
            row, missed = answer.closest
            lines += [
                f"Closest: {settings_words(row)} (cell {row['cell_id']}), which missed by: "
                + "; ".join(m.words + (f" ({m.relative:+.0%})" if m.relative != float("inf") else "") for m in missed)
                + ".",
                "",
                figures_table([row], constraints),
                "",
            ]
    own = {k: v for k, v in answer.ruled_out.items() if k not in COUNTED_APART}
    apart = {k: v for k, v in answer.ruled_out.items() if k in COUNTED_APART}
    counts = ", ".join(f"{name}: {n}" for name, n in own.items()) or "none"
    lines += [f"Ruled out, of {answer.candidates} measured cells (a cell may fail several): {counts}."]
    if apart:
        lines += ["Counted apart: " + ", ".join(f"{name}: {n}" for name, n in apart.items()) + "."]
    return lines + [""]


def header_lines(run: str, constraints: Constraints, prices: Prices | None) -> list[str]:
    ranked = {"cost": "cost per 1,000 answers", "energy": "energy per sample", "latency": "latency per batch"}
    lines = [
        f"# Recommendation for {run}",
        "",
        f"Constraints: {constraints.words()}. Ranked by {ranked[constraints.by]}, lower first. "
        "Measured figures only: cells that ran, ok"
        + (
            ", disturbed ones included (their latency marked †)."
            if constraints.include_disturbed
            else " and undisturbed."
        ),
    ]
    if prices is not None and prices.given:
        lines += [f"Prices: {prices.words()}."]
    return lines + [""]


@dataclass(frozen=True)
class Setting:
    """The settings a prediction is asked for: the job's base point with what `--predict` changes."""

    device: str
    optimization: str
    batch_size: int
    image_size: ImageSize


@dataclass
class Prediction:
    task: str
    prefill_s: float | None
    decode_s_per_token: float | None
    latency_s: float | None
    samples_per_s: float | None
    cost_per_1k_answers: float | None
    fits: tuple[Fit | None, Fit | None]
    why_none: str | None = None
    decode_steps: float | None = None  # steps per batch, as the task's measured cells took: answer length is not fitted


def task_workload(cells: pl.DataFrame, task: str) -> tuple[float, float] | None:
    """The task's text tokens per prompt and decode steps per batch, as its measured cells show them: the
    tokens beside the image's are the prompt's, whatever the image; the steps are what a batch decoded."""
    rows = cells.filter(
        (pl.col("status") == "ok")
        & (pl.col("dataset") == task)
        & pl.col("prefill_tokens").is_not_null()
        & pl.col("decode_s_per_token").is_not_null()
        & (pl.col("decode_s_per_token") > 0)
    )
    if rows.is_empty():
        return None
    text_tokens = (rows.get_column("prefill_tokens") - rows.get_column("image_tokens")).median()
    steps = (
        1 + (rows.get_column("latency_s") - rows.get_column("prefill_s")) / rows.get_column("decode_s_per_token")
    ).median()
    return float(text_tokens), float(steps)


def predict(cells: pl.DataFrame, fits: list[Fit], task: str, setting: Setting, prices: Prices | None) -> Prediction:
    def fitted(model) -> Fit | None:
        return next(
            (
                f
                for f in fits
                if f.model is model and f.device == setting.device and f.optimization == setting.optimization
            ),
            None,
        )

    prefill_fit, decode_fit = fitted(PREFILL), fitted(DECODE)
    workload = task_workload(cells, task)
    why = None
    if workload is None:
        why = f"no ok cell of {task} measured prefill and decode"
    elif prefill_fit is None or decode_fit is None:
        why = f"no cell ran on {setting.device} with {setting.optimization}"
    elif prefill_fit.coefficients is None or decode_fit.coefficients is None:
        why = f"too few cells for a fit: {(prefill_fit.why_none or decode_fit.why_none)}"
    if why:
        return Prediction(task, None, None, None, None, None, (prefill_fit, decode_fit), why)
    text_tokens, steps = workload
    tokens = image_token_count(setting.image_size) + text_tokens
    rows = setting.batch_size
    prefill = prefill_fit.predict(rows, tokens)
    decode = decode_fit.predict(rows, decode_context(tokens, steps - 1))
    latency = prefill + decode * max(steps - 1, 0)
    samples_per_s = rows / latency if latency > 0 else None
    price = prices.per_hour.get(setting.device) if prices is not None else None
    cost = worker_cost_per_1k(samples_per_s, price) if price is not None and samples_per_s else None
    fits = (prefill_fit, decode_fit)
    return Prediction(task, prefill, decode, latency, samples_per_s, cost, fits, decode_steps=steps)


def predicted_lines(predictions: list[Prediction], setting: Setting, constraints: Constraints) -> list[str]:
    lines = [
        f"## Predicted, not measured: {setting.device}, {setting.optimization}, batch {setting.batch_size}, "
        f"image {setting.image_size.label}",
        "",
        "From the cost model fitted to this run's cells (the report's Cost model section). Medians, so a p90 "
        "limit is compared with a median here; the fits' held-out errors are beside each figure; electricity and "
        "accuracy are not predicted. Latency = prefill + decode x (steps - 1), where steps per batch are the "
        "median the task's measured cells took: how long the answers are is not fitted, and a model whose answers "
        "lengthen with the image makes the latency err by as much.",
        "",
    ]
    header = [
        "Task",
        "Prefill s",
        "Decode s/token",
        "Steps",
        "Latency s/batch",
        "Samples/s",
        "Cost/1k answers (worker)",
    ]
    header += ["Meets the latency limits", "Held-out error (prefill; decode)"]
    table = []
    for p in predictions:
        if p.why_none:
            table.append([task_title(p.task), f"no prediction: {p.why_none}", *["-"] * 7])
            continue
        meets = []
        if constraints.max_latency_s is not None:
            meets.append("latency " + ("yes" if p.latency_s <= constraints.max_latency_s else "no"))
        if constraints.max_ttft_s is not None:
            meets.append("TTFT " + ("yes" if p.prefill_s <= constraints.max_ttft_s else "no"))
        table.append(
            [
                task_title(p.task),
                fmt_seconds(p.prefill_s),
                fmt_seconds(p.decode_s_per_token),
                f"{p.decode_steps:.1f}",
                fmt_seconds(p.latency_s),
                "-" if p.samples_per_s is None else f"{p.samples_per_s:.3g}",
                "-" if p.cost_per_1k_answers is None else f"{p.cost_per_1k_answers:.4g}",
                ", ".join(meets) or "no limit given",
                "; ".join(f.error_words().removeprefix("held-out error ") for f in p.fits),
            ]
        )
    return lines + [markdown_table(header, table), ""]
