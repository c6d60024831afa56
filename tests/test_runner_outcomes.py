"""How a cell's exception becomes its record's status."""

from __future__ import annotations

import torch

from fuyu_ray.models import PresetUnsupported
from fuyu_ray.runner import classify


def test_exceptions_map_to_statuses():
    assert classify(PresetUnsupported("no flash here")) == ("skipped", "no flash here")
    assert classify(torch.cuda.OutOfMemoryError("CUDA out of memory"))[0] == "oom"
    status, error = classify(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert status == "failed" and error.startswith("cuda-fatal: ")
    status, error = classify(ValueError("bad row"))
    assert status == "failed" and error.startswith("ValueError: bad row")
