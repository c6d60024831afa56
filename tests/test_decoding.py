"""The `compile` preset's generator: static cache, fixed shapes, compiled prefill and decode,
same tokens as `generate`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fuyu_ray.bench import tiny
from fuyu_ray.bench.decoding import WARM_UP_RUNS, StaticGreedyDecoder

NEW_TOKENS = 8
MAX_BATCH = 2


@pytest.fixture(scope="module")
def parts():
    from transformers import FuyuForCausalLM

    tokenizer = tiny.build_tokenizer()
    config = tiny.build_config(tokenizer)
    torch.manual_seed(0)
    model = FuyuForCausalLM(config).eval()
    return model, tiny.build_processor(tokenizer)


def images(count: int) -> list[Image.Image]:
    made = [Image.new("RGB", (224, 224), (200, 10, 10)), Image.effect_noise((224, 224), 60).convert("RGB")]
    return [made[i % 2] for i in range(count)]


def batch(processor, texts: list[str]) -> dict:
    inputs = processor(images=images(len(texts)), text=texts, return_tensors="pt", size={"height": 240, "width": 240})
    return {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}


@pytest.fixture(scope="module")
def batches(parts):
    _, processor = parts
    made = {
        "a": batch(processor, ["What?\n", "Which shape is shown here?\n"]),
        "b": batch(processor, ["Is the shape in this picture red or blue?\n", "Name it.\n"]),
        "one": batch(processor, ["Is it red?\n"]),
    }
    lengths = {name: inputs["input_ids"].shape[1] for name, inputs in made.items()}
    assert len(set(lengths.values())) == 3, lengths  # three prompt lengths: shorter ones are padded to the longest
    for name in ("a", "b"):  # rows of different lengths: left padding is exercised
        assert (made[name]["attention_mask"] == 0).any()
    return made


def reference(model, inputs: dict, **options) -> torch.Tensor:
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, **options}
    with torch.inference_mode():
        return model.generate(**inputs, **options)


def full_length_reference(model, inputs: dict) -> torch.Tensor:
    return reference(model, inputs, min_new_tokens=NEW_TOKENS)


def longest(batches) -> int:
    return max(inputs["input_ids"].shape[1] for inputs in batches.values())


def decoder_for(model, batches, compiled: bool, max_batch: int = MAX_BATCH, **shape) -> StaticGreedyDecoder:
    shape = {"prompt_len": longest(batches), "max_new_tokens": NEW_TOKENS, **shape}
    return StaticGreedyDecoder(model, max_batch=max_batch, compiled=compiled, device="cpu", **shape)


@pytest.fixture(scope="module")
def compiled(parts, batches):
    """One compiled decoder for the module: it compiles once, in its warm-up, with the shortest batch."""
    model, _ = parts
    decoder = decoder_for(model, batches, compiled=True)
    first_s, warm_s, runs = decoder.warm_up(batches["one"])
    assert runs == WARM_UP_RUNS and first_s > (warm_s - first_s) / (runs - 1)  # the first compiles; later ones only run
    assert decoder.warm_up(batches["one"])[2] == 1  # a warm decoder needs one
    return decoder, warm_s


@pytest.mark.parametrize("name", ["a", "b", "one"])
def test_eager_decoder_matches_generate_token_for_token(parts, batches, name):
    model, _ = parts
    decoder = decoder_for(model, batches, compiled=False)  # "one" and "b" get extra left padding
    expected = full_length_reference(model, batches[name])
    calls = []
    got = decoder.generate(
        batches[name],
        NEW_TOKENS,
        eos_token_id=model.generation_config.eos_token_id,
        ignore_eos=True,
        on_token=lambda: calls.append(1),
    )
    assert (
        got.shape
        == expected.shape
        == (batches[name]["input_ids"].shape[0], batches[name]["input_ids"].shape[1] + NEW_TOKENS)
    )
    assert torch.equal(got, expected)
    assert len(calls) == NEW_TOKENS
    assert decoder.compile_s == 0.0 and decoder.recompiles == 0


def test_compiled_decoder_matches_generate_without_recompiling(parts, batches, compiled):
    model, _ = parts
    decoder, warm_s = compiled
    assert decoder.compilations == 2 and decoder.compile_s > 0  # one prefill graph, one decode graph
    assert warm_s >= decoder.compile_s
    assert all(step.fullgraph is True and step.mode == "default" for step in decoder.steps)  # no CUDA graphs on CPU
    assert "compiled prefill and decode" in decoder.describe()

    for name in ("a", "b", "one"):  # two prompt lengths at full batch, and one row padded up to MAX_BATCH
        calls = []
        got = decoder.generate(
            batches[name],
            NEW_TOKENS,
            eos_token_id=model.generation_config.eos_token_id,
            ignore_eos=True,
            on_token=lambda: calls.append(1),
        )
        assert torch.equal(got, full_length_reference(model, batches[name])), name
        assert len(calls) == NEW_TOKENS
    assert decoder.recompiles == 0
    assert decoder.compilations == 2


def test_compiled_decode_step_returns_a_fresh_tensor(compiled):
    decoder, _ = compiled
    decoder.reset()  # the cache is sized exactly for one generate: start the two steps at slot 0
    with torch.inference_mode():
        first = decoder.decode_step()
        second = decoder.decode_step()
    assert first.shape == (MAX_BATCH,) and first.dtype == torch.long
    assert first.data_ptr() != second.data_ptr()
    assert decoder.recompiles == 0
    decoder.reset()


def test_decode_refuses_to_write_past_the_cache(compiled):
    decoder, _ = compiled
    decoder.reset()
    for _ in range(decoder.max_cache_len):
        decoder.decode_step()
    with pytest.raises(ValueError, match="cache slots"):
        decoder.decode_step()
    decoder.reset()


def test_later_decoders_compile_static_graphs_without_host_syncs(parts, batches, compiled, capfd):
    """Two properties of the graphs that CUDA graphs need, checked in the graphs Dynamo logs:

    * static shapes: Dynamo marks sizes dynamic when a function it compiled before sees new ones
      (the decode step after the prefill, a second decoder after the first);
    * no device-to-host read: Fuyu's forward checks its placeholder count with `.item()`, which
      would split the prefill's CUDA graph in two, so the prefill builds its embeddings itself.
    """
    import logging

    model, _ = parts
    torch._logging.set_logs(dynamic=logging.INFO, post_grad_graphs=True)  # both go to stderr
    try:
        other = decoder_for(
            model, batches, compiled=True, prompt_len=longest(batches) + 3
        )  # after the module's decoder
        with torch._inductor.config.patch(fx_graph_cache=False):  # a cache hit would log no graph
            got = other.generate(batches["a"], NEW_TOKENS, ignore_eos=True)
    finally:
        torch._logging.set_logs()
    assert torch.equal(got, full_length_reference(model, batches["a"]))
    assert other.compilations == 2
    logged = capfd.readouterr().err
    assert logged.count("def forward") >= 2  # both graphs were logged
    assert "as dynamic" not in logged
    assert "_local_scalar_dense" not in logged and "_assert_scalar" not in logged


def test_eos_pads_finished_rows_like_generate(parts, batches):
    model, _ = parts
    inputs = batches["a"]
    full = full_length_reference(model, inputs)
    prompt = inputs["input_ids"].shape[1]
    eos = int(full[1, prompt + 3])  # row 1 stops at its fourth token
    decoder = decoder_for(model, batches, compiled=False)
    expected = reference(model, inputs, eos_token_id=eos, pad_token_id=model.config.pad_token_id)
    with torch.inference_mode():  # a caller's inference mode is fine too
        got = decoder.generate(inputs, NEW_TOKENS, eos_token_id=eos, ignore_eos=False)
    assert torch.equal(got, expected)
    if eos not in full[0, prompt:].tolist():
        assert (got[1, prompt + 4 :] == model.config.pad_token_id).all()


def test_generation_stops_once_every_real_row_has_ended(parts, batches):
    model, _ = parts
    inputs = batches["one"]
    full = full_length_reference(model, inputs)
    prompt = inputs["input_ids"].shape[1]
    eos = int(full[0, prompt + 2])
    expected = reference(model, inputs, eos_token_id=eos, pad_token_id=model.config.pad_token_id)
    decoder = decoder_for(model, batches, compiled=False)
    calls = []
    got = decoder.generate(inputs, NEW_TOKENS, eos_token_id=eos, ignore_eos=False, on_token=lambda: calls.append(1))
    assert torch.equal(got, expected)
    # The filler row that pads the batch to MAX_BATCH never keeps generation going.
    stop = full[0, prompt:].tolist().index(eos) + 1
    assert got.shape[1] == prompt + stop and len(calls) == stop == decoder.last_steps


def test_limits_are_checked(parts, batches):
    model, _ = parts
    small = decoder_for(model, batches, compiled=False, max_batch=1)
    with pytest.raises(ValueError, match="max_batch"):
        small.generate(batches["a"], NEW_TOKENS)
    short = decoder_for(model, batches, compiled=False, prompt_len=batches["a"]["input_ids"].shape[1] - 1)
    with pytest.raises(ValueError, match="prompt_len"):
        short.generate(batches["a"], NEW_TOKENS)
    decoder = decoder_for(model, batches, compiled=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoder.generate(batches["a"], NEW_TOKENS + 1)
    assert decoder.max_cache_len == longest(batches) + NEW_TOKENS - 1  # the last token is never fed back


def test_the_cache_is_allocated_before_the_first_prefill(parts, batches):
    """A lazily allocated cache would be created inside the compiled prefill, where it cannot be
    marked as a static address, and CUDA graphs would be skipped."""
    model, _ = parts
    decoder = decoder_for(model, batches, compiled=False)
    layer = decoder.cache.layers[0]
    assert layer.is_initialized and layer.keys.shape[0] == MAX_BATCH and layer.keys.shape[2] == decoder.max_cache_len
    assert layer.keys.dtype == next(model.parameters()).dtype


def test_reset_rewinds_every_layer_and_the_step_buffers_in_one_launch(parts, batches):
    """One foreach call for the cache's write positions and the step buffers, not one zero_ per layer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.called = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.called.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    model, _ = parts
    decoder = decoder_for(model, batches, compiled=False)
    decoder.generate(batches["a"], NEW_TOKENS, ignore_eos=True)
    assert all(int(layer.cumulative_length) > 0 for layer in decoder.cache.layers)
    with Ops() as ops:
        decoder.reset()
    assert ops.called == ["_foreach_zero_"]
    assert all(int(layer.cumulative_length) == 0 for layer in decoder.cache.layers)
    assert not decoder._mask.any() and not decoder._tokens.any() and not decoder._positions.any()


