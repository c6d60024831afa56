"""`ray job submit` against a real head with its dashboard on loopback, as the README shows."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import ROOT, free_port, write_job

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def head(ray_auth_token):
    """A head we start and, at the end, stop: only the processes it started. Its token is the tests' own,
    in RAY_AUTH_TOKEN, which the head, the `ray job` client and the jobs' processes all read."""
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
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        check = subprocess.run([str(BIN / "ray"), "job", "list", "--address", url], env=env, capture_output=True)
        if check.returncode == 0:
            break
        time.sleep(1)
    yield url, env
    os.killpg(process.pid, signal.SIGTERM)  # --block makes `ray start` stop its own processes on SIGTERM
    process.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def submit(url: str, env: dict, job: Path | None, out: Path, *extra: str) -> subprocess.CompletedProcess:
    job_args = ["--job", str(job)] if job else []  # none: the default job, from the shipped working dir
    deadline = time.monotonic() + 120
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


def test_ray_job_submit_runs_the_default_job_and_logs_a_line_per_cell(head, tmp_path):
    url, env = head
    out = tmp_path / "report"
    submitted = submit(url, env, None, out)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    cells = pl.read_parquet(out / "cells.parquet")
    assert set(cells.get_column("status")) == {"ok", "skipped"}
    assert (out / "summary.md").is_file() and (out / "plots" / "latency_energy_plot.png").is_file()
    cell_lines = [line for line in submitted.stdout.splitlines() if re.match(rf"\[\d+/{cells.height}\] ", line)]
    assert len(cell_lines) == cells.height
    assert "Ray dashboard: http://127.0.0.1:" in submitted.stdout


def test_ray_job_stop_ends_cleanly_and_a_rerun_resumes(head, tmp_path):
    url, env = head
    out = tmp_path / "report"
    job = write_job(
        tmp_path, "stopped", "standin:sleep=1", f"  batch: {{batch_size: {list(range(1, 11))}}}\n", "limit: 1\n"
    )
    assert submit(url, env, job, out, "--no-wait", "--submission-id", "fuyu-stop-test").returncode == 0
    deadline = time.monotonic() + 120
    while not ((out / "cells").exists() and len(list((out / "cells").glob("*.parquet"))) >= 2):
        if time.monotonic() > deadline:
            logs = subprocess.run(
                [str(BIN / "ray"), "job", "logs", "--address", url, "fuyu-stop-test"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            raise AssertionError(f"no two cells in 120 s; job logs:\n{logs.stdout[-3000:]}{logs.stderr[-2000:]}")
        time.sleep(0.5)
    stop = subprocess.run(
        [str(BIN / "ray"), "job", "stop", "--address", url, "fuyu-stop-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stderr[-2000:]
    done = len(list((out / "cells").glob("*.parquet")))
    assert done < 10
    logs = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", url, "fuyu-stop-test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "interrupted: finished cells are on disk" in logs.stdout
    # The dashboard lists the submission's record: the driver put the job's facts in its metadata.
    listed = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", url], env=env, capture_output=True, text=True, timeout=60
    )
    entry = next(line for line in listed.stdout.split("JobDetails(") if "fuyu-stop-test" in line)
    assert "'job_name': 'stopped'" in entry and "'cells_total': '10'" in entry, entry

    resumed = submit(url, env, job, out)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    assert f"10 cells, {10 - done} to run" in resumed.stdout
    assert pl.read_parquet(out / "cells.parquet").get_column("status").to_list() == ["ok"] * 10
