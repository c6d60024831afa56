"""A comparison as compare.md, compare.png and compare.parquet: the verdicts first, then the figures."""

from __future__ import annotations

import io
from typing import Any, Sequence

import pyarrow as pa

from fuyu_ray.presentation.compare import (
    ALPHA,
    GOODNESS,
    INCONCLUSIVE,
    LEVEL,
    METRICS,
    NO_CHANGE,
    SETTING_KEYS,
    SPEED,
    Change,
    Comparison,
    Row,
    describe,
    is_proportion_task,
    setting,
)
from fuyu_ray.presentation.formats import NOT_AVAILABLE, counted, fmt_duration, markdown_table, pyplot
from fuyu_ray.storage.store import ResultStore


def _change_fields(metric: str) -> list[tuple[str, pa.DataType]]:
    f, i, s = pa.float64(), pa.int64(), pa.string()
    figure = "difference" if metric == "accuracy" else "ratio"
    fields = [
        (f"{metric}_base", f),
        (f"{metric}_new", f),
        (f"{metric}_{figure}", f),
        (f"{metric}_ci_low", f),
        (f"{metric}_ci_high", f),
        (f"{metric}_change_pct", f),
        (f"{metric}_n_base", i),
        (f"{metric}_n_new", i),
        (f"{metric}_verdict", s),
        (f"{metric}_note", s),
    ]
    if metric == "accuracy":
        fields += [("accuracy_test", s), ("accuracy_p_value", f)]
    return fields


OUTPUT_SCHEMA = pa.schema(
    [
        ("side", pa.string()),
        ("label", pa.string()),
        ("match", pa.string()),
        ("base_cell_id", pa.string()),
        ("new_cell_id", pa.string()),
        ("base_status", pa.string()),
        ("new_status", pa.string()),
    ]
    + [(f"{role}_{k}", pa.string()) for k in SETTING_KEYS for role in ("base", "new")]
    + [
        ("speed_verdict", pa.string()),
        ("regression", pa.bool_()),
        ("status_note", pa.string()),
        ("warnings", pa.string()),
    ]
    + [item for metric in METRICS for item in _change_fields(metric)]
)


def labels(comparison: Comparison) -> list[str]:
    """Each row named by the settings that vary across the listed cells (all of them when none do)."""
    cells = [r.base if r.base is not None else r.new for r in comparison.rows]
    varying = [k for k in SETTING_KEYS if len({str(setting(c, k)) for c in cells}) > 1]
    shown = varying or ["dataset", "batch_size", "image_size", "optimization"]
    return [
        " ".join(
            str(setting(c, k)) if k in ("dataset", "device", "optimization", "model") else f"{k}={setting(c, k)}"
            for k in shown
        )
        for c in cells
    ]


def output_rows(comparison: Comparison) -> list[dict[str, Any]]:
    records = []
    for row, label in zip(comparison.rows, labels(comparison)):
        record: dict[str, Any] = {
            "side": row.side,
            "label": label,
            "match": describe(row.key),
            "base_cell_id": row.base and row.base.get("cell_id"),
            "new_cell_id": row.new and row.new.get("cell_id"),
            "base_status": row.base and row.base.get("status"),
            "new_status": row.new and row.new.get("status"),
            "speed_verdict": row.speed if row.side == "both" else None,
            "regression": row.regressed if row.side == "both" else None,
            "status_note": row.status_note,
            "warnings": "; ".join(row.warnings) or None,
        }
        for key in SETTING_KEYS:
            for role, cell in (("base", row.base), ("new", row.new)):
                value = setting(cell, key) if cell is not None else None
                record[f"{role}_{key}"] = None if value is None else str(value)
        for metric, change in row.changes.items():
            figure = "difference" if metric == "accuracy" else "ratio"
            record.update(
                {
                    f"{metric}_base": change.base,
                    f"{metric}_new": change.new,
                    f"{metric}_{figure}": change.estimate,
                    f"{metric}_ci_low": change.low,
                    f"{metric}_ci_high": change.high,
                    f"{metric}_change_pct": change.relative_pct,
                    f"{metric}_n_base": change.n_base,
                    f"{metric}_n_new": change.n_new,
                    f"{metric}_verdict": change.verdict,
                    f"{metric}_note": change.note,
                }
            )
            if metric == "accuracy":
                record.update(accuracy_test=change.test, accuracy_p_value=change.p_value)
        records.append(record)
    return records


