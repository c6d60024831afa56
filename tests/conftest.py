"""Shared fixtures: the default job, run once end to end through the real CLI and a real local Ray."""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
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


# Nothing the tests do may write in the user's home but the tiny model's cache the README names
# (~/.cache/fuyu_ray). matplotlib's config and font cache and the Hugging Face caches (datasets writes lock
# files even for a local folder) go to a folder of the tests' own, set before any test module imports
# them, and passed on to every process the tests start.
HOME_CACHES = Path(tempfile.mkdtemp(prefix="fuyu-ray-test-caches-"))
os.environ["MPLCONFIGDIR"] = str(HOME_CACHES / "matplotlib")
os.environ["HF_HOME"] = str(HOME_CACHES / "huggingface")
atexit.register(shutil.rmtree, HOME_CACHES, True)


def free_port() -> int:
    """A loopback port nobody listens on, for a head or a dashboard a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def ray_auth_token():
    """A token of the tests' own, for every Ray the tests start and every client of it. Ray 2.60 turns token
    authentication on for a new local cluster, and with no token in RAY_AUTH_TOKEN it makes one in the
    user's home (~/.ray/auth_token); the variable, passed on to every process the tests start, keeps
    the home untouched and the tests' clusters apart from the user's."""
    with pytest.MonkeyPatch.context() as patch:
        token = secrets.token_hex(32)
        patch.setenv("RAY_AUTH_TOKEN", token)
        patch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)  # one source of the token, whichever Ray reads first
        yield token


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
