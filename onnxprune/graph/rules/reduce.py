"""Reductions and normalisations over an axis: fine on other axes, barriers on channels."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from .base import Rule, int_list, normalize_axis, optional_input, register

REDUCE = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)


@register(*REDUCE)
class ReduceRule(Rule):
    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        rank = len(cg.shape(node.inputs[0]) or ())
        axes = node.attrs.get("axes")
        if axes is None:
            axes = int_list(optional_input(node, 1))
            if axes is None and optional_input(node, 1) is not None:
                cg.freeze_inputs(node, f"{node.op} '{node.name}' has computed axes")
                return
        if not axes:
            axes = [] if int(node.attrs.get("noop_with_empty_axes", 0)) else list(range(rank))
        axes = [normalize_axis(a, rank) for a in axes]
        if layout.axis in axes:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' reduces over channels")
            return
        keepdims = int(node.attrs.get("keepdims", 1))
        shift = 0 if keepdims else sum(1 for a in axes if a < layout.axis)
        cg.set_layout(node.outputs[0], layout.moved(layout.axis - shift))


@register("Softmax", "LogSoftmax")
class SoftmaxRule(Rule):
    """Softmax normalises over its axis (and, before opset 13, every axis after it)."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        rank = len(cg.shape(node.inputs[0]) or ())
        opset = cg.graph.opset
        axis = normalize_axis(int(node.attrs.get("axis", -1 if opset >= 13 else 1)), rank)
        mixes = layout.axis >= axis if opset < 13 else layout.axis == axis
        if mixes:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' normalises over channels")
            return
        cg.set_layout(node.outputs[0], layout)
