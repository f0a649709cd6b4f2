"""Random weights for the Keras test models (TensorFlow is imported by the caller's
importorskip; this module only touches the model it is given)."""

from __future__ import annotations

import numpy as np


def randomize(model, seed: int) -> None:
    """Random kernels and biases (Keras zero-inits biases, tf2onnx would drop them) and BN
    statistics away from identity, so folds and compensation show."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        is_bn = type(layer).__name__ == "BatchNormalization"
        values = []
        for index, weight in enumerate(layer.get_weights()):
            if is_bn and index in (0, 3):
                values.append(0.5 + rng.random(weight.shape))  # gamma, moving variance
            elif weight.ndim == 1:
                values.append(0.1 * rng.standard_normal(weight.shape))
            else:
                fan_in = np.prod(weight.shape[:-1])
                values.append(rng.standard_normal(weight.shape) / np.sqrt(fan_in))
        layer.set_weights([v.astype(np.float32) for v in values])
