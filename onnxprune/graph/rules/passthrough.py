"""Ops that keep channel c as channel c: activations, per-channel norms, pooling, padding,
resizing, and repeats over other axes (Tile, Expand: upsampling as exporters write it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from .base import Rule, constant, int_list, optional_input, register

if TYPE_CHECKING:
    from ..rewrite import Plan

UNARY = (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Gelu",
    "Mish",
    "ThresholdedRelu",
    "Shrink",
    "Erf",
    "Exp",
    "Log",
    "Abs",
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Not",
    "Cast",
    "CastLike",
    "Clip",
    "Identity",
    "Dropout",
    "Relu6",
    "QuickGelu",
    "IsNaN",
    "IsInf",
)


@register(*UNARY)
class UnaryRule(Rule):
    """Elementwise on one activation (extra inputs are scalar limits, e.g. Clip's)."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        cg.set_layout(node.outputs[0], layout)

    def is_channelwise(self, node: gs.Node, cg: ChannelGraph) -> bool:
        return node.op not in ("Cast", "CastLike")


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNormRule(Rule):
    """Per-channel scale/bias/statistics are sliced with the channel axis (1)."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        params = node.inputs[1:]
        if layout is not None and (
            layout.axis != 1 or any(constant(p) is None for p in params if not p.is_empty())
        ):
            cg.freeze_inputs(node, f"{node.op} '{node.name}' has computed parameters")
        cg.set_layout(node.outputs[0], layout)

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        keep = plan.keep(node.inputs[0])
        for index in range(1, len(node.inputs)):
            if optional_input(node, index) is not None:
                plan.slice_input(node, index, {0: keep})

    def is_channelwise(self, node: gs.Node, cg: ChannelGraph) -> bool:
        return True


@register(
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
    "MaxRoiPool",
)
class PoolRule(Rule):
    """Spatial pooling keeps channels (MaxPool's optional Indices output is not tracked);
    it pools every axis after 1, so channels on any of those are mixed: a barrier."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is not None and layout.axis != 1:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' pools over the channel axis")
            return
        cg.set_layout(node.outputs[0], layout)


@register("Pad")
class PadRule(Rule):
    """Padding is pass-through unless it pads the channel axis itself."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        rank = len(cg.shape(node.inputs[0]) or ())
        pads = node.attrs.get("pads") or int_list(optional_input(node, 1))
        axes = int_list(optional_input(node, 3)) or list(range(rank))
        axes = [a + rank if a < 0 else a for a in axes]
        if pads is None:
            cg.freeze_inputs(node, f"Pad '{node.name}' has computed pads")
            return
        count = len(axes)
        for position, axis in enumerate(axes):
            if axis == layout.axis and (pads[position] or pads[position + count]):
                cg.freeze_inputs(node, f"Pad '{node.name}' pads the channel axis")
                return
        cg.set_layout(node.outputs[0], layout)


@register("Resize", "Upsample")
class ResizeRule(Rule):
    """Spatial resizing; an explicit ``sizes`` input lists the channel extent too."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        sizes = optional_input(node, 3) if node.op == "Resize" else None
        if sizes is not None and constant(sizes) is None:
            cg.freeze_inputs(node, f"Resize '{node.name}' has computed sizes")
            return
        cg.set_layout(node.outputs[0], layout)

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        sizes = optional_input(node, 3) if node.op == "Resize" else None
        keep = plan.keep(node.inputs[0])
        if sizes is None or keep is None:
            return
        values = constant(sizes).copy()
        values[plan.cg.layout(node.inputs[0]).axis] = int(keep.sum())
        node.inputs[3] = gs.Constant(f"{sizes.name}_{node.name}_pruned", values)


@register("Tile")
class TileRule(Rule):
    """Repeats along the other axes (nearest upsampling, Keras 3's UpSampling2D) keep the
    channels; repeating the channel axis itself is left to the barrier."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        repeats = int_list(node.inputs[1])
        if repeats is None:
            cg.freeze_inputs(node, f"Tile '{node.name}' has computed repeats")
            return
        if len(repeats) <= layout.axis or repeats[layout.axis] != 1:
            cg.freeze_inputs(node, f"Tile '{node.name}' repeats the channel axis")
            return
        cg.set_layout(node.outputs[0], layout)


@register("Expand")
class ExpandRule(Rule):
    """Broadcasting to a constant shape keeps the channels; leading axes it adds move the
    channel axis, and a shape entry naming the channel count is rewritten with it."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        in_shape, shape = cg.shape(node.inputs[0]), int_list(node.inputs[1])
        if in_shape is None or shape is None:
            cg.freeze_inputs(node, f"Expand '{node.name}' has a computed shape")
            return
        added = max(0, len(shape) - len(in_shape))
        entry = _expand_entry(layout.axis, len(in_shape), shape)
        if entry >= 0 and shape[entry] not in (1, layout.size):
            cg.freeze_inputs(node, f"Expand '{node.name}' broadcasts the channel axis")
            return
        cg.set_layout(node.outputs[0], layout.moved(layout.axis + added))

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        keep = plan.keep(node.inputs[0])
        if keep is None:
            return
        layout = plan.cg.layout(node.inputs[0])
        shape = constant(node.inputs[1]).copy()
        entry = _expand_entry(layout.axis, len(plan.cg.shape(node.inputs[0])), shape)
        if entry >= 0 and shape[entry] == layout.size:
            shape[entry] = int(keep.sum())
            node.inputs[1] = gs.Constant(f"{node.inputs[1].name}_{node.name}_pruned", shape)


def _expand_entry(axis: int, rank: int, shape) -> int:
    """The entry of an Expand ``shape`` (right-aligned with the input) that meets the
    input's channel ``axis``; negative when the shape is too short to reach it."""
    return axis + len(shape) - rank
