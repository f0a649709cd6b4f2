"""Bring any exporter's graph to one canonical form before analysis.

Exporters differ in ways that do not change what a model computes but do change what the
channel analysis sees: weights produced by Constant/ConstantOfShape nodes, initializers
listed as graph inputs (IR < 4), Identity/Dropout nodes routing shared initializers, old
opsets with attribute-style Split/Slice/Squeeze, Reshape targets computed only to carry
the batch size. Normalising once keeps every rule simple.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from .batch_shapes import fold_batch_shapes
from .errors import ModelError
from .graph.export import export_like, quiet_graphsurgeon

MIN_OPSET = 13
PASS_THROUGH_NOOPS = {"Identity", "Dropout"}


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert opsets older than 13 so Split/Slice/Squeeze carry their arguments as inputs."""
    if default_opset(model) >= MIN_OPSET:
        return model
    try:
        upgraded = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(upgraded)
        return upgraded
    except Exception:  # the converter lacks adapters for some ops; old forms still work
        return model


def drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Initializers listed as graph inputs (IR < 4) are weights, not inputs a user feeds."""
    initializers = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializers]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    if model.ir_version < 4:
        model.ir_version = 4


def _can_take_output_name(graph: gs.Graph, source: gs.Tensor, outputs: set[int]) -> bool:
    """A node-produced tensor that is neither a graph input nor already an output."""
    return (
        isinstance(source, gs.Variable)
        and bool(source.inputs)
        and id(source) not in outputs
        and all(source is not t for t in graph.inputs)
    )


def remove_noops(graph: gs.Graph) -> None:
    """Bypass Identity and (inference-mode) Dropout nodes so shared weights become visible."""
    outputs = set(map(id, graph.outputs))
    for node in list(graph.nodes):
        if node.op not in PASS_THROUGH_NOOPS or not node.inputs:
            continue
        source, result = node.inputs[0], node.outputs[0]
        extra_used = any(out.outputs or id(out) in outputs for out in node.outputs[1:])
        if extra_used:
            continue
        if id(result) in outputs:
            if not _can_take_output_name(graph, source, outputs):
                continue
            # onnxruntime 1.32 mis-rewires an Identity to a graph output whose input also
            # feeds a Pad -> Conv it fuses: name the source after the output instead.
            source.name, source.dtype = result.name, result.dtype or source.dtype
            source.shape = result.shape or source.shape
            graph.outputs[[id(t) for t in graph.outputs].index(id(result))] = source
            outputs.add(id(source))
        for consumer in list(result.outputs):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is result:
                    consumer.inputs[index] = source
        node.outputs.clear()
    graph.cleanup()


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and batch-only shapes, drop initializer inputs, bypass no-ops,
    upgrade opset, infer shapes."""
    model = upgrade_opset(model)
    drop_initializer_inputs(model)
    fold_batch_shapes(model)
    try:
        with quiet_graphsurgeon():
            graph = gs.import_onnx(model)
            graph.fold_constants(error_ok=True)
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            remove_noops(graph)
            graph.toposort()
        return export_like(graph, model)
    except Exception as exc:
        raise ModelError(f"cannot normalise the model graph: {exc}") from exc