def test_generate_makes_no_tensor_from_host_numbers(parts, batches, monkeypatch):
    """A tensor made from a Python number is a copy from pageable host memory, which on a GPU waits
    for the queued prefill: the pad id is made once, with the decoder."""
    import sys

    model, _ = parts
    decoder = decoder_for(model, batches, compiled=False)
    made_here = []
    for name in ("tensor", "as_tensor", "scalar_tensor"):
        original = getattr(torch, name)

        def recording(*args, _original=original, _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename.endswith("decoding.py"):
                made_here.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch, name, recording)
    full = full_length_reference(model, batches["a"])
    eos = int(full[1, batches["a"]["input_ids"].shape[1] + 3])
    decoder.generate(batches["a"], NEW_TOKENS, eos_token_id=eos)  # the eos path, which pads finished rows
    assert made_here == []


def test_the_prefill_timer_brackets_the_first_forward_only(parts, batches):
    model, _ = parts
    decoder = decoder_for(model, batches, compiled=False)
    events = []

    class Timer:
        def __enter__(self):
            events.append("prefill start")

        def __exit__(self, *exc):
            events.append("prefill end")

    decoder.generate(batches["a"], 3, ignore_eos=True, on_token=lambda: events.append("token"), prefill_timer=Timer)
    assert events == ["prefill start", "prefill end", "token", "token", "token"]
    assert decoder.last_prefill_logits.shape == (MAX_BATCH, model.config.text_config.vocab_size)


def test_compiled_first_token_agrees_with_stock_generate(parts, batches, compiled):
    from fuyu_ray.bench.decoding import first_token_agreement

    model, _ = parts
    decoder, _ = compiled
    for name in ("a", "one"):
        agreement = first_token_agreement(model, decoder, batches[name])
        assert agreement["first_token_top1_match"] == 1.0
        assert 0.0 <= agreement["first_token_max_logit_diff"] < 1e-3, agreement
    assert decoder.recompiles == 0
