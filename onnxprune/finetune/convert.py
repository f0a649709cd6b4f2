"""ONNX graph -> trainable ``torch.nn.Module`` for the fine-tune stage.

Why our own converter: onnx2torch imports torchvision at import time (which does not import
next to the CPU torch we pin), and pruned CNN/MLP graphs use a small, known op set. Every op
type has one small handler in ``HANDLERS`` (filled by ``@handles``) that turns one ONNX node
into one ``nn.Module``; ``OnnxModule`` runs those modules in graph order over a
name -> tensor environment, like an interpreter whose weights are trainable.

Weights keep their ONNX layout (a Conv weight is the ONNX tensor, a Gemm weight keeps its
``transB`` layout), so every parameter and running statistic maps 1:1 back to its
initializer (``OnnxModule.initializer_names``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import Tensor, nn
from torch.onnx.operators import reshape_from_tensor_shape, shape_as_tensor

from ..errors import ModelError

Handler = Callable[["NodeView"], nn.Module]

HANDLERS: dict[str, Handler] = {}
"""ONNX op type -> handler building the module for one node. Adding an op is one entry."""

SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})

ONNX_TO_TORCH_DTYPE: dict[int, torch.dtype] = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    """Register a handler for op types; the registry is the converter's whole op coverage."""

    def register(handler: Handler) -> Handler:
        for op_type in op_types:
            HANDLERS[op_type] = handler
        return handler

    return register


def supported_ops() -> list[str]:
    """Op types the converter accepts (Constant nodes are folded into the constants table)."""
    return sorted({*HANDLERS, "Constant"})


# --------------------------------------------------------------------------- graph preparation


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain: it decides attribute-vs-input forms."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise ModelError("cannot fine-tune: the model declares no opset for the default ONNX domain")


def _drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """Old exporters list weights as graph inputs; the module takes only real inputs."""
    initializers = {init.name for init in graph.initializer}
    real = [value for value in graph.input if value.name not in initializers]
    del graph.input[:]
    graph.input.extend(real)


