"""Stage `rewrite`: apply keep masks to a fresh copy of the graph, rule by rule."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .channel_graph import ChannelGraph
from .export import export_like
from .groups import ChannelGroup
from .rules import rule_for


class Plan:
    """Which atoms survive, and the slicing service the rules use to edit constants.

    Constants are never edited in place: a tensor shared by several nodes (torch merges
    identical folded biases) gets one new sliced copy per distinct slicing.
    """

    def __init__(
        self,
        cg: ChannelGraph,
        groups: list[ChannelGroup],
        masks: dict[int, np.ndarray],
        means: dict[str, np.ndarray] | None = None,
    ):
        self.cg = cg
        self.means = means or {}
        self.graph: gs.Graph | None = None
        roots = cg.roots()
        removed = [groups[i].roots[~mask] for i, mask in masks.items() if not mask.all()]
        removed_roots = np.concatenate(removed) if removed else np.empty(0, np.int64)
        self.atom_keep = ~np.isin(roots, removed_roots)
        self._sliced: dict[tuple, gs.Constant] = {}
        self._created = 0  # unique suffix for new constants

    def keep(self, tensor: gs.Tensor) -> np.ndarray | None:
        """Keep mask along the tensor's channel axis, or None when nothing is removed."""
        layout = self.cg.layout(tensor)
        if layout is None:
            return None
        mask = self.atom_keep[layout.atoms]
        return None if mask.all() else mask

    def removed_mean(self, tensor: gs.Tensor) -> np.ndarray | None:
        """Per position of the channel axis: the observed mean where removed, else 0.

        A consumer adds ``W @ removed_mean`` to its bias (mean compensation), which is
        exact when the removed channels are constant over the data.
        """
        keep = self.keep(tensor)
        mean = self.means.get(tensor.name)
        if keep is None or mean is None:
            return None
        return np.where(keep, 0.0, mean)

    def replace_input(self, node: gs.Node, index: int, values: np.ndarray, tag: str) -> None:
        """Put a new constant at input ``index`` (appending it if the slot is absent)."""
        self._created += 1
        tensor = gs.Constant(f"{node.name}_{tag}_{self._created}", np.ascontiguousarray(values))
        if index < len(node.inputs):
            node.inputs[index] = tensor
        else:
            node.inputs.append(tensor)

    def add_after(self, node: gs.Node, values: np.ndarray) -> None:
        """Insert ``output + values`` after ``node`` (for producers without a bias slot)."""
        out = node.outputs[0]
        raw = gs.Variable(f"{out.name}_uncompensated", dtype=out.dtype)
        node.outputs[0] = raw
        bias = gs.Constant(f"{node.name}_compensation", np.ascontiguousarray(values))
        self.graph.nodes.append(
            gs.Node("Add", f"{node.name}_compensation", inputs=[raw, bias], outputs=[out])
        )

    def slice_input(self, node: gs.Node, index: int, axes: dict[int, np.ndarray | None]) -> None:
        """Replace constant input ``index`` of ``node`` by a copy sliced along ``axes``."""
        axes = {axis: mask for axis, mask in axes.items() if mask is not None}
        tensor = node.inputs[index]
        if not axes or not isinstance(tensor, gs.Constant):
            return
        key = (tensor.name, tuple((a, m.tobytes()) for a, m in sorted(axes.items())))
        if key not in self._sliced:
            values = tensor.values
            for axis, mask in axes.items():
                if values.shape[axis] == mask.size:
                    values = np.compress(mask, values, axis=axis)
                elif values.shape[axis] != 1:
                    raise ValueError(f"cannot slice {tensor.name} axis {axis} with {mask.size}")
            self._created += 1
            name = f"{tensor.name}_pruned{self._created}"
            self._sliced[key] = gs.Constant(name, np.ascontiguousarray(values))
        node.inputs[index] = self._sliced[key]


def rewrite(model: onnx.ModelProto, plan: Plan) -> onnx.ModelProto:
    """A new model with the plan's channels removed; ``model`` itself is not modified."""
    graph = gs.import_onnx(model)
    plan.graph = graph
    for node in list(graph.nodes):
        rule_for(node.op, node.domain or "").rewrite(node, plan)
    boundary = {id(t) for t in (*graph.inputs, *graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in boundary:
            tensor.shape = None
    graph.cleanup().toposort()
    return export_like(graph, model)
