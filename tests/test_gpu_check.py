"""The GPU check script runs without Ray, Polars or datasets, on the same per-cell code."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq

from conftest import ROOT

BLOCKED = ("ray", "polars", "datasets", "rich", "matplotlib")  # PyYAML comes with transformers


def test_gpu_check_runs_in_process_without_the_cluster_stack(tmp_path):
    job = json.loads((ROOT / "jobs/gpu-check.json").read_text())
    job["limit"] = 2
    job["sweeps"] = {"batch": {"batch_size": [1, 2]}, "optimization": {"optimization": ["fp16", "flash_attention_2"]}}
    small = tmp_path / "job.json"
    small.write_text(json.dumps(job))
    blocker = "import sys; sys.modules.update({name: None for name in %r}); " % (BLOCKED,)
    code = blocker + "from fuyu_ray.gpu_check import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "--job", str(small), "--out", str(tmp_path / "out"), "--model", "tiny", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    cells = [pq.read_table(p).to_pylist()[0] for p in (tmp_path / "out" / "cells").glob("*.parquet")]
    assert sorted(c["status"] for c in cells) == ["ok", "ok", "skipped"]
    assert all(c["accuracy"] is None and c["accuracy_note"] == "random weights" for c in cells if c["status"] == "ok")
    assert all(c["generated_tokens_mean"] == 10 for c in cells if c["status"] == "ok")  # forced to 10, as the anchors
    assert "| preset |" in (tmp_path / "out" / "summary.md").read_text()


def test_bad_gpu_check_job_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "fuyu_ray.gpu_check", "--job", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