def _bypass_identities(graph: onnx.GraphProto) -> None:
    """Rewire consumers of Identity nodes to their source.

    torch exports route shared initializers through Identity nodes; bypassing them (rather
    than constant-folding them into copies) keeps one shared, trainable parameter.
    """
    outputs = {value.name for value in graph.output}
    alias = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "Identity"
        and node.domain in DEFAULT_DOMAINS
        and node.output[0] not in outputs
    }
    if not alias:
        return

    def resolve(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    kept = [
        node for node in graph.node if node.op_type != "Identity" or node.output[0] not in alias
    ]
    for node in kept:
        for index, name in enumerate(node.input):
            node.input[index] = resolve(name)
    del graph.node[:]
    graph.node.extend(kept)


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs (static shape arithmetic) and sort the nodes topologically.

    Best effort: a model onnx-graphsurgeon cannot fold is converted unfolded, since every
    handler also works on runtime tensors.
    """
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.logger import G_LOGGER

    severity = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.CRITICAL
    try:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape info only helps folding; its absence is not an error
            pass
        graph = gs.import_onnx(model)
        graph.fold_constants().cleanup().toposort()
        folded = gs.export_onnx(graph)
    except Exception:
        return model
    finally:
        G_LOGGER.severity = severity
    del folded.graph.value_info[:]
    return folded


def prepare_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A normalised copy of ``model`` ready to convert; the caller's proto is never changed."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    _drop_initializer_inputs(prepared.graph)
    _bypass_identities(prepared.graph)
    return _fold_constants(prepared)


# --------------------------------------------------------------------------- node views


def _to_tensor(array: np.ndarray) -> Tensor:
    """A writable, contiguous torch copy of an ONNX constant (0-d stays 0-d)."""
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The value a Constant node produces, whichever attribute form it uses."""
    attr = node.attribute[0]
    value = helper.get_attribute_value(attr)
    if attr.name == "value":
        return numpy_helper.to_array(value)
    if attr.name == "value_float":
        return np.array(value, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(value), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(value, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(value), dtype=np.int64)
    raise ModelError(
        f"cannot fine-tune: op type Constant (node {node.name or node.output[0]}) is not "
        f"supported by the converter with attribute {attr.name}"
    )


@dataclass
class GraphInfo:
    """What handlers may ask about the graph around a node, plus the shared parameters."""

    opset: int
    constants: dict[str, np.ndarray]
    producers: dict[str, str]
    consumers: dict[str, int]
    graph_inputs: frozenset[str]
    graph_outputs: frozenset[str]
    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    origins: dict[int, str] = field(default_factory=dict)

    def parameter(self, name: str) -> nn.Parameter:
        """The one trainable Parameter for an initializer, shared by every node using it."""
        if name not in self.parameters:
            param = nn.Parameter(_to_tensor(self.constants[name]))
            self.parameters[name] = param
            self.origins[id(param)] = name
        return self.parameters[name]

    def track(self, tensor: Tensor, name: str) -> None:
        """Remember that a buffer (BN running stats) came from initializer ``name``."""
        self.origins[id(tensor)] = name


@dataclass
class NodeView:
    """One ONNX node as a handler sees it: attributes, constant operands, graph context."""

    node: onnx.NodeProto
    graph: GraphInfo
    attrs: dict[str, Any]

    @classmethod
    def of(cls, node: onnx.NodeProto, graph: GraphInfo) -> NodeView:
        """Decode the attributes once (strings become str) for a handler."""
        attrs = {}
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
        return cls(node, graph, attrs)

    @property
    def op_type(self) -> str:
        return self.node.op_type

    @property
    def name(self) -> str:
        return self.node.name or self.node.output[0]

    @property
    def inputs(self) -> list[str]:
        return list(self.node.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.node.output)

    @property
    def opset(self) -> int:
        return self.graph.opset

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def has(self, index: int) -> bool:
        """Whether optional input ``index`` is given."""
        return index < len(self.node.input) and bool(self.node.input[index])

    def is_const(self, index: int) -> bool:
        return self.has(index) and self.node.input[index] in self.graph.constants

    def const(self, index: int) -> np.ndarray | None:
        """The value of input ``index`` if it is a constant, else None."""
        return self.graph.constants[self.node.input[index]] if self.is_const(index) else None

    def const_list(self, index: int) -> list | None:
        """A constant input as a Python list (axes, pads, sizes), or None if not constant."""
        value = self.const(index)
        return None if value is None else np.asarray(value).reshape(-1).tolist()

    def output_used(self, index: int) -> bool:
        """Whether output ``index`` feeds another node or the graph outputs."""
        if index >= len(self.node.output) or not self.node.output[index]:
            return False
        name = self.node.output[index]
        return self.graph.consumers.get(name, 0) > 0 or name in self.graph.graph_outputs

    def unsupported(self, detail: str = "") -> ModelError:
        """The one error every unconvertible node raises, naming op type and node."""
        suffix = f" ({detail})" if detail else ""
        return ModelError(
            f"cannot fine-tune: op type {self.op_type} (node {self.name}) is not supported "
            f"by the converter{suffix}"
        )


# --------------------------------------------------------------------------- node modules


class OpModule(nn.Module):
    """Base of node modules: owns the node's constant operands, receives the runtime ones.

    ``forward`` takes the node's non-constant inputs in ONNX order; ``compute`` receives
    the full ONNX operand list (None for absent optional inputs). Constants named in
    ``params`` become trainable Parameters (shared across nodes), ``baked`` ones were
    turned into Python values by the handler, the rest become non-persistent buffers.
    """

    def __init__(
        self,
        view: NodeView,
        params: Mapping[int, str] | None = None,
        baked: Collection[int] = (),
    ) -> None:
        super().__init__()
        self.op_type = view.op_type
        params = params or {}
        self._slots: list[tuple[str, str | None]] = []
        for index, name in enumerate(view.inputs):
            if not name or (index in baked and view.is_const(index)):
                self._slots.append(("none", None))
            elif not view.is_const(index):
                self._slots.append(("runtime", None))
            elif index in params and np.issubdtype(view.const(index).dtype, np.floating):
                attr = (
                    params[index] if not hasattr(self, params[index]) else f"{params[index]}{index}"
                )
                setattr(self, attr, view.graph.parameter(name))
                self._slots.append(("const", attr))
            else:
                attr = f"const{index}"
                self.register_buffer(attr, _to_tensor(view.const(index)), persistent=False)
                self._slots.append(("const", attr))

    def operands(self, runtime: Sequence[Tensor]) -> list[Tensor | None]:
        """Merge runtime inputs and owned constants back into ONNX input order."""
        feed = iter(runtime)
        merged: list[Tensor | None] = []
        for kind, attr in self._slots:
            if kind == "runtime":
                merged.append(next(feed))
            elif kind == "const":
                merged.append(getattr(self, attr))
            else:
                merged.append(None)
        return merged

    def forward(self, *runtime: Tensor) -> Tensor | tuple[Tensor, ...]:
        return self.compute(*self.operands(runtime))

    def compute(self, *operands: Tensor | None) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.op_type


class Fn(OpModule):
    """A node computed by one function of its operands plus fixed keyword arguments."""

    def __init__(
        self,
        view: NodeView,
        fn: Callable[..., Tensor | tuple[Tensor, ...]],
        params: Mapping[int, str] | None = None,
        baked: Collection[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(view, params, baked)
        self.fn = fn
        self.kwargs = kwargs

    def compute(self, *operands: Tensor | None) -> Tensor | tuple[Tensor, ...]:
        return self.fn(*operands, **self.kwargs)

    def extra_repr(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.kwargs.items())
        return f"{self.op_type}({args})" if args else self.op_type


class ConstantTensor(nn.Module):
    """A graph output that is a constant: returned as is."""

    def __init__(self, value: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("value", _to_tensor(value), persistent=False)

    def forward(self) -> Tensor:
        return self.value


class BatchNorm(nn.BatchNorm1d):
    """ONNX BatchNormalization as torch batch norm over (N, C, *) of any rank.

    Train mode normalises with batch statistics and updates the running ones; eval mode uses
    the running ones, which is what the ONNX inference node computes.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"BatchNorm expects (N, C, *) input, got {input.dim()}-D")


class Dropout(nn.Dropout):
    """ONNX Dropout: identity in eval mode, random zeroing in train mode."""


# --------------------------------------------------------------------------- shared helpers


def _normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _flatten_2d(x: Tensor, axis: int) -> Tensor:
    """ONNX Flatten: (prod(shape[:axis]), prod(shape[axis:]))."""
    axis = _normalize_axis(axis, x.dim())
    if axis == 0:
        return x.reshape(1, -1)
    if axis >= x.dim():
        return x.reshape(-1, 1)
    return torch.flatten(torch.flatten(x, axis), 0, axis - 1)


def _torch_pad_list(rank: int, pads: Sequence[int], axes: Iterable[int]) -> list[int]:
    """ONNX pads (all begins, then all ends, per axis) -> F.pad's last-dim-first pairs.

    Leading dims without padding are left out, because reflect/replicate padding in torch
    only accepts the trailing dims.
    """
    axes = [_normalize_axis(a, rank) for a in axes]
    begin = {a: int(pads[i]) for i, a in enumerate(axes)}
    end = {a: int(pads[i + len(axes)]) for i, a in enumerate(axes)}
    pairs: list[int] = []
    for dim in reversed(range(rank)):
        pairs += [begin.get(dim, 0), end.get(dim, 0)]
    while len(pairs) > 2 and pairs[-1] == 0 and pairs[-2] == 0:
        pairs = pairs[:-2]
    return pairs


@dataclass(frozen=True)
class Window:
    """Sliding-window attributes shared by Conv and the pools."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]
    auto_pad: str

    @classmethod
    def of(cls, view: NodeView, kernel: Sequence[int] | None) -> Window:
        """Read strides/dilations/pads/auto_pad with ONNX defaults for ``len(kernel)`` dims."""
        if not kernel or len(kernel) > 3:
            raise view.unsupported("missing kernel_shape or more than 3 spatial dims")
        n = len(kernel)
        auto_pad = view.attr("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            raise view.unsupported(f"auto_pad={auto_pad}")
        return cls(
            kernel=tuple(int(k) for k in kernel),
            strides=tuple(view.attr("strides") or [1] * n),
            dilations=tuple(view.attr("dilations") or [1] * n),
            pads=tuple(view.attr("pads") or [0] * (2 * n)),
            auto_pad=auto_pad,
        )

    def resolve(self, x: Tensor) -> tuple[list[int], list[int]]:
        """(begins, ends) padding for this input; SAME_* depends on its spatial size."""
        n = len(self.kernel)
        if self.auto_pad == "VALID":
            return [0] * n, [0] * n
        if self.auto_pad == "NOTSET":
            return list(self.pads[:n]), list(self.pads[n:])
        begins, ends = [], []
        for i in range(n):
            size = int(x.shape[2 + i])
            out = -(-size // self.strides[i])
            span = (self.kernel[i] - 1) * self.dilations[i] + 1
            total = max((out - 1) * self.strides[i] + span - size, 0)
            begin = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins, ends

    def symmetric_padding(
        self, x: Tensor, fill: float = 0.0, limit_half_kernel: bool = False
    ) -> tuple[Tensor, list[int]]:
        """Pad ``x`` explicitly when torch's symmetric ``padding`` cannot express the pads."""
        begins, ends = self.resolve(x)
        expressible = begins == ends
        if limit_half_kernel:
            halves = [((k - 1) * d + 1) // 2 for k, d in zip(self.kernel, self.dilations)]
            expressible = expressible and all(p <= h for p, h in zip(begins, halves))
        if expressible:
            return x, begins
        n = len(self.kernel)
        padded = F.pad(x, _torch_pad_list(n, begins + ends, range(n)), value=fill)
        return padded, [0] * n


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


# --------------------------------------------------------------------------- conv / dense


class Conv(OpModule):
    """ONNX Conv (1-3 spatial dims, groups, dilations, asymmetric and auto pads)."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "bias"})
        weight = view.const(1)
        kernel = view.attr("kernel_shape") or (weight.shape[2:] if weight is not None else None)
        if kernel is None:
            raise view.unsupported("runtime weight without kernel_shape")
        if len(kernel) not in _CONV:
            raise view.unsupported(f"{len(kernel)} spatial dims")
        self.window = Window.of(view, kernel)
        self.groups = int(view.attr("group", 1))

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        w = self.window
        x, padding = w.symmetric_padding(x)
        conv = _CONV[len(w.kernel)]
        return conv(x, weight, bias, w.strides, padding, w.dilations, self.groups)


class ConvTranspose(OpModule):
    """ONNX ConvTranspose with explicit pads (asymmetric ones cropped after the op)."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "bias"})
        if view.attr("output_shape") is not None:
            raise view.unsupported("output_shape attribute")
        if view.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise view.unsupported(f"auto_pad={view.attr('auto_pad')}")
        weight = view.const(1)
        kernel = view.attr("kernel_shape") or (weight.shape[2:] if weight is not None else None)
        if kernel is None or len(kernel) not in _CONV_T:
            raise view.unsupported("unknown or unsupported kernel rank")
        n = len(kernel)
        self.window = Window.of(view, kernel)
        self.groups = int(view.attr("group", 1))
        self.output_padding = tuple(view.attr("output_padding") or [0] * n)

    def compute(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        w = self.window
        n = len(w.kernel)
        begins, ends = w.resolve(x)
        padding = begins if begins == ends else [0] * n
        conv = _CONV_T[n]
        y = conv(x, weight, bias, w.strides, padding, self.output_padding, self.groups, w.dilations)
        if begins == ends:
            return y
        index = [slice(None), slice(None)]
        index += [slice(b, y.shape[2 + i] - e) for i, (b, e) in enumerate(zip(begins, ends))]
        return y[tuple(index)]


class Gemm(OpModule):
    """ONNX Gemm: alpha * A' @ B' + beta * C; the weight keeps its ONNX (transB) layout."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view, params={1: "weight", 2: "bias"})
        self.alpha = float(view.attr("alpha", 1.0))
        self.beta = float(view.attr("beta", 1.0))
        self.trans_a = bool(view.attr("transA", 0))
        self.trans_b = bool(view.attr("transB", 0))

    def compute(self, a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
        if self.trans_a:
            a = a.t()
        plain = self.alpha == 1.0 and self.beta == 1.0
        if plain and self.trans_b and (c is None or c.dim() <= 1):
            return F.linear(a, b, c)  # exports back as a single Gemm
        y = a @ (b.t() if self.trans_b else b)
        if self.alpha != 1.0:
            y = y * self.alpha
        if c is None:
            return y
        return y + (c * self.beta if self.beta != 1.0 else c)


@handles("Conv")
def _conv(view: NodeView) -> nn.Module:
    return Conv(view)


@handles("ConvTranspose")
def _conv_transpose(view: NodeView) -> nn.Module:
    return ConvTranspose(view)


@handles("Gemm")
def _gemm(view: NodeView) -> nn.Module:
    return Gemm(view)


@handles("MatMul")
def _matmul(view: NodeView) -> nn.Module:
    params = {i: "weight" for i in (0, 1) if view.is_const(i) and view.const(i).ndim >= 2}
    return Fn(view, torch.matmul, params=params)


# --------------------------------------------------------------------------- normalisation


@handles("BatchNormalization")
def _batch_norm(view: NodeView) -> nn.Module:
    """nn.BatchNorm with ONNX momentum m mapped to torch momentum 1 - m."""
    if not all(view.is_const(i) for i in (1, 2, 3, 4)):
        raise view.unsupported("scale, bias, mean and var must be initializers")
    if view.attr("spatial", 1) != 1:
        raise view.unsupported("spatial=0")
    if any(view.output_used(i) for i in range(1, len(view.outputs))):
        raise view.unsupported("training-mode outputs")
    scale, bias, mean, var = (view.inputs[i] for i in (1, 2, 3, 4))
    channels = int(view.const(1).size)
    momentum = 1.0 - float(view.attr("momentum", 0.9))
    bn = BatchNorm(channels, eps=float(view.attr("epsilon", 1e-5)), momentum=momentum)
    bn.weight = view.graph.parameter(scale)
    bn.bias = view.graph.parameter(bias)
    bn.running_mean = _to_tensor(view.const(3)).to(bn.weight.dtype).reshape(-1)
    bn.running_var = _to_tensor(view.const(4)).to(bn.weight.dtype).reshape(-1)
    view.graph.track(bn.running_mean, mean)
    view.graph.track(bn.running_var, var)
    return bn


def _instance_norm(x: Tensor, scale: Tensor, bias: Tensor, eps: float) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@handles("InstanceNormalization")
def _instance_normalization(view: NodeView) -> nn.Module:
    eps = float(view.attr("epsilon", 1e-5))
    return Fn(view, _instance_norm, params={1: "weight", 2: "bias"}, eps=eps)


@handles("Dropout")
def _dropout(view: NodeView) -> nn.Module:
    """nn.Dropout: the module's train/eval mode decides, not ONNX training_mode."""
    if any(view.has(i) and not view.is_const(i) for i in (1, 2)):
        raise view.unsupported("runtime ratio or training_mode")
    if view.output_used(1):
        raise view.unsupported("mask output")
    ratio = view.const_list(1)[0] if view.is_const(1) else view.attr("ratio", 0.5)
    return Dropout(p=float(ratio))


# --------------------------------------------------------------------------- elementwise


def _identity(x: Tensor) -> Tensor:
    return x


UNARY: dict[str, Callable[[Tensor], Tensor]] = {
    "Relu": F.relu,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Erf": torch.erf,
    "Sqrt": torch.sqrt,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Softplus": F.softplus,
    "HardSwish": F.hardswish,
    "Not": torch.logical_not,
    "Identity": _identity,
}


@handles(*UNARY)
def _unary(view: NodeView) -> nn.Module:
    return Fn(view, UNARY[view.op_type])


@handles("LeakyRelu")
def _leaky_relu(view: NodeView) -> nn.Module:
    return Fn(view, F.leaky_relu, negative_slope=float(view.attr("alpha", 0.01)))


@handles("Elu")
def _elu(view: NodeView) -> nn.Module:
    return Fn(view, F.elu, alpha=float(view.attr("alpha", 1.0)))


def _selu(x: Tensor, alpha: float, gamma: float) -> Tensor:
    return gamma * F.elu(x, alpha)


@handles("Selu")
def _selu_handler(view: NodeView) -> nn.Module:
    alpha = float(view.attr("alpha", 1.67326319217681884765625))
    gamma = float(view.attr("gamma", 1.05070102214813232421875))
    return Fn(view, _selu, alpha=alpha, gamma=gamma)


def _hard_sigmoid(x: Tensor, alpha: float, beta: float) -> Tensor:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@handles("HardSigmoid")
def _hard_sigmoid_handler(view: NodeView) -> nn.Module:
    alpha, beta = float(view.attr("alpha", 0.2)), float(view.attr("beta", 0.5))
    return Fn(view, _hard_sigmoid, alpha=alpha, beta=beta)


@handles("Gelu")
def _gelu(view: NodeView) -> nn.Module:
    return Fn(view, F.gelu, approximate=view.attr("approximate", "none"))


def _prelu(x: Tensor, slope: Tensor) -> Tensor:
    """ONNX PRelu broadcasts the slope to X (any layout), unlike F.prelu's channel axis."""
    return torch.where(x >= 0, x, x * slope)


@handles("PRelu")
def _prelu_handler(view: NodeView) -> nn.Module:
    return Fn(view, _prelu, params={1: "weight"})


def _clip(
    x: Tensor, low: Tensor | float | None = None, high: Tensor | float | None = None
) -> Tensor:
    if low is None and high is None:
        return x
    return torch.clamp(x, low, high)


@handles("Clip")
def _clip_handler(view: NodeView) -> nn.Module:
    """Clip bounds are attributes before opset 11 and optional inputs from 11 on."""
    if view.opset < 11:
        return Fn(view, _clip, low=view.attr("min"), high=view.attr("max"))
    return Fn(view, _clip)


def _div(a: Tensor, b: Tensor) -> Tensor:
    """ONNX Div truncates for integers (shape arithmetic); torch's / would give floats."""
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


BINARY: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Greater": torch.gt,
    "Less": torch.lt,
}
LEARNED_OPERAND_NAMES = {"Add": "bias", "Sub": "bias", "Mul": "weight"}


def _is_learned_operand(view: NodeView, index: int) -> bool:
    """Whether a constant operand of Add/Sub/Mul is a learned bias/scale worth training.

    Vectors (biases, per-channel scales, folded BN) are learned; scalars only when they are
    the bias of a weighted layer (a 1-unit dense head). Scalars inside decomposed
    activations (GELU's 0.5, HardSwish's 3) and input normalisation stay fixed.
    """
    value = view.const(index)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return False
    if not np.all(np.isfinite(value)):
        return False
    other = view.inputs[1 - index]
    if other in view.graph.graph_inputs:
        return False
    return value.size > 1 or view.graph.producers.get(other) in WEIGHTED_OPS


@handles(*BINARY)
def _binary(view: NodeView) -> nn.Module:
    name = LEARNED_OPERAND_NAMES.get(view.op_type)
    params = {}
    if name is not None:
        params = {i: name for i in (0, 1) if view.is_const(i) and _is_learned_operand(view, i)}
    return Fn(view, BINARY[view.op_type], params=params)


def _where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return torch.where(condition.bool(), x, y)


@handles("Where")
def _where_handler(view: NodeView) -> nn.Module:
    return Fn(view, _where)


def _fold(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def folded(*xs: Tensor) -> Tensor:
        result = xs[0]
        for x in xs[1:]:
            result = fn(result, x)
        return result

    return folded


def _sum(*xs: Tensor) -> Tensor:
    return _fold(torch.add)(*xs)


def _max(*xs: Tensor) -> Tensor:
    return _fold(torch.maximum)(*xs)


def _min(*xs: Tensor) -> Tensor:
    return _fold(torch.minimum)(*xs)


def _mean(*xs: Tensor) -> Tensor:
    return _sum(*xs) / len(xs)


VARIADIC = {"Sum": _sum, "Max": _max, "Min": _min, "Mean": _mean}


@handles(*VARIADIC)
def _variadic(view: NodeView) -> nn.Module:
    return Fn(view, VARIADIC[view.op_type])


# --------------------------------------------------------------------------- softmax


def _softmax(x: Tensor, axis: int, log: bool, coerce_2d: bool) -> Tensor:
    """Softmax over ``axis``; before opset 13 ONNX flattens to 2-D at ``axis`` first."""
    fn = F.log_softmax if log else F.softmax
    axis = _normalize_axis(axis, x.dim())
    if not coerce_2d or axis == x.dim() - 1:
        return fn(x, dim=axis)
    return fn(_flatten_2d(x, axis), dim=1).reshape(x.shape)


@handles(*SOFTMAX_OPS)
def _softmax_handler(view: NodeView) -> nn.Module:
    coerce = view.opset < 13
    axis = int(view.attr("axis", 1 if coerce else -1))
    log = view.op_type == "LogSoftmax"
    return Fn(view, _softmax, axis=axis, log=log, coerce_2d=coerce)


# --------------------------------------------------------------------------- pooling


class MaxPool(OpModule):
    """ONNX MaxPool; pads torch cannot express are applied with -inf first."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view)
        if view.output_used(1):
            raise view.unsupported("Indices output")
        self.window = Window.of(view, view.attr("kernel_shape"))
        self.ceil_mode = bool(view.attr("ceil_mode", 0))

    def compute(self, x: Tensor) -> Tensor:
        w = self.window
        x, padding = w.symmetric_padding(x, fill=float("-inf"), limit_half_kernel=True)
        pool = _MAX_POOL[len(w.kernel)]
        return pool(x, w.kernel, w.strides, padding, w.dilations, self.ceil_mode)


class AveragePool(OpModule):
    """ONNX AveragePool; count_include_pad=0 with explicit pads divides by a pooled mask."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view)
        self.window = Window.of(view, view.attr("kernel_shape"))
        if any(d != 1 for d in self.window.dilations):
            raise view.unsupported("dilations")
        self.ceil_mode = bool(view.attr("ceil_mode", 0))
        self.count_include_pad = bool(view.attr("count_include_pad", 0))

    def compute(self, x: Tensor) -> Tensor:
        w = self.window
        pool = _AVG_POOL[len(w.kernel)]
        padded, padding = w.symmetric_padding(x, limit_half_kernel=True)
        y = pool(padded, w.kernel, w.strides, padding, self.ceil_mode, self.count_include_pad)
        if padded is x or self.count_include_pad:
            return y
        mask = w.symmetric_padding(torch.ones_like(x[:1, :1]), limit_half_kernel=True)[0]
        return y / pool(mask, w.kernel, w.strides, padding, self.ceil_mode, True)


def _global_average_pool(x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def _global_max_pool(x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@handles("MaxPool")
def _max_pool(view: NodeView) -> nn.Module:
    return MaxPool(view)


@handles("AveragePool")
def _average_pool(view: NodeView) -> nn.Module:
    return AveragePool(view)


@handles("GlobalAveragePool")
def _global_average_pool_handler(view: NodeView) -> nn.Module:
    return Fn(view, _global_average_pool)


@handles("GlobalMaxPool")
def _global_max_pool_handler(view: NodeView) -> nn.Module:
    return Fn(view, _global_max_pool)


# --------------------------------------------------------------------------- shape ops


def _constant_or_attr(view: NodeView, index: int, attr: str) -> tuple[list | None, bool]:
    """A list operand given as attribute (old opsets) or constant input; and whether it is
    known at build time (False means it arrives as a runtime tensor)."""
    if attr in view.attrs:
        return list(view.attrs[attr]), True
    if not view.has(index):
        return None, True
    if view.is_const(index):
        return view.const_list(index), True
    return None, False


def _runtime_list(tensor: Tensor | None, baked: list | None) -> list | None:
    """The build-time list if known, else the runtime tensor's values."""
    if baked is not None or tensor is None:
        return baked
    return tensor.reshape(-1).tolist()


@handles("Flatten")
def _flatten(view: NodeView) -> nn.Module:
    return Fn(view, _flatten_2d, axis=int(view.attr("axis", 1)))


def _reshape_static(x: Tensor, shape: list[int], allowzero: bool) -> Tensor:
    """Reshape to a build-time shape: 0 copies the input dim (traced, so batch stays dynamic)."""
    dims = [x.shape[i] if s == 0 and not allowzero else s for i, s in enumerate(shape)]
    return x.reshape(dims)


def _reshape_dynamic(x: Tensor, shape: Tensor, allowzero: bool) -> Tensor:
    """Reshape to a runtime shape tensor, staying traceable for a dynamic batch on export."""
    shape = shape.to(torch.int64)
    if not allowzero:
        n = len(shape)
        in_shape = shape_as_tensor(x).to(shape.device)
        if n > x.dim():  # a 0 past the input rank is invalid ONNX anyway; keep lengths equal
            in_shape = torch.cat([in_shape, shape.new_ones(n - x.dim())])
        shape = torch.where(shape == 0, in_shape[:n], shape)
    return reshape_from_tensor_shape(x, shape)


class Reshape(OpModule):
    """ONNX Reshape (allowzero=0: a 0 copies the input dim; -1 is inferred)."""

    def __init__(self, view: NodeView) -> None:
        shape, known = _constant_or_attr(view, 1, "shape")
        super().__init__(view, baked=(1,) if known else ())
        self.shape = [int(s) for s in shape] if known else None
        self.allowzero = bool(view.attr("allowzero", 0))

    def compute(self, x: Tensor, shape: Tensor | None = None) -> Tensor:
        if self.shape is not None:
            return _reshape_static(x, self.shape, self.allowzero)
        return _reshape_dynamic(x, shape, self.allowzero)


@handles("Reshape")
def _reshape(view: NodeView) -> nn.Module:
    return Reshape(view)


def _transpose(x: Tensor, perm: list[int] | None) -> Tensor:
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@handles("Transpose")
def _transpose_handler(view: NodeView) -> nn.Module:
    perm = view.attr("perm")
    return Fn(view, _transpose, perm=list(perm) if perm is not None else None)


class AxesOp(OpModule):
    """Base of ops with an ``axes`` list given as attribute (old opsets) or input."""

    axes_input = 1

    def __init__(self, view: NodeView) -> None:
        axes, known = _constant_or_attr(view, self.axes_input, "axes")
        super().__init__(view, baked=(self.axes_input,) if known else ())
        self.axes = [int(a) for a in axes] if axes is not None else None

    def resolve_axes(self, operands: Sequence[Tensor | None]) -> list[int] | None:
        runtime = operands[self.axes_input] if len(operands) > self.axes_input else None
        return _runtime_list(runtime, self.axes)


class Squeeze(AxesOp):
    """ONNX Squeeze; without axes every size-1 dim goes."""

    def compute(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        axes = self.resolve_axes((x, *rest))
        if not axes:
            return torch.squeeze(x)
        for axis in sorted((_normalize_axis(a, x.dim()) for a in axes), reverse=True):
            x = torch.squeeze(x, axis)  # one axis at a time: exportable at every opset
        return x


class Unsqueeze(AxesOp):
    """ONNX Unsqueeze; axes refer to the output rank, so insert them in ascending order."""

    def compute(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        axes = self.resolve_axes((x, *rest))
        rank = x.dim() + len(axes)
        for axis in sorted(_normalize_axis(a, rank) for a in axes):
            x = torch.unsqueeze(x, axis)
        return x


@handles("Squeeze")
def _squeeze(view: NodeView) -> nn.Module:
    return Squeeze(view)


@handles("Unsqueeze")
def _unsqueeze(view: NodeView) -> nn.Module:
    return Unsqueeze(view)


def _concat(*xs: Tensor, axis: int) -> Tensor:
    return torch.cat(xs, dim=axis)


@handles("Concat")
def _concat_handler(view: NodeView) -> nn.Module:
    return Fn(view, _concat, axis=int(view.attr("axis")))


class Split(OpModule):
    """ONNX Split by explicit sizes (attribute or input), num_outputs, or equal parts."""

    def __init__(self, view: NodeView) -> None:
        sizes, known = _constant_or_attr(view, 1, "split")
        super().__init__(view, baked=(1,) if known else ())
        self.sizes = [int(s) for s in sizes] if sizes is not None else None
        self.axis = int(view.attr("axis", 0))
        self.parts = int(view.attr("num_outputs", len(view.outputs)))

    def compute(self, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        split = _runtime_list(sizes, self.sizes)
        if not split:
            length = int(x.shape[self.axis])
            split = -(-length // self.parts)
        return tuple(torch.split(x, split, dim=self.axis))


@handles("Split")
def _split(view: NodeView) -> nn.Module:
    return Split(view)


def _onnx_negative_step_indices(size: int, start: int, end: int, step: int) -> list[int]:
    """Indices an ONNX Slice with a negative step selects (its clamping, not Python's)."""
    start = min(max(start + size if start < 0 else start, 0), size - 1)
    end = min(max(end + size if end < 0 else end, -1), size - 1)
    return list(range(start, end, step))


class Slice(OpModule):
    """ONNX Slice; positive steps are plain Python slices (same clamping as ONNX)."""

    def __init__(self, view: NodeView) -> None:
        if view.opset < 10:
            lists = {
                "starts": view.attr("starts"),
                "ends": view.attr("ends"),
                "axes": view.attr("axes"),
                "steps": None,
            }
            baked: tuple[int, ...] = ()
        else:
            lists = {
                key: view.const_list(i)
                for i, key in enumerate(("starts", "ends", "axes", "steps"), start=1)
            }
            baked = tuple(i for i in (1, 2, 3, 4) if view.is_const(i))
        super().__init__(view, baked=baked)
        self.lists = {key: (list(v) if v is not None else None) for key, v in lists.items()}

    def compute(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        rest = list(rest) + [None] * (4 - len(rest))
        starts, ends, axes, steps = (
            _runtime_list(tensor, self.lists[key])
            for tensor, key in zip(rest, ("starts", "ends", "axes", "steps"))
        )
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        index: list[slice] = [slice(None)] * x.dim()
        reversed_axes = []
        for start, end, axis, step in zip(starts, ends, axes, steps):
            axis = _normalize_axis(int(axis), x.dim())
            if step > 0:
                index[axis] = slice(int(start), int(end), int(step))
            else:
                reversed_axes.append((axis, int(start), int(end), int(step)))
        x = x[tuple(index)]
        for axis, start, end, step in reversed_axes:
            picks = _onnx_negative_step_indices(int(x.shape[axis]), start, end, step)
            x = x.index_select(axis, torch.tensor(picks, dtype=torch.int64, device=x.device))
        return x


@handles("Slice")
def _slice(view: NodeView) -> nn.Module:
    return Slice(view)


def _gather(data: Tensor, indices: Tensor, axis: int) -> Tensor:
    """ONNX Gather = NumPy take along ``axis``, negative indices allowed."""
    axis = _normalize_axis(axis, data.dim())
    indices = indices.to(torch.int64)
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    return data[(slice(None),) * axis + (indices,)]


@handles("Gather")
def _gather_handler(view: NodeView) -> nn.Module:
    """A constant float table gathered by runtime indices is an embedding: trainable."""
    params = {0: "weight"} if view.is_const(0) and not view.is_const(1) else {}
    return Fn(view, _gather, params=params, axis=int(view.attr("axis", 0)))


def _shape(x: Tensor, start: int, end: int | None) -> Tensor:
    return shape_as_tensor(x)[start:end]


@handles("Shape")
def _shape_handler(view: NodeView) -> nn.Module:
    end = view.attr("end")
    return Fn(view, _shape, start=int(view.attr("start", 0)), end=end)


def _cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype)


@handles("Cast")
def _cast_handler(view: NodeView) -> nn.Module:
    target = int(view.attr("to"))
    if target not in ONNX_TO_TORCH_DTYPE:
        raise view.unsupported(f"cast to {onnx.TensorProto.DataType.Name(target)}")
    return Fn(view, _cast, dtype=ONNX_TO_TORCH_DTYPE[target])


class ConstantOfShape(OpModule):
    """ONNX ConstantOfShape for a runtime shape (constant shapes are folded beforehand)."""

    def __init__(self, view: NodeView) -> None:
        super().__init__(view)
        fill = view.attr("value")
        array = numpy_helper.to_array(fill) if fill is not None else np.zeros(1, np.float32)
        self.register_buffer("fill", _to_tensor(array.reshape(-1)[:1]), persistent=False)

    def compute(self, shape: Tensor) -> Tensor:
        dims = list(shape.to(torch.int64).unbind(0))  # 0-d tensors: traced, not baked
        return torch.full(dims, self.fill.item(), dtype=self.fill.dtype, device=self.fill.device)


@handles("ConstantOfShape")
def _constant_of_shape(view: NodeView) -> nn.Module:
    return ConstantOfShape(view)


PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


class Pad(OpModule):
    """ONNX Pad (attribute form before opset 11, inputs pads/constant_value/axes after)."""

    def __init__(self, view: NodeView) -> None:
        mode = view.attr("mode", "constant")
        if mode not in PAD_MODES:
            raise view.unsupported(f"mode={mode}")
        super().__init__(view, baked=(1, 2, 3))
        self.mode = PAD_MODES[mode]
        if view.opset < 11:
            self.pads = list(view.attr("pads", view.attr("paddings")))
            self.value: float | None = float(view.attr("value", 0.0))
            self.axes = None
            return
        self.pads = view.const_list(1)
        self.value = view.const_list(2)[0] if view.is_const(2) else None
        self.axes = view.const_list(3)

    def compute(
        self,
        x: Tensor,
        pads: Tensor | None = None,
        value: Tensor | None = None,
        axes: Tensor | None = None,
    ) -> Tensor:
        pad_list = _runtime_list(pads, self.pads)
        axes_list = _runtime_list(axes, self.axes)
        torch_pads = _torch_pad_list(x.dim(), pad_list, axes_list or range(x.dim()))
        if self.mode != "constant":
            return F.pad(x, torch_pads, mode=self.mode)
        fill = (
            self.value if self.value is not None else (value.item() if value is not None else 0.0)
        )
        return F.pad(x, torch_pads, mode="constant", value=fill)


@handles("Pad")
def _pad(view: NodeView) -> nn.Module:
    return Pad(view)


# --------------------------------------------------------------------------- resize


def _resize_mode(view: NodeView) -> tuple[str, bool | None]:
    """The F.interpolate mode (and align_corners) matching this node's coordinate rules."""
    mode = view.attr("mode", "nearest")
    if view.op_type == "Upsample" or view.opset < 11:
        transform = "asymmetric"
    else:
        transform = view.attr("coordinate_transformation_mode", "half_pixel")
    half_pixel = transform in ("half_pixel", "pytorch_half_pixel")
    if view.attr("antialias", 0) or view.attr("exclude_outside", 0):
        raise view.unsupported("antialias/exclude_outside")
    if mode == "nearest":
        rounding = view.attr("nearest_mode", "round_prefer_floor")
        if transform == "asymmetric" and (rounding == "floor" or view.opset < 11):
            return "nearest", None
        if half_pixel and rounding in ("round_prefer_floor", "round_prefer_ceil"):
            return "nearest-integer-upscale", None
    if mode in ("linear", "bilinear") and (half_pixel or transform == "align_corners"):
        return "linear", transform == "align_corners"
    if mode == "cubic" and half_pixel and view.attr("cubic_coeff_a", -0.75) == -0.75:
        return "bicubic", False
    raise view.unsupported(f"mode={mode}, coordinate_transformation_mode={transform}")


class Resize(OpModule):
    """ONNX Resize/Upsample via F.interpolate for the modes torch computes identically."""

    def __init__(self, view: NodeView) -> None:
        self.mode, self.align_corners = _resize_mode(view)
        legacy = view.op_type == "Upsample" or view.opset < 11
        # operand positions: Upsample / Resize-10 (X, scales); Resize-11+ (X, roi, scales, sizes)
        self.scales_at, self.sizes_at = (1, None) if legacy else (2, 3)
        super().__init__(view, baked=(1, 2, 3))
        scales = view.attr("scales") or view.const_list(self.scales_at)
        sizes = view.const_list(self.sizes_at) if self.sizes_at else None
        self.scales = [float(s) for s in scales] if scales else None
        self.sizes = [int(s) for s in sizes] if sizes else None
        if view.attr("axes") is not None:
            raise view.unsupported("axes attribute")
        if self.scales and any(s != 1.0 for s in self.scales[:2]):
            raise view.unsupported("resizing the batch or channel axis")
        if self.mode == "nearest-integer-upscale":
            # upscaling by an integer s, output d reads round((d + 0.5) / s - 0.5) = d // s
            # with no ties, which is exactly torch's (asymmetric, floor) nearest
            if self.scales is None or any(s < 1 or s != int(s) for s in self.scales):
                raise view.unsupported("half_pixel nearest with non-integer scales")
            self.mode = "nearest"

    def compute(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        operands = [x, *rest, None, None, None]
        scales = _runtime_list(operands[self.scales_at], self.scales)
        sizes = _runtime_list(operands[self.sizes_at], self.sizes) if self.sizes_at else None
        mode = self.mode
        if mode == "linear":
            mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        if sizes:
            return F.interpolate(
                x, size=[int(s) for s in sizes[2:]], mode=mode, align_corners=self.align_corners
            )
        return F.interpolate(
            x,
            scale_factor=[float(s) for s in scales[2:]],
            mode=mode,
            align_corners=self.align_corners,
            recompute_scale_factor=False,
        )


@handles("Resize", "Upsample")
def _resize(view: NodeView) -> nn.Module:
    return Resize(view)


# --------------------------------------------------------------------------- reductions


class Reduce(AxesOp):
    """ONNX ReduceMean/ReduceSum/ReduceMax (axes attribute or input, keepdims, noop)."""

    FUNCTIONS = {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax}

    def __init__(self, view: NodeView) -> None:
        super().__init__(view)
        self.keepdims = bool(view.attr("keepdims", 1))
        self.noop_empty = bool(view.attr("noop_with_empty_axes", 0))

    def compute(self, x: Tensor, *rest: Tensor | None) -> Tensor:
        axes = self.resolve_axes((x, *rest))
        if not axes:
            if self.noop_empty:
                return x
            axes = list(range(x.dim()))
        dims = tuple(_normalize_axis(a, x.dim()) for a in axes)
        return self.FUNCTIONS[self.op_type](x, dim=dims, keepdim=self.keepdims)


@handles(*Reduce.FUNCTIONS)
def _reduce(view: NodeView) -> nn.Module:
    return Reduce(view)


# --------------------------------------------------------------------------- the module


@dataclass(frozen=True)
class Step:
    """One node in execution order: its submodule and the tensor names it reads/writes."""

    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _sanitize(name: str) -> str:
    """An attribute-safe module name derived from an ONNX node name."""
    cleaned = re.sub(r"\W+", "_", name).strip("_")
    if not cleaned or cleaned[0].isdigit():
        cleaned = f"n_{cleaned}"
    return cleaned


class OnnxModule(nn.Module):
    """A converted ONNX graph: forward(*graph inputs) -> graph output(s).

    Attributes: ``input_names`` / ``output_names`` (the ONNX ones, in order), ``opset``,
    ``ends_with_softmax`` and ``return_logits`` (when True, a final Softmax/LogSoftmax is
    skipped so a trainer can apply cross-entropy to logits), and ``initializer_names``
    (qualified parameter/buffer name -> ONNX initializer name).
    """

    def __init__(
        self,
        nodes: Sequence[tuple[str, nn.Module, Sequence[str], Sequence[str]]],
        input_names: Sequence[str],
        output_names: Sequence[str],
        final_softmax_outputs: Collection[str],
        opset: int,
    ) -> None:
        super().__init__()
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.opset = opset
        self.return_logits = False
        self.initializer_names: dict[str, str] = {}
        steps, skip = [], set()
        taken = set(dir(self))
        for raw_name, module, inputs, outputs in nodes:
            key = self._unique_key(_sanitize(raw_name), taken)
            self.add_module(key, module)
            steps.append(Step(key, tuple(inputs), tuple(outputs)))
            if outputs and outputs[0] in final_softmax_outputs:
                skip.add(key)
        self.steps = steps
        self.softmax_keys = frozenset(skip)
        self.ends_with_softmax = bool(skip)

    @staticmethod
    def _unique_key(key: str, taken: set[str]) -> str:
        candidate, suffix = key, 1
        while candidate in taken:
            suffix += 1
            candidate = f"{key}_{suffix}"
        taken.add(candidate)
        return candidate

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise TypeError(
                f"expected {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                f"got {len(inputs)}"
            )
        env: dict[str, Tensor] = dict(zip(self.input_names, inputs))
        for step in self.steps:
            args = [env[name] for name in step.inputs]
            if self.return_logits and step.key in self.softmax_keys:
                result: Any = args[0]
            else:
                result = self._modules[step.key](*args)
            results = result if isinstance(result, (tuple, list)) else (result,)
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def initializer_values(self) -> dict[str, np.ndarray]:
        """Current trained values keyed by ONNX initializer name (same layout as in ONNX)."""
        state = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        return {
            onnx_name: state[qual].detach().cpu().numpy()
            for qual, onnx_name in self.initializer_names.items()
        }


# --------------------------------------------------------------------------- conversion


def _graph_info(model: onnx.ModelProto) -> GraphInfo:
    """Constants (initializers + Constant nodes), producers and consumer counts."""
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers: dict[str, str] = {}
    consumers: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
            constants[node.output[0]] = _constant_node_value(node)
        for name in node.output:
            producers[name] = node.op_type
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    return GraphInfo(
        opset=default_opset(model),
        constants=constants,
        producers=producers,
        consumers=consumers,
        graph_inputs=frozenset(value.name for value in graph.input),
        graph_outputs=frozenset(value.name for value in graph.output),
    )


def _check_supported(graph: onnx.GraphProto) -> None:
    """Fail before building anything, naming the first op the converter cannot run."""
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS or (
            node.op_type not in HANDLERS and node.op_type != "Constant"
        ):
            label = (
                node.op_type
                if node.domain in DEFAULT_DOMAINS
                else (f"{node.domain}.{node.op_type}")
            )
            raise ModelError(
                f"cannot fine-tune: op type {label} (node {node.name or node.output[0]}) "
                "is not supported by the converter"
            )


def _final_softmax_outputs(graph: onnx.GraphProto, info: GraphInfo) -> set[str]:
    """Outputs of Softmax/LogSoftmax nodes that only feed a graph output (maybe via Identity)."""
    by_output = {name: node for node in graph.node for name in node.output}
    found = set()
    for value in graph.output:
        node = by_output.get(value.name)
        while (
            node is not None
            and node.op_type == "Identity"
            and (info.consumers.get(node.input[0], 0) == 1)
        ):
            node = by_output.get(node.input[0])
        if node is None or node.op_type not in SOFTMAX_OPS:
            continue
        if info.consumers.get(node.output[0], 0) <= 1:
            found.add(node.output[0])
    return found


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give unnamed nodes a stable name (op type + position) for modules and messages."""
    for index, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"


def _record_origins(module: OnnxModule, info: GraphInfo) -> None:
    """Fill ``initializer_names`` by matching parameter/buffer identity to initializers."""
    for qual, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if id(tensor) in info.origins:
            module.initializer_names[qual] = info.origins[id(tensor)]


NodeSpec = tuple[str, nn.Module, list[str], list[str]]


def _node_modules(graph: onnx.GraphProto, info: GraphInfo) -> list[NodeSpec]:
    """One (name, module, runtime inputs, outputs) per node, Constant nodes excepted."""
    specs = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        module = HANDLERS[node.op_type](NodeView.of(node, info))
        runtime = [name for name in node.input if name and name not in info.constants]
        specs.append((node.name, module, runtime, list(node.output)))
    return specs


def _constant_outputs(graph: onnx.GraphProto, info: GraphInfo) -> list[NodeSpec]:
    """Steps for graph outputs that are constants (folded or initializers)."""
    return [
        (f"const_{value.name}", ConstantTensor(info.constants[value.name]), [], [value.name])
        for value in graph.output
        if value.name in info.constants
    ]


def onnx_to_torch(model: onnx.ModelProto) -> OnnxModule:
    """Convert an ONNX model into a trainable ``OnnxModule`` (eval mode, like the ONNX graph).

    Raises ModelError naming the op type and node for anything outside the supported set.
    The caller's model is not modified.
    """
    prepared = prepare_model(model)
    graph = prepared.graph
    _name_nodes(graph)
    _check_supported(graph)
    info = _graph_info(prepared)
    module = OnnxModule(
        _node_modules(graph, info) + _constant_outputs(graph, info),
        input_names=[value.name for value in graph.input],
        output_names=[value.name for value in graph.output],
        final_softmax_outputs=_final_softmax_outputs(graph, info),
        opset=info.opset,
    )
    _record_origins(module, info)
    return module.eval()
