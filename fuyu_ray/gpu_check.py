"""The GPU check: the seed's grid on one GPU, in-process, with no Ray, Polars or datasets.

`python -m fuyu_ray.gpu_check` runs jobs/gpu-check.json (full-size fuyu-8b architecture,
random weights, synthetic data, every preset, 10 generated tokens) through the same
CellRunner the Ray actors use, writes each cell's parquet as it finishes, and a plain
summary. The `fp16` rows are stock transformers (`generate`, dynamic cache, SDPA): the
baseline every other preset is measured against in the same run. The full Polars report can
be made anywhere later: `python -m fuyu_ray.report --job jobs/gpu-check.json --out DIR`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from fuyu_ray.cells import expand
from fuyu_ray.records import cell_batch, outcome_row, sample_table
from fuyu_ray.spec import JobError, parse_job
from fuyu_ray.store import ResultStore

DEFAULT_JOB = Path(__file__).resolve().parent.parent / "jobs" / "gpu-check.json"
COLUMNS = (
    ("optimization", "preset"), ("batch_size", "batch"), ("image_size", "image"), ("dataset", "dataset"),
    ("seq_len", "seq_len"), ("status", "status"), ("latency_s", "latency s"), ("prefill_s", "prefill s"),
    ("decode_s_per_token", "decode s/tok"), ("energy_j_per_sample", "J/sample"),
    ("decode_roofline_ratio", "decode/limit"), ("prefill_roofline_ratio", "prefill/limit"),
    ("compile_s", "compile s"), ("recompiles", "recompiles"), ("attention", "attention"),
)


def load_plain_job(path: Path, model: str | None, device: str | None):
    """JSON is YAML too: the same file feeds `fuyu_ray.grid`, and needs no PyYAML here."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise JobError(f"{path}: {exc}") from None
    if model:
        raw["model"] = model
    if device:
        raw["base"]["device"] = device
    return parse_job(raw, str(path))


def run(job, out: str, log=print) -> list[dict]:
    import torch

    from fuyu_ray.runner import CellRunner

    store = ResultStore.at(out)
    store.ensure_dirs()
    rows = []
    for variant, cells in expand(job).by_variant().items():
        started = time.perf_counter()
        try:
            runner = CellRunner(variant, min_energy_window_s=job.min_energy_window_s, context={"actor": "gpu_check"})
        except Exception as exc:  # one variant that cannot load must not cost the others their run
            runner = None
            load_error = f"model load failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"{variant.label}: {load_error}")
        else:
            log(f"{variant.label}: loaded in {time.perf_counter() - started:.1f}s" + (f" (skipped: {runner.unsupported})" if runner.unsupported else ""))
        for cell in cells:
            if runner is None:
                record, samples = cell_batch(outcome_row(cell.settings(), "failed", load_error)), sample_table([])
            else:
                result = runner.run(cell)
                record, samples = result.record, result.samples
            store.write_cell(record, samples)
            row = record.to_pylist()[0]
            rows.append(row)
            log(f"  {cell.point.dataset} batch={cell.point.batch_size} image={cell.point.image_size} "
                f"seq_len={cell.point.seq_len}: {row['status']} latency={_fmt(row['latency_s'])}s {row['error'] or ''}")
        del runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    store.write_bytes("summary.md", summary(job, rows).encode())
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def summary(job, rows: list[dict]) -> str:
    first = next((r for r in rows if r["status"] == "ok"), {})
    lines = [
        f"# {job.name}: {first.get('model_label', job.model)}", "",
        f"GPU: {first.get('gpu_name')} (driver {first.get('driver_version')}), torch threads {first.get('torch_threads')}; "
        "fp16 = stock transformers generate (dynamic cache, SDPA), the baseline of this run.", "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for row in sorted(rows, key=lambda r: (r["optimization"], r["batch_size"], r["image_size"], r["dataset"], -r["seq_len"])):
        lines.append("| " + " | ".join(_fmt(row.get(key)) for key, _ in COLUMNS) + " |")
    lines += ["", *speedups(rows)]
    return "\n".join(lines) + "\n"


def speedups(rows: list[dict]) -> list[str]:
    """Each preset against the stock baseline at the targets' points (textvqa, image 224)."""
    def point(row):
        return row["status"] == "ok" and row["dataset"] == "textvqa" and row["image_size"] == 224 and row["seq_len"] == 200

    lines = []
    for batch in (1, 16):
        at = {r["optimization"]: r for r in rows if point(r) and r["batch_size"] == batch}
        stock = at.get("fp16")
        if not stock:
            continue
        for name, row in sorted(at.items()):
            lines.append(
                f"- batch {batch}, {name}: {row['latency_s'] * 1000:.1f} ms ({stock['latency_s'] / row['latency_s']:.2f}x stock), "
                f"J/sample {_fmt(row['energy_j_per_sample'])}, prefill/limit {_fmt(row['prefill_roofline_ratio'])}, "
                f"decode/limit {_fmt(row['decode_roofline_ratio'])}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuyu_ray.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, default=DEFAULT_JOB)
    parser.add_argument("--out", default="results/gpu-check")
    parser.add_argument("--model", help="override the job's model (e.g. tiny, to try the script on a CPU)")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="override the job's device")
    args = parser.parse_args(argv)
    try:
        job = load_plain_job(args.job, args.model, args.device)
    except JobError as exc:
        print(f"fuyu_ray: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = run(job, args.out)
    print(f"{len(rows)} cells in {time.perf_counter() - started:.0f}s; summary: {args.out}/summary.md")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
