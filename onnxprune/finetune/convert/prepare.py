"""Graph preparation before conversion: drop initializer inputs, bypass Identity, fold."""

from __future__ import annotations

import onnx

from ...errors import ModelError
from ...normalize import drop_initializer_inputs
from .registry import (  # noqa: F401
    DEFAULT_DOMAINS,
)

# --------------------------------------------------------------------------- graph preparation


def default_opset(model: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain: it decides attribute-vs-input forms."""
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise ModelError("cannot fine-tune: the model declares no opset for the default ONNX domain")


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

    from ...graph.export import quiet_graphsurgeon

    try:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape info only helps folding; its absence is not an error
            pass
        with quiet_graphsurgeon(G_LOGGER.CRITICAL):
            graph = gs.import_onnx(model)
            graph.fold_constants().cleanup().toposort()
            folded = gs.export_onnx(graph)
    except Exception:
        return model
    del folded.graph.value_info[:]
    return folded


def prepare_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A normalised copy of ``model`` ready to convert; the caller's proto is never changed."""
    prepared = onnx.ModelProto()
    prepared.CopyFrom(model)
    drop_initializer_inputs(prepared)
    _bypass_identities(prepared.graph)
    return _fold_constants(prepared)
