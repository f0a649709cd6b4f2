"""Ops that create channels (sources) and read channels (consumers): Conv, Gemm, MatMul."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from ..layout import Layout
from .base import Rule, constant, optional_input, register

if TYPE_CHECKING:
    from ..rewrite import Plan


def _new_source(cg: ChannelGraph, node: gs.Node, kind: str, size: int) -> Layout:
    """A source keeps at least one channel even when it shares a group (a concat member
    coupled by a residual Add): a layer with zero filters breaks most runtimes."""
    out = cg.new_source(node, kind, size)
    cg.nonempty.append(out.atoms)
    return out


def _is_depthwise(node: gs.Node, cg: ChannelGraph) -> bool:
    weight = constant(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    layout = cg.layout(node.inputs[0])
    return (
        group > 1
        and weight is not None
        and weight.shape[1] == 1
        and layout is not None
        and layout.axis == 1
        and layout.size == group
    )


@register("Conv")
class ConvRule(Rule):
    """Filters are a new source; the input channels index weight axis 1.

    Depthwise convs (group == input channels) pass channels through, each input channel
    producing ``multiplier`` output channels. Other grouped convs keep their group count:
    their inputs and their filters must lose equally many channels in every group, so
    each output channel then reads its own group's kept inputs.
    """

    compensates = True

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        weight = constant(node.inputs[1])
        layout = cg.layout(node.inputs[0])
        if weight is None:
            cg.freeze_inputs(node, f"Conv '{node.name}' has a computed (non-constant) weight")
            return
        if layout is not None and layout.axis != 1:
            cg.freeze_inputs(node, f"Conv '{node.name}' reads channels on a spatial axis")
        group = int(node.attrs.get("group", 1))
        if _is_depthwise(node, cg):
            multiplier = weight.shape[0] // group
            cg.set_layout(node.outputs[0], Layout(1, np.repeat(layout.atoms, multiplier)))
            return
        out = _new_source(cg, node, "conv", int(weight.shape[0]))
        if group > 1 and weight.shape[0] == group:  # one filter per group: none can go
            reason = f"grouped Conv '{node.name}' has one filter per group"
            if weight.shape[1] == 1 and layout is None:  # depthwise after a barrier / input
                reason = f"depthwise Conv '{node.name}' reads untracked channels"
            cg.freeze(out.atoms, reason)
        if group > 1:
            cg.equal_blocks(out.atoms, group, node.name)
            if layout is not None and layout.axis == 1 and layout.size == weight.shape[1] * group:
                cg.equal_blocks(layout.atoms, group, node.name)
            elif layout is not None:
                cg.freeze_inputs(node, f"grouped Conv '{node.name}' reads untracked channels")
        cg.set_layout(node.outputs[0], out)

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        keep_out = plan.keep(node.outputs[0])
        keep_in = plan.keep(node.inputs[0])
        group = int(node.attrs.get("group", 1))
        if _is_depthwise(node, plan.cg):
            plan.slice_input(node, 1, {0: keep_out})
            if keep_in is not None:
                node.attrs["group"] = int(keep_in.sum())
        elif group > 1:
            _rewrite_grouped(node, plan, group, keep_in, keep_out)
        else:
            removed = plan.removed_mean(node.inputs[0])
            if removed is not None:  # the removed inputs' mean, through every kernel tap
                weight = constant(node.inputs[1])
                per_input = weight.astype(np.float64).reshape(*weight.shape[:2], -1).sum(axis=2)
                delta = per_input @ removed
                _add_to_bias(plan, node, 2, delta.astype(weight.dtype))
            plan.slice_input(node, 1, {0: keep_out, 1: keep_in})
        if optional_input(node, 2) is not None:
            plan.slice_input(node, 2, {0: keep_out})


def _rewrite_grouped(
    node: gs.Node, plan: Plan, group: int, keep_in: np.ndarray | None, keep_out: np.ndarray | None
) -> None:
    """Weight (C_out, C_in / group, k...): output channel o reads group o // (C_out / group)
    of the inputs, so its kept inputs are that group's (equally many in every group)."""
    weight = constant(node.inputs[1])
    per_group = weight.shape[0] // group
    if keep_in is not None:
        removed = plan.removed_mean(node.inputs[0])
        if removed is not None:  # each output channel: its own group's removed means
            taps = weight.astype(np.float64).reshape(*weight.shape[:2], -1).sum(axis=2)
            means = np.repeat(removed.reshape(group, -1), per_group, axis=0)
            delta = (taps * means).sum(axis=1)
            _add_to_bias(plan, node, 2, delta.astype(weight.dtype))
        rows = keep_in.reshape(group, -1)
        kept = np.stack([np.flatnonzero(row) for row in rows])  # (group, kept per group)
        index = np.repeat(kept, per_group, axis=0)
        index = index.reshape(index.shape + (1,) * (weight.ndim - 2))
        weight = np.take_along_axis(weight, index, axis=1)
        if keep_out is not None:
            weight = weight[keep_out]
        plan.replace_input(node, 1, weight, "grouped_pruned")
    else:
        plan.slice_input(node, 1, {0: keep_out})


