"""GPU-only checks, skipped where torch sees no CUDA device: token timestamps as CUDA events, and the
`compile` preset's decoder (CUDA graphs) giving the same tokens as `generate` on the GPU."""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NEW_TOKENS = 8
MAX_BATCH = 2


# --------------------------------------------------------------------------- timing


def gpu_busy_cycles_for(seconds: float) -> int:
    """How many torch.cuda._sleep cycles keep this GPU busy for about `seconds`."""
    cycles = 1_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(cycles)  # first call: off the clock
    torch.cuda.synchronize()
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return max(1, int(cycles * seconds / (start.elapsed_time(end) / 1000)))


def test_token_times_on_cuda_are_device_events_not_host_reads():
    """Each "token" queues 5 ms of GPU work and returns at once, as generate's steps do. With host-clock
    stamps every token would look instant and all time would land after the last one; events on the
    stream put each token where the GPU finished it."""
    from fuyu_ray.bench.measure import time_batch

    step_s = 0.005
    cycles = gpu_busy_cycles_for(step_s)
    host_reads = []

    def host_clock() -> float:
        host_reads.append(1)
        return time.perf_counter()

    def model_on_the_gpu(token_clock):
        for _ in range(6):  # prefill, then five decode steps
            torch.cuda._sleep(cycles)
            token_clock()
        return "done"

    _, timing = time_batch(model_on_the_gpu, "cuda", clock=host_clock)
    assert len(host_reads) == 2  # the batch's start and end only
    assert timing.steps == 6
    assert 0.5 * step_s < timing.prefill_s < 3 * step_s, timing
    assert 0.5 * step_s < timing.decode_s_per_token < 3 * step_s, timing
    # the stamps add up to (nearly) the synchronised total
    assert timing.prefill_s + 5 * timing.decode_s_per_token <= timing.total_s + 1e-3
    assert timing.prefill_s + 5 * timing.decode_s_per_token > 0.8 * timing.total_s, timing


def test_cuda_index_is_honoured_by_the_events():
    from fuyu_ray.bench.measure import time_batch

    cycles = gpu_busy_cycles_for(0.002)
    device = f"cuda:{torch.cuda.current_device()}"

    def run(token_clock):
        torch.cuda._sleep(cycles)
        token_clock()
        torch.cuda._sleep(cycles)
        token_clock()

    _, timing = time_batch(run, device)
    assert timing.steps == 2 and timing.prefill_s > 0.001 and timing.decode_s_per_token > 0.001


# --------------------------------------------------------------------------- compiled decoder


@pytest.fixture(scope="module")
def parts():
    from transformers import FuyuForCausalLM

    from fuyu_ray.bench import tiny

    tokenizer = tiny.build_tokenizer()
    config = tiny.build_config(tokenizer)
    torch.manual_seed(0)
    model = FuyuForCausalLM(config).eval().to("cuda")  # fp32: the same arithmetic on both paths
    return model, tiny.build_processor(tokenizer)


@pytest.fixture(scope="module")
def batches(parts):
    from PIL import Image

    _, processor = parts
    made = [Image.new("RGB", (224, 224), (200, 10, 10)), Image.effect_noise((224, 224), 60).convert("RGB")]

    def batch(texts):
        inputs = processor(
            images=[made[i % 2] for i in range(len(texts))],
            text=texts,
            return_tensors="pt",
            size={"height": 240, "width": 240},
        )
        return {k: v.to("cuda") for k, v in inputs.items() if isinstance(v, torch.Tensor)}

    return {
        "a": batch(["What?\n", "Which shape is shown here?\n"]),
        "b": batch(["Is the shape in this picture red or blue?\n", "Name it.\n"]),
        "one": batch(["Is it red?\n"]),
    }


def reference(model, inputs: dict) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


def test_compiled_decoder_with_cuda_graphs_matches_generate(parts, batches):
    from fuyu_ray.bench.decoding import WARM_UP_RUNS, StaticGreedyDecoder

    model, _ = parts
    prompt_len = max(inputs["input_ids"].shape[1] for inputs in batches.values())
    decoder = StaticGreedyDecoder(
        model, max_batch=MAX_BATCH, prompt_len=prompt_len, max_new_tokens=NEW_TOKENS, compiled=True, device="cuda"
    )
    assert all(step.mode == "reduce-overhead" for step in decoder.steps)  # CUDA graphs
    assert decoder.warm_up(batches["one"])[2] == WARM_UP_RUNS
    assert decoder.compilations == 2

    for _ in range(2):  # replayed graphs, twice over: a replay must not overwrite what the last one returned
        for name in ("a", "b", "one"):
            calls = []
            got = decoder.generate(
                batches[name],
                NEW_TOKENS,
                eos_token_id=model.config.eos_token_id,
                ignore_eos=True,
                on_token=lambda: calls.append(1),
            )
            expected = reference(model, batches[name])
            assert got.device.type == "cuda"
            assert torch.equal(got, expected), name
            assert len(calls) == NEW_TOKENS
    assert decoder.recompiles == 0 and decoder.compilations == 2
    assert decoder.cudagraph_skips == 0, decoder.describe()
