"""The product speaks of itself only: no product file, job file or document talks of issues, tickets or
sessions; a target is stated as the project's own goal."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

PROCESS_WORDS = re.compile(r"\b(issues?|tickets?|sessions?)\b", re.IGNORECASE)


def product_files(root: Path) -> list[Path]:
    """Every product file: the package (every folder in it), the job files, the docs and the build files."""
    return [
        *sorted((root / "fuyu_ray").rglob("*.py")),
        *sorted(p for p in (root / "jobs").rglob("*") if p.is_file()),
        *[root / name for name in ("README.md", "Makefile", "pyproject.toml", "cluster.yaml", "constraints.txt")],
        root / ".ci" / "run",
    ]


def process_words(paths: list[Path], root: Path) -> list[str]:
    return [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in paths
        if path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if PROCESS_WORDS.search(line)
    ]


def test_product_files_speak_of_the_projects_own_goals():
    files = product_files(ROOT)
    assert ROOT / "fuyu_ray" / "driver" / "report.py" in files  # the folders below the package, not only its top
    assert process_words(files, ROOT) == []


def test_a_process_word_in_a_nested_product_module_is_found(tmp_path):
    for relative in ("fuyu_ray/driver/x.py", "jobs/a.yaml", "README.md"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("clean line\n")
    (tmp_path / "fuyu_ray" / "driver" / "x.py").write_text("# fixed for the ticket\n")
    (tmp_path / "jobs" / "a.yaml").write_text("name: as the Issue asked\n")
    assert process_words(product_files(tmp_path), tmp_path) == [
        "fuyu_ray/driver/x.py:1: # fixed for the ticket",
        "jobs/a.yaml:1: name: as the Issue asked",
    ]
