"""Benchmark, not a CI test: grid throughput on a simulated 1-node and 4-node GPU cluster.

    .venv/bin/python tests/bench_grid_throughput.py [--cells 32] [--sleep 1.0]

Each node declares one GPU with nothing behind it; the stand-in model sleeps per cell, so the
figure is the harness's own scaling: scheduling, actors, records, atomic writes. Reports
cells/s end to end (actor start-up included) and in steady state (first cell start to last
cell end), and the 4-node / 1-node ratio of each. The target is >= 3.5x.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parent.parent


def run_on(nodes: int, cells: int, sleep_s: float, work: Path) -> dict:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(nodes):
        cluster.add_node(num_cpus=1, num_gpus=1)
    cluster.wait_for_nodes()
    job = work / f"job-{nodes}.yaml"
    job.write_text(
        f"name: throughput\nmodel: 'standin:sleep={sleep_s}'\nweights: random\nlimit: 1\nmax_actors_per_variant: auto\n"
        "base: {device: cuda, dataset: textvqa, batch_size: 1, image_size: 224, seq_len: 200, optimization: fp16}\n"
        f"sweeps:\n  batch: {{batch_size: {list(range(1, cells + 1))}}}\n"
    )
    out = work / f"out-{nodes}"
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fuyu_ray.grid",
                "--job",
                str(job),
                "--out",
                str(out),
                "--address",
                cluster.address,
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        cluster.shutdown()
    run = json.loads((out / "run.json").read_text())
    table = pl.read_parquet(out / "cells.parquet")
    started = min(dt.datetime.fromisoformat(t) for t in table.get_column("started_at"))
    finished = max(dt.datetime.fromisoformat(t) for t in table.get_column("finished_at"))
    return {
        "nodes": nodes,
        "cells": table.height,
        "wall_s": run["wall_s"],
        "end_to_end_cells_per_s": table.height / run["wall_s"],
        "steady_cells_per_s": table.height / (finished - started).total_seconds(),
        "distinct_nodes_used": table.get_column("node_id").n_unique(),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=32)
    parser.add_argument("--sleep", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fr-bench-", dir="/tmp") as work:
        one = run_on(1, args.cells, args.sleep, Path(work))
        four = run_on(4, args.cells, args.sleep, Path(work))
    for result in (one, four):
        print(json.dumps(result))
    end_to_end = four["end_to_end_cells_per_s"] / one["end_to_end_cells_per_s"]
    steady = four["steady_cells_per_s"] / one["steady_cells_per_s"]
    print(
        f"4-node / 1-node cells per second: steady state {steady:.2f}x, end to end {end_to_end:.2f}x (target >= 3.5x)"
    )
    return 0 if steady >= 3.5 else 1


if __name__ == "__main__":
    sys.exit(main())
