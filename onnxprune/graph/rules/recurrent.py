"""Recurrent layers (LSTM, GRU, RNN) as consumers: their input features can go.

W is (directions, gates * hidden, input_size) and reads X's last axis, so a removed
feature is one column of W. The hidden units feed back into every step through R and the
gates, so the outputs stay untracked (never pruned). The input term enters every gate
additively next to Wb, which is where mean compensation goes: exact for all three ops.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from ..channel_graph import ChannelGraph
from .base import Rule, constant, optional_input, register

if TYPE_CHECKING:
    from ..rewrite import Plan

FEATURE_AXIS = 2  # X is (seq, batch, input) or, with layout=1, (batch, seq, input)


@register("LSTM", "GRU", "RNN")
class RecurrentRule(Rule):
    """Reads features through W's last axis; hidden units (and everything after) frozen."""

    compensates = True

    def analyze(self, node: gs.Node, cg: ChannelGraph) -> None:
        layout = cg.layout(node.inputs[0])
        weight = constant(node.inputs[1])
        for tensor in node.inputs[1:]:  # initial states and peepholes are hidden-sized
            cg.freeze_tensor(tensor, f"{node.op} '{node.name}' reads it as a hidden state")
        if layout is None:
            return
        bias = optional_input(node, 3)
        if weight is None or (bias is not None and constant(bias) is None):
            cg.freeze_inputs(node, f"{node.op} '{node.name}' has a computed weight")
        elif layout.axis != FEATURE_AXIS:
            cg.freeze_inputs(node, f"{node.op} '{node.name}' reads channels on a time axis")

    def rewrite(self, node: gs.Node, plan: Plan) -> None:
        keep = plan.keep(node.inputs[0])
        if keep is None:
            return
        weight = constant(node.inputs[1])
        removed = plan.removed_mean(node.inputs[0])
        if removed is not None:  # W @ mean joins Wb, the first half of B
            delta = weight.astype(np.float64) @ removed  # (directions, gates * hidden)
            bias = optional_input(node, 3)
            values = (
                np.zeros((delta.shape[0], 2 * delta.shape[1]), weight.dtype)
                if bias is None
                else constant(bias).copy()
            )
            values[:, : delta.shape[1]] += delta.astype(values.dtype)
            _put_bias(plan, node, values)
        plan.slice_input(node, 1, {FEATURE_AXIS: keep})


def _put_bias(plan: Plan, node: gs.Node, values: np.ndarray) -> None:
    """B is input 3; an absent sequence_lens or state before it stays an empty slot."""
    while len(node.inputs) < 3:
        node.inputs.append(gs.Variable.empty())
    plan.replace_input(node, 3, values, "compensated_bias")
