"""Handlers for shape and indexing ops: Flatten, Reshape, Transpose, Squeeze/Unsqueeze,
Concat, Split, Slice, Gather, Shape, Cast, ConstantOfShape, Pad, Tile, Expand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn
from torch.onnx.operators import reshape_from_tensor_shape, shape_as_tensor

from .nodes import (  # noqa: F401
    Fn,
    NodeView,
    OpModule,
    _flatten_2d,
    _normalize_axis,
    _to_tensor,
    _torch_pad_list,
)
from .registry import (  # noqa: F401
    ONNX_TO_TORCH_DTYPE,
    handles,
)

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


@handles("Tile")  # a class is a handler too: NodeView -> module
class Tile(OpModule):
    """ONNX Tile: ``repeats`` copies along each axis (torch ``repeat``)."""

    def __init__(self, view: NodeView) -> None:
        repeats, known = _constant_or_attr(view, 1, "repeats")
        super().__init__(view, baked=(1,) if known else ())
        self.repeats = repeats

    def compute(self, x: Tensor, repeats: Tensor | None = None) -> Tensor:
        return x.repeat(*_runtime_list(repeats, self.repeats))


@handles("Expand")
class Expand(OpModule):
    """ONNX Expand: broadcast to ``shape``, where 1 keeps the input's extent (a dynamic
    batch stays dynamic) and extra leading axes are added."""

    def __init__(self, view: NodeView) -> None:
        shape, known = _constant_or_attr(view, 1, "shape")
        super().__init__(view, baked=(1,) if known else ())
        self.shape = shape

    def compute(self, x: Tensor, shape: Tensor | None = None) -> Tensor:
        dims = [int(d) for d in _runtime_list(shape, self.shape)]
        if len(dims) < x.dim():
            dims = [1] * (x.dim() - len(dims)) + dims
        extra = len(dims) - x.dim()
        sizes = [d if i < extra or d != 1 else -1 for i, d in enumerate(dims)]
        return x.expand(*sizes)