def _pct(ratio: float) -> str:
    return f"{(ratio - 1) * 100:+.1f}%"


def format_change(change: Change, dataset: str | None) -> str:
    if change.estimate is None:
        return NOT_AVAILABLE
    if change.metric == "accuracy":
        points = is_proportion_task(dataset)
        show = (lambda v: f"{v * 100:+.1f}") if points else (lambda v: f"{v:+.3f}")
        text = f"{show(change.estimate)}{' pts' if points else ''} [{show(change.low)}, {show(change.high)}]"
        if change.p_value is not None:
            text += f" McNemar p={change.p_value:.2g}"
    else:
        text = _pct(change.estimate)
        text += f" [{_pct(change.low)}, {_pct(change.high)}]" if change.low is not None else " (no interval)"
    return (
        f"{text} **{change.verdict}**"
        if change.verdict not in (NO_CHANGE, NOT_AVAILABLE)
        else f"{text} {change.verdict}"
    )


def format_figures(change: Change, dataset: str | None) -> str:
    if change.base is None:
        return NOT_AVAILABLE
    if change.metric == "accuracy":
        show = (lambda v: f"{v * 100:.1f}%") if is_proportion_task(dataset) else (lambda v: f"{v:.3f}")
        return f"{show(change.base)} -> {show(change.new)} (n={change.n_base})"
    if change.metric == "energy":
        return f"{change.base:.3g} -> {change.new:.3g} J (n={change.n_base}/{change.n_new})"
    return f"{fmt_duration(change.base)} -> {fmt_duration(change.new)} (n={change.n_base}/{change.n_new})"


def differing_settings(row: Row, keys: Sequence[str]) -> str:
    if row.base is None or row.new is None:
        return ""
    return ", ".join(
        f"{k}: {setting(row.base, k)} -> {setting(row.new, k)}"
        for k in SETTING_KEYS
        if k not in keys and setting(row.base, k) != setting(row.new, k)
    )


def tally(comparison: Comparison) -> str:
    counts: dict[str, int] = {}
    for row in comparison.matched:
        for verdict in (row.speed, row.accuracy):
            counts[verdict] = counts.get(verdict, 0) + 1
    order = (SPEED[1], SPEED[0], GOODNESS[1], GOODNESS[0])
    parts = [f"{counts.get(v, 0)} {v}" for v in order]
    if counts.get(INCONCLUSIVE):
        parts.append(f"{counts[INCONCLUSIVE]} inconclusive (measurement disturbed; not counted)")
    failed = sum(r.regression_by_status for r in comparison.matched)
    if failed:
        parts.append(f"{failed} ok in BASE and broken in NEW")
    return ", ".join(parts)


COLUMN_TITLES = {
    "latency": "latency NEW/BASE",
    "prefill": "prefill",
    "decode": "decode",
    "energy": "energy/sample",
    "accuracy": "accuracy NEW-BASE",
}


def markdown(comparison: Comparison, plot_name: str | None) -> str:
    """compare.md: what was compared and the verdicts, the warnings, the changes and figures, then the
    cells that could not be compared."""
    names = dict(zip(map(id, comparison.rows), labels(comparison)))
    matched = comparison.matched
    compared = [r for r in matched if r.changes]
    lines = header_lines(comparison)
    warned = [r for r in matched if r.warnings]
    if warned:  # before the figures they qualify
        lines += ["## Warnings", ""] + [f"- {names[id(r)]}: {'; '.join(r.warnings)}" for r in warned] + [""]
    if compared:
        lines += changes_lines(comparison, compared, names, plot_name)
    lines += uncompared_lines(comparison, names)
    return "\n".join(lines)


