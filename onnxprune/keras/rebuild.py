"""Apply an ONNX pruning plan to the user's own Keras model.

The new model is built from the original's config with fewer filters / units, so it keeps
the user's layers, names, activations and regularisers and trains like the original.
Weights are the original ones sliced by the keep masks; what pruning changed beyond
slicing is read back from the pruned ONNX model: refit kernels (``--reconstruct``) and the
bias shifts of mean compensation (into the layer's bias, or into the beta of a BN that
tf2onnx folded into it). The result must reproduce the pruned ONNX model's outputs;
anything else is a one-line ModelError, never a silently different model.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analyze import Analysis
from ..errors import ModelError
from ..graph.rewrite import Plan
from ..io import input_specs
from ..verify import run
from .channels import KerasGraph, input_mask, keras_graph, propagate
from .layermap import (
    ONNX_OPS,
    Match,
    allclose,
    bias_of,
    bn_scale,
    class_name,
    effective_bias,
    folded_bn,
    from_onnx,
    kernel_of,
    kernel_variable,
    match_layers,
    out_axis,
    scaled,
    to_onnx,
    weight_of,
)

TOLERANCE = 1e-4  # relative to the largest output magnitude (at least 1)


def _keep(plan: Plan, tensor: gs.Tensor, size: int) -> np.ndarray:
    mask = plan.keep(tensor)
    return np.ones(size, dtype=bool) if mask is None else mask


def short_name(weight: Any) -> str:
    """``conv/kernel:0`` (Keras 2) or ``kernel`` (Keras 3) -> ``kernel``."""
    return weight.name.split("/")[-1].split(":")[0]


class Rebuild:
    """The new configs and weights, layer by layer (one pass in topological order)."""

    def __init__(self, model: Any, analysis: Analysis, plan: Plan, pruned: onnx.ModelProto):
        self.model = model
        self.plan = plan
        self.graph: KerasGraph = keras_graph(model)
        self.matches = match_layers(self.graph.layers, self.graph.consumers, analysis.cg.graph)
        planned = {
            name: _keep(plan, m.node.outputs[0], weight_of(m.node).shape[out_axis(m.node)])
            for name, m in self.matches.items()
        }
        self._check_all_matched(analysis)
        self.masks = propagate(self.graph, planned)
        self.pruned_nodes = {n.name: n for n in gs.import_onnx(pruned).nodes}
        self.configs: dict[str, dict] = {}  # layer name -> config changes
        self.weights: dict[str, dict[str, np.ndarray]] = {}  # layer -> short name -> values
        self.beta_shift: dict[str, np.ndarray] = {}  # folded BN name -> bias shift

    def _check_all_matched(self, analysis: Analysis) -> None:
        """Every ONNX layer the plan touches must be one of the matched Keras layers."""
        matched = {m.node.name for m in self.matches.values()}
        for node in analysis.cg.graph.nodes:
            if node.op not in ONNX_OPS or weight_of(node) is None or node.name in matched:
                continue
            if (
                self.plan.keep(node.inputs[0]) is not None
                or self.plan.keep(node.outputs[0]) is not None
            ):
                raise ModelError(
                    f"ONNX layer '{node.name}' ({node.op}) is pruned but matches no Keras "
                    "Conv2D, DepthwiseConv2D or Dense layer"
                )

    def run(self) -> None:
        for layer in self.graph.layers:
            if layer.name in self.matches:
                self._kernel_layer(self.matches[layer.name])
        for layer in self.graph.layers:
            if class_name(layer) == "BatchNormalization":
                self._batch_norm(layer)

    def _kernel_layer(self, match: Match) -> None:
        layer, node = match.layer, match.node
        kind = class_name(layer)
        keep_in = input_mask(self.graph, layer, self.masks)
        onnx_in = _keep(self.plan, node.inputs[0], keep_in.size)
        if onnx_in.shape != keep_in.shape or not np.array_equal(onnx_in, keep_in):
            raise ModelError(
                f"Keras layer '{layer.name}': the channels it reads do not line up with "
                f"ONNX node '{node.name}'"
            )
        keep_out = self.masks[layer.name]
        kernel = kernel_of(layer)
        if kind == "Dense":
            kernel = kernel[keep_in][:, keep_out]
            self.configs[layer.name] = {"units": int(keep_out.sum())}
        elif kind == "Conv2D":
            if int(layer.get_config().get("groups", 1)) != 1:
                raise ModelError(f"cannot rebuild grouped Conv2D '{layer.name}'")
            kernel = kernel[:, :, keep_in, :][..., keep_out]
            self.configs[layer.name] = {"filters": int(keep_out.sum())}
        else:  # depthwise: output channel c * m + j reads input channel c
            if not np.array_equal(keep_out, np.repeat(keep_in, int(layer.depth_multiplier))):
                raise ModelError(f"depthwise layer '{layer.name}' keeps inconsistent channels")
            kernel = kernel[:, :, keep_in, :]
        pruned_node = self.pruned_nodes.get(node.name)
        got = None if pruned_node is None else weight_of(pruned_node)
        axis = out_axis(node)
        scale = None if match.fold is None else match.fold[keep_out]
        expected = to_onnx(layer, kernel, node)
        if scale is not None:
            expected = scaled(expected, scale, axis)
        if got is None or got.shape != expected.shape:
            raise ModelError(f"Keras layer '{layer.name}' has no same-shaped pruned ONNX node")
        if not allclose(got, expected):  # refit by --reconstruct: take the ONNX weights
            unscaled = got
            if scale is not None:
                safe = np.where(scale == 0, 1.0, scale)
                unscaled = scaled(got, 1.0 / safe, axis)
            kernel = from_onnx(layer, unscaled.astype(kernel.dtype), node)
        full = weight_of(node).shape[axis]
        shift = (
            effective_bias(pruned_node, int(keep_out.sum())) - effective_bias(node, full)[keep_out]
        )
        bias = bias_of(layer, full)[keep_out].astype(np.float64)
        values = {short_name(kernel_variable(layer)): kernel}
        after = None if getattr(layer, "bias", None) is not None else self._bn_after(layer)
        if match.bn is not None:  # folded: the ONNX bias is the BN's output offset
            self.beta_shift[match.bn.name] = shift
        elif after is not None:  # no bias of its own, BN kept apart (Keras 3): shift its beta
            self.beta_shift[after.name] = shift * bn_scale(after)[keep_out]
        else:
            bias = bias + shift
        if getattr(layer, "bias", None) is not None or np.any(bias != 0):
            values["bias"] = bias.astype(kernel.dtype)
            self.configs.setdefault(layer.name, {})["use_bias"] = True
        self.weights[layer.name] = values

    def _bn_after(self, layer: Any) -> Any | None:
        """The BatchNormalization that alone reads this linear layer on the channel axis."""
        bn = folded_bn(layer, self.graph.consumers)
        if bn is None:
            return None
        rank = len(self.graph.input_shape(bn))
        axis = bn.get_config().get("axis", -1)
        axes = axis if isinstance(axis, list | tuple) else [axis]
        return bn if len(axes) == 1 and axes[0] % rank == rank - 1 else None

    def _batch_norm(self, layer: Any) -> None:
        mask = self.masks[layer.name]
        values = {short_name(w): np.asarray(w.numpy())[mask] for w in layer.weights}
        shift = self.beta_shift.get(layer.name)
        if shift is not None and np.any(shift != 0):
            beta = values.get("beta", np.zeros(int(mask.sum()), np.float32))
            values["beta"] = (beta + shift).astype(beta.dtype)
            self.configs[layer.name] = {"center": True}
        self.weights[layer.name] = values

    def build(self) -> Any:
        """The new model from the edited config, holding the new weights."""
        config = copy.deepcopy(self.model.get_config())
        for entry in config.get("layers", []):
            entry.pop("build_config", None)  # Keras 3 would build layers at the old sizes
            name = entry.get("config", {}).get("name", entry.get("name"))
            entry["config"].update(self.configs.get(name, {}))
        try:
            new = type(self.model).from_config(config)
        except Exception as exc:  # custom layers, subclassed models, ...
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ModelError(
                f"cannot rebuild the Keras model from its config: {type(exc).__name__}: {first}"
            ) from exc
        for layer in self.graph.layers:
            target = new.get_layer(layer.name)
            if not target.weights:
                continue
            if layer.name in self.weights:
                values = self.weights[layer.name]
                target.set_weights([values[short_name(w)] for w in target.weights])
            else:
                target.set_weights(layer.get_weights())
        return new


def rebuild(
    model: Any,
    analysis: Analysis,
    plan: Plan,
    pruned: onnx.ModelProto,
    feed: dict[str, np.ndarray],
) -> Any:
    """A new Keras model with the plan's channels removed; checked against ``pruned``."""
    if not hasattr(model, "get_config") or not hasattr(model, "layers"):
        raise ModelError("only functional and Sequential Keras models can be rebuilt")
    work = Rebuild(model, analysis, plan, pruned)
    work.run()
    new = work.build()
    check_equal(new, pruned, feed)
    return new


def keras_outputs(model: Any, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """The Keras model's outputs; ``names`` are the ONNX inputs, in Keras input order."""
    inputs = [feed[name] for name in names]
    outputs = model(inputs[0] if len(inputs) == 1 else inputs, training=False)
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    return [np.asarray(o) for o in outputs]


def check_equal(model: Any, reference: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    """The Keras model must compute what the ONNX model computes (to TOLERANCE)."""
    expected = list(run(reference, feed).values())
    got = keras_outputs(model, feed, [spec.name for spec in input_specs(reference)])
    for want, have in zip(expected, got):
        scale = max(1.0, float(np.abs(want).max()))
        error = float(np.abs(have.reshape(want.shape) - want).max()) / scale
        if not error <= TOLERANCE:
            raise ModelError(
                f"the rebuilt Keras model differs from the pruned ONNX model (relative error "
                f"{error:.2g}): a layer could not be mapped faithfully"
            )
