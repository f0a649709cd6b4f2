"""Keras -> ONNX with tf2onnx: read a .keras / .h5 file or a SavedModel directory.

TensorFlow is imported here only, and only when a Keras model is given (the ``keras``
extra), so ONNX users never pay for it. tf2onnx's ``from_keras`` handles Keras 2 and, in
tf2onnx 1.17, Keras 3 functional models; when it fails (a Keras 3 Sequential: KeyError on
its output tensor name), the model goes through ``from_function`` on a tf.function with
the model's input signature. The ONNX model keeps the Keras input/output names and a
dynamic batch axis, so data files name inputs the way the Keras model does.

Keras 3 (TensorFlow 2.16+) traces Flatten / Reshape as ``Reshape(x, [shape(x)[0], ...])``:
the target shape is computed from the tensor's shape, which would freeze every channel
that reaches it. Such shapes are folded into constants with ``-1`` for the batch axis
(``fold_batch_shapes``) when the model has static non-batch input dimensions.

Keras 3 reads ``.keras`` and legacy ``.h5`` files; it cannot load a SavedModel directory
as a Keras model (neither one written by Keras 2's ``model.save`` nor Keras 3's
``model.export``): those are converted through their serving signature and prune, but
have no Keras model to rebuild (the PyTorch fine-tune still applies).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import onnx

from ..batch_shapes import fold_batch_shapes
from ..errors import ModelError, ParameterError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
OPSET = 13
BATCH_DIM = "batch"

_cache: dict[tuple, tuple[bytes, Any]] = {}  # one conversion per file version and process


def is_keras_path(path: str | os.PathLike) -> bool:
    """A Keras file by its suffix, or a TensorFlow SavedModel directory."""
    path = Path(path)
    return path.suffix.lower() in KERAS_SUFFIXES or (path / "saved_model.pb").is_file()


def tensorflow() -> tuple[Any, Any]:
    """``(tensorflow, tf2onnx)``, or a one-line ModelError saying how to install them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before the first import: no C++ chatter
    try:
        import tensorflow as tf
        import tf2onnx
    except Exception as exc:  # absent, or a broken build (ImportError, OSError, ...)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(
            "a Keras model is converted to ONNX with TensorFlow and tf2onnx: "
            f"pip install 'onnxprune[keras]' ({type(exc).__name__}: {first})"
        ) from exc
    tf.get_logger().setLevel(logging.ERROR)
    tf2onnx.logging.set_level(logging.ERROR)
    return tf, tf2onnx


def load_keras(path: str | os.PathLike) -> Any | None:
    """The Keras model at ``path``; None for a SavedModel that holds no Keras model."""
    tf, _ = tensorflow()
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:
        if path.is_dir() and (path / "saved_model.pb").is_file():
            return None  # tf.saved_model.save / model.export: convert the signature instead
        raise ModelError(
            f"cannot convert {path} to ONNX: not a readable Keras model ({type(exc).__name__})"
        ) from exc