@register("ConvTranspose")
class ConvTransposeRule(Rule):
    """Weight is (C_in, C_out / group, k...): input channels on axis 0, outputs on axis 1."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        weight = constant(node.inputs[1])
        group = int(node.attrs.get("group", 1))
        if weight is None or group != 1:
            cg.freeze_inputs(
                node, f"ConvTranspose '{node.name}' is grouped or has no constant weight"
            )
            if weight is None:
                return
        out = _new_source(cg, node, "conv", int(weight.shape[1] * group))
        if group != 1:
            cg.freeze(out.atoms, f"grouped ConvTranspose '{node.name}'")
        cg.set_layout(node.outputs[0], out)

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        keep_out = plan.keep(node.outputs[0])
        plan.slice_input(node, 1, {0: plan.keep(node.inputs[0]), 1: keep_out})
        if optional_input(node, 2) is not None:
            plan.slice_input(node, 2, {0: keep_out})


@register("Gemm")
class GemmRule(Rule):
    """Dense layer: units are a new source; input features index B's K axis."""

    compensates = True

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        weight = constant(node.inputs[1])
        layout = cg.layout(node.inputs[0])
        if weight is None or int(node.attrs.get("transA", 0)):
            cg.freeze_inputs(node, f"Gemm '{node.name}' is transposed or has a computed weight")
            return
        units = int(weight.shape[0 if int(node.attrs.get("transB", 0)) else 1])
        out = _new_source(cg, node, "dense", units)
        bias = optional_input(node, 2)
        if bias is not None and constant(bias) is None:
            cg.freeze(out.atoms, f"Gemm '{node.name}' has a computed bias")
        if layout is not None and layout.axis != 1:
            cg.freeze(layout.atoms, f"Gemm '{node.name}' reads channels on the batch axis")
        cg.set_layout(node.outputs[0], out)

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        trans_b = int(node.attrs.get("transB", 0))
        keep_out = plan.keep(node.outputs[0])
        keep_in = plan.keep(node.inputs[0])
        removed = plan.removed_mean(node.inputs[0])
        if removed is not None:
            weight = constant(node.inputs[1]).astype(np.float64)
            delta = weight @ removed if trans_b else removed @ weight
            if optional_input(node, 2) is None:  # the new bias is scaled by beta too
                node.attrs["beta"] = 1.0
            delta *= float(node.attrs.get("alpha", 1.0)) / float(node.attrs.get("beta", 1.0) or 1.0)
            _add_to_bias(plan, node, 2, delta.astype(constant(node.inputs[1]).dtype))
        plan.slice_input(node, 1, {trans_b: keep_in, 1 - trans_b: keep_out})
        bias = optional_input(node, 2)
        if bias is not None and keep_out is not None:
            values = constant(bias)
            if values.ndim >= 1 and values.shape[-1] == keep_out.size and keep_out.size > 1:
                plan.slice_input(node, 2, {values.ndim - 1: keep_out})


@register("MatMul")
class MatMulRule(Rule):
    """x @ W with a constant 2-D W: columns are a new source, rows read x's last axis."""

    compensates = True

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        weight = constant(node.inputs[1])
        layout = cg.layout(node.inputs[0])
        rank = len(cg.shape(node.inputs[0]) or ())
        if weight is None or weight.ndim != 2 or constant(node.inputs[0]) is not None:
            cg.freeze_inputs(node, f"MatMul '{node.name}' multiplies two activations")
            return
        if layout is not None and layout.axis != rank - 1:
            cg.set_layout(node.outputs[0], layout)  # rows of x pass through unchanged
            return
        out = _new_source(cg, node, "dense", int(weight.shape[1]))
        cg.set_layout(node.outputs[0], out.moved(max(rank - 1, 1)))

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        layout = plan.cg.layout(node.inputs[0])
        out_layout = plan.cg.layout(node.outputs[0])
        if layout is not None and out_layout is not None and layout.same_as(out_layout):
            return
        keep_in, keep_out = plan.keep(node.inputs[0]), plan.keep(node.outputs[0])
        removed = plan.removed_mean(node.inputs[0])
        if removed is not None:  # no bias slot: add the compensation after the product
            weight = constant(node.inputs[1])
            delta = (removed @ weight.astype(np.float64)).astype(weight.dtype)
            plan.add_after(node, delta if keep_out is None else delta[keep_out])
        plan.slice_input(node, 1, {0: keep_in, 1: keep_out})


def _add_to_bias(plan: Plan, node: gs.Node, index: int, delta: np.ndarray) -> None:
    """bias += delta over the full (unsliced) output channels; creates the bias if absent."""
    bias = optional_input(node, index)
    if bias is None:
        plan.replace_input(node, index, delta, "compensated_bias")
        return
    values = np.broadcast_to(constant(bias), np.broadcast_shapes(constant(bias).shape, delta.shape))
    plan.replace_input(
        node, index, (values + delta).astype(constant(bias).dtype), "compensated_bias"
    )


def output_major_weight(node: gs.Node) -> np.ndarray | None:
    """The producer's weight with its output channels on axis 0 (for weight criteria)."""
    weight = constant(node.inputs[1])
    if weight is None:
        return None
    if node.op == "Gemm":
        return weight if int(node.attrs.get("transB", 0)) else weight.T
    if node.op == "MatMul":
        return weight.T
    if node.op == "ConvTranspose":
        return np.swapaxes(weight, 0, 1)
    return weight
