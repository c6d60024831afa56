"""Benchmark, not a CI test: the CPU presets on the full-size fuyu-8b architecture, side by side, against
the machine's own memory bandwidth.

    .venv/bin/python tests/bench_quantized.py [--presets fp32,bf16,int8,int4] [--small] [--limit N]

Random weights (nothing is downloaded), batch 1, 224 px TextVQA, 10 new tokens, each preset through the
same CellRunner the Ray actors use, one after another, each in a process of its own so that one model's
memory is gone before the next loads (bf16 full size peaks near 19.4 GB of RSS). First it times reading
a 2 GiB tensor (a sum, and a matrix-vector product): the faster is the read bandwidth that every
preset's limit is taken against. Per preset:
decode s/token, prefill s, peak RSS (of the whole process, load included, and of the timed window
alone), weight bytes, the bandwidth
limit (weight bytes read once per token at the measured bandwidth) and decode's ratio to it, and
whether its greedy tokens equal bf16's. A preset that cannot run here (fp32
whose 37.6 GB do not fit) is listed with the reason. Then the targets:

    int8 decode <= 0.40 x bf16's; int8 weight bytes <= 0.55 x bf16's;
    bf16 decode <= 1.5 x its bandwidth limit; int8 decode <= 1.6 x its own limit.

`--small` builds fuyu-8b's widths with 2 decoder layers and a 32,768-token vocabulary (1.3 GB in
bf16): to try the script out in a minute, not for the figures. Needs the machine to itself: other
processes' memory traffic lowers every figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "adept/fuyu-8b"
TARGETS = (  # (what, figure, at most)
    ("int8 decode / bf16 decode", lambda r: ratio(r, "int8", "bf16", "decode_s_per_token"), 0.40),
    ("int8 weight bytes / bf16 weight bytes", lambda r: ratio(r, "int8", "bf16", "model_weight_bytes"), 0.55),
    ("bf16 decode / its bandwidth limit", lambda r: r.get("bf16", {}).get("limit_ratio"), 1.5),
    ("int8 decode / its bandwidth limit", lambda r: r.get("int8", {}).get("limit_ratio"), 1.6),
)


def ratio(results: dict, a: str, b: str, column: str) -> float | None:
    top, bottom = results.get(a, {}).get(column), results.get(b, {}).get(column)
    return top / bottom if top is not None and bottom else None


def read_bandwidth_gbps(gib: int = 2, trials: int = 5) -> dict[str, float]:
    """Bytes read per second over a `gib` GiB fp32 tensor, best of `trials`, two ways: a sum, and a
    matrix-vector product (what a decode step does). The faster is the limit: on some CPUs a sum with
    torch's threads does not saturate memory, and a limit that is too low flatters every ratio."""
    import torch

    data = torch.ones((gib << 30) // 4, dtype=torch.float32)
    matrix, vector = data.view(16384, -1), torch.ones(data.numel() // 16384)
    figures = {}
    for name, read in (("sum", data.sum), ("matrix-vector", lambda: torch.mv(matrix, vector))):
        read()  # pages touched, threads started
        best = float("inf")
        for _ in range(trials):
            started = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - started)
        figures[name] = data.numel() * 4 / best / 1e9
    return figures


def one_preset(preset: str, small: bool, limit: int) -> dict:
    """Run the preset's cell in this process; its record's figures, the process's peak RSS and the answers."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the random-weight config is FuyuConfig()'s: nothing to fetch
    from fuyu_ray.bench import models
    from fuyu_ray.bench.runner import CellRunner
    from fuyu_ray.job.cells import Cell, Variant
    from fuyu_ray.job.spec import DatasetSource, Point, TaskOverride

    if small:
        config = models.full_size_config(MODEL)
        config.text_config.num_hidden_layers = 2
        config.text_config.vocab_size = config.vocab_size = 32768
        models._configs[MODEL] = config  # the widths of fuyu-8b, fewer layers and words
    cell = Cell(
        MODEL, "random", limit, Point("cpu", "textvqa", 1, 224, 200, preset), DatasetSource(), TaskOverride(None, 10)
    )
    result = CellRunner(Variant(MODEL, "random", "cpu", preset), min_energy_window_s=0.1).run(cell)
    row = result.record.to_pylist()[0]
    keep = (
        "status error decode_s_per_token prefill_s prefill_compute_s latency_s model_weight_bytes peak_rss_bytes "
        "load_s compile_s warmup_s decoder torch_threads first_token_top1_match"
    ).split()
    figures = {k: row[k] for k in keep}
    figures["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    figures["generated_ids"] = result.samples.column("generated_ids").to_pylist() if result.samples.num_rows else []
    return figures


def run_presets(presets: list[str], small: bool, limit: int) -> dict[str, dict]:
    results = {}
    for preset in presets:
        started = time.perf_counter()
        command = [sys.executable, __file__, "--one", preset, "--limit", str(limit)]
        if small:
            command.append("--small")
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            results[preset] = {"status": "failed", "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            results[preset] = json.loads(lines[-1])
        results[preset]["wall_s"] = time.perf_counter() - started
        print(f"{preset}: {results[preset].get('status')} in {results[preset]['wall_s']:.0f} s", flush=True)
    return results


def gb(value) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def seconds(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(results: dict[str, dict], bandwidth: float) -> str:
    reference = results.get("bf16", {}).get("generated_ids")
    lines = [
        "| preset | decode s/token | prefill s | peak RSS, load / timed | weights | bandwidth limit s/token "
        "| decode / limit | tokens = bf16's | load s | compile s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for preset, r in results.items():
        if r.get("status") != "ok":
            lines.append(f"| {preset} | | | | | | | | | | {r.get('status')}: {r.get('error')} |")
            continue
        limit = r["model_weight_bytes"] / (bandwidth * 1e9)
        r["limit_s"], r["limit_ratio"] = limit, r["decode_s_per_token"] / limit
        same = "-" if not reference else ("yes" if r["generated_ids"] == reference else "no")
        lines.append(
            f"| {preset} | {seconds(r['decode_s_per_token'])} | {seconds(r['prefill_s'])} | "
            f"{gb(r['process_peak_rss_bytes'])} / {gb(r['peak_rss_bytes'])} | {gb(r['model_weight_bytes'])} | "
            f"{limit:.3f} | "
            f"{r['limit_ratio']:.2f} | {same} | {r['load_s']:.0f} | {seconds(r['compile_s'])} | ok |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fp32,bf16,int8,int4")
    parser.add_argument("--small", action="store_true", help="2 layers, a 32,768-token vocabulary: a trial run")
    parser.add_argument("--limit", type=int, default=1, help="samples, one batch each")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one preset
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_preset(args.one, args.small, args.limit)), flush=True)
        return 0
    reads = read_bandwidth_gbps()
    bandwidth = max(reads.values())
    measured = ", ".join(f"{name} {gbps:.1f} GB/s" for name, gbps in reads.items())
    print(f"read bandwidth: {bandwidth:.1f} GB/s ({measured}; over 2 GiB, best of 5)", flush=True)
    results = run_presets(args.presets.split(","), args.small, args.limit)
    print(table(results, bandwidth))
    print(f"\nread bandwidth measured in this run: {bandwidth:.1f} GB/s ({measured})")
    met = True
    for what, figure, most in TARGETS:
        value = figure(results)
        verdict = "not measured" if value is None else ("met" if value <= most else "missed")
        met &= verdict == "met"
        print(f"target: {what} = {'-' if value is None else f'{value:.2f}'} (<= {most}): {verdict}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