def header_lines(comparison: Comparison) -> list[str]:
    matched = comparison.matched
    only = {s: sum(r.side == s for r in comparison.rows) for s in ("base only", "new only")}
    differences = {differing_settings(r, comparison.keys) for r in matched}
    lines = [
        "# Comparing two runs",
        "",
        f"- BASE: `{comparison.base.location}` ({counted(len(comparison.base.cells), 'cell')})",
        f"- NEW: `{comparison.new.location}` ({counted(len(comparison.new.cells), 'cell')})",
        f"- matched on: {', '.join(comparison.keys)}; {len(matched)} in both, "
        f"{only['base only']} only in BASE, {only['new only']} only in NEW",
    ]
    if len(differences) == 1 and "" not in differences:  # the same difference everywhere: say it once
        lines.append(f"- NEW differs from BASE in {differences.pop()}")
    return lines + [
        f"- a change counts when its {LEVEL:.0%} interval excludes no change (for option letters the exact "
        f"McNemar test agrees, p < {ALPHA:.2g}) and it is at least {comparison.threshold_pct:g}% of BASE's figure",
        f"- verdicts: {tally(comparison)}",
        "",
    ]


def changes_lines(comparison: Comparison, compared: list[Row], names: dict, plot_name: str | None) -> list[str]:
    """The Changes table (each figure's change and verdict), the figures behind it, and their notes."""
    shown = [m for m in METRICS if any(r.changes[m].estimate is not None for r in compared)]
    per_row = len({differing_settings(r, comparison.keys) for r in compared} - {""}) > 1
    header = ["cell"] + (["differs"] if per_row else []) + [COLUMN_TITLES[m] for m in shown] + ["verdict"]
    table = []
    for row in compared:
        dataset = row.base.get("dataset")
        cells = [names[id(row)]] + ([differing_settings(row, comparison.keys)] if per_row else [])
        cells += [format_change(row.changes[m], dataset) for m in shown]
        verdict = ", ".join(v for v in (row.speed, row.accuracy) if v != NOT_AVAILABLE) or NOT_AVAILABLE
        table.append(cells + [verdict + (" (see warnings)" if row.warnings else "")])
    figures = [[names[id(r)]] + [format_figures(r.changes[m], r.base.get("dataset")) for m in shown] for r in compared]
    lines = [
        "## Changes",
        "",
        f"Ratios as % change, with their {LEVEL:.0%} interval; accuracy in points of %, CIDEr-D as is.",
        "",
        markdown_table(header, table),
        "",
        "## Figures, BASE -> NEW",
        "",
        "Medians over the timed batches (latency and prefill per batch, decode per token), mean energy per "
        "sample over the energy window's repeats, accuracy over the samples both runs scored.",
        "",
        markdown_table(["cell"] + [COLUMN_TITLES[m].split(" ")[0] for m in shown], figures),
        "",
    ]
    notes = [
        f"- {names[id(r)]}, {m}: {c.note}"
        for r in compared
        for m, c in r.changes.items()
        if c.note and c.estimate is not None
    ]
    notes += [f"- not compared: {m} ({next(r.changes[m].note for r in compared)})" for m in METRICS if m not in shown]
    if notes:
        lines += ["## Notes", ""] + notes + [""]
    if plot_name:
        lines += [f"![changes with their intervals]({plot_name})", ""]
    return lines


def uncompared_lines(comparison: Comparison, names: dict) -> list[str]:
    """Matched cells that were not compared (a side not ok), and cells found on one side only."""
    lines = []
    uncompared = [r for r in comparison.matched if not r.changes]
    if uncompared:
        lines += ["## Not compared", ""]
        lines += [
            f"- {names[id(r)]}: {r.status_note}" + (" (a regression)" if r.regression_by_status else "")
            for r in uncompared
        ]
        lines += [""]
    for side, title in (("base only", "Only in BASE"), ("new only", "Only in NEW")):
        rows = [r for r in comparison.rows if r.side == side]
        if rows:
            lines += [f"## {title}", ""]
            for row in rows:
                cell = row.base if row.base is not None else row.new
                lines.append(
                    f"- {names[id(row)]} ({cell.get('status')}; cell {cell.get('cell_id')}; {describe(row.key)})"
                )
            lines += [""]
    return lines


