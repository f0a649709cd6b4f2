"""Handlers: LSTM, GRU, RNN through torch's fused recurrent kernels.

W, R and B stay ONNX-layout Parameters (so they write back by name); each forward reorders
the gates into torch's order. torch's kernels export back as one ONNX LSTM/GRU/RNN, so a
fine-tuned model keeps its recurrent nodes. What torch cannot compute is refused in one
line: reverse direction, sequence_lens, peepholes, clip, coupled input/forget gates,
non-default activations, GRU's linear_before_reset=0 and layout=1 (which onnxruntime's
CPU kernels refuse too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .nodes import NodeView, OpModule
from .registry import handles

#: ONNX gate order -> torch's: LSTM iofc -> ifco, GRU zrh -> rzh.
GATE_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2), "RNN": (0,)}
DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}


class Recurrent(OpModule):
    """One ONNX recurrent node (forward or bidirectional, sequence-first, one layer)."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "recurrence", 3: "bias"})
        op = view.op_type
        direction = view.attr("direction", "forward")
        if direction not in ("forward", "bidirectional"):
            raise view.unsupported(f"direction={direction}")
        if view.has(4):
            raise view.unsupported("sequence_lens input")
        if op == "LSTM" and view.has(7):
            raise view.unsupported("peephole weights")
        if view.attr("clip") is not None:
            raise view.unsupported("clip")
        if view.attr("input_forget", 0):
            raise view.unsupported("input_forget=1")
        if op == "GRU" and not view.attr("linear_before_reset", 0):
            raise view.unsupported("linear_before_reset=0")
        if view.attr("layout", 0):
            raise view.unsupported("layout=1")
        self.directions = 2 if direction == "bidirectional" else 1  # Python ints: traceable
        self.hidden = int(view.attr("hidden_size") or view.const(2).shape[-1])
        self.kernel = _kernel(view)
        self.order = GATE_ORDER[op]
        self.outputs = len(view.outputs)

    def compute(
        self,
        x: Tensor,
        weight: Tensor,
        recurrence: Tensor,
        bias: Tensor | None = None,
        _lengths: Tensor | None = None,
        h0: Tensor | None = None,
        c0: Tensor | None = None,
        _peepholes: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        directions, hidden = self.directions, self.hidden
        if bias is None:
            bias = weight.new_zeros(directions, 2 * len(self.order) * hidden)
        steps, batch = x.shape[0], x.shape[1]
        if h0 is None:
            h0 = x.new_zeros(directions, batch, hidden)
        params = []
        for d in range(directions):
            input_bias, hidden_bias = bias[d].chunk(2)
            params += [self._gates(w) for w in (weight[d], recurrence[d], input_bias, hidden_bias)]
        flags = (True, 1, 0.0, self.training, directions == 2, False)
        if self.kernel is torch.lstm:
            state = (h0, torch.zeros_like(h0) if c0 is None else c0)
            y, h, c = torch.lstm(x, state, params, *flags)
            states = [h, c]
        else:
            y, h = self.kernel(x, h0, params, *flags)
            states = [h]
        y = y.view(steps, batch, directions, hidden).permute(0, 2, 1, 3)  # (seq, dir, N, H)
        return (y, *states)[: self.outputs]

    def _gates(self, tensor: Tensor) -> Tensor:
        """Rows of the ONNX gate blocks in torch's order."""
        blocks = tensor.chunk(len(self.order))
        return torch.cat([blocks[i] for i in self.order])


def _kernel(view: NodeView):
    """torch's fused kernel for the node's activations; others are unsupported."""
    op = view.op_type
    given = [_text(a).lower() for a in view.attr("activations") or []]
    if op == "RNN":
        activation = given[0] if given else "tanh"
        if any(a != activation for a in given):
            raise view.unsupported("different activations per direction")
        kernels = {"tanh": torch.rnn_tanh, "relu": torch.rnn_relu}
        if activation not in kernels:
            raise view.unsupported(f"activation {activation}")
        return kernels[activation]
    default = DEFAULT_ACTIVATIONS[op]
    if given and given not in (default, default * 2):
        raise view.unsupported(f"activations {', '.join(given)}")
    return torch.lstm if op == "LSTM" else torch.gru


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@handles("LSTM", "GRU", "RNN")
def _recurrent(view: NodeView) -> nn.Module:
    return Recurrent(view)
