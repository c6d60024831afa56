"""A cost model fitted to a run's own cells, to predict settings that were not run.

Fuyu's prompt length is exact: image tokens (rows x (columns + 1) for 30-px patches) plus the task's text
tokens. Per device and preset, least squares fits
- prefill seconds per batch against rows x tokens and rows x tokens² (the quadratic term is attention);
- decode seconds per token against rows and rows x context (weights read once per step, each row's
  work, each row's KV cache).
Coefficients are kept non-negative (scipy's NNLS): each term is work, and a negative one fitted to noise
would predict a bigger image as faster. Batch rows enter as a factor, so one fit covers every batch size the
run measured and those between.
Each fit's error is measured by leaving each cell out in turn and predicting it from the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.optimize import nnls

from fuyu_ray.job.spec import decode_context

MIN_POINTS = 3  # fewer, and a fit with three terms says nothing the points do not


@dataclass(frozen=True)
class FigureModel:
    """What one fitted figure is and which terms explain it."""

    figure: str  # the cell column it predicts
    title: str
    terms: tuple[str, ...]

    def features(self, rows: float, tokens: float) -> list[float]:
        """`tokens` is the prompt length for prefill, the context for decode."""
        if self.figure == "prefill_s":
            return [1.0, rows * tokens, rows * tokens * tokens]
        return [1.0, rows, rows * tokens]


PREFILL = FigureModel("prefill_s", "Prefill s/batch", ("1", "rows x tokens", "rows x tokens²"))
DECODE = FigureModel("decode_s_per_token", "Decode s/token", ("1", "rows", "rows x context"))
MODELS = (PREFILL, DECODE)


@dataclass(frozen=True)
class Fit:
    model: FigureModel
    device: str
    optimization: str
    points: int
    coefficients: tuple[float, ...] | None  # None: too few points, and `why_none` says so
    held_out_errors: tuple[float, ...] = ()  # |predicted - measured| / measured, one per cell left out
    why_none: str | None = None

    def predict(self, rows: float, tokens: float) -> float | None:
        if self.coefficients is None:
            return None
        return float(np.dot(self.coefficients, self.model.features(rows, tokens)))

    @property
    def median_error(self) -> float | None:
        return float(np.median(self.held_out_errors)) if self.held_out_errors else None

    @property
    def worst_error(self) -> float | None:
        return max(self.held_out_errors) if self.held_out_errors else None

    def error_words(self) -> str:
        if self.median_error is None:
            return "held-out error unknown"
        return f"held-out error median {self.median_error:.0%}, worst {self.worst_error:.0%}"


def points(cells: pl.DataFrame, model: FigureModel) -> pl.DataFrame:
    """The ok cells that measured the figure, with rows and tokens: prompt tokens for prefill; for decode the
    context a step reads on average, the prompt plus half the generated tokens."""
    ok = cells.filter(
        (pl.col("status") == "ok") & pl.col(model.figure).is_not_null() & pl.col("prefill_tokens").is_not_null()
    )
    context = pl.col("prefill_tokens").cast(pl.Float64)
    if model is DECODE:
        context = decode_context(context, pl.col("generated_tokens_mean").fill_null(0.0))
    return ok.select(
        "device",
        "optimization",
        pl.col("batch_size").cast(pl.Float64).alias("rows"),
        context.alias("tokens"),
        model.figure,
    )


def least_squares(features: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Columns scaled to 1 first: rows x tokens² reaches 1e8 where the constant is 1."""
    scale = np.abs(features).max(axis=0)
    scale[scale == 0] = 1.0
    solution, _ = nnls(features / scale, targets)
    return solution / scale


def fit(cells: pl.DataFrame, model: FigureModel, device: str, optimization: str) -> Fit:
    data = points(cells, model).filter((pl.col("device") == device) & (pl.col("optimization") == optimization))
    n = data.height
    if n < MIN_POINTS:
        return Fit(model, device, optimization, n, None, why_none=f"{n} cell(s) measured it; a fit needs {MIN_POINTS}")
    features = np.array([model.features(r, t) for r, t in data.select("rows", "tokens").rows()])
    targets = data.get_column(model.figure).to_numpy()
    coefficients = least_squares(features, targets)
    errors = []
    for left_out in range(n):
        keep = np.arange(n) != left_out
        predicted = float(features[left_out] @ least_squares(features[keep], targets[keep]))
        errors.append(abs(predicted - targets[left_out]) / targets[left_out])
    return Fit(model, device, optimization, n, tuple(float(c) for c in coefficients), tuple(errors))


def fit_all(cells: pl.DataFrame) -> list[Fit]:
    """A fit per figure, device and preset that has ok cells."""
    if cells.is_empty():
        return []
    variants = (
        cells.filter(pl.col("status") == "ok").select("device", "optimization").unique(maintain_order=True).rows()
    )
    return [fit(cells, model, device, optimization) for device, optimization in variants for model in MODELS]


def fits_section(fits: list[Fit]) -> list[str]:
    """The report's account of each fit: its coefficients and how well it predicts a cell it did not see."""
    if not fits:
        return []
    rows = []
    for f in fits:
        if f.coefficients is None:
            continue
        terms = " + ".join(f"{c:.3g} x {t}" if t != "1" else f"{c:.3g}" for c, t in zip(f.coefficients, f.model.terms))
        rows.append(
            f"| {f.model.title} | {f.device} | {f.optimization} | {f.points} | {terms} | "
            f"{f.median_error:.0%} / {f.worst_error:.0%} |"
        )
    return [
        "## Cost model",
        "",
        "Fitted by least squares to this run's ok cells, per device and preset: prefill seconds per batch against "
        "rows x tokens and rows x tokens² (tokens: image tokens, exact for any image size, plus the prompt's); "
        "decode seconds per token against rows and rows x context (the prompt plus half the generated tokens). "
        "The error is each cell's, predicted by the fit to all the others (leave-one-out): median / worst. "
        "`python -m fuyu_ray.recommend RUN --predict image_size=WxH,batch_size=B` predicts settings that were "
        "not run, with this error beside them.",
        "",
        *(
            [
                "| Figure | Device | Optimization | Cells | Fit | Held-out error |",
                "|---|---|---|---|---|---|",
                *rows,
                "",
            ]
            if rows
            else []
        ),
        *unfitted_lines(fits),
    ]


def unfitted_lines(fits: list[Fit]) -> list[str]:
    """The variants too few cells measured, in one line: a row each would bury the fits."""
    unfitted = list(dict.fromkeys(f"{f.device} {f.optimization}" for f in fits if f.coefficients is None))
    if not unfitted:
        return []
    return [f"No fit (fewer than {MIN_POINTS} cells measured it): {', '.join(unfitted)}.", ""]
