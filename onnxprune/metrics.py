"""Model measurements the reports are made of: parameters, MACs, size, latency, accuracy."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort

from .graph.shapes import probe_shapes
from .io import Dataset
from .labels import binary_threshold, model_labels, predicted_classes
from .observe import predict

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}


def count_params(model: onnx.ModelProto) -> int:
    """Number of weights: floating-point initializers and Constant nodes, and in INT8 (QDQ)
    models the quantized tensors DequantizeLinear reads (their scales are not weights)."""
    quantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    scales = {
        name
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear")
        for name in n.input[1:]
    }
    total = sum(
        int(np.prod(init.dims))
        for init in model.graph.initializer
        if (init.data_type in FLOAT_TYPES and init.name not in scales) or init.name in quantized
    )
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                    total += int(np.prod(attr.t.dims))
    return total


def _kernel_macs(node: onnx.NodeProto, weights: dict, shapes: dict) -> int:
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    out_elems = int(np.prod(out[1:]))
    weight = node.input[1] if len(node.input) > 1 else ""
    w = weights.get(weight) or shapes.get(weight)  # INT8 models: the DequantizeLinear output
    if node.op_type == "Conv" and w is not None:
        return out_elems * int(np.prod(w[1:]))
    if node.op_type == "ConvTranspose" and w is not None:
        x = shapes.get(node.input[0])
        return 0 if x is None else int(np.prod(x[1:])) * int(np.prod(w[1:]))
    if node.op_type in ("LSTM", "GRU", "RNN") and w is not None:
        x, r = shapes.get(node.input[0]), weights.get(node.input[2])
        batch_first = any(at.name == "layout" and at.i for at in node.attribute)
        steps = None if x is None else x[1 if batch_first else 0]
        return 0 if steps is None or r is None else steps * int(np.prod(w) + np.prod(r))
    if node.op_type in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0]) or weights.get(node.input[0])
        if a is None:
            return 0
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        inner = a[0] if trans_a and len(a) == 2 else a[-1]
        return out_elems * int(inner)
    return 0


def count_macs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> int:
    """Multiply-accumulates per sample of the Conv/ConvTranspose/Gemm/MatMul and the
    recurrent (LSTM/GRU/RNN: every step, input and hidden weights) nodes."""
    one = {name: value[:1] for name, value in feed.items()}
    shapes = probe_shapes(model, one)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return sum(_kernel_macs(node, weights, shapes) for node in model.graph.node)


def layer_macs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, int]:
    one = {name: value[:1] for name, value in feed.items()}
    shapes = probe_shapes(model, one)
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return {node.name: _kernel_macs(node, weights, shapes) for node in model.graph.node}


def model_bytes(model: onnx.ModelProto) -> int:
    return model.ByteSize()


def latency_ms(
    model: onnx.ModelProto,
    feed: dict[str, np.ndarray],
    repeats: int = 30,
    warmup: int = 5,
    budget_s: float | None = None,
) -> float:
    """Median onnxruntime CPU latency (ms) for ``feed`` after warm-up runs.

    ``budget_s`` caps the measuring time for big models: warm-up and repeats stop early
    once it is spent (at least one warm-up and three timed runs are always made).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    begin = time.perf_counter()
    budget = float("inf") if budget_s is None else budget_s
    for _ in range(warmup):
        session.run(None, feed)
        if time.perf_counter() - begin > budget / 2:
            break
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
        if len(times) >= 3 and time.perf_counter() - begin > budget:
            break
    return float(np.median(times) * 1000)


LATENCY_BUDGET_S = 2.0


def measure(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """Size, weights, MACs/FLOPs and latency on ``feed`` (one sample: batch-1 latency)."""
    macs = count_macs(model, feed)
    return {
        "size_bytes": model_bytes(model),
        "params": count_params(model),
        "macs": macs,
        "flops": 2 * macs,
        "latency_ms": latency_ms(model, feed, budget_s=LATENCY_BUDGET_S),
    }


def evaluate(model: onnx.ModelProto, dataset: Dataset, batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy (class labels, see labels.py) or MSE (float targets) of the first
    output.

    A first output of one integer per sample is taken as the predicted labels themselves
    (scikit-learn classifiers converted by skl2onnx, graphs ending in ArgMax); one float
    per sample with class labels is a binary classifier's score (labels.binary_threshold).
    """
    outputs = predict(model, dataset, batch_size)
    scores = outputs.reshape(len(outputs), -1)
    label_output = np.issubdtype(outputs.dtype, np.integer) and scores.shape[1] == 1
    task, labels = model_labels(model, dataset.labels, None if label_output else scores.shape[1])
    if task == "classification":
        if label_output:
            predicted = scores[:, 0]
        else:
            predicted = predicted_classes(scores, binary_threshold(model))
        return {"accuracy": float((predicted == labels.reshape(-1)).mean())}
    error = scores - labels.reshape(scores.shape)
    return {"mse": float(np.mean(np.square(error, dtype=np.float64)))}
