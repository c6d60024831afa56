"""The built-in tiny model: the real Fuyu classes, and a tokenizer that behaves like Fuyu's."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fuyu_ray.bench import tiny
from fuyu_ray.job.spec import ImageSize, image_token_count, padded_side


@pytest.fixture(scope="module")
def processor():
    return tiny.build_processor(tiny.build_tokenizer())


def test_tokenizer_emits_the_leading_piece_that_fuyu_processor_strips(processor):
    tokenizer = processor.tokenizer
    ids = tokenizer("|SPEAKER||SPEAKER||NEWLINE|", add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["▁", "|SPEAKER|", "|SPEAKER|", "|NEWLINE|"]
    assert (
        tokenizer.convert_ids_to_tokens(tokenizer("Hi\n<0x04>", add_special_tokens=False)["input_ids"])[-1] == "<0x04>"
    )


def test_config_image_token_is_the_tokenizers_speaker(processor):
    config = tiny.build_config(processor.tokenizer)
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("|SPEAKER|")
    assert config.model_type == "fuyu"


@pytest.mark.parametrize("size", [224, 336, 448])
def test_image_token_count_is_rows_times_cols_plus_one(processor, size):
    image = Image.new("RGB", (size, size), (200, 10, 10))
    inputs = processor(
        images=[image],
        text=["What?\n"],
        return_tensors="pt",
        size={"height": padded_side(size), "width": padded_side(size)},
    )
    ids = inputs["input_ids"][0].tolist()
    vocab = processor.tokenizer.get_vocab()
    image_tokens = ids.count(vocab["|SPEAKER|"]) + ids.count(vocab["|NEWLINE|"])
    assert image_tokens == image_token_count(ImageSize(size, size)) == {224: 72, 336: 156, 448: 240}[size]
    # Layout: image tokens, then <s>, the text, and the beginning-of-answer token last.
    assert ids[image_tokens] == vocab["<s>"] and ids[-1] == vocab["<0x04>"]


def test_small_padding_canvas_gives_the_same_inputs_as_fuyus_default(processor):
    image = Image.effect_noise((224, 224), 60).convert("RGB")
    default = processor(images=[image], text=["Read it\n"], return_tensors="pt")
    small = processor(images=[image], text=["Read it\n"], return_tensors="pt", size={"height": 240, "width": 240})
    assert torch.equal(default["input_ids"], small["input_ids"])
    assert torch.equal(default["image_patches"], small["image_patches"])
