"""Mutation sweep of the core modules: each module mutated alone, against its own fast tests only.

    python tests/mutation.py [MODULE ...] [--out DIR] [--max-children N] [--full]

mutmut reads one [tool.mutmut] table from the pyproject.toml of the folder it runs in, so each module
gets a copy of the repository under mutants/MODULE/ whose pyproject.toml names that module and its
tests; mutmut works in mutants/MODULE/mutants/ beneath it. The copies stay after the run, so that
`cd mutants/MODULE && mutmut show NAME` (or `mutmut browse`) works on the last sweep. Each sweep
starts afresh: cached verdicts from an older source or test file would make a before/after
comparison meaningless.

Prints one `module: killed/total (rate%)` line per module. Killed counts mutants a test failed on,
timed out on or crashed on; a survivor, or a mutant that no selected test reaches, counts as not
killed. The survivors' diffs go to OUT/MODULE.txt and the counts to OUT/summary.json (OUT: mutants/report).

Where every mutant would not fit in about 25 minutes, a module runs a fixed sample (MODULES below):
the same mutants each time, so that two sweeps of the same code compare; --full runs them all.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "mutants"
MUTMUT = Path(sys.executable).parent / "mutmut"
# What the tests read from the repository root besides tests/ and pyproject.toml (mutmut copies those two).
ALSO_COPY = ["jobs", "README.md", "Makefile", "cluster.yaml"]
COPY_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "mutants", "results", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"
)
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass
class Module:
    path: str
    tests: list[str]
    # Tests of other code in the same files, or too slow to run once per mutant.
    deselect: list[str] = field(default_factory=list)
    # Glob patterns of mutant names: only these are run and counted (all of the module's when empty).
    functions: list[str] = field(default_factory=list)
    # Last digits of the mutant numbers to run, where every mutant would not fit in about 25 minutes
    # on 2 shared cores: "05" runs every fifth mutant of each function. Empty: all of them.
    sample: str = ""

    @property
    def dotted(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    def patterns(self, full: bool) -> list[str]:
        """The mutant names to run and count, as globs; none means every mutant of the module."""
        if not self.sample or full:
            return self.functions
        return [f"{p}[{self.sample}]" for p in self.functions or [f"{self.dotted}.*__mutmut_*"]]


MODULES = {
    "scheduler": Module("fuyu_ray/driver/scheduler.py", ["tests/test_scheduler.py"]),
    "store": Module(
        "fuyu_ray/storage/store.py",
        ["tests/test_store.py", "tests/test_store_scale.py"],
        # Near 700 mutants, whose tests write and scan parquet folders of many cells.
        sample="05",
    ),
    "compare": Module(
        "fuyu_ray/presentation/compare.py",
        ["tests/test_compare.py"],
        # Both share a 30 s run of the trained tiny model, which every mutant of main() would repeat.
        deselect=[
            "tests/test_compare.py::test_the_runner_keeps_every_batch_and_every_energy_repeat",
            "tests/test_compare.py::test_a_quarter_of_answers_corrupted_is_found_and_sized",
        ],
        # Over 1,800 mutants, most of them reached by main(), whose tests measure the stand-in's real sleeps.
        sample="0",
    ),
    "metrics": Module("fuyu_ray/tasks/metrics.py", ["tests/test_metrics.py"]),
    "caption_metrics": Module("fuyu_ray/tasks/caption_metrics.py", ["tests/test_metrics.py"]),
    # About 300 mutants, whose tests build small datasets and start an interpreter for the offline check.
    "data": Module("fuyu_ray/bench/data.py", ["tests/test_data.py", "tests/test_hub_layout.py"], sample="05"),
    "gpu_check": Module(
        "fuyu_ray/driver/gpu_check.py",
        ["tests/test_gpu_check.py", "tests/test_gpu_rehearsal.py"],
        # A full GPU check on CPU (over two minutes), and a test of the cell runner's deadline.
        deselect=[
            "tests/test_gpu_check.py::test_gpu_check_runs_in_process_without_the_cluster_stack",
            "tests/test_gpu_check.py::test_a_cell_past_its_deadline_stops_with_the_reason",
        ],
        # The plan: which cells run in which order within the budget; the summary's text is not. About 250
        # mutants, most of them in run(), whose test writes a job's worth of cell files: a fifth is sampled.
        functions=[
            f"fuyu_ray.driver.gpu_check.{name}__mutmut_*"
            for name in (
                "x_load_plain_job",
                "x_ordered_cells",
                "xǁBudgetǁ*",
                "x_target_ids",
                "x_workload_key",
                "x_run",
                "x_run_one",
            )
        ],
        sample="05",
    ),
}


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def mutmut_table(module: Module) -> str:
    selection = [*module.tests, "-m", "not slow", *(f"--deselect={test}" for test in module.deselect)]
    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["fuyu_ray"]\n'
        f"only_mutate = {toml_list([module.path])}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(selection)}\n"
        f"also_copy = {toml_list(ALSO_COPY)}\n"
        # Polars' thread pool does not survive a fork from a process that has used it: forked from mutmut's
        # own process (the default), mutants that read through Polars hang until their timeout.
        'process_isolation = "forkserver"\n'
        # The copy sits inside the repository: git would answer for the repository, not the copy.
        "use_git_change_detection = false\n"
    )


def prepare(name: str, module: Module) -> Path:
    """A fresh copy of the repository for this module, its pyproject.toml naming what to mutate and test."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(ROOT, work, ignore=COPY_IGNORE)
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text()
    if "[tool.mutmut]" in text:
        raise SystemExit("pyproject.toml has its own [tool.mutmut]: this script writes one per module")
    pyproject.write_text(text + mutmut_table(module))
    return work


