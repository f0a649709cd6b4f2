"""Channels that are constant over the data, and the consumer-input means compensation
folds: what the mean-compensation tests build on."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from builders import expose

from onnxprune.analyze import Analysis
from onnxprune.score import consumer_inputs
from onnxprune.verify import run


def make_constant(model: onnx.ModelProto, source: str, channels: list[int], value: float):
    """Make ``channels`` of producer ``source`` equal ``value`` everywhere: weights 0, bias
    ``value`` (a MatMul's bias is the Add after it). A ReLU after keeps a positive value."""
    graph = gs.import_onnx(model)
    node = next(n for n in graph.nodes if n.name == source)
    weight = node.inputs[1].values.copy()
    transposed = node.op == "MatMul" or (node.op == "Gemm" and not node.attrs.get("transB", 0))
    np.moveaxis(weight, 1 if transposed else 0, 0)[channels] = 0
    node.inputs[1] = gs.Constant(node.inputs[1].name + "_c", weight)
    if node.op == "MatMul":
        add = node.outputs[0].outputs[0]
        slot = next(i for i, t in enumerate(add.inputs) if isinstance(t, gs.Constant))
    else:
        add, slot = node, 2
    bias = add.inputs[slot].values.copy()
    bias[..., channels] = value
    add.inputs[slot] = gs.Constant(add.inputs[slot].name + "_c", bias)
    return gs.export_onnx(graph)


def consumer_means(analysis: Analysis, groups, feed) -> dict[str, np.ndarray]:
    """Per-position means of every consumer input ``groups`` may remove channels from."""
    names = list(consumer_inputs(analysis, groups))
    values = run(expose(analysis.model, names), feed)
    means = {}
    for name in names:
        moved = np.moveaxis(values[name], analysis.cg.layouts[name].axis, 0)
        means[name] = moved.reshape(moved.shape[0], -1).mean(axis=1)
    return means
