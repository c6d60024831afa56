"""The layers the folder listing shows, kept: each imports only the layers below it, and only the
libraries its machines have.

    tasks         one module per task, its metrics                  no torch, Ray or Polars
    job           the job file, presets, cells                      no torch, Ray or Polars
    storage       the record schema and the result store            no torch or Ray (Polars only inside a read)
    bench         the per-cell measurement core                     torch; no Ray or Polars (a bare GPU box has neither)
    presentation  tables, figures, plots, comparisons, target lines no Ray
    driver        the command lines and the Ray runner: anything

Every import counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PACKAGE = ROOT / "fuyu_ray"
MAY_IMPORT = {  # the fuyu_ray layers each layer may import
    "job": {"job", "tasks"},
    "tasks": {"tasks"},
    "storage": {"storage", "job", "tasks"},
    "bench": {"bench", "storage", "job", "tasks"},
    "presentation": {"presentation", "bench", "storage", "job", "tasks"},
    "driver": {"driver", "presentation", "bench", "storage", "job", "tasks"},
}
FORBIDDEN_LIBRARIES = {
    "job": {"torch", "transformers", "ray", "polars", "datasets"},
    "tasks": {"torch", "transformers", "ray", "polars", "datasets"},
    "storage": {"torch", "transformers", "ray", "datasets"},
    "bench": {"ray", "polars"},
    "presentation": {"ray"},
    "driver": set(),
}


def imported_modules(source: str, package: str = "fuyu_ray") -> set[str]:
    """Every module the source imports, by its full name; `package` is the source's own package, against
    which relative imports (`from ..driver.store import ResultStore`) resolve."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            modules.add(module)
            if node.module is None or module == "fuyu_ray":  # `from fuyu_ray import tasks`, `from .. import bench`
                modules.update(f"{module}.{alias.name}" for alias in node.names)
    return modules


def violations(layer: str, source: str) -> list[str]:
    found = []
    for module in sorted(imported_modules(source, f"fuyu_ray.{layer}")):
        parts = module.split(".")
        if parts[0] == "fuyu_ray" and len(parts) > 1 and parts[1] in MAY_IMPORT:
            if parts[1] not in MAY_IMPORT[layer]:
                found.append(f"imports {module}")
        elif parts[0] in FORBIDDEN_LIBRARIES[layer]:
            found.append(f"imports {module}")
    return found


def layer_files() -> list[tuple[str, Path]]:
    return [(layer, path) for layer in MAY_IMPORT for path in sorted((PACKAGE / layer).glob("*.py"))]


def test_every_module_is_in_a_layer():
    """The package's top level holds only the five commands, each a line that calls its driver module."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "compare.py", "gpu_check.py", "grid.py", "recommend.py", "report.py"]
    for name in ("compare", "gpu_check", "grid", "recommend", "report"):
        assert imported_modules((PACKAGE / f"{name}.py").read_text()) == {"sys", f"fuyu_ray.driver.{name}"}
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(MAY_IMPORT)


@pytest.mark.parametrize("layer, path", layer_files(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_a_module_imports_only_what_its_layer_may(layer, path):
    assert violations(layer, path.read_text()) == [], f"{path.relative_to(ROOT)}"


@pytest.mark.parametrize(
    "layer, crossing, reported",
    [
        ("job", "def f():\n    import torch\n", "torch"),
        ("job", "from fuyu_ray.bench.runner import CellRunner\n", "fuyu_ray.bench.runner"),
        ("tasks", "from fuyu_ray.job.spec import TaskOverride\n", "fuyu_ray.job.spec"),
        ("bench", "import ray\n", "ray"),
        ("bench", "from fuyu_ray.driver import store\n", "fuyu_ray.driver"),
        ("bench", "from fuyu_ray import driver\n", "fuyu_ray.driver"),
        ("bench", "import polars as pl\n", "polars"),
        ("bench", "from ..driver.grid import main\n", "fuyu_ray.driver.grid"),
        ("bench", "from fuyu_ray.presentation import report\n", "fuyu_ray.presentation"),
        ("storage", "import torch\n", "torch"),
        ("storage", "from fuyu_ray.bench.runner import CellRunner\n", "fuyu_ray.bench.runner"),
        ("presentation", "import ray\n", "ray"),
        ("presentation", "def f():\n    from ..driver.grid import main\n", "fuyu_ray.driver.grid"),
        ("bench", "from .. import driver\n", "fuyu_ray.driver"),
        ("job", "def f():\n    from ..bench.runner import CellRunner\n", "fuyu_ray.bench.runner"),
        ("tasks", "from ..job import spec\n", "fuyu_ray.job"),
    ],
)
def test_a_crossing_added_to_a_module_of_the_layer_is_caught(layer, crossing, reported):
    """The check that guards the modules above, on one of them with one import added: the module as it
    is passes, and the added import is what is reported, however it is written."""
    path = sorted((PACKAGE / layer).glob("*.py"))[-1]
    source = path.read_text()
    assert violations(layer, source) == []
    assert violations(layer, source + crossing) == [f"imports {reported}"]


@pytest.mark.parametrize(
    "layer, source",
    [
        ("bench", "from .measure import spread\n"),
        ("bench", "from ..storage.records import cell_batch\n"),
        ("presentation", "from ..storage.store import ResultStore\n"),
        ("driver", "from ..bench import runner\n"),
        ("job", "from . import spec\n"),
    ],
)
def test_a_relative_import_within_the_layers_allowed_is_no_crossing(layer, source):
    assert violations(layer, source) == []


def test_importing_a_layer_loads_no_forbidden_library():
    """What the import statements do not show: a light layer that pulls a heavy one in through another."""
    script = (
        "import sys, importlib, pathlib\n"
        "for layer, banned in (('tasks', {'torch', 'ray', 'polars'}), ('job', {'torch', 'ray', 'polars'}),"
        " ('storage', {'torch', 'ray', 'polars'}), ('bench', {'ray', 'polars'}), ('presentation', {'ray'})):\n"
        "    for path in sorted(pathlib.Path('fuyu_ray', layer).glob('*.py')):\n"
        "        importlib.import_module(f'fuyu_ray.{layer}.{path.stem}')\n"
        "    loaded = banned & set(sys.modules)\n"
        "    assert not loaded, f'{layer} loads {sorted(loaded)}'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_a_stand_in_worker_loads_no_model_code():
    """transformers' model classes take seconds to import (4.5 s against 1.7 s for the runner here):
    a worker imports them when it loads a model, and a stand-in worker, which never does, starts fast."""
    script = (
        "import sys\n"
        "import fuyu_ray.bench.runner, fuyu_ray.bench.standin, fuyu_ray.driver.grid, fuyu_ray.storage.store\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('transformers.models', 'transformers.generation',"
        " 'pandas')))\n"
        "print(heavy[:5])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]
