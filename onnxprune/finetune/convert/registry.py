"""Op type -> handler registry and the ONNX -> torch dtype table."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx
import torch
from torch import nn

if TYPE_CHECKING:
    from .nodes import NodeView

Handler = Callable[["NodeView"], nn.Module]

HANDLERS: dict[str, Handler] = {}
"""ONNX op type -> handler building the module for one node. Adding an op is one entry."""

SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
#: Final ops a trainer skips to train on logits (cross-entropy, or binary cross-entropy for
#: one sigmoid unit).
PROBABILITY_OPS = SOFTMAX_OPS | {"Sigmoid"}
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
