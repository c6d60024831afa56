"""How figures are shown, the same in the progress line, the tables and the plots."""

from __future__ import annotations

from fuyu_ray.tasks import TASKS


def accuracy_scale(dataset: str | None) -> float:
    """CIDEr is shown as is, proportions as percent."""
    return TASKS[dataset].scoring.scale if dataset in TASKS else 100


def accuracy_text(dataset: str | None, value: float) -> str:
    return f"{value * accuracy_scale(dataset):.1f}"


def accuracy_axis(dataset: str | None) -> str:
    if dataset not in TASKS:
        return "accuracy (%)"
    scoring = TASKS[dataset].scoring
    return f"{scoring.axis_label} (%)" if scoring.proportion else scoring.axis_label


def counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
