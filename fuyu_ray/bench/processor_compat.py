"""An adapter for transformers releases whose Fuyu PIL image processor cannot patchify a tensor.

From 5.24 on, `FuyuImageProcessorPil.patchify_image` reshapes with numpy's `transpose(0, 1, 3, 2, 4)`,
but `FuyuProcessor` hands it a torch tensor, so every call fails with "transpose() takes 2 positional
arguments but 5 were given". The torchvision-backed processor avoids that code, but a CPU machine
without torchvision (and our CI) gets the PIL one. Where the installed processor fails on a tensor, its
`patchify_image` is given a numpy array and its result handed back as a tensor; where it works, nothing
is changed, and this module can go once upstream is fixed.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch


def adapt(processor: Any) -> Any:
    """The processor, its image processor patched in place where the installed version needs it."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or patchifies_tensors(type(image_processor)):
        return processor
    original = image_processor.patchify_image

    def patchify_image(image, patch_size=None):
        if isinstance(image, torch.Tensor):
            return torch.from_numpy(np.ascontiguousarray(original(image=image.numpy(), patch_size=patch_size)))
        return original(image=image, patch_size=patch_size)

    image_processor.patchify_image = patchify_image
    return processor


@functools.cache
def patchifies_tensors(image_processor_class: type) -> bool:
    """Whether this image processor class patchifies the tensor FuyuProcessor gives it: tried once per class."""
    if not hasattr(image_processor_class, "patchify_image"):
        return True
    try:
        image_processor_class().patchify_image(image=torch.zeros(1, 3, 30, 30))
    except TypeError:
        return False
    return True
