"""One crash is one failed cell on a crowded single node, where a restarted actor must wait.

Two variants share one 2-CPU node and each actor wants the whole node, so one runs while the
other waits in PENDING_CREATION. A worker killed with SIGKILL mid-cell hands its CPUs to the
waiting variant, and Ray's restart of it waits for resources until that variant is done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import polars as pl
import psutil
import pytest
import ray
from conftest import ROOT, run_grid, write_job
from ray._private.state import actors
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def crowded_node():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    ray.init(address=cluster.address)  # to read the cluster's actor table; a driver holds no CPUs
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def cell_workers() -> dict[str, dict]:
    """Ray's own record of every CellWorker actor the cluster has had, dead ones included, by name.
    Read from the GCS, as the scheduler reads an actor's state: the state API needs a dashboard."""
    return {info["Name"]: info for info in actors().values() if info["ActorClassName"] == "CellWorker"}


def running_cell(marker: str) -> psutil.Process | None:
    """The worker process whose title says it is running the cell: Ray titles it
    `ray::CellWorker.run <cell>` for exactly as long as the cell runs. Only this test's own
    cluster is searched (its processes descend from this one), never another run's."""
    for process in psutil.Process().children(recursive=True):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::CellWorker.run") and marker in title:
            return process
    return None


def test_a_worker_killed_mid_cell_costs_one_cell_while_its_restart_waits_for_resources(crowded_node, tmp_path):
    job = write_job(
        tmp_path,
        "crowded",
        "standin:sleep=2",  # long enough for the scan below to find the cell running on a busy machine
        "  variants: {optimization: [fp32, fp16], batch_size: [1, 2, 3, 4]}\n",
        "weights: random\nlimit: 1\n",
    )
    out = tmp_path / "out"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fuyu_ray.grid",
            "--job",
            str(job),
            "--out",
            str(out),
            "--address",
            crowded_node.address,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    victim = None
    while victim is None and time.monotonic() < deadline and driver.poll() is None:
        victim = running_cell("batch=2 ")  # the first variant's second cell has started
        time.sleep(0.05)
    assert victim is not None, "no worker was seen running the second cell"
    victim_title = " ".join(victim.cmdline())
    os.kill(victim.pid, signal.SIGKILL)
    output, _ = driver.communicate(timeout=180)

    assert driver.returncode == 1, output[-3000:]
    table = pl.read_parquet(out / "cells.parquet")
    assert table.height == 8
    failed = table.filter(pl.col("status") == "failed")
    assert failed.height == 1, output[-3000:]
    assert failed.get_column("batch_size").to_list() == [2] and failed.get_column("optimization")[0] in victim_title
    assert "died" in failed.get_column("error")[0]
    assert table.filter(pl.col("status") == "ok").height == 7
    assert "waiting for resources" in output or "restarting" in output  # said while it waited, not counted as deaths

    # The restarted actor itself took its variant's remaining cells; a fresh actor in its place
    # would give the same counts, but another name in the records and a third actor in Ray's table.
    killed = failed.get_column("optimization")[0]
    names = {
        variant: set(table.filter(pl.col("optimization") == variant).get_column("actor").to_list())
        for variant in ("fp32", "fp16")
    }
    assert all(len(each) == 1 for each in names.values()), names  # one actor per variant ran all its cells
    workers = cell_workers()
    assert set(workers) == names["fp32"] | names["fp16"], sorted(workers)
    restarts = {variant: workers[next(iter(each))]["NumRestarts"] for variant, each in names.items()}
    assert restarts == {killed: 1, ({"fp32", "fp16"} - {killed}).pop(): 0}

    rerun = run_grid("--job", str(job), "--out", str(out), "--address", crowded_node.address)
    assert rerun.returncode == 0 and "8 cells, 1 to run" in rerun.stdout, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert pl.read_parquet(out / "cells.parquet").get_column("status").to_list() == ["ok"] * 8
