"""Data-movement ops: the new layout is found by pushing an index tensor through them.

Fill a batch-1 tensor with each position's atom id, apply the op's real data movement
(a C-order reshape to the probed output shape, or the transpose), and read the channel
axis back off the result. Flatten into a dense head repeats each atom H*W times; an NHWC
transpose moves the axis; a channel shuffle makes atoms vary along two axes: a barrier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from ..layout import Layout, collapse, expand
from .base import Rule, constant, int_list, register

if TYPE_CHECKING:
    from ..rewrite import Plan

INFERRED = (-1,)


def _computed_entry(shape_tensor: gs.Tensor, position: int) -> int | None:
    """Value at ``position`` of a shape computed by Concat of 1-element pieces, if constant."""
    producers = shape_tensor.inputs
    if len(producers) != 1 or producers[0].op != "Concat":
        return None
    offset = 0
    for piece in producers[0].inputs:
        values = constant(piece)
        length = 1 if values is None else int(np.asarray(values).size)
        if offset <= position < offset + length:
            return (
                None if values is None else int(np.asarray(values).reshape(-1)[position - offset])
            )
        offset += length
    return None


def _one_atom(layout: Layout, out_shape: tuple[int, ...]) -> Layout:
    """A tensor carrying a single channel varies along no axis (e.g. a 1-channel slice
    flattened into a Gemm): put it on axis 1, the channel / feature axis every consumer
    reads, repeated. The atom is registered as non-empty, so it is never removed."""
    return Layout(1, np.repeat(layout.atoms[:1], out_shape[1]))


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
class ReshapeRule(Rule):
    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        in_shape, out_shape = cg.shape(node.inputs[0]), cg.shape(node.outputs[0])
        if in_shape is None or out_shape is None:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' has unknown shapes")
            return
        if node.op == "Flatten" and int(node.attrs.get("axis", 1)) == 0:
            cg.freeze_inputs(node, f"Flatten '{node.name}' merges the batch axis")
            return
        new = collapse(expand(layout, in_shape).reshape(out_shape))
        if new is None and np.unique(layout.atoms).size == 1 and len(out_shape) > 1:
            new = _one_atom(layout, out_shape)
            cg.nonempty.append(layout.atoms[:1])
        reason = None if new is not None else f"{node.op} '{node.name}' spreads channels over axes"
        if new is not None and node.op == "Reshape":
            reason = self._target_problem(node, new.axis)
        if reason is not None:
            cg.freeze_inputs(node, reason)
            return
        cg.set_layout(node.outputs[0], new)

    @staticmethod
    def _target_problem(node: gs.Node, axis: int) -> str | None:
        """Can the target shape be rewritten for a new channel extent at ``axis``?"""
        target = int_list(node.inputs[1])
        if target is None:
            if _computed_entry(node.inputs[1], axis) in INFERRED:
                return None
            return f"Reshape '{node.name}' computes the channel extent"
        if target[0] not in (0, -1, 1):
            return f"Reshape '{node.name}' folds the batch into other axes"
        return None

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        if node.op != "Reshape" or plan.keep(node.inputs[0]) is None:
            return
        target = int_list(node.inputs[1])
        layout = plan.cg.layout(node.outputs[0])
        if target is None or target[layout.axis] in (-1, 0):
            return  # inferred or copied extents follow the input by themselves
        target[layout.axis] = int(plan.keep(node.outputs[0]).sum())
        node.inputs[1] = gs.Constant(f"{node.name}_shape_pruned", np.array(target, np.int64))


@register("Transpose")
class TransposeRule(Rule):
    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        rank = len(cg.shape(node.inputs[0]) or ())
        perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
        new_axis = perm.index(layout.axis)
        if new_axis == 0:
            cg.freeze_inputs(node, f"Transpose '{node.name}' moves channels to the batch axis")
            return
        cg.set_layout(node.outputs[0], layout.moved(new_axis))
