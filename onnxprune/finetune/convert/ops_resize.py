"""Handlers: Resize/Upsample and reductions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .nodes import (  # noqa: F401
    NodeView,
    OpModule,
    _normalize_axis,
)
from .ops_shape import (  # noqa: F401
    AxesOp,
    _runtime_list,
)
from .registry import (  # noqa: F401
    handles,
)

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
