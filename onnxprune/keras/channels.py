"""Which channels survive at every Keras layer: keep masks along the last (channel) axis.

The producers' masks (Conv2D, DepthwiseConv2D, Dense) come from the ONNX pruning plan;
this module carries them through the rest of the Keras graph the way the layers move
channels: pass-through layers copy them, Add & co. need equal masks, Concatenate joins
them, Flatten repeats them per position (NHWC flattens position-major, channel-minor).
A layer that pruned channels reach and that is not understood is a one-line ModelError
naming it; layers no pruned channel reaches are kept exactly as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError
from .layermap import KERNEL_LAYERS, class_name

PASS_THROUGH = {
    "BatchNormalization",
    "ReLU",
    "Activation",
    "LeakyReLU",
    "ELU",
    "ThresholdedReLU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "MaxPooling1D",
    "MaxPooling2D",
    "AveragePooling1D",
    "AveragePooling2D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "UpSampling2D",
    "Identity",
}
ELEMENTWISE = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
NESTED = {"Functional", "Sequential", "Model"}


@dataclass
class KerasGraph:
    """A functional or Sequential model's layers in topological order, with their edges
    and the shapes of each layer's input and output tensors in this model."""

    layers: list[Any]
    producers: dict[str, list[tuple[Any, int]]] = field(default_factory=dict)
    consumers: dict[str, list[Any]] = field(default_factory=dict)
    input_shapes: dict[str, list[tuple]] = field(default_factory=dict)
    output_shapes: dict[str, list[tuple]] = field(default_factory=dict)

    def input_shape(self, layer: Any) -> tuple:
        return self.input_shapes[layer.name][0]

    def output_shape(self, layer: Any) -> tuple:
        if layer.name not in self.output_shapes:  # a Keras 2 Sequential's own InputLayer
            return tuple(layer.output.shape)
        return self.output_shapes[layer.name][0]


def _edges(tensors: list[Any]) -> list[tuple[Any, int]]:
    """(producing layer, its output index) for each tensor."""
    edges = []
    for tensor in tensors:
        history = tensor._keras_history  # (layer, node index, tensor index) in Keras 2 and 3
        edges.append((history[0], int(history[2])))
    return edges


def _as_list(tensors: Any) -> list[Any]:
    return list(tensors) if isinstance(tensors, list | tuple) else [tensors]


def _shapes(tensors: list[Any]) -> list[tuple]:
    return [tuple(tensor.shape) for tensor in tensors]


def _inbound(layer: Any) -> list[tuple[Any, int]]:
    """Keras 2: (producing layer, its output index) for each input tensor of ``layer``."""
    if class_name(layer) == "InputLayer":
        return []
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes is not None and len(nodes) != 1:
        raise _shared(layer, len(nodes))
    return _edges(_as_list(layer.input))


def _shared(layer: Any, calls: int | None) -> ModelError:
    times = "more than once" if calls is None else f"{calls} times"
    return ModelError(
        f"Keras layer '{layer.name}' is called {times} (shared layers cannot "
        "be rebuilt with fewer channels)"
    )


def model_nodes(model: Any) -> dict[str, Any] | None:
    """Keras 3: the node (call) of each layer that this model's graph uses, found by walking
    back from the outputs; None on Keras 2.

    Keras 3 keeps a node for every symbolic call of a layer, including those of discarded
    graphs (a Sequential rebuilds its graph when it is built again or loaded), so a layer's
    ``_inbound_nodes`` and ``layer.input`` / ``layer.output`` may name another graph's
    tensors; the model's own nodes are the ones its outputs' histories lead to.
    """
    outputs = _as_list(model.outputs)
    if not outputs or not hasattr(outputs[0]._keras_history, "operation"):
        return None  # Keras 2's history names the field ``layer``
    nodes: dict[str, Any] = {}
    stack = list(outputs)
    while stack:
        tensor = stack.pop()
        operation, index, _ = tensor._keras_history
        if operation is None:
            continue
        node = operation._inbound_nodes[index]
        seen = nodes.get(operation.name)
        if seen is not None:
            if seen is not node:
                raise _shared(operation, None)
            continue
        nodes[operation.name] = node
        stack.extend(node.input_tensors)
    return nodes


