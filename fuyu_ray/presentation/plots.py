"""The report's plots: a sweep's figures against its axis, accuracy against latency, heatmaps of large sweeps."""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from fuyu_ray.job.cells import Grid
from fuyu_ray.job.presets import PRESET_NAMES
from fuyu_ray.job.spec import ImageSize, JobSpec
from fuyu_ray.presentation.cost import priced
from fuyu_ray.presentation.formats import (
    AXIS_TITLES,
    DISTURBED_MARK,
    accuracy_axis,
    accuracy_scale,
    disturbed,
    pyplot,
    task_title,
    thinned,
)
from fuyu_ray.presentation.sweeps import (
    METRICS,
    axis_key,
    is_large,
    main_axes,
    notes,
    section_rows,
    sweep_frame,
    varied_axes,
)
from fuyu_ray.storage.store import ResultStore


def write_plots(store: ResultStore, job: JobSpec, grid: Grid, cells: pl.DataFrame) -> dict[str, str]:

    plots: dict[str, str] = {}
    ok = cells.filter(pl.col("status") == "ok") if not cells.is_empty() else cells
    for sweep in job.sweeps:
        if is_large(job, grid, sweep):
            name = large_sweep_plot(store, job, grid, ok, sweep)
            if name:
                plots[sweep] = name
            continue
        rows = section_rows(ok, grid, sweep)
        if rows:
            plots[sweep] = sweep_plot(store, job, sweep, rows, cells)
    scored = ok.filter(pl.col("accuracy").is_not_null()) if not ok.is_empty() else ok
    if not scored.is_empty():
        plots["pareto"] = pareto_plot(store, scored)
    costed = scored.filter(pl.col("cost_per_1k_answers").is_not_null()) if priced(scored) else scored.clear()
    if not costed.is_empty():
        plots["cost"] = cost_plot(store, costed)
    return plots


LABELLED_POINTS = 30  # a Pareto panel names each point's setting up to this many points


DISTURBED_RING = {"marker": "o", "markersize": 13, "markerfacecolor": "none", "markeredgecolor": "red", "linestyle": ""}


def mark_disturbed(panel, points: list[tuple[float, float, dict]]) -> bool:
    """A red ring and a dagger round each disturbed figure, as the tables mark it; whether there was one."""
    marked = [(x, y) for x, y, row in points if disturbed(row) and y is not None]
    for x, y in marked:
        panel.plot([x], [y], **DISTURBED_RING)
        panel.annotate(DISTURBED_MARK.strip(), (x, y), textcoords="offset points", xytext=(7, 5), color="red")
    return bool(marked)


def sweep_plot(store: ResultStore, job: JobSpec, sweep: str, rows: list[dict], cells: pl.DataFrame) -> str:
    """Latency per batch (the median, a whisker to p90) and energy per sample against the sweep's axis. Values
    are categories in the job's order, so points are not joined by lines; each series is nudged sideways."""
    plt = pyplot()

    varied = varied_axes(job, sweep)
    axis = "optimization" if "optimization" in varied else next((a for a in varied if a != "dataset"), "dataset")
    series_axes = list(dict.fromkeys(a for a in ("dataset", *varied) if a != axis))  # one series per combination
    categories = list(dict.fromkeys(str(r[axis]) for r in rows))
    keys = sorted({tuple(r[a] for a in series_axes) for r in rows}, key=str)
    figure, left = plt.subplots(figsize=(6.5, 4.2))
    has_energy = any(r["energy_j_per_sample"] is not None for r in rows)
    right = left.twinx() if has_energy else None
    width = 0.5 / max(1, len(keys))
    any_disturbed = False
    for index, key in enumerate(keys):
        subset = [r for r in rows if tuple(r[a] for a in series_axes) == key]
        label = ", ".join(
            str(v) if a == "dataset" else f"{AXIS_TITLES[a].lower()} {v}" for a, v in zip(series_axes, key)
        )
        xs = [categories.index(str(r[axis])) + (index - (len(keys) - 1) / 2) * width for r in subset]
        medians = [r["latency_s"] for r in subset]
        spread = [max(0.0, (r["latency_p90_s"] or r["latency_s"]) - r["latency_s"]) for r in subset]
        left.errorbar(xs, medians, yerr=[[0.0] * len(xs), spread], fmt="o", capsize=3, color=f"C{index}", label=label)
        any_disturbed |= mark_disturbed(left, list(zip(xs, medians, subset)))
        if right is not None:
            energy = [(x, r["energy_j_per_sample"]) for x, r in zip(xs, subset) if r["energy_j_per_sample"] is not None]
            right.plot([x for x, _ in energy], [e for _, e in energy], "s", mfc="none", color=f"C{index}")
    left.set_xticks(range(len(categories)), categories)
    left.set_xlim(-0.5, len(categories) - 0.5)
    # From zero, with room above: a lone point or a 1% difference does not fill the axis, and no point sits on its edge.
    left.set_ylim(0, left.get_ylim()[1] * 1.12)
    left.set_xlabel(AXIS_TITLES[axis])
    left.set_ylabel("latency per batch (s): median, whisker to p90")
    if right is not None:
        right.set_ylim(0, right.get_ylim()[1] * 1.12)
        right.set_ylabel("energy per sample (J): open squares")
    handles, names = left.get_legend_handles_labels()
    if any_disturbed:
        handles.append(plt.Line2D([], [], **DISTURBED_RING))
        names.append(f"disturbed ({DISTURBED_MARK.strip()})")
    left.legend(handles, names, loc="best", fontsize=7)
    why = "" if right is not None else f"\nno energy: {'; '.join(notes(cells, 'energy_note')) or 'not measured'}"
    left.set_title(f"{sweep}: latency{' and energy' if right is not None else ''}{why}", fontsize=9)
    # The seed's file name for its one plot, which is the batch-size sweep's.
    name = "latency_energy_plot.png" if varied == ["batch_size"] else f"{sweep}.png"
    return _save(store, figure, name)


