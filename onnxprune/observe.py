"""Stage `observe`: stream the data through onnxruntime with watched tensors exposed.

Each batch's watched activations go straight to their accumulators and are dropped, so
memory holds one batch of activations, never the whole dataset's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from . import progress
from .importance.base import ChannelAccumulator
from .io import Dataset


def providers_for(device: str) -> list[str]:
    """onnxruntime providers for ``device``; says so once when CUDA is not available."""
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        progress.info("note: CUDA is not available to onnxruntime; running on the CPU")
    return ["CPUExecutionProvider"]


def session_with_outputs(
    model: onnx.ModelProto, names: Sequence[str], device: str = "cpu"
) -> ort.InferenceSession:
    """A session that also returns the named intermediate tensors."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in exposed.graph.output}
    types = {v.name: v.type for v in (*exposed.graph.value_info, *exposed.graph.output)}
    for name in names:
        if name in present:
            continue
        value = exposed.graph.output.add()
        value.name = name
        if name in types:
            value.type.tensor_type.elem_type = types[name].tensor_type.elem_type
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    return ort.InferenceSession(
        exposed.SerializeToString(), options, providers=providers_for(device)
    )


def observe(
    model: onnx.ModelProto,
    dataset: Dataset,
    sinks: Mapping[str, tuple[int, Sequence[ChannelAccumulator]]],
    batch_size: int = 64,
    device: str = "cpu",
    description: str = "observing activations",
) -> None:
    """Feed every watched tensor (name -> (channel axis, accumulators)) batch by batch."""
    names = list(sinks)
    if not names:
        return
    session = session_with_outputs(model, names, device)
    batches = dataset.batches(batch_size)
    for feed in progress.track(batches, description, total=dataset.num_batches(batch_size)):
        values = session.run(names, feed)
        for name, value in zip(names, values):
            axis, accumulators = sinks[name]
            activation = np.moveaxis(value, axis, 1) if axis != 1 else value
            for accumulator in accumulators:
                accumulator.update(activation)


def predict(
    model: onnx.ModelProto, dataset: Dataset, batch_size: int = 64, device: str = "cpu"
) -> np.ndarray:
    """The first output over the whole dataset (for accuracy / MSE)."""
    session = session_with_outputs(model, [], device)
    name = session.get_outputs()[0].name
    return np.concatenate([session.run([name], feed)[0] for feed in dataset.batches(batch_size)])
