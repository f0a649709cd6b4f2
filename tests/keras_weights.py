"""Random weights for the Keras test models (TensorFlow is imported by the caller's
importorskip; this module only touches the model it is given). Keras 2 and 3 alike."""

from __future__ import annotations

import numpy as np

POSITIVE = ("gamma", "moving_variance")  # BN scale and variance: kept away from 0


def short_name(weight) -> str:
    """``bn/gamma:0`` (Keras 2) or ``gamma`` (Keras 3) -> ``gamma``."""
    return weight.name.split("/")[-1].split(":")[0]


def randomize(model, seed: int) -> None:
    """Random kernels and biases (Keras zero-inits biases, tf2onnx would drop them) and BN
    statistics away from identity, so folds and compensation show. Weights are told apart
    by name: a BN with ``scale=False`` or ``center=False`` has fewer of them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if short_name(weight) in POSITIVE:
                values.append(0.5 + rng.random(shape))
            elif len(shape) == 1:
                values.append(0.1 * rng.standard_normal(shape))
            else:
                fan_in = np.prod(shape[:-1])
                values.append(rng.standard_normal(shape) / np.sqrt(fan_in))
        if values:
            layer.set_weights([v.astype(np.float32) for v in values])
