"""Roofline logic on CPU: chip peaks by NVML name, measured overrides, and the two ratios."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import torch

from fuyu_ray.bench.hardware import (
    ChipPeak,
    best_loop_seconds,
    chip_peak,
    measure_peaks,
    peak_overrides,
    roofline_columns,
)
from fuyu_ray.job.cells import Variant
from fuyu_ray.job.presets import PRESETS


def test_peaks_are_found_by_nvml_name_most_specific_first():
    assert chip_peak("NVIDIA H200")[0] == ChipPeak(4800, 989)
    assert chip_peak("NVIDIA H200 NVL")[0] == ChipPeak(4800, 835)  # not the SXM part's 989
    assert chip_peak("NVIDIA H100 NVL")[0].bandwidth_gbps == 3900
    assert chip_peak("NVIDIA H100 80GB HBM3")[0].bandwidth_gbps == 3350
    assert chip_peak("NVIDIA A100-SXM4-80GB")[0].bandwidth_gbps == 2039
    assert chip_peak("NVIDIA A100-SXM4-40GB")[0].bandwidth_gbps == 1555
    assert chip_peak("NVIDIA L4")[0].fp16_tflops == 121
    assert chip_peak("NVIDIA A10G")[0].bandwidth_gbps == 600
    peak, reason = chip_peak("Some Future GPU")
    assert peak is None and "FUYU_RAY_PEAK_BANDWIDTH_GBPS" in reason


def test_measured_bandwidth_overrides_the_table(monkeypatch):
    assert chip_peak("NVIDIA H200")[1] == "datasheet"
    monkeypatch.setenv("FUYU_RAY_PEAK_BANDWIDTH_GBPS", "4300")
    peak, source = chip_peak("NVIDIA H200")
    assert (peak.bandwidth_gbps, peak.fp16_tflops) == (4300.0, 989)
    assert source == "bandwidth from FUYU_RAY_PEAK_BANDWIDTH_GBPS"


def test_measured_peaks_become_the_limits(monkeypatch):
    for name, value in peak_overrides(ChipPeak(4312.4, 791.2)).items():
        monkeypatch.setenv(name, value)
    peak, source = chip_peak("NVIDIA H200")
    assert (peak.bandwidth_gbps, peak.fp16_tflops) == (4312.0, 791.0)
    assert "bandwidth from" in source and "rate from" in source


def test_peaks_are_measured_as_work_over_time():
    ticks = itertools.count()  # every clock read is one second later: each timed loop takes 1 s
    peak = measure_peaks(
        "cpu", matrix_side=64, copy_bytes=1 << 20, repeats=3, warm_up_s=0, clock=lambda: float(next(ticks))
    )
    assert peak.fp16_tflops == 2 * 64**3 * 3 / 1e12  # 3 products of 64 x 64 matrices in 1 s
    assert peak.bandwidth_gbps == 2 * (1 << 20) * 3 / 1e9  # 3 copies of 1 MiB, read and written, in 1 s
    real = measure_peaks("cpu", matrix_side=64, copy_bytes=1 << 20, repeats=3, warm_up_s=0.01)
    assert real.fp16_tflops > 0 and real.bandwidth_gbps > 0


def test_the_best_loop_counts_after_the_warm_up():
    calls, readings = (
        [],
        iter(
            [
                0.0,
                0.5,
                1.0,  # warm-up: calls until the clock reaches 1 s (2 calls)
                10.0,
                14.0,
                20.0,
                22.0,
                30.0,
                33.0,
            ]
        ),
    )  # three timed loops: 4 s, 2 s, 3 s
    seconds = best_loop_seconds(
        lambda: calls.append(1), "cpu", repeats=5, trials=3, warm_up_s=1.0, clock=lambda: next(readings)
    )
    assert seconds == 2.0
    assert len(calls) == 2 + 3 * 5


class TinyLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(100_000, 10)  # 2 MB in fp16 that a decode step does not read
        self.proj = torch.nn.Linear(1000, 500, bias=False)  # 1 MB in fp16

    def get_input_embeddings(self):
        return self.embed


def test_ratios_against_the_limits(monkeypatch):
    monkeypatch.setenv("FUYU_RAY_PEAK_BANDWIDTH_GBPS", "1000")  # 1 TB/s
    monkeypatch.setenv("FUYU_RAY_PEAK_TFLOPS", "100")
    loaded = SimpleNamespace(
        model=TinyLM().half(), variant=Variant("m", "random", "cuda", "fp16"), preset=PRESETS["fp16"]
    )
    flops = {"flops_per_sample": 1e12}
    columns = roofline_columns("Unknown GPU", loaded, 0.02, 4e-6, flops, batch_size=2)
    assert abs(columns["decode_roofline_ratio"] - 1e-6 / 4e-6) < 1e-9  # 1 MB at 1 TB/s = 1 us, measured 4 us
    assert abs(columns["prefill_roofline_ratio"] - (2e12 / 100e12) / 0.02) < 1e-9
    fp32 = SimpleNamespace(model=TinyLM(), variant=Variant("m", "random", "cuda", "fp32"), preset=PRESETS["fp32"])
    assert roofline_columns("Unknown GPU", fp32, 0.02, 4e-6, flops, batch_size=2)["prefill_roofline_ratio"] is None


def test_decode_limit_includes_the_kv_cache_of_the_real_context(monkeypatch):
    from transformers import FuyuForCausalLM

    from fuyu_ray.bench import tiny
    from fuyu_ray.bench.hardware import weight_bytes_per_token

    monkeypatch.setenv("FUYU_RAY_PEAK_BANDWIDTH_GBPS", "1000")
    monkeypatch.setenv("FUYU_RAY_PEAK_TFLOPS", "100")
    config = tiny.build_config(tiny.build_tokenizer())
    model = FuyuForCausalLM(config).half()
    text = config.text_config
    per_token = 2 * text.num_hidden_layers * text.hidden_size * 2  # keys and values, every layer, fp16
    loaded = SimpleNamespace(model=model, variant=Variant("tiny", "random", "cuda", "fp16"), preset=PRESETS["fp16"])
    columns = roofline_columns("Unknown GPU", loaded, None, 1e-3, {}, batch_size=4, context_tokens=100.5)
    limit = (weight_bytes_per_token(model) + 4 * per_token * 100.5) / 1e12
    assert abs(columns["decode_roofline_ratio"] - limit / 1e-3) < 1e-12
    without_cache = roofline_columns("Unknown GPU", loaded, None, 1e-3, {}, batch_size=4)["decode_roofline_ratio"]
    assert without_cache < columns["decode_roofline_ratio"]


def test_cpu_cells_have_no_roofline():
    loaded = SimpleNamespace(variant=Variant("m", "random", "cpu", "fp32"))
    assert roofline_columns(None, loaded, None, None, {}, 1) == {"roofline_note": "roofline is for GPU cells"}


def test_the_longest_matching_name_wins_whatever_the_table_order(monkeypatch):
    from fuyu_ray.bench import hardware

    monkeypatch.setattr(hardware, "GPU_PEAKS", tuple(reversed(hardware.GPU_PEAKS)))  # generic names first
    assert chip_peak("NVIDIA H200 NVL")[0].fp16_tflops == 835
    assert chip_peak("NVIDIA H100 NVL")[0].bandwidth_gbps == 3900
    assert chip_peak("NVIDIA A100-SXM4-80GB")[0].bandwidth_gbps == 2039
    assert chip_peak("NVIDIA A10G")[0].bandwidth_gbps == 600
    assert chip_peak("NVIDIA L40S")[0].fp16_tflops == 362