def keras_to_onnx(path: str | os.PathLike) -> tuple[onnx.ModelProto, Any]:
    """``(ONNX model, Keras model)`` for a Keras file or SavedModel directory.

    The Keras model is None for a SavedModel without Keras metadata (it still prunes,
    but only the PyTorch route can fine-tune it). Converted once per file version.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    stat = path.stat() if path.is_file() else (path / "saved_model.pb").stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        model = load_keras(path)
        proto = model_to_onnx(model) if model is not None else _saved_model_to_onnx(path)
        _cache.clear()  # keep one: a sweep reloads the same file, nothing else does
        _cache[key] = (proto.SerializeToString(), model)
    payload, model = _cache[key]
    return onnx.load_from_string(payload), model


def input_names(model: Any) -> list[str]:
    """The names of the model's InputLayers (Keras 3 calls an unnamed ``Input()``'s tensor
    ``keras_tensor_N`` but its layer ``input_layer_N``, and only the layer name survives
    a save or a rebuild from config); in Keras 2 the two are the same."""
    names = []
    for tensor in model.inputs:
        history = getattr(tensor, "_keras_history", None)
        layer = None if history is None else history[0]
        if layer is not None and type(layer).__name__ == "InputLayer" and layer.name:
            names.append(layer.name)
        else:
            names.append(tensor.name.split(":")[0])
    return names


def output_names(model: Any) -> list[str]:
    """Keras ``output_names``, else the name of the layer that makes each output (a Keras 3
    Sequential has no ``output_names`` and its tensors are called ``keras_tensor_N``)."""
    names = getattr(model, "output_names", None)
    if names and len(names) == len(model.outputs):
        return list(names)
    names = []
    for tensor in model.outputs:
        history = getattr(tensor, "_keras_history", None)
        if history is not None and getattr(history[0], "name", None):
            names.append(history[0].name)
        else:
            names.append(tensor.name.split(":")[0].split("/")[0])
    if len(set(names)) != len(names):  # one layer with several outputs
        names = [f"{name}_{index}" for index, name in enumerate(names)]
    return names


def input_signature(model: Any) -> tuple:
    """One TensorSpec per model input, batch axis dynamic."""
    tf, _ = tensorflow()
    if not getattr(model, "inputs", None):
        raise ModelError("the Keras model has no defined inputs (build it with an Input shape)")
    return tuple(
        tf.TensorSpec((None, *tuple(tensor.shape)[1:]), tf.as_dtype(tensor.dtype), name=name)
        for tensor, name in zip(model.inputs, input_names(model))
    )


CONVERTERS = ("auto", "keras", "function")


def model_to_onnx(
    model: Any,
    names: tuple[list[str], list[str]] | None = None,
    opset: int = OPSET,
    *,
    via: str = "auto",
) -> onnx.ModelProto:
    """Convert an in-memory Keras model; ``names`` (inputs, outputs) overrides the Keras ones.

    ``via``: "auto" tries tf2onnx's ``from_keras`` and falls back to ``from_function`` when
    it fails; "keras" or "function" use that converter alone (a failure is a ModelError).
    """
    if via not in CONVERTERS:
        raise ParameterError(f"via must be one of {CONVERTERS}, got {via!r}")
    tf, tf2onnx = tensorflow()
    spec = input_signature(model)
    proto = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if via != "function":
            try:  # Keras 2, and Keras 3 functional models in tf2onnx 1.17
                proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
            except Exception as exc:  # a Keras 3 Sequential: trace a plain tf.function
                if via == "keras":
                    raise _cannot_convert(exc) from exc
        if proto is None:
            single = len(spec) == 1

            def call(*inputs):
                return model(inputs[0] if single else list(inputs), training=False)

            try:
                function = tf.function(call, input_signature=spec)
                proto, _ = tf2onnx.convert.from_function(
                    function, input_signature=spec, opset=opset
                )
            except Exception as exc:
                raise _cannot_convert(exc) from exc
    fold_batch_shapes(proto)
    inputs, outputs = names or (input_names(model), output_names(model))
    rename_interface(proto, inputs, outputs)
    return proto


def _cannot_convert(exc: Exception) -> ModelError:
    first = (str(exc).strip().splitlines() or [""])[0]
    return ModelError(f"tf2onnx cannot convert the Keras model: {type(exc).__name__}: {first}")


def _saved_model_to_onnx(path: Path, opset: int = OPSET) -> onnx.ModelProto:
    """A SavedModel without Keras metadata: convert its serving signature."""
    tf, tf2onnx = tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
        serving = loaded.signatures["serving_default"]
        _, named = serving.structured_input_signature
        keys = sorted(named)
        spec = tuple(
            tf.TensorSpec((None, *tuple(named[k].shape)[1:]), named[k].dtype, name=k) for k in keys
        )

        def call(*inputs):
            return serving(**dict(zip(keys, inputs)))

        function = tf.function(call, input_signature=spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    except Exception as exc:
        raise ModelError(
            f"cannot convert {path} to ONNX: not a usable SavedModel ({type(exc).__name__})"
        ) from exc
    fold_batch_shapes(proto)
    outputs = (
        sorted(serving.structured_outputs) if isinstance(serving.structured_outputs, dict) else []
    )
    if len(outputs) != len(proto.graph.output):
        outputs = [value.name.split(":")[0] for value in proto.graph.output]
    rename_interface(proto, keys, outputs)
    return proto


def rename_interface(proto: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> None:
    """Give the graph's inputs/outputs these names (in order) and a named dynamic batch axis."""
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    real_inputs = [value for value in graph.input if value.name not in initializers]
    mapping = {}
    for values, names in ((real_inputs, inputs), (graph.output, outputs)):
        if len(values) != len(names):
            raise ModelError(
                f"converted model has {len(values)} inputs/outputs where Keras has {len(names)}"
            )
        mapping.update({v.name: n for v, n in zip(values, names) if v.name != n})
    taken = {t for node in graph.node for t in (*node.input, *node.output)} - set(mapping)
    clash = sorted(set(mapping.values()) & taken)
    if clash:
        raise ModelError(f"cannot name the converted model's interface: '{clash[0]}' is taken")
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        value.name = mapping.get(value.name, value.name)
    for value in (*real_inputs, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].dim_value:
            dims[0].dim_param = BATCH_DIM
