"""Concrete shapes of every tensor, read off one onnxruntime run on a single sample.

Static shape inference cannot see through every exporter's shape arithmetic; one real run
with batch 1 always can. The channel analysis needs exact extents to push index tensors
through Reshape/Flatten/Transpose.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import ModelError
from ..io import ONNX_TO_NUMPY, InputSpec


def probe_feed(specs: list[InputSpec], sample: dict[str, np.ndarray] | None) -> dict:
    """One-sample feed: the first data sample, or zeros when every dim is known."""
    if sample is not None:
        return {name: value[:1] for name, value in sample.items()}
    feed = {}
    for spec in specs:
        if any(d is None for d in spec.shape[1:]):
            raise ModelError(
                f"model input '{spec.name}' has dynamic dimensions {spec.shape}; "
                "pass sample data so its shape is known"
            )
        batch = spec.shape[0] if spec.shape and spec.shape[0] else 1
        feed[spec.name] = np.zeros((batch, *spec.shape[1:]), dtype=spec.dtype)
    return feed


def probe_shapes(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, tuple]:
    """Shape of every node output tensor for ``feed`` (graph optimisations disabled)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {value.name: value for value in probe.graph.value_info}
    existing = {value.name for value in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if not name or name in existing:
                continue
            existing.add(name)
            value = onnx.ValueInfoProto()
            value.name = name
            if name in known and known[name].type.tensor_type.elem_type:
                value.type.tensor_type.elem_type = known[name].type.tensor_type.elem_type
            probe.graph.output.append(value)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = [out.name for out in session.get_outputs()]
        values = session.run(names, feed)
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the model: {_first_line(exc)}") from exc
    shapes = {name: tuple(np.shape(value)) for name, value in zip(names, values)}
    shapes.update({name: tuple(value.shape) for name, value in feed.items()})
    return shapes


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["probe_feed", "probe_shapes", "ONNX_TO_NUMPY"]
