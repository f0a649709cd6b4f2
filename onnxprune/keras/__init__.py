"""Keras models in and out: convert with tf2onnx, prune the ONNX model, rebuild the user's
Keras model with the same channels removed, fine-tune it in Keras, export ONNX again.

Needs the ``keras`` extra (TensorFlow + tf2onnx); TensorFlow is imported only when a
function here is called, so importing this package is cheap.

    from onnxprune import keras as okeras
    result = okeras.ocnna("model.keras", k=40, data="dvar.npz")
    result.keras_model        # the pruned Keras model
    okeras.finetune_result(result, "train.npz", "test.npz", epochs=1)
"""

from .convert import is_keras_path, keras_to_onnx, model_to_onnx
from .route import (
    KerasPruneResult,
    finetune_result,
    ocnna,
    odf2nna,
    odf2nna_sweep,
)

__all__ = [
    "KerasPruneResult",
    "finetune_result",
    "is_keras_path",
    "keras_to_onnx",
    "model_to_onnx",
    "ocnna",
    "odf2nna",
    "odf2nna_sweep",
]
