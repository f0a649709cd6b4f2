"""The rule interface and registry: one entry per op family, looked up by op type."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph

if TYPE_CHECKING:
    from ..rewrite import Plan


class Rule:
    """How one op family moves channels (``analyze``) and what it must slice (``rewrite``).

    ``analyze`` reads the layouts of the node's inputs from the ChannelGraph and sets the
    layouts of its outputs, creating sources, tying atoms or freezing them (barriers).
    ``rewrite`` edits the node for the channels a Plan keeps. ``compensates``: the rule
    folds removed input channels' means into a bias, so their means must be observed.
    """

    compensates = False

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        raise NotImplementedError

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        """Most rules have nothing to edit: shapes follow their inputs."""

    def is_channelwise(self, node: gs.Node, cg: ChannelGraph) -> bool:
        """True if output channel c depends only on input channel c (BN, ReLU, bias Add):
        the tensor after such ops is what OCNNA watches for the producer."""
        return False


RULES: dict[str, Rule] = {}


def register(*op_types: str):
    """Class decorator: register one instance of the rule for each op type."""

    def decorate(cls: type[Rule]) -> type[Rule]:
        instance = cls()
        for op in op_types:
            RULES[op] = instance
        return cls

    return decorate


# ------------------------------------------------------------------ small helpers


def constant(tensor: gs.Tensor) -> np.ndarray | None:
    return tensor.values if isinstance(tensor, gs.Constant) else None


def int_list(tensor: gs.Tensor | None) -> list[int] | None:
    if tensor is None:
        return None
    values = constant(tensor)
    return None if values is None else [int(v) for v in np.asarray(values).reshape(-1)]


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    if index < len(node.inputs) and not node.inputs[index].is_empty():
        return node.inputs[index]
    return None


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def pass_layout(node: gs.Node, cg: ChannelGraph, source: int = 0) -> None:
    """Copy the layout of input ``source`` to every output (same channels, same axis)."""
    layout = cg.layout(node.inputs[source])
    for out in node.outputs:
        cg.set_layout(out, layout)
