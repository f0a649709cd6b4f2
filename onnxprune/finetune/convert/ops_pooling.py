"""Handlers: Max/Average/Global pooling."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .nodes import (  # noqa: F401
    _AVG_POOL,
    _MAX_POOL,
    Fn,
    NodeView,
    OpModule,
    Window,
)
from .registry import (  # noqa: F401
    handles,
)

# --------------------------------------------------------------------------- pooling


class MaxPool(OpModule):
    """ONNX MaxPool; pads torch cannot express are applied with -inf first."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view)
        if view.output_used(1):
            raise view.unsupported("Indices output")
        self.window = Window.of(view, view.attr("kernel_shape"))
        self.ceil_mode = bool(view.attr("ceil_mode", 0))

    def compute(self, x: Tensor) -> Tensor:
        w = self.window
        x, padding = w.symmetric_padding(x, fill=float("-inf"), limit_half_kernel=True)
        pool = _MAX_POOL[len(w.kernel)]
        return pool(x, w.kernel, w.strides, padding, w.dilations, self.ceil_mode)


class AveragePool(OpModule):
    """ONNX AveragePool; count_include_pad=0 with explicit pads divides by a pooled mask."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view)
        self.window = Window.of(view, view.attr("kernel_shape"))
        if any(d != 1 for d in self.window.dilations):
            raise view.unsupported("dilations")
        self.ceil_mode = bool(view.attr("ceil_mode", 0))
        self.count_include_pad = bool(view.attr("count_include_pad", 0))

    def compute(self, x: Tensor) -> Tensor:
        w = self.window
        pool = _AVG_POOL[len(w.kernel)]
        padded, padding = w.symmetric_padding(x, limit_half_kernel=True)
        y = pool(padded, w.kernel, w.strides, padding, self.ceil_mode, self.count_include_pad)
        if padded is x or self.count_include_pad:
            return y
        mask = w.symmetric_padding(torch.ones_like(x[:1, :1]), limit_half_kernel=True)[0]
        return y / pool(mask, w.kernel, w.strides, padding, self.ceil_mode, True)


def _global_average_pool(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_max_pool(x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@handles("MaxPool")
def _max_pool(view: NodeView) -> nn.Module:
    return MaxPool(view)


@handles("AveragePool")
def _average_pool(view: NodeView) -> nn.Module:
    return AveragePool(view)


@handles("GlobalAveragePool")
def _global_average_pool_handler(view: NodeView) -> nn.Module:
    return Fn(view, _global_average_pool)


@handles("GlobalMaxPool")
def _global_max_pool_handler(view: NodeView) -> nn.Module:
    return Fn(view, _global_max_pool)
