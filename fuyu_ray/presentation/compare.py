"""Compare two runs: for each cell both ran, is NEW faster, slower, better or worse than BASE,
or is the difference noise?

    python -m fuyu_ray.compare BASE NEW [--match KEYS] [--out DIR] [--threshold PCT] [--fail-on-regression]

Cells are matched on their settings (all of them by default, the `--match` keys otherwise).
For each matched cell:

- latency, prefill (time to first token) and decode (seconds per token): the ratio NEW/BASE of
  the medians over the timed batches, with a 95% percentile bootstrap interval that resamples
  each run's batches (`scipy.stats.bootstrap`);
- energy per sample: the ratio of the means over the energy window's repeats, bootstrapped the
  same way (an interval needs two repeats on each side; one gives the ratio alone);
- accuracy: NEW - BASE over the samples both runs scored, paired on `sample_id`. Option letters
  (ScienceQA, 0/1 scores) by the exact McNemar test, a binomial test on the discordant pairs
  (`scipy.stats.binomtest`); every metric's interval is the paired bootstrap of the per-sample
  differences (`fuyu_ray.tasks.metrics.bootstrap_interval`).

A change counts only when its interval excludes "no change" (a ratio of 1, a difference of 0;
for option letters McNemar's p < 0.05 as well) and it is at least `--threshold` percent of
BASE's figure. Everything else is "no clear change". A pair whose measurement was disturbed on
either side (measurement_quality) gets "inconclusive" for its timings and energy: they are not
counted, and they do not trip --fail-on-regression unless --judge-disturbed. Its accuracy is
judged as usual, since outside load does not change greedy answers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from fuyu_ray.job.spec import ImageSize
from fuyu_ray.presentation.formats import NOT_AVAILABLE
from fuyu_ray.storage.records import PROBLEM_STATUSES, error_line
from fuyu_ray.storage.store import TEMP_MARK, ResultStore
from fuyu_ray.tasks import TASKS
from fuyu_ray.tasks.metrics import bootstrap_interval

# What cells.Cell.settings() records, less cell_id and the image's width and height, which
# `image_size` stands for here (it is null for a "WxH" image).
SETTING_KEYS = (
    "model",
    "weights",
    "device",
    "dataset",
    "batch_size",
    "image_size",
    "seq_len",
    "optimization",
    "limit",
    "dataset_source",
    "dataset_split",
)


LEVEL = 0.95


ALPHA = 1 - LEVEL


RESAMPLES = 2000


SEED = 0


DEFAULT_THRESHOLD_PCT = 5.0


SPEED = ("faster", "slower")


GOODNESS = ("better", "worse")


NO_CHANGE = "no clear change"


INCONCLUSIVE = "inconclusive"  # a timing or energy figure of a pair disturbed on either side


LOAD_BOUND = ("latency", "prefill", "decode", "energy")  # what outside load shifts; greedy answers it does not


def is_paired_task(dataset: str) -> bool:
    """Scored right or wrong per sample: paired differences are counted, not averaged."""
    return dataset in TASKS and TASKS[dataset].scoring.paired


def is_proportion_task(dataset: str) -> bool:
    """Scores in [0, 1]: differences are shown in points."""
    return dataset in TASKS and TASKS[dataset].scoring.proportion


class BadInput(Exception):
    """What the user gave cannot be compared; one line, exit 2, nothing written."""


def _read_table(store: ResultStore, relative: str, columns: list[str] | None = None) -> pa.Table | None:
    """A parquet file of the run, or None where there is none."""
    path = store.path(relative)
    try:
        if store.filesystem.get_file_info(path).type != pafs.FileType.File:
            return None
        with store.filesystem.open_input_file(path) as handle:
            return pq.read_table(handle, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"{path}: cannot read it: {error_line(exc, typed=False)}") from None


@dataclass
class Run:
    role: str  # BASE or NEW
    location: str
    store: ResultStore
    cells: list[dict[str, Any]]
    has_quality: bool  # a measurement_quality column is there
    _samples: dict[str, dict[str, float]] | None = field(default=None, repr=False)

    def scores(self, cell_id: str) -> dict[str, float]:
        """sample_id -> score of one cell: from samples.parquet, else from samples/<cell_id>.parquet."""
        columns = ["cell_id", "sample_id", "score"]
        if self._samples is None:
            table = _read_table(self.store, "samples.parquet", columns)
            self._samples = _scores_by_cell(table) if table is not None else {}
        if cell_id not in self._samples:
            table = _read_table(self.store, f"samples/{cell_id}.parquet", columns)
            self._samples.update(_scores_by_cell(table) if table is not None else {cell_id: {}})
        return self._samples.get(cell_id, {})


def _scores_by_cell(table: pa.Table) -> dict[str, dict[str, float]]:
    by_cell: dict[str, dict[str, float]] = {}
    for row in table.to_pylist():
        score = row["score"]
        if score is not None and not math.isnan(score):
            by_cell.setdefault(row["cell_id"], {}).setdefault(row["sample_id"], float(score))
        else:
            by_cell.setdefault(row["cell_id"], {})
    return by_cell


def open_run(location: str, role: str) -> Run:
    """A result folder of `python -m fuyu_ray.grid --out` (a path or a pyarrow.fs URI): its
    cells.parquet, or failing that its cells/ files. Columns are read as written, so a column
    this version does not know (measurement_quality) is kept."""
    try:
        store = ResultStore.at(location)
        info = store.filesystem.get_file_info(store.root)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise BadInput(f"{role} {location}: cannot open it: {error_line(exc, typed=False)}") from None
    if info.type == pafs.FileType.NotFound:
        raise BadInput(f"{role} {location}: no such folder")
    if info.type != pafs.FileType.Directory:
        raise BadInput(f"{role} {location}: not a folder; give a result folder of python -m fuyu_ray.grid --out")
    table = _read_table(store, "cells.parquet")
    if table is None:
        try:
            listing = store.filesystem.get_file_info(pafs.FileSelector(store.path("cells"), allow_not_found=True))
        except OSError as exc:
            raise BadInput(f"{role} {location}: cannot list its cells/: {error_line(exc, typed=False)}") from None
        names = sorted(
            i.base_name
            for i in listing
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(TEMP_MARK)
        )
        tables = [t for t in (_read_table(store, f"cells/{name}") for name in names) if t is not None]
        table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if table is None or table.num_rows == 0:
        raise BadInput(
            f"{role} {location}: no cells here (no cells.parquet, nothing in cells/); "
            "give a result folder of python -m fuyu_ray.grid --out"
        )
    missing = {"cell_id", "status"} - set(table.column_names)
    if missing:
        raise BadInput(f"{role} {location}: its cells lack {', '.join(sorted(missing))}; not a fuyu_ray result folder")
    return Run(role, location, store, table.to_pylist(), "measurement_quality" in table.column_names)


def parse_keys(text: str | None) -> tuple[str, ...]:
    if text is None:
        return SETTING_KEYS
    keys = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not keys:
        raise BadInput(f"--match needs at least one key of: {', '.join(SETTING_KEYS)}")
    unknown = [k for k in keys if k not in SETTING_KEYS]
    if unknown:
        raise BadInput(f"--match: unknown key {', '.join(map(repr, unknown))}; the keys are: {', '.join(SETTING_KEYS)}")
    return keys


def image_text(cell: dict[str, Any]) -> str | None:
    if cell.get("image_width") is None and cell.get("image_size") is None:
        return None
    return ImageSize.of_record(cell).label


def setting(cell: dict[str, Any], key: str) -> Any:
    return image_text(cell) if key == "image_size" else cell.get(key)


def match_key(cell: dict[str, Any], keys: Sequence[str]) -> tuple:
    return tuple(setting(cell, k) for k in keys)


def describe(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def index_cells(run: Run, keys: Sequence[str]) -> dict[tuple, dict[str, Any]]:
    index: dict[tuple, dict[str, Any]] = {}
    for cell in run.cells:
        key = match_key(cell, keys)
        if key in index:
            raise BadInput(
                f"--match {','.join(keys)}: more than one cell of {run.role} has "
                f"{describe(dict(zip(keys, key)))}; add keys that tell them apart"
            )
        index[key] = cell
    return index


@dataclass
class Change:
    """One figure of one matched cell: BASE's, NEW's, and their ratio (or difference) with its interval."""

    metric: str
    base: float | None = None
    new: float | None = None
    estimate: float | None = None  # NEW/BASE, or NEW - BASE for accuracy
    low: float | None = None
    high: float | None = None
    n_base: int = 0
    n_new: int = 0
    verdict: str = NOT_AVAILABLE
    relative_pct: float | None = None  # the change in % of BASE's figure (what --threshold is held against)
    p_value: float | None = None
    test: str | None = None
    note: str | None = None


def _clean(values: Sequence[float | None] | None) -> np.ndarray:
    if not values:
        return np.array([], dtype=float)
    array = np.array([v for v in values if v is not None], dtype=float)
    return array[np.isfinite(array)]


def _median(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(values, axis=axis)


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def ratio_interval(base: np.ndarray, new: np.ndarray, statistic: Callable) -> tuple[float, float]:
    """95% percentile bootstrap interval of statistic(NEW) / statistic(BASE), each run resampled on its own."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from scipy.stats import bootstrap  # heavy: loaded only when a comparison computes intervals

        result = bootstrap(
            (base, new),
            lambda b, n, axis=-1: statistic(n, axis=axis) / statistic(b, axis=axis),
            n_resamples=RESAMPLES,
            vectorized=True,
            paired=False,
            confidence_level=LEVEL,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
    low, high = result.confidence_interval
    return float(low), float(high)


def ratio_change(
    metric: str,
    base_values,
    new_values,
    threshold_pct: float,
    statistic: Callable = _median,
    words: tuple[str, str] = SPEED,
    what: str = "per-batch figures",
) -> Change:
    """NEW/BASE of `statistic`; words[1] when NEW is higher (slower, worse), words[0] when lower."""
    base, new = _clean(base_values), _clean(new_values)
    change = Change(metric, n_base=len(base), n_new=len(new))
    lacking = [role for role, values in (("BASE", base), ("NEW", new)) if len(values) == 0]
    if lacking:
        change.note = f"no {what} in {' and '.join(lacking)}"
        return change
    change.base, change.new = float(statistic(base)), float(statistic(new))
    if change.base <= 0:
        change.note = f"BASE's figure is {change.base:g}: no ratio"
        return change
    change.estimate = change.new / change.base
    change.relative_pct = (change.estimate - 1) * 100
    if len(base) < 2 or len(new) < 2 or (base <= 0).any():
        change.verdict = NO_CHANGE
        change.note = f"only {min(len(base), len(new))} of the {what} on a side: no interval"
        return change
    change.low, change.high = ratio_interval(base, new, statistic)
    large = abs(change.relative_pct) >= threshold_pct
    if change.low > 1 and change.estimate > 1 and large:
        change.verdict = words[1]
    elif change.high < 1 and change.estimate < 1 and large:
        change.verdict = words[0]
    else:
        change.verdict = NO_CHANGE
    return change


def energy_change(base: dict[str, Any], new: dict[str, Any], threshold_pct: float) -> Change:
    """Joules per sample, per repeat of the energy window: a pass over the cell's batches each."""

    def per_sample(cell: dict[str, Any]) -> list[float] | None:
        rows = (cell.get("n_batches") or 0) * (cell.get("batch_size") or 0)
        repeats = cell.get("energy_repeats_j")
        if repeats and rows:
            return [j / rows for j in repeats if j is not None]
        single = cell.get("energy_j_per_sample")
        return None if single is None else [single]

    change = ratio_change(
        "energy", per_sample(base), per_sample(new), threshold_pct, _mean, GOODNESS, what="energy figures"
    )
    if change.estimate is not None and change.low is None:
        change.note = "one energy window repeat on a side: ratio without interval"
    if change.estimate is None and change.n_base * change.n_new == 0:  # say why a side has no energy
        notes = [
            f"{role}: {c.get('energy_note')}" for role, c in (("BASE", base), ("NEW", new)) if c.get("energy_note")
        ]
        change.note = "; ".join(notes) or change.note
    return change


def accuracy_change(
    dataset: str | None, base_scores: dict[str, float], new_scores: dict[str, float], threshold_pct: float
) -> Change:
    """NEW - BASE over the samples both runs scored, paired on sample_id."""
    change = Change("accuracy")
    common = [sid for sid in base_scores if sid in new_scores]
    if not common:
        lacking = [role for role, scores in (("BASE", base_scores), ("NEW", new_scores)) if not scores]
        change.note = (
            f"no scored samples in {' and '.join(lacking)}"
            if lacking
            else "no sample scored in both runs (no common sample_id)"
        )
        return change
    base = np.array([base_scores[s] for s in common])
    new = np.array([new_scores[s] for s in common])
    differences = new - base
    change.n_base = change.n_new = len(common)
    change.base, change.new, change.estimate = float(base.mean()), float(new.mean()), float(differences.mean())
    change.low, change.high = bootstrap_interval(list(differences), n_resamples=RESAMPLES, seed=SEED, level=LEVEL)
    excludes_zero = change.low > 0 or change.high < 0
    letters = is_paired_task(dataset) and set(np.unique(np.concatenate([base, new]))) <= {0.0, 1.0}
    if letters:
        from scipy.stats import binomtest  # heavy: loaded only for paired right/wrong scores

        lost = int(((base == 1) & (new == 0)).sum())
        gained = int(((base == 0) & (new == 1)).sum())
        change.test = f"exact McNemar ({lost} lost, {gained} gained)"
        change.p_value = float(binomtest(gained, lost + gained).pvalue) if lost + gained else 1.0
        significant = excludes_zero and change.p_value < ALPHA
    else:
        change.test = "paired bootstrap"
        significant = excludes_zero
    if change.base:
        change.relative_pct = change.estimate / abs(change.base) * 100
        large = abs(change.relative_pct) >= threshold_pct
    else:
        large = change.estimate != 0
    change.verdict = (GOODNESS[0] if change.estimate > 0 else GOODNESS[1]) if significant and large else NO_CHANGE
    left_out = len(base_scores) + len(new_scores) - 2 * len(common)
    if left_out:
        change.note = f"{left_out} samples scored in one run only, left out"
    return change


TIMINGS = (  # metric, per-batch column, median column
    ("latency", "latency_batches_s", "latency_s"),
    ("prefill", "prefill_batches_s", "prefill_s"),
    ("decode", "decode_batches_s_per_token", "decode_s_per_token"),
)


METRICS = ("latency", "prefill", "decode", "energy", "accuracy")


@dataclass
class Row:
    side: str  # both, base only, new only
    key: dict[str, Any]
    base: dict[str, Any] | None
    new: dict[str, Any] | None
    changes: dict[str, Change] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    status_note: str | None = None  # why a matched cell was not compared
    regression_by_status: bool = False
    disturbed: bool = False  # either side's figures were taken while something disturbed them

    @property
    def verdicts(self) -> dict[str, str]:
        return {m: c.verdict for m, c in self.changes.items()}

    @property
    def regressed(self) -> bool:
        return self.regression_by_status or any(v in (SPEED[1], GOODNESS[1]) for v in self.verdicts.values())

    @property
    def speed(self) -> str:
        return self.changes["latency"].verdict if "latency" in self.changes else NOT_AVAILABLE

    @property
    def accuracy(self) -> str:
        return self.changes["accuracy"].verdict if "accuracy" in self.changes else NOT_AVAILABLE


@dataclass
class Comparison:
    base: Run
    new: Run
    keys: tuple[str, ...]
    threshold_pct: float
    rows: list[Row]

    @property
    def matched(self) -> list[Row]:
        return [r for r in self.rows if r.side == "both"]

    @property
    def regressed(self) -> bool:
        return any(r.regressed for r in self.matched)


def is_disturbed(run: Run, cell: dict[str, Any]) -> bool:
    return run.has_quality and str(cell.get("measurement_quality") or "").startswith("disturbed")


def set_inconclusive(changes: dict[str, Change]) -> None:
    """A disturbed pair's load-bound figures say nothing about the code: no verdict is drawn from them."""
    for metric in LOAD_BOUND:
        change = changes.get(metric)
        if change is not None and change.estimate is not None:
            change.verdict = INCONCLUSIVE
            change.note = "; ".join(filter(None, ["measurement disturbed on a side", change.note]))


def quality_warnings(run: Run, cell: dict[str, Any]) -> list[str]:
    quality = cell.get("measurement_quality") if run.has_quality else None
    if quality is not None and str(quality).strip().lower() != "clean":
        return [f"{run.role} measurement_quality: {quality}"]
    return []


def compare_cells(
    base_run: Run, new_run: Run, base: dict[str, Any], new: dict[str, Any], threshold_pct: float
) -> dict[str, Change]:
    changes = {}
    for metric, batches, median in TIMINGS:
        change = ratio_change(metric, base.get(batches), new.get(batches), threshold_pct)
        if (
            change.estimate is None
            and base.get(median) is not None
            and new.get(median) is not None
            and base[median] > 0
        ):
            # Records written before per-batch figures were kept: the medians' ratio, without interval.
            change = ratio_change(metric, [base[median]], [new[median]], threshold_pct)
            change.note = "no per-batch figures: ratio of the medians, without interval"
        changes[metric] = change
    changes["energy"] = energy_change(base, new, threshold_pct)
    changes["accuracy"] = accuracy_change(
        base.get("dataset"), base_run.scores(base["cell_id"]), new_run.scores(new["cell_id"]), threshold_pct
    )
    return changes


def compare(
    base: Run, new: Run, keys: tuple[str, ...], threshold_pct: float, judge_disturbed: bool = False
) -> Comparison:
    base_cells, new_cells = index_cells(base, keys), index_cells(new, keys)
    common = [k for k in base_cells if k in new_cells]
    if not common:
        raise BadInput(
            f"no common cells: none of BASE's {len(base_cells)} cells matches one of NEW's {len(new_cells)} "
            f"on {','.join(keys)} (--match pairs cells on fewer settings: leave out device or model to compare "
            "across hardware or model versions)"
        )
    rows = []
    for key, base_cell in base_cells.items():
        values = dict(zip(keys, key))
        new_cell = new_cells.get(key)
        if new_cell is None:
            rows.append(Row("base only", values, base_cell, None))
            continue
        row = Row(
            "both",
            values,
            base_cell,
            new_cell,
            warnings=quality_warnings(base, base_cell) + quality_warnings(new, new_cell),
        )
        statuses = base_cell.get("status"), new_cell.get("status")
        if statuses == ("ok", "ok"):
            row.changes = compare_cells(base, new, base_cell, new_cell, threshold_pct)
            row.disturbed = is_disturbed(base, base_cell) or is_disturbed(new, new_cell)
            if row.disturbed and not judge_disturbed:
                set_inconclusive(row.changes)
        else:
            row.status_note = "; ".join(
                f"{role} {cell.get('status')}" + (f": {cell['error']}" if cell.get("error") else "")
                for role, cell in (("BASE", base_cell), ("NEW", new_cell))
                if cell.get("status") != "ok"
            )
            # ok in BASE, broken in NEW: a regression
            row.regression_by_status = (
                statuses[0] == "ok" and statuses[1] in PROBLEM_STATUSES
            )  # ok in BASE, broken in NEW: a regression
        rows.append(row)
    rows += [Row("new only", dict(zip(keys, k)), None, c) for k, c in new_cells.items() if k not in base_cells]
    rows.sort(key=lambda r: (("both", "base only", "new only").index(r.side), settings_order(r.base or r.new)))
    return Comparison(base, new, keys, threshold_pct, rows)


def settings_order(cell: dict[str, Any]) -> tuple:
    """A sort key over every setting: numbers as numbers, missing values last."""

    def part(value: Any) -> tuple:
        if isinstance(value, (int, float)):
            return (0, value, "")
        return (1, 0, "") if value is None else (0, math.inf, str(value))

    return tuple(
        part(cell.get(k))
        for k in (
            "dataset",
            "device",
            "model",
            "weights",
            "optimization",
            "batch_size",
            "image_width",
            "image_height",
            "seq_len",
            "limit",
            "dataset_source",
            "dataset_split",
        )
    )
