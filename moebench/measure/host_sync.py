"""Does a forward read device values on the host? Checked without a GPU, by running it on fake tensors.

A CUDA graph replays a fixed sequence of kernels with fixed shapes: a forward that calls .item(),
.tolist(), nonzero, bincount or anything else whose output (or output shape) depends on tensor data
cannot be captured, and on a GPU each such call also stalls the host until the device catches up.
Under torch's FakeTensorMode tensors carry shapes but no data, so exactly those operations raise;
`first_host_sync` runs the forward that way and returns the first one it meets (None: none).
Runs anywhere (no GPU, nothing allocated for activations), in inference mode, on a copy of nothing:
the layer's real parameters are read as fake tensors of the same shapes.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode


def first_host_sync(layer: torch.nn.Module, x: torch.Tensor) -> str | None:
    """The first data-dependent operation of layer(x) in inference, as "aten.<op>", or None."""
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.inference_mode():
            layer(mode.from_tensor(x))
    except (DataDependentOutputException, DynamicOutputShapeException) as exc:
        return str(exc.func) if getattr(exc, "func", None) is not None else str(exc)
    return None


__all__ = ["first_host_sync"]