def keras_graph(model: Any) -> KerasGraph:
    """The layer graph; nested models are refused (flatten them into one model first)."""
    graph = KerasGraph([])
    pending = list(model.layers)
    for layer in pending:
        if class_name(layer) in NESTED or hasattr(layer, "layers"):
            raise ModelError(
                f"Keras layer '{layer.name}' is a nested model: rebuild needs one flat "
                "functional or Sequential model"
            )
    nodes = model_nodes(model)
    if nodes is not None:  # Keras 3
        for name, node in nodes.items():
            graph.output_shapes[name] = _shapes(node.output_tensors)
            graph.input_shapes[name] = _shapes(node.input_tensors)
    for layer in pending:
        if nodes is None:  # Keras 2: one inbound node per layer, its tensors on the layer
            graph.producers[layer.name] = _inbound(layer)
            if class_name(layer) != "InputLayer":
                graph.input_shapes[layer.name] = _shapes(_as_list(layer.input))
            graph.output_shapes[layer.name] = _shapes(_as_list(layer.output))
        elif layer.name in nodes:
            graph.producers[layer.name] = _edges(nodes[layer.name].input_tensors)
        else:
            raise ModelError(f"Keras layer '{layer.name}' is not connected to the model's outputs")
        for producer, _ in graph.producers[layer.name]:
            graph.consumers.setdefault(producer.name, []).append(layer)
    done: set[str] = set()
    known = {layer.name for layer in pending}
    while pending:  # Kahn's order: a layer after every layer it reads
        ready = [
            layer
            for layer in pending
            if all(p.name in done or p.name not in known for p, _ in graph.producers[layer.name])
        ]
        if not ready:
            raise ModelError("the Keras model's layer graph has a cycle")
        for layer in ready:
            graph.layers.append(layer)
            done.add(layer.name)
        pending = [layer for layer in pending if layer.name not in done]
    return graph


def _last_dim(graph: KerasGraph, layer: Any) -> int:
    shape = graph.output_shape(layer)
    if not shape or shape[-1] is None:
        raise ModelError(f"Keras layer '{layer.name}' has no static channel count")
    return int(shape[-1])


def _channels_last(layer: Any, rank: int) -> bool:
    config = layer.get_config()
    if config.get("data_format", "channels_last") != "channels_last":
        return False
    if class_name(layer) == "BatchNormalization":
        axis = config.get("axis", -1)
        axes = axis if isinstance(axis, list | tuple) else [axis]
        return len(axes) == 1 and axes[0] % rank == rank - 1
    return True


def _refuse(layer: Any, why: str) -> ModelError:
    return ModelError(f"cannot rebuild Keras layer '{layer.name}' ({class_name(layer)}): {why}")


def propagate(graph: KerasGraph, planned: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep mask of every layer's output; ``planned`` holds the matched producers' masks."""
    masks: dict[str, np.ndarray] = {}
    for layer in graph.layers:
        kind = class_name(layer)
        inputs = [_mask_of(graph, p, index, masks) for p, index in graph.producers[layer.name]]
        pruned_in = any(not m.all() for m in inputs)
        if kind in KERNEL_LAYERS:
            if layer.name not in planned:
                raise _refuse(layer, "no channel plan for it")
            masks[layer.name] = planned[layer.name]
        elif kind == "InputLayer" or not pruned_in:
            masks[layer.name] = np.ones(_last_dim(graph, layer), dtype=bool)
        elif kind in PASS_THROUGH:
            rank = len(graph.input_shape(layer))
            if not _channels_last(layer, rank):
                raise _refuse(layer, "pruned channels reach it on an axis other than the last")
            masks[layer.name] = inputs[0]
        elif kind in ELEMENTWISE:
            if any(m.shape != inputs[0].shape or not np.array_equal(m, inputs[0]) for m in inputs):
                raise _refuse(layer, "its inputs keep different channels")
            masks[layer.name] = inputs[0]
        elif kind == "Concatenate":
            rank = len(graph.output_shape(layer))
            if int(layer.get_config().get("axis", -1)) % rank != rank - 1:
                raise _refuse(
                    layer, "it concatenates pruned tensors on an axis other than the last"
                )
            masks[layer.name] = np.concatenate(inputs)
        elif kind == "Flatten":
            shape = graph.input_shape(layer)
            if not _channels_last(layer, len(shape)) or any(d is None for d in shape[1:]):
                raise _refuse(layer, "it flattens a channels-first or dynamic-size tensor")
            positions = int(np.prod(shape[1:-1], dtype=np.int64))
            masks[layer.name] = np.tile(inputs[0], positions)  # position-major, channel-minor
        else:
            raise _refuse(layer, "pruned channels reach it and it has no channel rule")
    return masks


def _mask_of(
    graph: KerasGraph, producer: Any, index: int, masks: dict[str, np.ndarray]
) -> np.ndarray:
    if producer.name in masks:
        if index != 0:
            raise _refuse(producer, "layers with several outputs are not supported")
        return masks[producer.name]
    if class_name(producer) != "InputLayer":  # Sequential keeps its InputLayer out of .layers
        raise _refuse(producer, "it is not part of the model's layer list")
    return np.ones(_last_dim(graph, producer), dtype=bool)


def input_mask(graph: KerasGraph, layer: Any, masks: dict[str, np.ndarray]) -> np.ndarray:
    """The keep mask of a single-input layer's input."""
    (producer, index), *rest = graph.producers[layer.name]
    if rest:
        raise _refuse(layer, "expected exactly one input")
    return _mask_of(graph, producer, index, masks)
