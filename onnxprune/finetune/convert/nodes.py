"""Node views and the module base classes every op handler builds on."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import Tensor, nn

from ...errors import ModelError

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
