"""How a cell's exception becomes its record's status."""

from __future__ import annotations

import torch

from fuyu_ray.bench.models import PresetUnsupported
from fuyu_ray.bench.runner import classify


def test_exceptions_map_to_statuses():
    assert classify(PresetUnsupported("no flash here")) == ("skipped", "no flash here")
    assert classify(torch.cuda.OutOfMemoryError("CUDA out of memory"))[0] == "oom"
    status, error = classify(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert status == "failed" and error.startswith("cuda-fatal: ")
    status, error = classify(ValueError("bad row"))
    assert status == "failed" and error.startswith("ValueError: bad row")


def wrapped_by_a_compiler(cause: BaseException) -> BaseException:
    """What Dynamo/Inductor raise when the code they compile fails: their own error, from the cause."""
    try:
        try:
            raise cause
        except BaseException as inner:
            raise RuntimeError("backend='inductor' raised: see the cause above") from inner
    except RuntimeError as outer:
        return outer


def test_an_oom_inside_a_compile_is_still_an_oom():
    assert classify(wrapped_by_a_compiler(torch.cuda.OutOfMemoryError("CUDA out of memory")))[0] == "oom"
    status, error = classify(wrapped_by_a_compiler(RuntimeError("CUDA error: device-side assert triggered")))
    assert status == "failed" and error.startswith("cuda-fatal: ")
    status, error = classify(wrapped_by_a_compiler(ValueError("shape mismatch")))
    assert status == "failed" and error.startswith("RuntimeError: backend='inductor'")


def test_a_cuda_error_raised_while_handling_an_oom_replaces_the_actor():
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    except RuntimeError as broken:
        status, error = classify(broken)
    assert status == "failed" and error.startswith("cuda-fatal: ")
