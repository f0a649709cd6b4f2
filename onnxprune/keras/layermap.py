"""Which ONNX node each Keras Conv2D / DepthwiseConv2D / Dense layer became in tf2onnx.

tf2onnx keeps Keras layer names in most node and weight names, but not all (a depthwise
conv becomes ``Conv__34`` with a folded weight ``const_fold_opt__41``), and it folds a
BatchNormalization that follows a conv into the conv's weights. So a layer is matched by
its numbers: the ONNX weight must equal the Keras kernel in ONNX layout, either as is or
scaled per output channel by the following BN (folded); the bias (including Adds of
constants that follow a MatMul) must agree too. Names only break ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ModelError

KERNEL_LAYERS = ("Conv2D", "DepthwiseConv2D", "Dense")
ONNX_OPS = ("Conv", "MatMul", "Gemm")


@dataclass
class Match:
    """One Keras layer and its ONNX node; ``fold`` is the folded BN's per-channel scale."""

    layer: Any
    node: gs.Node
    fold: np.ndarray | None = None
    bn: Any | None = None  # the Keras BatchNormalization folded into the node

    @property
    def kind(self) -> str:
        return type(self.layer).__name__


def class_name(layer: Any) -> str:
    return type(layer).__name__


def numpy(variable: Any) -> np.ndarray:
    return np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)


def kernel_variable(layer: Any) -> Any:
    """The kernel weight: ``depthwise_kernel`` of a Keras 2 DepthwiseConv2D, else ``kernel``
    (Keras 3 names the depthwise one ``kernel`` too)."""
    if class_name(layer) == "DepthwiseConv2D":
        kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is not None:
            return kernel
    return layer.kernel


def kernel_of(layer: Any) -> np.ndarray:
    return numpy(kernel_variable(layer))


def bias_of(layer: Any, size: int) -> np.ndarray:
    bias = getattr(layer, "bias", None)
    return np.zeros(size, np.float32) if bias is None else numpy(bias)


def bn_params(bn: Any) -> dict[str, np.ndarray]:
    """gamma, beta, mean, var of a BN (gamma 1 / beta 0 when scale / center are off)."""
    mean, var = numpy(bn.moving_mean), numpy(bn.moving_variance)
    gamma = numpy(bn.gamma) if getattr(bn, "gamma", None) is not None else np.ones_like(mean)
    beta = numpy(bn.beta) if getattr(bn, "beta", None) is not None else np.zeros_like(mean)
    return {"gamma": gamma, "beta": beta, "mean": mean, "var": var}


def bn_scale(bn: Any) -> np.ndarray:
    p = bn_params(bn)
    return p["gamma"] / np.sqrt(p["var"] + np.float32(bn.epsilon))


def out_axis(node: gs.Node) -> int:
    """Axis of the ONNX weight that indexes output channels."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    return 1


def to_onnx(layer: Any, kernel: np.ndarray, node: gs.Node) -> np.ndarray:
    """A Keras kernel in the node's weight layout."""
    kind = class_name(layer)
    if kind == "Conv2D":  # (kh, kw, in, out) -> (out, in, kh, kw)
        return kernel.transpose(3, 2, 0, 1)
    if kind == "DepthwiseConv2D":  # (kh, kw, C, m) -> (C * m, 1, kh, kw)
        kh, kw, channels, multiplier = kernel.shape
        return kernel.transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
    return kernel.T if out_axis(node) == 0 else kernel


def from_onnx(layer: Any, weight: np.ndarray, node: gs.Node) -> np.ndarray:
    """The inverse of ``to_onnx``: an ONNX weight as a Keras kernel."""
    kind = class_name(layer)
    if kind == "Conv2D":
        return weight.transpose(2, 3, 1, 0)
    if kind == "DepthwiseConv2D":
        multiplier = int(layer.depth_multiplier)
        _, _, kh, kw = weight.shape
        return weight.reshape(-1, multiplier, kh, kw).transpose(2, 3, 0, 1)
    return weight.T if out_axis(node) == 0 else weight


