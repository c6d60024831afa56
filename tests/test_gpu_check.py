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


def test_baseline_and_compile_run_first_so_a_short_budget_still_measures_them():
    from fuyu_ray.gpu_check import DEFAULT_JOB, load_plain_job, ordered_variants

    names = [variant.optimization for variant, _ in ordered_variants(load_plain_job(DEFAULT_JOB, None, None))]
    assert names[:2] == ["fp16", "compile"] and sorted(names) == sorted(set(names))
    assert set(names) == {"fp16", "bf16", "eager", "sdpa", "flash_attention_2", "compile"}


def test_cells_past_the_budget_are_skipped_with_the_reason_and_a_summary_is_left(tmp_path):
    from fuyu_ray.gpu_check import load_plain_job, run

    job = load_plain_job(ROOT / "jobs/gpu-check.json", "tiny", "cpu")
    rows = run(job, str(tmp_path / "out"), log=lambda line: None, budget_s=1e-9)
    assert rows and all(r["status"] == "skipped" and "time budget" in r["error"] for r in rows)
    assert len(list((tmp_path / "out" / "cells").glob("*.parquet"))) == len(rows)
    assert "time budget" in (tmp_path / "out" / "summary.md").read_text()


def test_targets_are_read_off_the_best_preset_at_each_point():
    from fuyu_ray.gpu_check import targets

    def row(optimization, batch, **figures):
        return {"status": "ok", "dataset": "textvqa", "image_size": 224, "seq_len": 200, "batch_size": batch,
                "optimization": optimization, **figures}

    rows = [
        row("fp16", 1, latency_s=0.236), row("compile", 1, latency_s=0.050),
        row("fp16", 16, energy_j_per_sample=6.5, prefill_roofline_ratio=0.57),
        row("compile", 16, energy_j_per_sample=3.2, prefill_roofline_ratio=0.72),
        {**row("compile", 16, energy_j_per_sample=0.1), "dataset": "coco"},  # another point: not a target
    ]
    assert targets(rows) == [
        "Targets (textvqa, image 224, 10 tokens):",
        "- batch 1 latency: 50.0 ms (compile); target <= 66 ms: met",
        "- batch 16 energy: 3.20 J/sample (compile); target <= 3.0: missed",
        "- batch 16 prefill: 72% of the matrix rate (compile); target >= 70%: met",
    ]
    assert targets([]) == []
