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
    """The processor, its image processor given the adapted class where the installed version needs it."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and not patchifies_tensors(type(image_processor)):
        image_processor.__class__ = tensor_safe(type(image_processor))
    return processor


@functools.cache
def tensor_safe(image_processor_class: type) -> type:
    """A subclass whose patchify_image hands the original an array and gives back a tensor. A class, not an
    instance attribute, so that the processor still saves (its attributes are written as JSON); it keeps the
    original's name, which a saved processor records as its type."""

    class TensorSafe(image_processor_class):
        def patchify_image(self, image, patch_size=None):
            if isinstance(image, torch.Tensor):
                patches = super().patchify_image(image=image.numpy(), patch_size=patch_size)
                return torch.from_numpy(np.ascontiguousarray(patches))
            return super().patchify_image(image=image, patch_size=patch_size)

    TensorSafe.__name__ = image_processor_class.__name__
    TensorSafe.__qualname__ = image_processor_class.__qualname__
    return TensorSafe


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
