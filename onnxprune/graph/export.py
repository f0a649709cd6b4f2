"""A graphsurgeon graph back to an ONNX model that keeps what the source model declared.

graphsurgeon models every tensor as a tensor: a graph input or output of another type
(scikit-learn's ZipMap output, a sequence of maps) comes back as a tensor of undefined
type, which onnxruntime refuses to load. The source's own types, IR version and metadata
are put back, then shapes are inferred again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER


@contextmanager
def quiet_graphsurgeon(severity: int = G_LOGGER.ERROR) -> Iterator[None]:
    """graphsurgeon's warnings (types it keeps as they were, constants it cannot fold)
    are about its own work, not the user's model: keep them off the user's terminal."""
    before = G_LOGGER.severity
    G_LOGGER.severity = severity
    try:
        yield
    finally:
        G_LOGGER.severity = before


def export_like(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` as a model with ``source``'s IR version, metadata and interface types."""
    with quiet_graphsurgeon():
        model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = max(source.ir_version, 4)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)
    declared = {v.name: v for v in (*source.graph.input, *source.graph.output)}
    for value in (*model.graph.input, *model.graph.output):
        original = declared.get(value.name)
        if original is not None and original.type.WhichOneof("value") != "tensor_type":
            value.type.CopyFrom(original.type)
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes are a convenience; the graph is valid
        return model
