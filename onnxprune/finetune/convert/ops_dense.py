"""Handlers: Conv, ConvTranspose, Gemm, MatMul, normalisation, Dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nodes import (  # noqa: F401
    _CONV,
    _CONV_T,
    BatchNorm,
    Dropout,
    Fn,
    NodeView,
    OpModule,
    Window,
    _to_tensor,
)
from .registry import (  # noqa: F401
    handles,
)

# --------------------------------------------------------------------------- conv / dense


class Conv(OpModule):
    """ONNX Conv (1-3 spatial dims, groups, dilations, asymmetric and auto pads)."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "bias"})
        weight = view.const(1)
        kernel = view.attr("kernel_shape") or (weight.shape[2:] if weight is not None else None)
        if kernel is None:
            raise view.unsupported("runtime weight without kernel_shape")
        if len(kernel) not in _CONV:
            raise view.unsupported(f"{len(kernel)} spatial dims")
        self.window = Window.of(view, kernel)
        self.groups = int(view.attr("group", 1))

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        w = self.window
        x, padding = w.symmetric_padding(x)
        conv = _CONV[len(w.kernel)]
        return conv(x, weight, bias, w.strides, padding, w.dilations, self.groups)


class ConvTranspose(OpModule):
    """ONNX ConvTranspose with explicit pads (asymmetric ones cropped after the op)."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "bias"})
        if view.attr("output_shape") is not None:
            raise view.unsupported("output_shape attribute")
        if view.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise view.unsupported(f"auto_pad={view.attr('auto_pad')}")
        weight = view.const(1)
        kernel = view.attr("kernel_shape") or (weight.shape[2:] if weight is not None else None)
        if kernel is None or len(kernel) not in _CONV_T:
            raise view.unsupported("unknown or unsupported kernel rank")
        n = len(kernel)
        self.window = Window.of(view, kernel)
        self.groups = int(view.attr("group", 1))
        self.output_padding = tuple(view.attr("output_padding") or [0] * n)

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        w = self.window
        n = len(w.kernel)
        begins, ends = w.resolve(x)
        padding = begins if begins == ends else [0] * n
        conv = _CONV_T[n]
        y = conv(x, weight, bias, w.strides, padding, self.output_padding, self.groups, w.dilations)
        if begins == ends:
            return y
        index = [slice(None), slice(None)]
        index += [slice(b, y.shape[2 + i] - e) for i, (b, e) in enumerate(zip(begins, ends))]
        return y[tuple(index)]


class Gemm(OpModule):
    """ONNX Gemm: alpha * A' @ B' + beta * C; the weight keeps its ONNX (transB) layout."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "bias"})
        self.alpha = float(view.attr("alpha", 1.0))
        self.beta = float(view.attr("beta", 1.0))
        self.trans_a = bool(view.attr("transA", 0))
        self.trans_b = bool(view.attr("transB", 0))

    def compute(self, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
        if self.trans_a:
            a = a.t()
        plain = self.alpha == 1.0 and self.beta == 1.0
        if plain and self.trans_b and (c is None or c.dim() <= 1):
            return F.linear(a, b, c)  # exports back as a single Gemm
        y = a @ (b.t() if self.trans_b else b)
        if self.alpha != 1.0:
            y = y * self.alpha
        if c is None:
            return y
        return y + (c * self.beta if self.beta != 1.0 else c)


@handles("Conv")
def _conv(view: NodeView) -> nn.Module:
    return Conv(view)


@handles("ConvTranspose")
def _conv_transpose(view: NodeView) -> nn.Module:
    return ConvTranspose(view)


@handles("Gemm")
def _gemm(view: NodeView) -> nn.Module:
    return Gemm(view)


@handles("MatMul")
def _matmul(view: NodeView) -> nn.Module:
    params = {i: "weight" for i in (0, 1) if view.is_const(i) and view.const(i).ndim >= 2}
    return Fn(view, torch.matmul, params=params)


# --------------------------------------------------------------------------- normalisation


@handles("BatchNormalization")
def _batch_norm(view: NodeView) -> nn.Module:
    """nn.BatchNorm with ONNX momentum m mapped to torch momentum 1 - m."""
    if not all(view.is_const(i) for i in (1, 2, 3, 4)):
        raise view.unsupported("scale, bias, mean and var must be initializers")
    if view.attr("spatial", 1) != 1:
        raise view.unsupported("spatial=0")
    if any(view.output_used(i) for i in range(1, len(view.outputs))):
        raise view.unsupported("training-mode outputs")
    scale, bias, mean, var = (view.inputs[i] for i in (1, 2, 3, 4))
    channels = int(view.const(1).size)
    momentum = 1.0 - float(view.attr("momentum", 0.9))
    bn = BatchNorm(channels, eps=float(view.attr("epsilon", 1e-5)), momentum=momentum)
    bn.weight = view.graph.parameter(scale)
    bn.bias = view.graph.parameter(bias)
    bn.running_mean = _to_tensor(view.const(3)).to(bn.weight.dtype).reshape(-1)
    bn.running_var = _to_tensor(view.const(4)).to(bn.weight.dtype).reshape(-1)
    view.graph.track(bn.running_mean, mean)
    view.graph.track(bn.running_var, var)
    return bn


def _instance_norm(x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@handles("InstanceNormalization")
def _instance_normalization(view: NodeView) -> nn.Module:
    eps = float(view.attr("epsilon", 1e-5))
    return Fn(view, _instance_norm, params={1: "weight", 2: "bias"}, eps=eps)


def _layer_norm(
    x: Tensor, scale: Tensor, bias: Tensor | None = None, *, axis: int, eps: float
) -> Tensor:
    """ONNX LayerNormalization: statistics over the axes from ``axis`` to the last."""
    dims = tuple(range(axis % x.dim(), x.dim()))
    mean = x.mean(dims, keepdim=True)
    variance = torch.square(x - mean).mean(dims, keepdim=True)
    y = (x - mean) * torch.rsqrt(variance + eps) * scale
    return y if bias is None else y + bias


@handles("LayerNormalization")
def _layer_normalization(view: NodeView) -> nn.Module:
    """Transformers' and ConvNeXt's normalisation (opset 17); trainable scale and bias."""
    if any(view.output_used(i) for i in range(1, len(view.outputs))):
        raise view.unsupported("mean / inverse standard deviation outputs")
    axis, eps = int(view.attr("axis", -1)), float(view.attr("epsilon", 1e-5))
    return Fn(view, _layer_norm, params={1: "weight", 2: "bias"}, axis=axis, eps=eps)


@handles("Dropout")
def _dropout(view: NodeView) -> nn.Module:
    """nn.Dropout: the module's train/eval mode decides, not ONNX training_mode."""
    if any(view.has(i) and not view.is_const(i) for i in (1, 2)):
        raise view.unsupported("runtime ratio or training_mode")
    if view.output_used(1):
        raise view.unsupported("mask output")
    ratio = view.const_list(1)[0] if view.is_const(1) else view.attr("ratio", 0.5)
    return Dropout(p=float(ratio))
