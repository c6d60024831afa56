"""The Fuyu processor works on every transformers in the supported range: where the installed PIL image
processor cannot patchify a tensor (5.24 and later), the adapter hands it an array; where it can, the
adapter leaves it alone. CI runs this file on the oldest supported release and on the newest."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fuyu_ray.bench import tiny
from fuyu_ray.bench.processor_compat import adapt, patchifies_tensors
from fuyu_ray.job.spec import ImageSize, image_token_count


def processor():
    return tiny.build_processor(tiny.build_tokenizer())


def test_the_built_in_processor_cuts_a_tensor_image_into_its_patches_on_the_installed_transformers():
    inputs = processor()(
        images=[Image.new("RGB", (224, 224), (200, 30, 30))],
        text=["What colour?\n"],
        return_tensors="pt",
        size={"height": 240, "width": 240},
    )
    ids = inputs["input_ids"][0].tolist()
    vocab = processor().tokenizer.get_vocab()
    assert (
        ids.count(vocab["|SPEAKER|"]) + ids.count(vocab["|NEWLINE|"]) == image_token_count(ImageSize(224, 224)) == 8 * 9
    )
    patches = inputs["image_patches"][0]
    assert isinstance(patches, torch.Tensor) and patches.shape[-1] == 30 * 30 * 3


def numpy_only(image_processor_class):
    """An image processor whose patchify_image reshapes the numpy way, as 5.24 and later do."""

    class NumpyOnly(image_processor_class):
        def patchify_image(self, image, patch_size=None):
            channels, height, width = image.shape[-3:]
            rows, columns = height // 30, width // 30
            grid = image.reshape(channels, rows, 30, columns, 30).transpose(1, 3, 2, 4, 0)
            return grid.reshape(rows * columns, 30 * 30 * channels)

    return NumpyOnly


def test_an_image_processor_that_fails_on_tensors_is_adapted_and_gives_the_same_patches():
    reference = processor()
    broken = processor()
    broken.image_processor.__class__ = numpy_only(type(broken.image_processor))
    assert not patchifies_tensors(type(broken.image_processor))
    adapt(broken)
    assert patchifies_tensors(type(broken.image_processor))
    image = torch.rand(1, 3, 60, 90)
    adapted = broken.image_processor.patchify_image(image)
    assert isinstance(adapted, torch.Tensor) and adapted.shape == (6, 2700)
    expected = reference.image_processor.patchify_image(image=image)
    assert np.allclose(np.asarray(adapted), np.asarray(expected).reshape(6, 2700))


def test_an_image_processor_that_handles_tensors_is_left_alone_and_an_adapted_one_still_saves(tmp_path):
    from transformers.models.fuyu.image_processing_pil_fuyu import FuyuImageProcessorPil

    working = processor()
    adapted = type(working.image_processor) is not FuyuImageProcessorPil
    assert adapted == (not patchifies_tensors(FuyuImageProcessorPil))  # changed only where the release needs it
    assert type(working.image_processor).__name__ == "FuyuImageProcessorPil"
    working.save_pretrained(tmp_path)  # its settings are written as JSON: nothing of the adapter's in them
    from transformers import AutoProcessor

    reloaded = adapt(AutoProcessor.from_pretrained(tmp_path))  # as models.py loads a checkpoint folder
    inputs = reloaded(
        images=[Image.new("RGB", (224, 224))], text=["What?\n"], return_tensors="pt", size={"height": 240, "width": 240}
    )
    assert inputs["input_ids"].shape[1] > image_token_count(ImageSize(224, 224))
