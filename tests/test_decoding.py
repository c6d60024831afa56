"""The `compile` preset's generator: static cache, fixed shapes, compiled decode, same tokens as `generate`."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fuyu_ray import tiny
from fuyu_ray.decoding import StaticGreedyDecoder, round_up

NEW_TOKENS = 8
MAX_BATCH = 2
CACHE_LEN = 128  # a bucket that fits every prompt below plus NEW_TOKENS


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
    assert len(set(lengths.values())) == 3, lengths  # three prompt lengths: the decode graph must not care
    for name in ("a", "b"):  # rows of different lengths: left padding is exercised
        assert (made[name]["attention_mask"] == 0).any()
    return made


def reference(model, inputs: dict, **options) -> torch.Tensor:
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, **options}
    with torch.inference_mode():
        return model.generate(**inputs, **options)


def full_length_reference(model, inputs: dict) -> torch.Tensor:
    return reference(model, inputs, min_new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def compiled(parts, batches):
    """One compiled decoder for the module: it compiles once, in its warm-up."""
    model, _ = parts
    decoder = StaticGreedyDecoder(model, max_batch=MAX_BATCH, max_cache_len=CACHE_LEN, compile_decode=True, device="cpu")
    warm_s = decoder.warm_up(batches["a"], NEW_TOKENS)
    return decoder, warm_s


def test_round_up_buckets():
    assert [round_up(n, 64) for n in (1, 64, 65, 128)] == [64, 64, 128, 128]


@pytest.mark.parametrize("name", ["a", "b", "one"])
def test_eager_decoder_matches_generate_token_for_token(parts, batches, name):
    model, _ = parts
    decoder = StaticGreedyDecoder(model, max_batch=MAX_BATCH, max_cache_len=CACHE_LEN, compile_decode=False, device="cpu")
    expected = full_length_reference(model, batches[name])
    calls = []
    got = decoder.generate(batches[name], NEW_TOKENS, eos_token_id=model.config.eos_token_id, ignore_eos=True,
                           on_token=lambda: calls.append(1))
    assert got.shape == expected.shape == (batches[name]["input_ids"].shape[0], batches[name]["input_ids"].shape[1] + NEW_TOKENS)
    assert torch.equal(got, expected)
    assert len(calls) == NEW_TOKENS
    assert decoder.compile_s == 0.0 and decoder.recompiles == 0


def test_compiled_decoder_matches_generate_without_recompiling(parts, batches, compiled):
    model, _ = parts
    decoder, warm_s = compiled
    assert decoder.compilations == 1 and decoder.compile_s > 0
    assert warm_s >= decoder.compile_s
    assert decoder.fullgraph is True and decoder.compile_mode == "default"  # no CUDA graphs on CPU

    for name in ("a", "b", "one"):  # two prompt lengths at full batch, and one row padded up to MAX_BATCH
        calls = []
        got = decoder.generate(batches[name], NEW_TOKENS, eos_token_id=model.config.eos_token_id, ignore_eos=True,
                               on_token=lambda: calls.append(1))
        assert torch.equal(got, full_length_reference(model, batches[name])), name
        assert len(calls) == NEW_TOKENS
    assert decoder.recompiles == 0
    assert decoder.compilations == 1


def test_compiled_decode_step_returns_a_fresh_tensor(compiled):
    decoder, _ = compiled
    with torch.inference_mode():
        first = decoder.decode_step(decoder._tokens, decoder._positions, decoder._mask)
        second = decoder.decode_step(decoder._tokens, decoder._positions, decoder._mask)
    assert first.shape == (MAX_BATCH,) and first.dtype == torch.long
    assert first.data_ptr() != second.data_ptr()
    assert decoder.recompiles == 0
    decoder.reset()


def test_eos_pads_finished_rows_like_generate(parts, batches):
    model, _ = parts
    inputs = batches["a"]
    full = full_length_reference(model, inputs)
    prompt = inputs["input_ids"].shape[1]
    eos = int(full[1, prompt + 3])  # row 1 stops at its fourth token
    decoder = StaticGreedyDecoder(model, MAX_BATCH, CACHE_LEN, compile_decode=False, device="cpu")
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
    decoder = StaticGreedyDecoder(model, MAX_BATCH, CACHE_LEN, compile_decode=False, device="cpu")
    calls = []
    got = decoder.generate(inputs, NEW_TOKENS, eos_token_id=eos, ignore_eos=False, on_token=lambda: calls.append(1))
    assert torch.equal(got, expected)
    # The filler row that pads the batch to MAX_BATCH never keeps generation going.
    stop = full[0, prompt:].tolist().index(eos) + 1
    assert got.shape[1] == prompt + stop and len(calls) == stop == decoder.last_steps


def test_limits_are_checked(parts, batches):
    model, _ = parts
    small = StaticGreedyDecoder(model, max_batch=1, max_cache_len=CACHE_LEN, compile_decode=False, device="cpu")
    with pytest.raises(ValueError, match="max_batch"):
        small.generate(batches["a"], NEW_TOKENS)
    short = StaticGreedyDecoder(model, max_batch=MAX_BATCH, max_cache_len=32, compile_decode=False, device="cpu")
    with pytest.raises(ValueError, match="max_cache_len"):
        short.generate(batches["a"], NEW_TOKENS)
