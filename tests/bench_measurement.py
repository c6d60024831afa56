"""Benchmark, not a CI test: the timing-sensitive checks of the measurement core and the harness.

    .venv/bin/python tests/bench_measurement.py

1. A stand-in that spins 50 ms per batch (20 ms to the first token, then 3 x 10 ms), timed over 50 batches:
   median total, prefill and decode per token each within 1%, and prefill + decode within 1 ms of the total.
2. The default job end to end: busy / (wall x workers) from run.json, target >= 0.85.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from fuyu_ray.bench.measure import spread, time_batch  # noqa: E402


def spinning_model(token_clock) -> None:
    """50 ms of work that ends exactly when it should: 20 ms to the first token, then 3 x 10 ms.

    time.sleep overshoots each call by a fraction of a millisecond, which would be charged to
    the measurement; spinning on the clock does not.
    """
    start = time.perf_counter()
    for deadline in (0.020, 0.030, 0.040, 0.050):
        while time.perf_counter() - start < deadline:
            pass
        token_clock()


def timing_accuracy() -> bool:
    timings = [time_batch(spinning_model, "cpu")[1] for _ in range(50)]
    latency = spread([t.total_s for t in timings])
    prefill = spread([t.prefill_s for t in timings])
    decode = spread([t.decode_s_per_token for t in timings])
    error = abs(latency.median - 0.050) / 0.050
    prefill_error = abs(prefill.median - 0.020) / 0.020
    decode_error = abs(decode.median - 0.010) / 0.010
    # prefill + 3 decode steps must add up to the batch: nothing lost between the stamps and the total
    worst_gap = max(abs(t.prefill_s + 3 * t.decode_s_per_token - t.total_s) for t in timings)
    steps = {t.steps for t in timings}
    print(
        f"50 ms stand-in: median {latency.median * 1000:.3f} ms (p90 {latency.p90 * 1000:.3f}, n={latency.n}), "
        f"error {error:.3%}; prefill median {prefill.median * 1000:.3f} ms (20 expected, error {prefill_error:.3%}); "
        f"decode median {decode.median * 1000:.3f} ms/token (10 expected, error {decode_error:.3%}); "
        f"largest gap between prefill + decode and the total {worst_gap * 1000:.3f} ms; steps {sorted(steps)}"
    )
    return error < 0.01 and prefill_error < 0.01 and decode_error < 0.01 and worst_gap < 0.001 and steps == {4}


def harness_overhead() -> bool:
    with tempfile.TemporaryDirectory(prefix="fr-bench-") as out:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fuyu_ray.grid", "--out", out], cwd=ROOT, check=True, capture_output=True)
        run = json.loads((Path(out) / "run.json").read_text())
    print(
        f"default job: {time.perf_counter() - started:.1f}s in all; wall {run['wall_s']:.1f}s, busy "
        f"{run['busy_s']:.1f}s, "
        f"workers {run['workers']}, model loads {run['model_loads']}, busy ratio {run['busy_ratio']:.3f} (target "
        ">= 0.85)"
    )
    return run["busy_ratio"] >= 0.85


if __name__ == "__main__":
    results = [timing_accuracy(), harness_overhead()]
    sys.exit(0 if all(results) else 1)
