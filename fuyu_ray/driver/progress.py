"""Progress: a live rich bar on a terminal, one plain line per cell elsewhere (as `ray job logs` shows)."""

from __future__ import annotations

import sys

from fuyu_ray.job.cells import Cell
from fuyu_ray.presentation.formats import accuracy_text


def outcome_line(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('error') or ''}"
    parts = [f"latency {row['latency_s']:.4f}s/batch"]
    if row.get("energy_j_per_sample") is not None:
        parts.append(f"energy {row['energy_j_per_sample']:.3f} J/sample")
    if row.get("accuracy") is not None:
        parts.append(f"accuracy {accuracy_text(row.get('dataset'), row['accuracy'])}")
    return "ok " + ", ".join(parts)


class PlainProgress:
    def __init__(self, total: int, stream=sys.stdout):
        self.total, self.done, self.stream = total, 0, stream

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def started(self, cell: Cell) -> None:
        pass

    def finished(self, cell_description: str, row: dict) -> None:
        self.done += 1
        print(
            f"[{self.done}/{self.total}] {row['cell_id']} {cell_description}: {outcome_line(row)}",
            file=self.stream,
            flush=True,
        )

    def message(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


class RichProgress(PlainProgress):
    def __init__(self, total: int):
        from rich.console import Console  # only on a terminal; a log needs no rich
        from rich.progress import (  # only on a terminal
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        super().__init__(total)
        self.console = Console()
        self.bar = Progress(
            TextColumn("[bold]cells"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.description}"),
            console=self.console,
        )
        self.task = self.bar.add_task("", total=total)

    def __enter__(self):
        self.bar.start()
        return self

    def __exit__(self, *exc):
        self.bar.stop()

    def started(self, cell: Cell) -> None:
        self.bar.update(self.task, description=cell.description)

    def finished(self, cell_description: str, row: dict) -> None:
        self.done += 1
        self.bar.console.print(f"{row['cell_id']} {cell_description}: {outcome_line(row)}")
        self.bar.update(self.task, advance=1)

    def message(self, text: str) -> None:
        self.bar.console.print(text)


def make_progress(total: int):
    return RichProgress(total) if sys.stdout.isatty() else PlainProgress(total)
