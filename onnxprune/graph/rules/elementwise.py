"""Elementwise ops over several inputs: bias/scale constants and activation joins.

Two activations meeting in Add/Mul/Sum (residual blocks, squeeze-excitation) must keep
the same channels: their atoms are tied. Constants that broadcast along the channel axis
(a MatMul's bias, a per-channel scale) are sliced with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from ..layout import Layout
from .base import Rule, constant, register

if TYPE_CHECKING:
    from ..rewrite import Plan


def _aligned_axis(cg: ChannelGraph, node: gs.Node, tensor: gs.Tensor, out_axis: int) -> int:
    """Index of the output's channel axis inside ``tensor`` under numpy broadcasting."""
    out_rank = len(cg.shape(node.outputs[0]) or ())
    rank = len(cg.shape(tensor) or ())
    return out_axis - (out_rank - rank)


@register(
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "PRelu",
    "Where",
    "Equal",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BitShift",
)
class ElementwiseRule(Rule):
    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        out_shape = cg.shape(node.outputs[0])
        tracked = [(t, cg.layout(t)) for t in node.inputs if cg.layout(t) is not None]
        if not tracked or out_shape is None:
            return
        out_rank = len(out_shape)
        axes = {layout.axis + out_rank - len(cg.shape(t) or ()) for t, layout in tracked}
        if len(axes) != 1:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' joins channels on different axes")
            return
        axis = axes.pop()
        extent = out_shape[axis]
        full = [layout for _, layout in tracked if layout.size == extent]
        if not full:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' broadcasts channels")
            return
        for other in full[1:]:
            cg.union(full[0].atoms, other.atoms)
        for tensor in node.inputs:
            if cg.layout(tensor) is not None or extent == 1:
                continue
            index = _aligned_axis(cg, node, tensor, axis)
            shape = cg.shape(tensor) or ()
            if 0 <= index < len(shape) and shape[index] == extent and constant(tensor) is None:
                cg.freeze_inputs(node, f"{node.op} '{node.name}' reads an untracked channel tensor")
                return
        cg.set_layout(node.outputs[0], Layout(axis, full[0].atoms))

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        layout = plan.cg.layout(node.outputs[0])
        keep = plan.keep(node.outputs[0])
        if layout is None or keep is None:
            return
        for index, tensor in enumerate(node.inputs):
            values = constant(tensor)
            if values is None:
                continue
            axis = _aligned_axis(plan.cg, node, tensor, layout.axis)
            if 0 <= axis < values.ndim and values.shape[axis] == layout.size:
                plan.slice_input(node, index, {axis: keep})

    def is_channelwise(self, node: gs.Node, cg: ChannelGraph) -> bool:
        tracked = [t for t in node.inputs if cg.layout(t) is not None]
        return len(tracked) == 1 and all(
            constant(t) is not None for t in node.inputs if t is not tracked[0]
        )
