"""`image_size` as S or "WxH": parsing, cell identity, image tokens, Fuyu's processor at 1920x1080,
and a cell on tiny."""

from __future__ import annotations

import copy
import importlib.util

import pytest
from conftest import BASE_POINT
from PIL import Image

from fuyu_ray.bench import tiny
from fuyu_ray.bench.processor_compat import adapt
from fuyu_ray.job.cells import Cell, expand
from fuyu_ray.job.spec import (
    DatasetSource,
    ImageSize,
    JobError,
    Point,
    TaskOverride,
    image_token_count,
    padded_dims,
    parse_job,
)

HD = ImageSize(1920, 1080)
GOOD = {
    "name": "sizes",
    "model": "tiny",
    "limit": 2,
    "base": dict(BASE_POINT),
    "sweeps": {"image": {"image_size": [224, "224x224", "1920x1080", " 1000 X 500 "]}},
}


def test_image_size_is_a_side_or_width_by_height():
    assert ImageSize.parse(224) == ImageSize(224, 224) and ImageSize.parse(224).label == "224"
    assert ImageSize.parse("224x224") == ImageSize.parse(224)  # a square written WxH is the same cell as S
    assert ImageSize.parse("1920x1080").label == "1920x1080" and ImageSize.parse("1920X1080").job_value == "1920x1080"
    assert (ImageSize.parse("1920x1080").width, ImageSize.parse("1920x1080").height) == (1920, 1080)
    assert ImageSize.parse(336).side == 336 and ImageSize.parse("1920x1080").side is None
    for bad in (0, -3, True, 22.5, "224", "x1080", "1920x0", "1920x1080x3", "big", None):
        with pytest.raises(ValueError):
            ImageSize.parse(bad)


def test_the_job_accepts_both_forms_and_names_the_key_of_a_bad_one():
    job = parse_job(copy.deepcopy(GOOD), "jobs/sizes.yaml")
    assert [size.job_value for size in job.sweeps["image"]["image_size"]] == [224, 224, "1920x1080", "1000x500"]
    grid = expand(job)
    assert [c.point.image_size.label for c in grid.cells] == [
        "224",
        "1920x1080",
        "1000x500",
    ]  # 224 and "224x224" are one cell
    bad = copy.deepcopy(GOOD)
    bad["base"]["image_size"] = "wide"
    with pytest.raises(JobError, match=r"^jobs/bad.yaml: base.image_size: .*'WxH'"):
        parse_job(bad, "jobs/bad.yaml")
    bad = copy.deepcopy(GOOD)
    bad["sweeps"]["image"]["image_size"] = [224, "0x10"]
    with pytest.raises(JobError, match=r"sweeps.image.image_size"):
        parse_job(bad, "jobs/bad.yaml")


def test_records_carry_width_and_height_and_square_cells_keep_their_ids():
    def cell(size) -> Cell:
        return Cell("tiny", "random", 2, Point("cpu", "textvqa", 1, size, 200, "fp32"), DatasetSource(), TaskOverride())

    wide = cell("1920x1080").settings()
    assert (wide["image_size"], wide["image_width"], wide["image_height"]) == (None, 1920, 1080)
    square = cell(224).settings()
    assert (square["image_size"], square["image_width"], square["image_height"]) == (224, 224, 224)
    assert cell("224x224").cell_id == cell(224).cell_id != cell("1920x1080").cell_id


def test_image_tokens_are_rows_times_cols_plus_one():
    assert image_token_count(ImageSize.parse(224)) == 8 * 9 == 72
    assert image_token_count(ImageSize.parse("1920x1080")) == 36 * 65 == 2340
    assert image_token_count(ImageSize.parse("1000x500")) == 17 * 35  # rows = ceil(500 / 30), cols = ceil(1000 / 30)
    assert padded_dims(ImageSize.parse("1000x500")) == (1020, 510)


def _processors():
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    made = [FuyuImageProcessorPil]
    if importlib.util.find_spec("torchvision") is not None:
        from transformers.models.fuyu.image_processing_fuyu import FuyuImageProcessor

        made.append(FuyuImageProcessor)
    return made


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer()


@pytest.mark.parametrize("image_processor", _processors(), ids=lambda c: c.__name__)
def test_fuyus_processor_keeps_a_1920x1080_image_whole_and_shrinks_a_larger_one_to_it(tokenizer, image_processor):
    """Fuyu's image processor pads to, and shrinks to fit, 1920 x 1080 by default: a 1920x1080 image is
    exactly its canvas (36 rows of 64 patches, each row closed by a newline token), with or without the
    canvas the runner names; a larger 16:9 image is scaled down to the same tokens."""
    from transformers import FuyuProcessor

    processor = adapt(FuyuProcessor(image_processor=image_processor(), tokenizer=tokenizer))  # as models.py loads it
    assert processor.image_processor.size["height"] == 1080 and processor.image_processor.size["width"] == 1920
    vocab = tokenizer.get_vocab()
    width, height = padded_dims(ImageSize.parse("1920x1080"))
    for image, size in (
        (Image.effect_noise((1920, 1080), 60).convert("RGB"), None),
        (
            Image.effect_noise((1920, 1080), 60).convert("RGB"),
            {"height": height, "width": width},
        ),  # as prepare_batches asks
        (Image.new("RGB", (2560, 1440), (20, 200, 20)), None),
    ):
        inputs = processor(images=[image], text=["What?\n"], return_tensors="pt", **({"size": size} if size else {}))
        ids = inputs["input_ids"][0].tolist()
        assert ids.count(vocab["|NEWLINE|"]) == 36
        assert ids.count(vocab["|SPEAKER|"]) == 36 * 64
        assert (
            ids.count(vocab["|SPEAKER|"]) + ids.count(vocab["|NEWLINE|"])
            == image_token_count(ImageSize.parse("1920x1080"))
            == 2340
        )
        patches = inputs["image_patches"][0] if isinstance(inputs["image_patches"], list) else inputs["image_patches"]
        assert tuple(patches.shape)[-2:] == (2304, 30 * 30 * 3)


def test_a_1920x1080_cell_runs_on_tiny_with_its_own_image_tokens():
    from fuyu_ray.bench.runner import CellRunner

    cell = Cell(
        "tiny",
        "random",
        2,
        Point("cpu", "textvqa", 1, "1920x1080", 200, "fp32"),
        DatasetSource(),
        TaskOverride(max_new_tokens=3),
    )
    runner = CellRunner(cell.variant, min_energy_window_s=0.01)
    row = runner.run(cell).record.to_pylist()[0]
    assert row["status"] == "ok", row["error"]
    assert (row["image_size"], row["image_width"], row["image_height"], row["image_tokens"]) == (None, 1920, 1080, 2340)
    assert row["prefill_tokens"] > 2340  # the image tokens, then <s>, the prompt and the beginning-of-answer token
    assert 0 < row["prefill_compute_s"] <= row["ttft_s"] == row["prefill_s"]
