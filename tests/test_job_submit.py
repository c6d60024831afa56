"""`ray job submit` against a real head with its dashboard on loopback, as the README shows."""

from __future__ import annotations

import re
import subprocess
import time

import polars as pl
import pytest
from conftest import BIN, cell_files, ray_head, submit, write_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(ray_auth_token):
    with ray_head() as (url, env):
        yield url, env


def test_ray_job_submit_runs_the_default_job_and_logs_a_line_per_cell(smoke_run):
    """The suite's default-job run is this submission (conftest's smoke_run)."""
    out, submitted = smoke_run
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
        tmp_path, "stopped", "standin:sleep=3", f"  batch: {{batch_size: {list(range(1, 11))}}}\n", "limit: 1\n"
    )
    assert submit(url, env, job, out, "--no-wait", "--submission-id", "fuyu-stop-test").returncode == 0
    deadline = time.monotonic() + 120
    while len(cell_files(out)) < 2:
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
    done = len(cell_files(out))
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