def scaled(weight: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    view = [1] * weight.ndim
    view[axis] = -1
    return weight * scale.reshape(view)


def per_channel(values: np.ndarray, node: gs.Node, size: int) -> np.ndarray | None:
    """A constant added to the node's output as one value per output channel, or None."""
    values = np.asarray(values)
    if values.size == 1:
        return np.full(size, float(values.reshape(-1)[0]))
    axis = 1 if node.op == "Conv" else -1  # NCHW convs; MatMul/Gemm put units last
    rank = max(values.ndim, 4 if node.op == "Conv" else 1)
    shape = (1,) * (rank - values.ndim) + values.shape
    others = [d for i, d in enumerate(shape) if i != axis % rank]
    if shape[axis] != size or any(d != 1 for d in others):
        return None
    return values.reshape(-1).astype(np.float64)


def effective_bias(node: gs.Node, size: int) -> np.ndarray:
    """The node's bias input plus every constant Add chained right after its output."""
    total = np.zeros(size)
    if node.op in ("Conv", "Gemm") and len(node.inputs) > 2:
        bias = node.inputs[2]
        values = bias.values.reshape(-1) if isinstance(bias, gs.Constant) else np.zeros(0)
        if values.size in (1, size):  # Conv's B is (out,); Gemm's C (out,), (1, out) or scalar
            total += values.astype(np.float64) * float(node.attrs.get("beta", 1.0))
    tensor = node.outputs[0]
    while len(tensor.outputs) == 1 and tensor.outputs[0].op == "Add":
        add = tensor.outputs[0]
        others = [t for t in add.inputs if t is not tensor]
        if len(others) != 1 or not isinstance(others[0], gs.Constant):
            break
        values = per_channel(others[0].values, node, size)
        if values is None:
            break
        total += values
        tensor = add.outputs[0]
    return total


def weight_of(node: gs.Node) -> np.ndarray | None:
    if len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return None
    return node.inputs[1].values


def folded_bn(layer: Any, consumers: dict[str, list[Any]]) -> Any | None:
    """The BatchNormalization tf2onnx may fold into ``layer``: its only consumer."""
    after = consumers.get(layer.name, [])
    if len(after) == 1 and class_name(after[0]) == "BatchNormalization":
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        return after[0] if activation == "linear" else None
    return None


def allclose(got: np.ndarray, want: np.ndarray) -> bool:
    if got.shape != want.shape:
        return False
    scale = float(np.abs(want).max()) if want.size else 0.0
    return bool(np.allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1e-3)))


def _fits(layer: Any, node: gs.Node, bn: Any | None) -> tuple[bool, np.ndarray | None]:
    """(matches, fold scale or None) for one Keras layer against one ONNX node."""
    weight = weight_of(node)
    if weight is None or (node.op == "Gemm" and float(node.attrs.get("alpha", 1.0)) != 1.0):
        return False, None
    if (node.op == "Conv") != (class_name(layer) != "Dense"):
        return False, None
    expected = to_onnx(layer, kernel_of(layer), node)
    if expected.shape != weight.shape:
        return False, None
    size = weight.shape[out_axis(node)]
    bias = effective_bias(node, size)
    own = bias_of(layer, size).astype(np.float64)
    if bn is not None:  # checked first: a BN near identity would pass the plain test too
        scale = bn_scale(bn)
        params = bn_params(bn)
        folded = (own - params["mean"]) * scale + params["beta"]
        if allclose(weight, scaled(expected, scale, out_axis(node))) and allclose(bias, folded):
            return True, scale
    return allclose(weight, expected) and allclose(bias, own), None


def _name_hint(layer: Any, node: gs.Node) -> bool:
    token = f"/{layer.name}/"
    texts = [node.name, *(t.name for t in node.inputs), *(t.name for t in node.outputs)]
    return any(token in f"/{text}" for text in texts)


def match_layers(
    layers: list[Any], consumers: dict[str, list[Any]], graph: gs.Graph
) -> dict[str, Match]:
    """Keras layer name -> Match for every Conv2D / DepthwiseConv2D / Dense in ``layers``.

    A layer found nowhere, or matching several nodes alike, is a one-line ModelError.
    """
    nodes = [n for n in graph.nodes if n.op in ONNX_OPS and weight_of(n) is not None]
    matches: dict[str, Match] = {}
    taken: dict[str, str] = {}
    for layer in layers:
        if class_name(layer) not in KERNEL_LAYERS:
            continue
        bn = folded_bn(layer, consumers)
        found = []
        for node in nodes:
            ok, fold = _fits(layer, node, bn)
            if ok:
                found.append((node, fold))
        named = [f for f in found if _name_hint(layer, f[0])]
        found = named or found
        if not found:
            raise ModelError(
                f"Keras layer '{layer.name}' ({class_name(layer)}) has no matching node in "
                "the converted ONNX graph"
            )
        if len(found) > 1:
            raise ModelError(
                f"Keras layer '{layer.name}' matches {len(found)} ONNX nodes alike "
                "(identical weights?): cannot tell which one it became"
            )
        node, fold = found[0]
        if node.name in taken:
            raise ModelError(
                f"Keras layers '{taken[node.name]}' and '{layer.name}' both match ONNX node "
                f"'{node.name}'"
            )
        taken[node.name] = layer.name
        matches[layer.name] = Match(layer, node, fold, bn if fold is not None else None)
    return matches