def plot(comparison: Comparison) -> bytes | None:
    """One panel per figure: the change in % of BASE with its interval, each compared cell a row."""
    compared = [(r, name) for r, name in zip(comparison.rows, labels(comparison)) if r.changes]
    metrics = [m for m in METRICS if any(r.changes[m].relative_pct is not None for r, _ in compared)]
    if not metrics:
        return None
    plt = pyplot()

    colours = {SPEED[1]: "C3", GOODNESS[1]: "C3", SPEED[0]: "C2", GOODNESS[0]: "C2"}
    height = 2.0 + 0.35 * len(compared)
    figure, panels = plt.subplots(
        1, len(metrics), figsize=(max(7.0, 3.2 * len(metrics) + 1.5), height), sharey=True, squeeze=False
    )
    positions = list(range(len(compared)))[::-1]
    for panel, metric in zip(panels[0], metrics):
        for y, (row, _) in zip(positions, compared):
            change = row.changes[metric]
            if change.relative_pct is None:
                continue
            x, low, high = plotted_change(change, row.base.get("dataset"))
            colour = "0.6" if change.verdict == INCONCLUSIVE else colours.get(change.verdict, "0.4")
            hollow = change.verdict == INCONCLUSIVE or low is None
            if low is not None:
                panel.errorbar(
                    [x],
                    [y],
                    xerr=[[max(0.0, x - low)], [max(0.0, high - x)]],
                    fmt="o",
                    color=colour,
                    capsize=3,
                    mfc="none" if hollow else colour,
                )
            else:
                panel.plot([x], [y], "o", mfc="none", color=colour)
        panel.axvline(0, color="0.2", linewidth=0.8)
        if metric != "accuracy":  # --threshold is a % of BASE; accuracy is drawn in its own units
            for sign in (-1, 1):
                panel.axvline(sign * comparison.threshold_pct, color="0.6", linewidth=0.8, linestyle="--")
        panel.margins(x=0.2)  # an interval at the edge stays inside the panel
        panel.set_title(metric if metric != "energy" else "energy/sample", fontsize=9)
        panel.set_xlabel(axis_label(metric, [r.base.get("dataset") for r, _ in compared]), fontsize=8)
    panels[0][0].set_yticks(positions)
    panels[0][0].set_yticklabels(
        [name + (" " + DISTURBED if row.disturbed else "") for row, name in compared], fontsize=7
    )
    figure.suptitle(
        f"changes with {LEVEL:.0%} intervals (dashed: ±{comparison.threshold_pct:g}% threshold"
        + (
            f";\n{DISTURBED} disturbed on a side, hollow grey: inconclusive"
            if any(r.disturbed for r, _ in compared)
            else ""
        )
        + ")",
        fontsize=9,
    )
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


DISTURBED = "†"


def plotted_change(change: Change, dataset: str | None) -> tuple[float, float | None, float | None]:
    """(figure, low, high) as the plot draws them: ratios as % change; accuracy as the tables give it,
    in points for proportions and as is for CIDEr."""
    if change.metric == "accuracy":
        scale = 100 if is_proportion_task(dataset) else 1
        bounds = (change.low * scale, change.high * scale) if change.low is not None else (None, None)
        return change.estimate * scale, *bounds
    bounds = ((change.low - 1) * 100, (change.high - 1) * 100) if change.low is not None else (None, None)
    return change.relative_pct, *bounds


def axis_label(metric: str, datasets: list[str | None]) -> str:
    if metric != "accuracy":
        return "NEW vs BASE (% of BASE)"
    return "NEW - BASE (points)" if all(is_proportion_task(d) for d in datasets) else "NEW - BASE (points; CIDEr as is)"


def write(comparison: Comparison, out: str) -> str:
    """compare.parquet, compare.png and compare.md, each written atomically (store.ResultStore)."""
    store = ResultStore.at(out)
    store.filesystem.create_dir(store.root, recursive=True)
    store.write_table("compare.parquet", pa.Table.from_pylist(output_rows(comparison), schema=OUTPUT_SCHEMA))
    image = plot(comparison)
    if image is not None:
        store.write_bytes("compare.png", image)
    text = markdown(comparison, "compare.png" if image is not None else None)
    store.write_bytes("compare.md", text.encode())
    return text
