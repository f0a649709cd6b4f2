"""One pruned layer as a least-squares problem: its regressors (im2col patches for Conv,
input features for Gemm/MatMul), its targets, and how refit weights are written back.

Layers edit the ModelProto in place: new initializers (shared weights are never changed
under another reader) and, for a MatMul without a bias Add, a new Add node.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: Gates per recurrent op: W is (directions, gates * hidden, input features).
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
#: Layers whose lost inputs get a report row (ConvTranspose and recurrent ones unrefit).
REFIT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", *RECURRENT_GATES)


class Skip(Exception):
    """A layer that cannot be refit; the message is the reason shown in the report."""


def weights_of(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers by name (every constant, after normalisation and rewrite)."""
    return {init.name: init for init in model.graph.initializer}


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def input_features(node: onnx.NodeProto, weights: Mapping[str, onnx.TensorProto]) -> int | None:
    """How many input channels (Conv) or features (Gemm/MatMul) the layer reads."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return None
    dims = list(weights[node.input[1]].dims)
    if node.op_type == "Conv":
        return dims[1] * int(_attr(node, "group", 1))
    if node.op_type == "ConvTranspose":
        return dims[0]
    if node.op_type == "Gemm":
        return dims[1] if int(_attr(node, "transB", 0)) else dims[0]
    if node.op_type in RECURRENT_GATES:
        return dims[2]
    return dims[0] if len(dims) == 2 else None


def im2col(
    x: np.ndarray,
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    pads: tuple[int, ...],
    dilations: tuple[int, ...],
) -> np.ndarray:
    """(N, C, *spatial) -> (N * positions, C * prod(kernel)), rows in output order and
    columns ordered as a Conv weight (C, *kernel) flattens; ``pads`` as ONNX (begins, ends)."""
    rank = len(kernel)
    pad_width = [(0, 0), (0, 0), *zip(pads[:rank], pads[rank:])]
    padded = np.pad(x, pad_width)
    extent = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilations))
    spatial = tuple(range(2, 2 + rank))
    windows = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=spatial)
    index = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in strides),
        *(slice(None, None, d) for d in dilations),
    )
    windows = windows[index]  # (N, C, *out, *kernel)
    order = (0, *range(2, 2 + rank), 1, *range(2 + rank, 2 + 2 * rank))
    out_positions = int(np.prod(windows.shape[2 : 2 + rank]))
    return windows.transpose(order).reshape(x.shape[0] * out_positions, -1)


def _conv_pads(node: onnx.NodeProto, spatial: tuple[int, ...], kernel, strides, dilations):
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    rank = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return tuple(begins + ends)
    if auto_pad == "VALID":
        return (0,) * (2 * rank)
    return tuple(_attr(node, "pads", [0] * (2 * rank)))


class Layer:
    """One consumer's least-squares problem: its regressors, targets, weights in and out."""

    def __init__(self, model: onnx.ModelProto, node: onnx.NodeProto, out_index: np.ndarray):
        self.model, self.node, self.out_index = model, node, out_index
        self.inits = weights_of(model)
        self.weight = numpy_helper.to_array(self.inits[node.input[1]])
        self.groups = 1

    def rows(self, x: np.ndarray) -> np.ndarray:
        """(R, G, d) regressors from a batch of the layer's input."""
        return x.reshape(-1, 1, x.shape[-1])

    def targets(self, y: np.ndarray) -> np.ndarray:
        """(R, G, m) targets from a batch of the original layer's output."""
        y = np.take(y, self.out_index, axis=-1)
        return y.reshape(-1, 1, y.shape[-1])

    def current(self) -> tuple[np.ndarray, np.ndarray]:
        """(W0 (G, d, m), b0 (G, m)) of the pruned layer as it is now."""
        raise NotImplementedError

    def write(self, w: np.ndarray, b: np.ndarray) -> None:
        raise NotImplementedError

    def _new_init(self, tag: str, values: np.ndarray) -> str:
        taken = set(self.inits)
        name, count = f"{self.node.name}_refit_{tag}", 0
        while name in taken:
            count += 1
            name = f"{self.node.name}_refit_{tag}{count}"
        init = numpy_helper.from_array(values.astype(self.weight.dtype), name)
        self.model.graph.initializer.append(init)
        self.inits[name] = init
        return name

    def _bias(self, index: int) -> np.ndarray | None:
        node = self.node
        if len(node.input) <= index or not node.input[index]:
            return None
        if node.input[index] not in self.inits:
            raise Skip("its bias is computed, not a constant")
        return numpy_helper.to_array(self.inits[node.input[index]]).astype(np.float64)

    def _set_input(self, index: int, name: str) -> None:
        while len(self.node.input) <= index:
            self.node.input.append("")
        self.node.input[index] = name