def pareto_plot(store: ResultStore, scored: pl.DataFrame) -> str:
    """Accuracy against latency per sample, one panel per dataset, each point labelled with its setting.
    Per sample, so that batch sizes compare; accuracy in the tables' units."""
    plt = pyplot()

    datasets = sorted(scored.get_column("dataset").unique().to_list())
    figure, panels = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.2), squeeze=False)
    for panel, dataset in zip(panels[0], datasets):
        subset = scored.filter(pl.col("dataset") == dataset)
        scale = accuracy_scale(dataset)
        labelled: list[tuple[float, float]] = []
        spans = (
            (max(subset.get_column("latency_s") / subset.get_column("batch_size")) or 1.0),
            (max(subset.get_column("accuracy")) * scale or 1.0),
        )
        for optimization in sorted(subset.get_column("optimization").unique().to_list()):
            rows = subset.filter(pl.col("optimization") == optimization).to_dicts()
            xs = [r["latency_s"] / r["batch_size"] for r in rows]
            ys = [r["accuracy"] * scale for r in rows]
            colour = f"C{PRESET_NAMES.index(optimization)}" if optimization in PRESET_NAMES else None
            panel.scatter(xs, ys, label=optimization, color=colour)
            if subset.height <= LABELLED_POINTS:  # past that, labels hide the points they name
                for x, y, r in zip(xs, ys, rows):
                    if any(abs(x - a) < 0.12 * spans[0] and abs(y - b) < 0.06 * spans[1] for a, b in labelled):
                        continue  # a label over another is read as neither
                    labelled.append((x, y))
                    panel.annotate(point_label(r), (x, y), textcoords="offset points", xytext=(4, -9), fontsize=6)
            mark_disturbed(panel, list(zip(xs, ys, rows)))
        panel.set_title(task_title(dataset))
        panel.set_xlabel("latency per sample (s)")
        panel.set_ylabel(accuracy_axis(dataset))
        panel.margins(0.15)
        panel.legend(fontsize=7, loc="upper right")
    figure.suptitle("accuracy against latency per sample, by optimization")
    return _save(store, figure, "pareto_latency_accuracy.png")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """The indices of the points no other point beats on both cost (lower) and accuracy (higher), cheapest first."""
    front, best = [], float("-inf")
    for index in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        if points[index][1] > best:
            front.append(index)
            best = points[index][1]
    return front


def cost_plot(store: ResultStore, costed: pl.DataFrame) -> str:
    """Accuracy against cost per 1,000 answers, one panel per task, its Pareto front joined and its points named:
    every other point costs more for no more accuracy."""
    plt = pyplot()

    datasets = sorted(costed.get_column("dataset").unique().to_list())
    figure, panels = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.2), squeeze=False)
    for panel, dataset in zip(panels[0], datasets):
        rows = costed.filter(pl.col("dataset") == dataset).to_dicts()
        scale = accuracy_scale(dataset)
        points = [(r["cost_per_1k_answers"], r["accuracy"] * scale) for r in rows]
        for optimization in dict.fromkeys(r["optimization"] for r in rows):
            mine = [p for p, r in zip(points, rows) if r["optimization"] == optimization]
            colour = f"C{PRESET_NAMES.index(optimization)}" if optimization in PRESET_NAMES else None
            panel.scatter([x for x, _ in mine], [y for _, y in mine], label=optimization, color=colour, zorder=3)
        front = pareto_front(points)
        right_edge = max(x for x, _ in points) * 1.15 or 1.0
        # The front runs on to the right edge: nothing past its last point buys more accuracy.
        panel.plot(
            [points[i][0] for i in front] + [right_edge],
            [points[i][1] for i in front] + [points[front[-1]][1]],
            drawstyle="steps-post",
            color="black",
            linewidth=1,
            zorder=2,
        )
        panel.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "D",
            markersize=11,
            markerfacecolor="none",
            markeredgecolor="black",
            label="Pareto front",
            zorder=4,
        )
        for i in front[:LABELLED_POINTS]:
            panel.annotate(point_label(rows[i]), points[i], textcoords="offset points", xytext=(6, -11), fontsize=6)
        mark_disturbed(panel, [(x, y, r) for (x, y), r in zip(points, rows)])
        panel.set_title(task_title(dataset))
        panel.set_xlabel("cost per 1,000 answers")
        panel.set_ylabel(accuracy_axis(dataset))
        panel.set_xlim(0, right_edge)
        panel.margins(y=0.15)
        panel.legend(fontsize=7, loc="lower right")
    partial = any(r.get("cost_note") for r in costed.to_dicts())
    figure.suptitle(
        "accuracy against cost per 1,000 answers; diamonds and the line: the Pareto front"
        + ("\n(some costs leave a part out: cost_note in cells.parquet)" if partial else ""),
        fontsize=10,
    )
    return _save(store, figure, "pareto_cost_accuracy.png")


