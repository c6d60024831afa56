"""FLOPs: torch's counter against the analytic count from the config, for tiny and full-size fuyu-8b."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import FuyuConfig, FuyuForCausalLM

from fuyu_ray.bench import tiny
from fuyu_ray.bench.measure import count_flops, fuyu_prefill_flops


def inputs_for(config, rows: int, cols: int, text_tokens: int, device: str = "cpu") -> dict:
    patches = rows * cols
    ids = torch.full((1, rows * (cols + 1) + text_tokens), 5, device=device)
    image_positions = torch.tensor([(r * (cols + 1) + c) for r in range(rows) for c in range(cols)], device=device)
    ids[0, image_positions] = config.image_token_id
    width = config.patch_size * config.patch_size * config.num_channels
    return {"input_ids": ids, "image_patches": torch.zeros(patches, width, device=device)}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_tiny_counted_flops_match_the_analytic_count(attention):
    config = tiny.build_config(tiny.build_tokenizer())
    model = FuyuForCausalLM._from_config(config, attn_implementation=attention).eval()
    inputs = inputs_for(config, 8, 8, 20)
    counted = count_flops(lambda: model(**inputs))
    expected = fuyu_prefill_flops(config, patches=64, tokens=inputs["input_ids"].shape[1])
    assert abs(counted - expected) / expected < 0.02


def test_tiny_real_processor_batch_matches(tmp_path):
    processor = tiny.build_processor(tiny.build_tokenizer())
    config = tiny.build_config(processor.tokenizer)
    model = FuyuForCausalLM(config).eval()
    batch = processor(
        images=[Image.new("RGB", (224, 224))],
        text=["What word is written?\n"],
        return_tensors="pt",
        size={"height": 240, "width": 240},
    )
    counted = count_flops(lambda: model(**batch))
    expected = fuyu_prefill_flops(config, patches=64, tokens=batch["input_ids"].shape[1])
    assert abs(counted - expected) / expected < 0.02


def test_full_size_fuyu_8b_on_the_meta_device():
    config = FuyuConfig()  # the adept/fuyu-8b architecture
    with torch.device("meta"):
        model = FuyuForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    assert 9.3e9 < sum(p.numel() for p in model.parameters()) < 9.5e9
    # On meta tensors Fuyu's placeholder check cannot read values, so the patch projection and
    # the decoder (fed embeddings for 72 image + 19 text = the anchors' 91 positions) are counted apart.
    width = config.patch_size * config.patch_size * config.num_channels
    patches = torch.zeros(64, width, device="meta")
    embeddings = torch.zeros(1, 91, config.text_config.hidden_size, device="meta")
    counted = count_flops(lambda: model.model.vision_embed_tokens(patches)) + count_flops(
        lambda: model(inputs_embeds=embeddings)
    )
    expected = fuyu_prefill_flops(config, patches=64, tokens=91)
    assert abs(counted - expected) / expected < 0.02
    assert 1.45e12 < counted < 1.6e12  # the anchors' FlopCounterMode figure for this prefill: 1.52 TFLOP
