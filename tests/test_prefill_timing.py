"""Time to first token and prefill compute are separate figures: the first is what a user waits,
host set-up included; the second is the first forward alone, which the prefill roofline judges."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fuyu_ray.bench import tiny
from fuyu_ray.bench.cell_columns import latency_columns
from fuyu_ray.bench.measure import BatchTiming, time_batch
from fuyu_ray.bench.workload import Batch, generate


class FakeClock:
    def __init__(self):
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_the_prefill_marks_give_the_first_forward_alone_on_the_host_clock():
    clock = FakeClock()

    def run(token_clock):
        clock.now += 0.030  # host set-up before the first forward
        with token_clock.prefill():
            clock.now += 0.020
        token_clock()
        token_clock.prefill_started()  # later forwards do not move the marks
        clock.now += 0.010
        token_clock.prefill_finished()
        token_clock()
        return "done"

    _, timing = time_batch(run, "cpu", clock=clock)
    assert timing.ttft_s == timing.prefill_s == pytest.approx(0.050)
    assert timing.prefill_compute_s == pytest.approx(0.020)


def test_without_marks_there_is_no_prefill_compute():
    clock = FakeClock()
    _, timing = time_batch(lambda token_clock: token_clock(), "cpu", clock=clock)
    assert timing.prefill_compute_s is None


def test_latency_columns_keep_the_old_names_and_add_the_two_figures():
    timings = [
        BatchTiming(0.1, 0.05, 0.01, 5, 0.03),
        BatchTiming(0.2, 0.07, 0.01, 5, 0.04),
        BatchTiming(0.3, 0.09, 0.01, 5, 0.05),
    ]
    columns = latency_columns(timings, 2, None, None, 1)
    assert columns["prefill_s"] == columns["ttft_s"] == pytest.approx(0.07)
    assert columns["prefill_compute_s"] == pytest.approx(0.04) and columns["prefill_compute_p90_s"] == pytest.approx(
        0.05
    )


@pytest.fixture(scope="module")
def stock():
    from transformers import FuyuForCausalLM

    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(0)
    model = FuyuForCausalLM(tiny.build_config(tokenizer)).eval()
    processor = tiny.build_processor(tokenizer)
    inputs = processor(
        images=[Image.new("RGB", (224, 224), (200, 10, 10))],
        text=["What is it?\n"],
        return_tensors="pt",
        size={"height": 240, "width": 240},
    )
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    loaded = SimpleNamespace(model=model, eos_token_id=tokenizer.eos_token_id, tokenizer=tokenizer, attention="sdpa")
    return loaded, Batch(inputs, [0], inputs["input_ids"].shape[1])


def test_stock_generate_prefill_compute_leaves_out_its_host_set_up(stock, monkeypatch):
    """generate prepares inputs, cache and logits processors before its first forward: TTFT
    includes that, prefill compute does not. Here the set-up is made 200 ms slower."""
    loaded, batch = stock
    model = loaded.model
    prepare = model.prepare_inputs_for_generation
    calls = []

    def slow_first_prepare(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.2)
        return prepare(*args, **kwargs)

    monkeypatch.setattr(model, "prepare_inputs_for_generation", slow_first_prepare)
    _, timing = time_batch(lambda clock: generate(loaded, batch, 4, True, clock), "cpu")
    assert timing.steps == 4
    assert timing.prefill_compute_s is not None and timing.prefill_compute_s > 0
    assert timing.ttft_s >= timing.prefill_compute_s + 0.2
    assert not model._forward_hooks and not model._forward_pre_hooks  # the marks' hooks are gone after the batch
