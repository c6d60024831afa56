"""Shared fixtures: the default job, run once end to end through the real CLI and a real local Ray."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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


def cell_files(out: Path) -> list[Path]:
    """The cell files of a run so far, whole files only: a temporary (which pathlib's glob matches too,
    dot or not) is renamed when complete, and one left by a killed driver is not a finished cell."""
    from fuyu_ray.storage.store import TEMP_MARK  # the product's own mark for a file being written

    folder = out / "cells"
    return [p for p in folder.glob("*.parquet") if not p.name.startswith(TEMP_MARK)] if folder.exists() else []


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


@contextlib.contextmanager
def ray_head():
    """A head started as a user starts one (`ray start --head`, its dashboard on loopback, token mode), yielding
    its dashboard URL and the environment its clients need; at the end it stops only the processes it started.
    Its token is the tests' own, in RAY_AUTH_TOKEN, which the head, the `ray job` client and the jobs read."""
    port, dashboard = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="fr-", dir="/tmp")  # Ray's socket paths must stay under 107 characters
    # Jobs run `python` from this venv; Ray 2.60 heads want a token, and the CLI only sends it in token mode.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    process = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            check = subprocess.run([str(BIN / "ray"), "job", "list", "--address", url], env=env, capture_output=True)
            if check.returncode == 0:
                break
            time.sleep(1)
        yield url, env
    finally:
        stop_process_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def stop_process_group(process: subprocess.Popen, grace_s: float = 2.0) -> None:
    """SIGTERM to the group a head started (`--block` makes `ray start` stop its processes on it), then SIGKILL to
    what is left after `grace_s`: a graceful stop of an idle head has taken 30 s, for nothing a test reads."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def submit(url: str, env: dict, job: Path | None, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- python -m fuyu_ray.grid`, as the README shows it."""
    job_args = ["--job", str(job)] if job else []  # none: the default job, from the shipped working dir
    deadline = time.monotonic() + 300  # on a machine busy with other work, the agent has been seen to take 2 minutes
    while True:
        result = subprocess.run(
            [
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                url,
                "--working-dir",
                str(ROOT),
                *extra,
                "--",
                "python",
                "-m",
                "fuyu_ray.grid",
                *job_args,
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        # A new head answers `ray job list` before its job agent takes submissions.
        if "No available agent to submit job" not in result.stdout + result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, ray_auth_token) -> tuple[Path, subprocess.CompletedProcess]:
    """The default job, submitted to a head of our own with `ray job submit` as on a cluster: once for
    every test that reads its results (its output is the job's logs, as the submitting user sees them)."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    with ray_head() as (url, env):
        result = submit(url, env, None, out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result
