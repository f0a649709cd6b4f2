"""Fine-tuned torch module -> ONNX, with the original model's input/output names.

The legacy TorchScript exporter (``dynamo=False``) is used because it traces the
converter's interpreter-style forward into plain ONNX ops and honours ``dynamic_axes``;
every input and output gets a dynamic batch axis (axis 0) so the fine-tuned model serves
any batch size, like the pruned one it replaces.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import onnx
import torch
from torch import nn

from ..errors import ModelError
from ..io import save_model

MIN_EXPORT_OPSET = 13
"""Lowest opset we export: Squeeze/Unsqueeze/Split/ReduceSum take axes as inputs from 13 on."""


def export_opset(original_opset: int) -> int:
    """max(original, 13), capped at the highest opset the TorchScript exporter writes."""
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

    return min(max(int(original_opset), MIN_EXPORT_OPSET), ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


@contextmanager
def _export_state(module: nn.Module) -> Iterator[None]:
    """Eval mode and full (softmax-included) outputs for export; the caller's state after."""
    was_training = module.training
    had_logits = getattr(module, "return_logits", None)
    module.eval()
    if had_logits is not None:
        module.return_logits = False
    try:
        yield
    finally:
        module.train(was_training)
        if had_logits is not None:
            module.return_logits = had_logits


def _dynamic_batch_axes(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], output_names: Sequence[str]
) -> dict[str, dict[int, str]]:
    """Axis 0 of every input and (non-scalar) output is the dynamic ``batch`` axis."""
    with torch.no_grad():
        outputs = module(*example_inputs)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in zip(output_names, outputs):
        if tensor.dim() > 0:
            axes[name] = {0: "batch"}
    return axes


def export_onnx(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
    path_or_none: str | os.PathLike | None = None,
) -> onnx.ModelProto:
    """Export ``module`` to ONNX and return the loaded ModelProto (also written if a path).

    ``opset`` is the original model's opset; the export uses max(opset, 13) — opset 13 is
    the minimum — capped at the TorchScript exporter's maximum (20). The module is exported
    in eval mode with ``return_logits`` off (so a final Softmax is kept) and its previous
    mode restored afterwards. Inputs and outputs keep the given names and get a dynamic
    batch axis 0.
    """
    example_inputs = tuple(example_inputs)
    if len(example_inputs) != len(input_names):
        raise ModelError(
            f"cannot export: {len(example_inputs)} example inputs for {len(input_names)} "
            "input names"
        )
    buffer = io.BytesIO()
    with _export_state(module):
        dynamic_axes = {name: {0: "batch"} for name in input_names if name}
        dynamic_axes.update(_dynamic_batch_axes(module, example_inputs, output_names))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer/deprecation chatter, not user errors
            try:
                torch.onnx.export(
                    module,
                    example_inputs,
                    buffer,
                    dynamo=False,
                    input_names=list(input_names),
                    output_names=list(output_names),
                    opset_version=export_opset(opset),
                    dynamic_axes=dynamic_axes,
                    do_constant_folding=True,
                )
            except Exception as exc:  # the exporter raises many types; users get one line
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ModelError(
                    f"cannot export the fine-tuned model to ONNX: {type(exc).__name__}: "
                    f"{first_line}"
                ) from exc
    model = onnx.load_from_string(buffer.getvalue())
    if path_or_none is not None:
        save_model(model, path_or_none, force=True)
    return model
