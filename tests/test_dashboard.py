"""What a user finds in the Ray dashboard, read through the dashboard's own REST API with the
cluster's token, as the browser page does after the token is pasted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port, run_grid, stop_process_group, write_job

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Head:
    address: str  # host:port of its GCS, for --address
    dashboard: str  # the dashboard's URL
    token: str  # the token it wants


@pytest.fixture(scope="module")
def head(ray_auth_token):
    """A head started as a user starts one, with token authentication on (Ray 2.60's default
    for `ray start` when RAY_AUTH_MODE=token), in its own process group so that it goes away whole."""
    port, dashboard_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            "--disable-usage-stats",
        ],
        env={**os.environ, **TOKEN_AUTH},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        assert eventually(lambda: dashboard_up(dashboard), timeout=90), "the head's dashboard never came up"
        yield Head(f"127.0.0.1:{port}", dashboard, ray_auth_token)
    finally:
        stop_process_group(process)


TOKEN_AUTH = {"RAY_AUTH_MODE": "token"}


def dashboard_up(dashboard: str) -> bool:
    try:
        urllib.request.urlopen(f"{dashboard}/", timeout=2).close()
        return True
    except urllib.error.HTTPError:
        return True  # it answers, if only to ask for the token
    except OSError:
        return False


def get(head: Head, path: str):
    """A dashboard REST answer, asked with the cluster's token as the browser page asks once it is pasted."""
    request = urllib.request.Request(f"{head.dashboard}{path}", headers={"Authorization": f"Bearer {head.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def eventually(read, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(1.0)


def test_the_dashboard_shows_the_job_by_name_and_tasks_by_cell(head, tmp_path):
    job = write_job(
        tmp_path,
        "dashboard-check",
        "standin:sleep=0.2",
        "  batch: {batch_size: [1, 2]}\n",
        "weights: random\nlimit: 1\n",
    )
    out = tmp_path / "out"
    result = run_grid("--job", str(job), "--out", str(out), "--address", head.address, env=TOKEN_AUTH)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    def our_job():
        return next(
            (j for j in get(head, "/api/jobs/") if (j.get("metadata") or {}).get("job_name") == "dashboard-check"),
            None,
        )

    listed = eventually(our_job)
    assert listed is not None, "the job is not listed with its name"
    assert listed["metadata"]["job_file"] == str(job) and listed["metadata"]["cells_total"] == "2"
    assert listed["metadata"]["out"] == str(out)
    assert "-m fuyu_ray.grid --job" in listed["entrypoint"]

    def cell_tasks():
        tasks = get(
            head, f"/api/v0/tasks?limit=1000&filter_keys=job_id&filter_predicates=%3D&filter_values={listed['job_id']}"
        )
        names = [t["name"] for t in tasks["data"]["result"]["result"]]
        return [n for n in names if n.startswith("CellWorker.run cpu fp32 textvqa batch=")]

    names = eventually(lambda: len(cell_tasks()) >= 2 and cell_tasks())
    assert names and {n.split(" image=")[0] for n in names} == {
        "CellWorker.run cpu fp32 textvqa batch=1",
        "CellWorker.run cpu fp32 textvqa batch=2",
    }


def test_a_head_that_wants_a_token_the_driver_lacks_is_one_line_and_exit_2(head, tmp_path):
    job = write_job(
        tmp_path, "no-token", "standin:sleep=0.1", "  batch: {batch_size: [1]}\n", "weights: random\nlimit: 1\n"
    )
    result = run_grid(
        "--job",
        str(job),
        "--out",
        str(tmp_path / "out"),
        "--address",
        head.address,
        env={"RAY_AUTH_MODE": "disabled"},
        timeout=120,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("fuyu_ray:")]
    assert len(lines) == 1 and "token" in lines[0] and "RAY_AUTH_MODE=token" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