def results(work: Path) -> dict[str, str]:
    """Every mutant's status, from `mutmut results --all true` (lines `    NAME: STATUS`)."""
    out = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=work, capture_output=True, text=True, check=True
    ).stdout
    found = (re.match(r"\s+(\S+): (.+)$", line) for line in out.splitlines())
    return {m[1]: m[2].strip() for m in found if m}


def show(work: Path, names: list[str]) -> str:
    """`mutmut show` for each name, run in one interpreter: a process per mutant would take minutes."""
    code = (
        "import sys\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant, find_mutant\n"
        "from mutmut.stats import status_by_exit_code\n"
        "for name in sys.argv[1:]:\n"
        "    m = find_mutant(name)\n"
        "    print(f'# {name}: {status_by_exit_code[m.exit_code_by_key[name]]}')\n"
        "    print(get_diff_for_mutant(name, path=m.path))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *names], cwd=work, capture_output=True, text=True, check=True
    ).stdout


def sweep(name: str, module: Module, out: Path, max_children: int, full: bool = False) -> dict:
    work = prepare(name, module)
    patterns = module.patterns(full)
    started = time.monotonic()
    run = subprocess.run(
        [str(MUTMUT), "run", "--max-children", str(max_children), *patterns],
        cwd=work,
        capture_output=True,
        text=True,
    )
    wall_s = time.monotonic() - started
    (out / f"{name}.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        raise SystemExit(f"{name}: mutmut run failed ({run.returncode}); see {out / f'{name}.log'}")
    return tally(name, module, patterns, out, wall_s)


def tally(name: str, module: Module, patterns: list[str], out: Path, wall_s: float) -> dict:
    """The counts of the last sweep in mutants/NAME/, and the survivors' diffs in OUT/NAME.txt."""
    work = WORK / name
    status = results(work)
    if patterns:
        status = {k: v for k, v in status.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    not_killed = sorted(k for k, v in status.items() if v not in KILLED)
    (out / f"{name}.txt").write_text(show(work, not_killed) if not_killed else "")
    killed = sum(v for k, v in counts.items() if k in KILLED)
    return {
        "module": name,
        "path": module.path,
        "selected": patterns,
        "total": len(status),
        "killed": killed,
        "survived": counts.get("survived", 0),
        "no_tests": counts.get("no tests", 0),
        "timeout": counts.get("timeout", 0),
        "other": {k: v for k, v in counts.items() if k not in {"killed", "survived", "no tests", "timeout"}},
        "rate": round(100 * killed / len(status), 1) if status else 0.0,
        "wall_s": round(wall_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=f"any of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--out", type=Path, default=WORK / "report", help="survivors' diffs and summary.json")
    # One child by default: the sweep shares a 2-core machine.
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="every mutant, also of the sampled modules")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(MODULES))
    if unknown:
        parser.error(f"unknown module {', '.join(unknown)}: choose from {', '.join(MODULES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "summary.json"
    for name in args.modules or MODULES:
        row = sweep(name, MODULES[name], args.out, args.max_children, args.full)
        # Written after each module, so that a sweep stopped part-way keeps what it finished.
        previous = json.loads(summary.read_text()) if summary.exists() else {}
        summary.write_text(json.dumps({**previous, name: row}, indent=2) + "\n")
        sampled = " (sampled: see summary.json)" if row["selected"] else ""
        print(
            f"{name}: {row['killed']}/{row['total']} ({row['rate']}%){sampled}: survived {row['survived']}, "
            f"no tests {row['no_tests']}, timeout {row['timeout']}, other {row['other'] or 0}, {row['wall_s']} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
