"""Index-mapping ops on the channel axis: Concat joins layouts, Split/Slice cut them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from ..layout import Layout
from .base import Rule, constant, int_list, normalize_axis, optional_input, register
from .elementwise import ElementwiseRule

if TYPE_CHECKING:
    from ..rewrite import Plan


@register("Concat")
class ConcatRule(Rule):
    """Along the channel axis each input becomes a contiguous range of the output."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        rank = len(cg.shape(node.outputs[0]) or ())
        axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
        layouts = [cg.layout(t) for t in node.inputs]
        if all(layout is None for layout in layouts):
            return
        if any(layout is not None and layout.axis != axis for layout in layouts):
            ElementwiseRule().analyze(node, cg)  # joined along another axis: like Add
            return
        parts = []
        for tensor, layout in zip(node.inputs, layouts):
            if layout is not None:
                parts.append(layout.atoms)
            else:
                size = (cg.shape(tensor) or (0,) * (axis + 1))[axis]
                parts.append(cg.new_atoms(size, f"Concat '{node.name}' joins untracked channels"))
        cg.set_layout(node.outputs[0], Layout(axis, np.concatenate(parts)))

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        layout = plan.cg.layout(node.outputs[0])
        if layout is None:
            return
        rank = len(plan.cg.shape(node.outputs[0]) or ())
        if layout.axis != normalize_axis(int(node.attrs.get("axis", 0)), rank):
            ElementwiseRule().rewrite(node, plan)


def _split_sizes(node: gs.Node, extent: int) -> list[int] | None:
    sizes = node.attrs.get("split") or int_list(optional_input(node, 1))
    if sizes:
        return list(sizes)
    count = int(node.attrs.get("num_outputs", len(node.outputs)))
    chunk = -(-extent // count)
    return [min(chunk, extent - i * chunk) for i in range(count)]


@register("Split")
class SplitRule(Rule):
    """Each output carries a contiguous range of the input's atoms."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        rank = len(cg.shape(node.inputs[0]) or ())
        if normalize_axis(int(node.attrs.get("axis", 0)), rank) != layout.axis:
            for out in node.outputs:
                cg.set_layout(out, layout)
            return
        sizes = _split_sizes(node, layout.size)
        if sizes is None or (
            optional_input(node, 1) is not None and constant(node.inputs[1]) is None
        ):
            cg.freeze_inputs(node, f"Split '{node.name}' has computed sizes")
            return
        offsets = np.cumsum([0, *sizes])
        for out, start, stop in zip(node.outputs, offsets[:-1], offsets[1:]):
            atoms = layout.atoms[start:stop]
            cg.nonempty.append(atoms)
            cg.set_layout(out, Layout(layout.axis, atoms))

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        layout = plan.cg.layout(node.inputs[0])
        keep = plan.keep(node.inputs[0])
        if layout is None or keep is None:
            return
        rank = len(plan.cg.shape(node.inputs[0]) or ())
        if normalize_axis(int(node.attrs.get("axis", 0)), rank) != layout.axis:
            return
        offsets = np.cumsum([0, *_split_sizes(node, layout.size)])
        sizes = [int(keep[a:b].sum()) for a, b in zip(offsets[:-1], offsets[1:])]
        node.attrs.pop("num_outputs", None)
        if "split" in node.attrs:
            node.attrs["split"] = sizes
        else:
            values = np.array(sizes, dtype=np.int64)
            split_input = gs.Constant(f"{node.name}_split_pruned", values)
            if len(node.inputs) > 1:
                node.inputs[1] = split_input
            else:
                node.inputs.append(split_input)


def _slice_args(node: gs.Node, rank: int) -> tuple[list, list, list, list] | None:
    if "starts" in node.attrs:  # opset < 10
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes = list(node.attrs.get("axes", range(len(starts))))
        return starts, ends, axes, [1] * len(starts)
    starts, ends = int_list(node.inputs[1]), int_list(node.inputs[2])
    axes = int_list(optional_input(node, 3))
    steps = int_list(optional_input(node, 4))
    if starts is None or ends is None or (optional_input(node, 3) is not None and axes is None):
        return None
    if optional_input(node, 4) is not None and steps is None:
        return None
    axes = axes if axes is not None else list(range(len(starts)))
    return starts, ends, [normalize_axis(a, rank) for a in axes], steps or [1] * len(starts)


@register("Slice")
class SliceRule(Rule):
    """A step-1 slice of the channel axis keeps the atoms inside its range."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        args = _slice_args(node, len(cg.shape(node.inputs[0]) or ()))
        if args is None:
            cg.freeze_inputs(node, f"Slice '{node.name}' has computed bounds")
            return
        starts, ends, axes, steps = args
        if layout.axis not in axes:
            cg.set_layout(node.outputs[0], layout)
            return
        position = axes.index(layout.axis)
        if steps[position] != 1:
            cg.freeze_inputs(node, f"Slice '{node.name}' strides the channel axis")
            return
        atoms = layout.atoms[slice(starts[position], ends[position])]
        cg.nonempty.append(atoms)
        cg.set_layout(node.outputs[0], Layout(layout.axis, atoms))

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        layout = plan.cg.layout(node.inputs[0])
        keep = plan.keep(node.inputs[0])
        if layout is None or keep is None:
            return
        starts, ends, axes, _ = _slice_args(node, len(plan.cg.shape(node.inputs[0]) or ()))
        if layout.axis not in axes:
            return
        position = axes.index(layout.axis)
        start, stop, _ = slice(starts[position], ends[position]).indices(layout.size)
        new_start = int(keep[:start].sum())
        new_stop = new_start + int(keep[start : max(stop, start)].sum())
        starts[position], ends[position] = new_start, new_stop
        if "starts" in node.attrs:
            node.attrs["starts"], node.attrs["ends"] = starts, ends
            return
        node.inputs[1] = gs.Constant(f"{node.name}_starts_pruned", np.array(starts, np.int64))
        node.inputs[2] = gs.Constant(f"{node.name}_ends_pruned", np.array(ends, np.int64))


@register("Gather")
class GatherRule(Rule):
    """Gathering along another axis keeps channels; gathering channels is a barrier."""

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        if layout is None:
            return
        rank = len(cg.shape(node.inputs[0]) or ())
        axis = normalize_axis(int(node.attrs.get("axis", 0)), rank)
        indices_rank = len(cg.shape(node.inputs[1]) or ())
        if axis == layout.axis or cg.layout(node.inputs[1]) is not None:
            cg.freeze_inputs(node, f"Gather '{node.name}' selects channels")
            return
        shift = indices_rank - 1 if axis < layout.axis else 0
        cg.set_layout(node.outputs[0], layout.moved(layout.axis + shift))
