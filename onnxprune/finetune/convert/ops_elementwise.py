"""Handlers: activations, elementwise arithmetic, Softmax."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nodes import (  # noqa: F401
    Fn,
    NodeView,
    _flatten_2d,
    _normalize_axis,
)
from .registry import (  # noqa: F401
    SOFTMAX_OPS,
    WEIGHTED_OPS,
    handles,
)

# --------------------------------------------------------------------------- elementwise


def _identity(x: Tensor) -> Tensor:
    return x


UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Softplus": F.softplus,
    "HardSwish": F.hardswish,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Sign": torch.sign,
    "Round": torch.round,  # both round half to even
    "Not": torch.logical_not,
    "IsNaN": torch.isnan,
    "Identity": _identity,
}


@handles(*UNARY)
def _unary(view: NodeView) -> nn.Module:
    return Fn(view, UNARY[view.op_type])


@handles("LeakyRelu")
def _leaky_relu(view: NodeView) -> nn.Module:
    return Fn(view, F.leaky_relu, negative_slope=float(view.attr("alpha", 0.01)))


@handles("Elu")
def _elu(view: NodeView) -> nn.Module:
    return Fn(view, F.elu, alpha=float(view.attr("alpha", 1.0)))


@handles("Celu")
def _celu(view: NodeView) -> nn.Module:
    return Fn(view, F.celu, alpha=float(view.attr("alpha", 1.0)))


def _selu(x: Tensor, alpha: float, gamma: float) -> Tensor:
    return gamma * F.elu(x, alpha)


@handles("Selu")
def _selu_handler(view: NodeView) -> nn.Module:
    alpha = float(view.attr("alpha", 1.67326319217681884765625))
    gamma = float(view.attr("gamma", 1.05070102214813232421875))
    return Fn(view, _selu, alpha=alpha, gamma=gamma)


def _hard_sigmoid(x: Tensor, alpha: float, beta: float) -> Tensor:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@handles("HardSigmoid")
def _hard_sigmoid_handler(view: NodeView) -> nn.Module:
    alpha, beta = float(view.attr("alpha", 0.2)), float(view.attr("beta", 0.5))
    return Fn(view, _hard_sigmoid, alpha=alpha, beta=beta)


@handles("Gelu")
def _gelu(view: NodeView) -> nn.Module:
    return Fn(view, F.gelu, approximate=view.attr("approximate", "none"))


def _prelu(x: Tensor, slope: Tensor) -> Tensor:
    """ONNX PRelu broadcasts the slope to X (any layout), unlike F.prelu's channel axis."""
    return torch.where(x >= 0, x, x * slope)


@handles("PRelu")
def _prelu_handler(view: NodeView) -> nn.Module:
    return Fn(view, _prelu, params={1: "weight"})


def _clip(
    x: Tensor, low: Tensor | float | None = None, high: Tensor | float | None = None
) -> Tensor:
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


@handles("Clip")
def _clip_handler(view: NodeView) -> nn.Module:
    """Clip bounds are attributes before opset 11 and optional inputs from 11 on."""
    if view.opset < 11:
        return Fn(view, _clip, low=view.attr("min"), high=view.attr("max"))
    return Fn(view, _clip)


def _div(a: Tensor, b: Tensor) -> Tensor:
    """ONNX Div truncates for integers (shape arithmetic); torch's / would give floats."""
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
}
LEARNED_OPERAND_NAMES = {"Add": "bias", "Sub": "bias", "Mul": "weight"}


def _is_learned_operand(view: NodeView, index: int) -> bool:
    """Whether a constant operand of Add/Sub/Mul is a learned bias/scale worth training.

    Vectors (biases, per-channel scales, folded BN) are learned; scalars only when they are
    the bias of a weighted layer (a 1-unit dense head). Scalars inside decomposed
    activations (GELU's 0.5, HardSwish's 3) and input normalisation stay fixed.
    """
    value = view.const(index)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return False
    if not np.all(np.isfinite(value)):
        return False
    other = view.inputs[1 - index]
    if other in view.graph.graph_inputs:
        return False
    return value.size > 1 or view.graph.producers.get(other) in WEIGHTED_OPS


@handles(*BINARY)
def _binary(view: NodeView) -> nn.Module:
    name = LEARNED_OPERAND_NAMES.get(view.op_type)
    params = {}
    if name is not None:
        params = {i: name for i in (0, 1) if view.is_const(i) and _is_learned_operand(view, i)}
    return Fn(view, BINARY[view.op_type], params=params)


def _where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return torch.where(condition.bool(), x, y)


@handles("Where")
def _where_handler(view: NodeView) -> nn.Module:
    return Fn(view, _where)


def _fold(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def folded(*xs: Tensor) -> Tensor:
        result = xs[0]
        for x in xs[1:]:
            result = fn(result, x)
        return result

    return folded


def _sum(*xs: Tensor) -> Tensor:
    return _fold(torch.add)(*xs)


def _max(*xs: Tensor) -> Tensor:
    return _fold(torch.maximum)(*xs)


def _min(*xs: Tensor) -> Tensor:
    return _fold(torch.minimum)(*xs)


def _mean(*xs: Tensor) -> Tensor:
    return _sum(*xs) / len(xs)


VARIADIC = {"Sum": _sum, "Max": _max, "Min": _min, "Mean": _mean}


@handles(*VARIADIC)
def _variadic(view: NodeView) -> nn.Module:
    return Fn(view, VARIADIC[view.op_type])


# --------------------------------------------------------------------------- softmax


def _softmax(x: Tensor, axis: int, log: bool, coerce_2d: bool) -> Tensor:
    """Softmax over ``axis``; before opset 13 ONNX flattens to 2-D at ``axis`` first."""
    fn = F.log_softmax if log else F.softmax
    axis = _normalize_axis(axis, x.dim())
    if not coerce_2d or axis == x.dim() - 1:
        return fn(x, dim=axis)
    return fn(_flatten_2d(x, axis), dim=1).reshape(x.shape)


@handles(*SOFTMAX_OPS)
def _softmax_handler(view: NodeView) -> nn.Module:
    coerce = view.opset < 13
    axis = int(view.attr("axis", 1 if coerce else -1))
    log = view.op_type == "LogSoftmax"
    return Fn(view, _softmax, axis=axis, log=log, coerce_2d=coerce)
