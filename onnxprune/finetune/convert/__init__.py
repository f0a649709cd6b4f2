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

from . import (  # noqa: F401
    ops_dense,
    ops_elementwise,
    ops_pooling,
    ops_recurrent,
    ops_resize,
    ops_shape,
)
from .module import OnnxModule, onnx_to_torch
from .prepare import default_opset, prepare_model
from .registry import HANDLERS, handles, supported_ops

__all__ = [
    "HANDLERS",
    "OnnxModule",
    "default_opset",
    "handles",
    "onnx_to_torch",
    "prepare_model",
    "supported_ops",
]