def point_label(row: dict) -> str:
    return f"{row['device']} b{row['batch_size']} {ImageSize.of_record(row).label}px s{row['seq_len']}"


def large_sweep_plot(store: ResultStore, job: JobSpec, grid: Grid, ok: pl.DataFrame, sweep: str) -> str | None:
    """Every value of a large sweep: heatmaps over its two main axes (the median over the others),
    one per metric and dataset; for a single axis, lines against it."""
    plt = pyplot()

    varied = varied_axes(job, sweep)
    frame, values = sweep_frame(job, grid, ok, sweep)
    axes = main_axes(varied, values)
    panels = [
        (column, title, dataset)
        for column, title, _ in METRICS
        for dataset in values.get("dataset", [None])
        if not frame.is_empty()
        and not frame.filter(
            pl.col(column).is_not_null() & (pl.col("dataset") == dataset if dataset is not None else pl.lit(True))
        ).is_empty()
    ]
    if not panels:
        return None
    columns = min(3, len(panels))
    figure, grid_axes = plt.subplots(
        -(-len(panels) // columns),
        columns,
        figsize=(5.5 * columns, 4.5 * -(-len(panels) // columns)),
        squeeze=False,
        layout="constrained",
    )
    for panel, (column, title, dataset) in zip(grid_axes.flat, panels):
        data = frame.filter(
            pl.col(column).is_not_null() & (pl.col("dataset") == dataset if dataset is not None else pl.lit(True))
        )
        scale = accuracy_scale(data.get_column("dataset")[0]) if column == "accuracy" else 1  # as the tables show it
        label = title + (f", {task_title(dataset)}" if dataset is not None else "")
        if len(axes) >= 2:
            rows_axis, columns_axis = axes[0], axes[1]
            medians = data.group_by(axis_key(rows_axis), axis_key(columns_axis)).agg(pl.col(column).median())
            row_index = {v: i for i, v in enumerate(values[rows_axis])}
            column_index = {v: i for i, v in enumerate(values[columns_axis])}
            matrix = np.full((len(row_index), len(column_index)), np.nan)
            for r, c, v in medians.rows():
                matrix[row_index[r], column_index[c]] = v * scale
            image = panel.imshow(matrix, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis")
            figure.colorbar(image, ax=panel)
            for axis_values, set_ticks in (
                (values[columns_axis], panel.set_xticks),
                (values[rows_axis], panel.set_yticks),
            ):
                shown = thinned(list(range(len(axis_values))), 12)
                set_ticks(shown, [axis_values[i] for i in shown], fontsize=7)
            panel.set_xlabel(AXIS_TITLES[columns_axis])
            panel.set_ylabel(AXIS_TITLES[rows_axis])
            others = [AXIS_TITLES[a].lower() for a in axes[2:]]
            panel.set_title(label + (f"\n(median over {', '.join(others)})" if others else ""), fontsize=9)
        else:
            axis = axes[0]
            position = {v: i for i, v in enumerate(values[axis])}
            numeric = all(v.lstrip("-").isdigit() for v in values[axis])
            points = sorted((position[v], y) for v, y in data.select(axis_key(axis), column).rows())
            xs = [int(values[axis][i]) if numeric else i for i, _ in points]
            panel.plot(xs, [y * scale for _, y in points], marker="o" if len(points) <= 50 else None, linewidth=1)
            if not numeric:
                shown = thinned(list(range(len(values[axis]))), 12)
                panel.set_xticks(shown, [values[axis][i] for i in shown], fontsize=7)
            panel.set_xlabel(AXIS_TITLES[axis])
            panel.set_ylabel(label)
            panel.set_title(label, fontsize=9)
    for panel in list(grid_axes.flat)[len(panels) :]:
        panel.set_visible(False)
    figure.suptitle(f"{sweep}: {len(grid.sections[sweep]):,} cells")
    return _save(store, figure, f"{sweep}.png", tight=False)


def _save(store: ResultStore, figure, name: str, tight: bool = True) -> str:
    plt = pyplot()

    buffer = io.BytesIO()
    if tight:  # the other figures are laid out by matplotlib's constrained layout as they are drawn
        figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    store.write_bytes(f"plots/{name}", buffer.getvalue())
    return f"plots/{name}"
