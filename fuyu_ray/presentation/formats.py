"""How figures are shown, the same in the progress line, the tables, the plots and the comparisons: numbers,
labels, marks, Markdown tables and the plot set-up, each in one place."""

from __future__ import annotations

from fuyu_ray.job.spec import JobSpec, is_stand_in
from fuyu_ray.tasks import TASKS

NOT_AVAILABLE = "n/a"  # a figure a cell does not have, wherever figures are shown


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


AXIS_TITLES = {
    "device": "Device",
    "dataset": "Dataset",
    "batch_size": "Batch size",
    "image_size": "Image size",
    "seq_len": "Seq len",
    "optimization": "Optimization",
}


LISTED = 12  # distinct values named in a note before "and N more"


def task_title(dataset: str) -> str:
    """The task's title; a name from results this version has no task for is shown as it is."""
    return TASKS[dataset].title if dataset in TASKS else dataset


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}"


def fmt_duration(value: float | None) -> str:
    """Seconds in the unit that reads best: 3 significant digits, ms below a second."""
    if value is None:
        return NOT_AVAILABLE
    return f"{value * 1000:.3g} ms" if value < 1 else f"{value:.3g} s"


def fmt_ms(seconds: float | None) -> str:
    return NOT_AVAILABLE if seconds is None else f"{seconds * 1000:.1f} ms"


def fmt_cell(value) -> str:
    """Any value as a table cell: floats to 4 decimals below 10, text without pipes and at most 90 characters."""
    if value is None:
        return NOT_AVAILABLE
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    text = str(value).replace("|", "/")
    return text if len(text) <= 90 else text[:87] + "..."


def fmt_flops(value: float | None) -> str:
    if value is None:
        return NOT_AVAILABLE
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f}"


def fmt_number(value: float | None, digits: int = 3) -> str:
    return NOT_AVAILABLE if value is None else f"{value:.{digits}f}"


DISTURBED_MARK = " †"  # the figure was taken while something disturbed it: see "Disturbed measurements"


def disturbed(row: dict) -> bool:
    return (row.get("measurement_quality") or "").startswith("disturbed")


def fmt_latency(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    mark = DISTURBED_MARK if disturbed(row) else ""
    return f"{fmt_seconds(row['latency_s'])} (p90 {fmt_seconds(row['latency_p90_s'])}, n={row['latency_n']}){mark}"


def fmt_accuracy(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row["accuracy"] is None:
        return f"n/a ({row['accuracy_note']})" if row["accuracy_note"] else "n/a"
    scale = accuracy_scale(row["dataset"])
    text = accuracy_text(row["dataset"], row["accuracy"])
    if row["accuracy_ci_low"] is not None:
        text += f" [{row['accuracy_ci_low'] * scale:.1f}, {row['accuracy_ci_high'] * scale:.1f}]"
    return text + f" (n={row['accuracy_n']})"


def fmt_energy(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    if row["energy_j_per_sample"] is None:
        return "n/a¹"
    return f"{row['energy_j_per_sample']:.3f}"


def fmt_throughput(row: dict) -> str:
    """Samples per second over the timed batches (`samples_per_s`): what a deployment of that batch size serves."""
    if row["status"] != "ok" or row.get("samples_per_s") is None:
        return NOT_AVAILABLE
    return f"{row['samples_per_s']:.1f}"


def percent_of(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return NOT_AVAILABLE
    return f"{100 * value / reference:.1f}"


def listed(values: list, limit: int = LISTED) -> str:
    """Values for a note: all of them, or the first `limit` and how many more."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit:,} more" if len(values) > limit else "")


def shortened(text: str | None, limit: int = 400) -> str | None:
    return text if text is None or len(text) <= limit else text[:limit] + " …"


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def thinned(values: list, limit: int) -> list:
    """At most `limit` values: every k-th from the first, and the last."""
    step = thinning_step(len(values), limit)
    return [*values[:-1:step], values[-1]] if values else []


def thinning_step(count: int, limit: int) -> int:
    return max(1, -(-(count - 1) // (limit - 1)))


def model_words(job: JobSpec) -> str:
    if is_stand_in(job.model):
        return "a stand-in: no model"
    return f"{job.weights} weights"


def model_limits(job: JobSpec) -> list[str]:
    """What the model under test cannot tell, said before the figures it shapes."""
    from fuyu_ray.bench.tiny import TRAINED_IMAGE_SIDE, trained_tasks_text  # light: tokenizers only

    lines = []
    if is_stand_in(job.model):
        lines.append(
            "The model is a stand-in: no model runs, so these figures measure the harness (scheduling, timing, "
            "storage) and say nothing of fuyu-8b; accuracy is not measured."
        )
    elif job.weights == "random":
        lines.append(
            "Random weights: the answers are noise, so no accuracy is given; latency, energy and FLOPs are the "
            "architecture's."
        )
    elif job.model == "tiny":
        lines.append(tiny_limits(TRAINED_IMAGE_SIDE, trained_tasks_text()))
    return [f"> {line}" for line in lines] + ([""] if lines else [])


def tiny_limits(side: int, tasks: str) -> str:
    return (
        f"`tiny` is a 2-layer model trained only on built-in synthetic data ({tasks}) at {side} px: its latency "
        f"says nothing of fuyu-8b's, and its accuracy falls at image sizes other than {side} px because it never "
        "saw them in training, which is a fact about tiny, not about Fuyu."
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display); heavy, so loaded only to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