class ConvLayer(Layer):
    """Regressors are im2col patches; one system per conv group (depthwise included)."""

    def __init__(self, model, node, out_index):
        super().__init__(model, node, out_index)
        self.groups = int(_attr(node, "group", 1))
        self.kernel = tuple(self.weight.shape[2:])
        rank = len(self.kernel)
        self.strides = tuple(_attr(node, "strides", [1] * rank))
        self.dilations = tuple(_attr(node, "dilations", [1] * rank))

    def rows(self, x):
        spatial = tuple(x.shape[2:])
        pads = _conv_pads(self.node, spatial, self.kernel, self.strides, self.dilations)
        patches = im2col(x, self.kernel, self.strides, pads, self.dilations)
        return patches.reshape(patches.shape[0], self.groups, -1)

    def targets(self, y):
        y = np.moveaxis(np.take(y, self.out_index, axis=1), 1, -1)
        return y.reshape(-1, self.groups, y.shape[-1] // self.groups)

    def current(self):
        outputs = self.weight.shape[0]
        w = self.weight.astype(np.float64).reshape(self.groups, outputs // self.groups, -1)
        bias = self._bias(2)
        b = np.zeros(outputs) if bias is None else np.broadcast_to(bias, (outputs,))
        return w.transpose(0, 2, 1), b.reshape(self.groups, -1)

    def write(self, w, b):
        weight = w.transpose(0, 2, 1).reshape(self.weight.shape)
        self._set_input(1, self._new_init("weight", weight))
        self._set_input(2, self._new_init("bias", b.reshape(-1)))


class GemmLayer(Layer):
    """alpha and beta are folded into the refit weight and bias (both become 1)."""

    def __init__(self, model, node, out_index):
        super().__init__(model, node, out_index)
        if int(_attr(node, "transA", 0)):
            raise Skip("Gemm with transA is not refit")
        self.trans_b = int(_attr(node, "transB", 0))

    def current(self):
        alpha, beta = float(_attr(self.node, "alpha", 1.0)), float(_attr(self.node, "beta", 1.0))
        w = self.weight.astype(np.float64) * alpha
        w = w.T if self.trans_b else w
        bias = self._bias(2)
        units = w.shape[1]
        if bias is None:
            return w[None], np.zeros((1, units))
        if bias.size not in (1, units):
            raise Skip("its bias is not one value per unit")
        return w[None], np.broadcast_to(beta * bias.reshape(-1), (units,))[None].copy()

    def write(self, w, b):
        weight = w[0].T if self.trans_b else w[0]
        self._set_input(1, self._new_init("weight", weight))
        self._set_input(2, self._new_init("bias", b[0]))
        _set_attr(self.node, "alpha", 1.0)
        _set_attr(self.node, "beta", 1.0)


class MatMulLayer(Layer):
    """x @ W has no bias slot: the intercept lives in the Add that follows (the mean
    compensation's, or one inserted here), which produces the original output name."""

    def __init__(self, model, node, out_index, target: str):
        super().__init__(model, node, out_index)
        self.target = target
        self.add = None
        if node.output[0] != target:
            self.add = next(
                (
                    n
                    for n in model.graph.node
                    if n.op_type == "Add"
                    and list(n.input[:1]) == [node.output[0]]
                    and n.output[0] == target
                    and n.input[1] in self.inits
                ),
                None,
            )
            if self.add is None:
                raise Skip("its output is renamed and no bias Add follows it")

    def current(self):
        units = self.weight.shape[1]
        b = np.zeros(units)
        if self.add is not None:
            bias = numpy_helper.to_array(self.inits[self.add.input[1]]).astype(np.float64)
            if bias.size not in (1, units):
                raise Skip("the Add after it is not one value per unit")
            b = np.broadcast_to(bias.reshape(-1), (units,))
        return self.weight.astype(np.float64)[None], b[None].copy()

    def write(self, w, b):
        self._set_input(1, self._new_init("weight", w[0]))
        bias = self._new_init("bias", b[0])
        if self.add is not None:
            self.add.input[1] = bias
            return
        nodes = self.model.graph.node
        position = list(nodes).index(self.node)
        self.node.output[0] = f"{self.target}_unbiased"
        add = helper.make_node(
            "Add", [self.node.output[0], bias], [self.target], name=f"{self.node.name}_refit_bias"
        )
        nodes.insert(position + 1, add)


def layer_for(model: onnx.ModelProto, node: onnx.NodeProto, out_index, target: str) -> Layer:
    """The problem for ``node``; ``out_index`` picks its kept outputs from the original's."""
    if node.op_type == "Conv":
        return ConvLayer(model, node, out_index)
    if node.op_type == "Gemm":
        return GemmLayer(model, node, out_index)
    if node.op_type == "MatMul":
        return MatMulLayer(model, node, out_index, target)
    raise Skip(f"{node.op_type} layers are not refit")


def output_units(node: onnx.NodeProto, weights: Mapping[str, onnx.TensorProto]) -> int:
    """How many output channels (Conv) or units (Gemm/MatMul, recurrent) the layer makes."""
    dims = list(weights[node.input[1]].dims)
    if node.op_type == "Conv":
        return dims[0]
    if node.op_type == "ConvTranspose":
        return dims[1] * int(_attr(node, "group", 1))
    if node.op_type == "Gemm":
        return dims[0] if int(_attr(node, "transB", 0)) else dims[1]
    if node.op_type in RECURRENT_GATES:  # hidden units
        return dims[1] // RECURRENT_GATES[node.op_type]
    return dims[1]


def channel_axis(op: str) -> int:
    """Where a layer's outputs keep their channels: axis 1 for convs, last for dense."""
    return 1 if op in ("Conv", "ConvTranspose") else -1
