"""Shared fixtures: the default job, run once end to end through the real CLI and a real local Ray."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The base point of the tests' small jobs: one CPU cell of TextVQA.
BASE_POINT = {
    "device": "cpu",
    "dataset": "textvqa",
    "batch_size": 1,
    "image_size": 224,
    "seq_len": 200,
    "optimization": "fp32",
}


def free_port() -> int:
    """A loopback port nobody listens on, for a head or a dashboard a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ensure_auth_token() -> None:
    """A head started with RAY_AUTH_MODE=token needs the token to exist first; `ray.init` makes one on
    its own, `ray start` does not. Made once here, as a user would with `ray get-auth-token --generate`."""
    subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"], capture_output=True, check=True
    )


def run_grid(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m fuyu_ray.grid` as a user runs it, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "fuyu_ray.grid", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_job(directory: Path, name: str, model: str, sweeps: str, extra: str = "", **base) -> Path:
    """A small job file; `base` overrides the CPU/textvqa/batch-1 base point, `sweeps` is YAML flow text."""
    point = {
        **BASE_POINT,
        **base,
    }
    job = directory / f"{name}.yaml"
    job.write_text(
        f"name: {name}\nmodel: '{model}'\n{extra}"
        f"base: {{{', '.join(f'{k}: {v}' for k, v in point.items())}}}\n"
        f"sweeps:\n{sweeps}"
    )
    return job


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("smoke") / "out"
    result = run_grid("--job", "jobs/smoke.yaml", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result
