"""Cluster-grade operation on a real multi-node Ray cluster (ray.cluster_utils.Cluster).

Worker nodes declare GPUs that do not exist; the stand-in model takes the GPU cells' place,
and everything else (driver, actors, scheduling, records, report) is the real code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest
import ray
from conftest import ROOT, cell_files, run_grid, write_job
from ray.cluster_utils import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1, resources={"bench_node": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def standin_job(tmp_path, model: str, batches: list[int], extra: str = "") -> str:
    return str(
        write_job(
            tmp_path,
            "faults",
            model,
            f"  batch: {{batch_size: {batches}}}\n",
            "weights: random\nlimit: 1\n" + extra,
            device="cuda",
            optimization="fp16",
        )
    )


def cells(out) -> pl.DataFrame:
    return pl.read_parquet(out / "cells.parquet")


def start_driver(job: str, out, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fuyu_ray.grid", "--job", job, "--out", str(out), "--address", address],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(condition, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


def nodes_on_disk(out) -> set[str]:
    found = set()
    for path in cell_files(out):
        found.update(pl.read_parquet(path).get_column("node_id").drop_nulls().to_list())
    return found


def grid_actors() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "fuyu_ray"]


def test_work_spreads_over_the_gpu_nodes(cluster, tmp_path):
    _, workers = cluster
    # Cells long against the gap between the two actors' starts (each imports torch on 2 busy cores),
    # so that the later one still finds work: the test is of the spreading, not of the start-up race.
    job = standin_job(tmp_path, "standin:sleep=2", [1, 2, 3, 4, 5, 6], "max_actors_per_variant: auto\n")
    result = run_grid("--job", job, "--out", str(tmp_path / "out"), "--address", cluster[0].address)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    done = cells(tmp_path / "out")
    assert done.get_column("status").to_list() == ["ok"] * 6
    assert set(done.get_column("node_id")) == {w.node_id for w in workers}
    assert "## Per node" in (tmp_path / "out" / "summary.md").read_text()


def test_killing_an_actor_mid_cell_gives_exactly_one_failed_record_and_the_rerun_finishes(cluster, tmp_path):
    job = standin_job(tmp_path, "standin:sleep=2", [1, 2, 3])
    out = tmp_path / "out"
    driver = start_driver(job, out, cluster[0].address)
    name = wait_for(lambda: [a["name"] for a in grid_actors()])[0]
    wait_for(lambda: len(cell_files(out)) >= 1)
    time.sleep(0.5)  # inside the second cell's two-second sleep
    ray.kill(ray.get_actor(name, namespace="fuyu_ray"), no_restart=False)
    driver.communicate(timeout=120)
    assert driver.returncode == 1  # some cell failed
    statuses = sorted(cells(out).get_column("status").to_list())
    assert statuses == ["failed", "ok", "ok"]  # the restarted actor ran the rest; none dropped or doubled
    assert "died" in cells(out).filter(pl.col("status") == "failed").get_column("error")[0]

    rerun = run_grid("--job", job, "--out", str(out), "--address", cluster[0].address)
    assert rerun.returncode == 0 and "3 cells, 1 to run" in rerun.stdout
    assert cells(out).get_column("status").to_list() == ["ok"] * 3


def test_oom_timeout_and_cuda_errors_are_recorded_and_the_grid_goes_on(cluster, tmp_path):
    job = standin_job(
        tmp_path,
        "standin:sleep=0.2,oom_at_batch=2,hang_at_batch=3,cuda_error_at_batch=5",
        [1, 2, 3, 4, 5, 6],
        "cell_timeout_s: 4\n",
    )
    out = tmp_path / "out"
    result = run_grid("--job", job, "--out", str(out), "--address", cluster[0].address)
    assert result.returncode == 1
    by_batch = dict(cells(out).select("batch_size", "status").rows())
    assert by_batch == {1: "ok", 2: "oom", 3: "timeout", 4: "ok", 5: "failed", 6: "ok"}
    assert cells(out).filter(pl.col("batch_size") == 5).get_column("error")[0].startswith("cuda-fatal: ")
    summary = (out / "summary.md").read_text()
    assert "## Failed, out-of-memory and timed-out cells" in summary and "cell_timeout_s=4" in summary

    kept = run_grid("--job", job, "--out", str(out), "--address", cluster[0].address, "--no-retry-failed")
    assert "6 cells, 0 to run" in kept.stdout


def test_a_node_that_leaves_loses_nothing(cluster, tmp_path):
    head, workers = cluster
    extra_node = head.add_node(num_cpus=1, num_gpus=1, resources={"bench_node": 1})
    head.wait_for_nodes()
    # 3 s cells: the queue outlasts the new node's actor's start (the last of three, on a cold node).
    job = standin_job(tmp_path, "standin:sleep=3", [1, 2, 3, 4, 5, 6, 7, 8], "max_actors_per_variant: auto\n")
    out = tmp_path / "out"
    driver = start_driver(job, out, head.address)
    try:
        # Remove the node only once it has finished a cell of its own: it is then running its next one.
        wait_for(lambda: extra_node.node_id in nodes_on_disk(out), timeout=180)
        head.remove_node(extra_node)
        driver.communicate(timeout=180)
    finally:
        driver.kill()  # a failure here must not leave a driver running into the next test
    table = cells(out)
    assert table.height == 8  # every cell has exactly one record
    assert set(table.get_column("status")) <= {"ok", "failed"}
    on_removed = table.filter(pl.col("node_id") == extra_node.node_id)
    assert on_removed.height >= 1 and set(on_removed.get_column("status")) == {"ok"}  # what it finished is kept
    removed_actors = set(on_removed.get_column("actor"))
    failed = table.filter(pl.col("status") == "failed")
    # Only the cell in flight on the node that left is lost (recorded as failed, to be retried), none elsewhere.
    assert set(failed.get_column("actor")) <= removed_actors, failed.select("actor", "error").rows()
    rerun = run_grid("--job", job, "--out", str(out), "--address", head.address)
    assert rerun.returncode == 0
    assert cells(out).get_column("status").to_list() == ["ok"] * 8


def test_driver_killed_with_sigkill_resumes_without_recomputing(cluster, tmp_path):
    job = standin_job(tmp_path, "standin:sleep=1", [1, 2, 3, 4, 5, 6])
    out = tmp_path / "out"
    driver = start_driver(job, out, cluster[0].address)
    wait_for(lambda: len(cell_files(out)) >= 2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in cell_files(out)}
    assert not (out / "cells.parquet").exists()

    rerun = run_grid("--job", job, "--out", str(out), "--address", cluster[0].address)
    assert rerun.returncode == 0
    assert f"6 cells, {6 - len(finished)} to run" in rerun.stdout
    assert all((out / "cells" / name).stat().st_mtime_ns == stamp for name, stamp in finished.items())
    assert cells(out).height == 6


def test_file_uri_out(cluster, tmp_path):
    job = standin_job(tmp_path, "standin:sleep=0.1", [1, 2])
    result = run_grid("--job", job, "--out", f"file://{tmp_path}/uri-out", "--address", cluster[0].address)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "uri-out" / "summary.md").is_file()
    assert len(cell_files(tmp_path / "uri-out")) == 2
