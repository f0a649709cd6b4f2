"""Ops the rewrite cannot express: they freeze every channel they read."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from .base import Rule, register


class Barrier(Rule):
    """Unknown or channel-mixing ops: leave their channels intact, say why, never crash."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        reason = f"{node.op} node '{node.name}' mixes or reinterprets channels"
        cg.freeze_inputs(node, reason)
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):  # If/Loop/Scan bodies may read outer tensors
                for inner in value.nodes:
                    cg.freeze_inputs(inner, reason)


BARRIER = Barrier()

register(
    "LRN",
    "LpNormalization",
    "GroupNormalization",
    "LayerNormalization",
    "Einsum",
    "DepthToSpace",
    "SpaceToDepth",
    "GatherElements",
    "GatherND",
    "ScatterND",
    "ScatterElements",
    "TopK",
    "NonZero",
    "ArgMax",
    "ArgMin",
    "CumSum",
    "If",
    "Loop",
    "Scan",
    "Hardmax",
)(Barrier)


@register("Shape", "Size")
class ShapeOnly(Rule):
    """Reads only the extent of a tensor; computed shapes follow the pruned graph."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        return None
