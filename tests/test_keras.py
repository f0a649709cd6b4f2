"""Keras models converted by tf2onnx through ``onnxprune.keras.model_to_onnx`` (NHWC input,
Transposes around convs, BN folded on Keras 2 or Mul + Add on Keras 3, Flatten as
Transpose + Reshape with a constant shape, Dense as MatMul + Add, LSTM as one ONNX LSTM):
every k gives a valid model and dead channels prune exactly. Needs tensorflow + tf2onnx
(skipped cleanly without them; Keras 2 or 3). tests/test_nhwc.py covers the same pattern
without TensorFlow."""

from __future__ import annotations

import math
import os

import numpy as np
import onnx
import pytest
from conftest import importorskip_any
from dead import kill
from keras_weights import randomize

import onnxprune
from onnxprune.analyze import analyze
from onnxprune.keras import model_to_onnx
from onnxprune.pipeline import apply_masks
from onnxprune.verify import run, verify

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = importorskip_any("tensorflow")
tf2onnx = importorskip_any("tf2onnx")

KS = (10, 40, 75)


def keras_cnn():
    layers = tf.keras.layers
    image = layers.Input((16, 16, 3), name="image")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(image)))
    y = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(layers.Add()([x, y]))
    pointwise = layers.Conv2D(6, 1, activation="relu")(x)
    depthwise = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Flatten()(layers.Concatenate()([pointwise, depthwise]))
    x = layers.Dropout(0.5)(layers.Dense(16, activation="relu")(x))
    return tf.keras.Model(image, layers.Dense(5, activation="softmax")(x)), (16, 16, 3)


def keras_mlp():
    layers = tf.keras.layers
    features = layers.Input((12,), name="features")
    x = layers.Dense(32, activation="relu")(features)
    x = layers.Dense(16, activation="tanh")(x)
    return tf.keras.Model(features, layers.Dense(3)(x)), (12,)


def keras_lstm():
    """Conv1D over time into an LSTM: tf2onnx rewrites the Keras loop into one ONNX LSTM."""
    layers = tf.keras.layers
    series = layers.Input((20, 4), name="series")
    x = layers.LSTM(12)(layers.Conv1D(16, 5, padding="same", activation="relu")(series))
    x = layers.Dense(16, activation="relu")(x)
    return tf.keras.Model(series, layers.Dense(3)(x)), (20, 4)


@pytest.fixture(scope="module", params=["cnn", "mlp", "lstm"])
def converted(request):
    """(ONNX model from tf2onnx, input name, sample data, Keras outputs on that data)."""
    tf.keras.utils.set_random_seed(0)
    model, shape = {"cnn": keras_cnn, "mlp": keras_mlp, "lstm": keras_lstm}[request.param]()
    randomize(model, seed=1)
    proto = model_to_onnx(model)
    assert proto.producer_name == "tf2onnx"
    if request.param == "lstm":
        assert [n.op_type for n in proto.graph.node].count("LSTM") == 1
    data = np.random.default_rng(2).standard_normal((6, *shape)).astype(np.float32)
    return proto, proto.graph.input[0].name, data, np.asarray(model(data))


def test_tf2onnx_export_matches_keras(converted):
    model, name, data, expected = converted
    got = next(iter(run(model, {name: data}).values()))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("k", KS)
def test_keras_model_prunes_to_a_valid_model(converted, k):
    model, name, data, _ = converted
    pruned, report = onnxprune.ocnna(model, k=k, data=data, batch_size=6)
    onnx.checker.check_model(pruned, full_check=True)
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in model.graph.output]
    got, want = run(pruned, {name: data}), run(model, {name: data})
    assert [v.shape for v in got.values()] == [v.shape for v in want.values()]
    assert all(entry["reason"] for entry in report["frozen"])
    for layer in report["layers"]:
        drop = min(math.floor(k * layer["total"] / 100 + 1e-9), layer["total"] - 1)
        expected = layer["total"] - drop if layer["prunable"] else layer["total"]
        assert layer["kept"] == expected, layer
    assert sum(layer["prunable"] for layer in report["layers"]) >= 2


def test_keras_cnn_flatten_interleaves_channels_into_the_dense_rows(converted):
    model, name, data, _ = converted
    if not any(n.op_type == "Conv" for n in model.graph.node) or "series" in name:
        pytest.skip("no Flatten after the convs")
    analysis = analyze(model, {name: data[:1]})
    matmul = next(n for n in analysis.cg.graph.nodes if n.op == "MatMul")
    layout = analysis.cg.layouts[matmul.inputs[0].name]
    channels = layout.atoms[: layout.size // 64]  # H*W = 8*8 positions, channels last
    assert np.array_equal(layout.atoms, np.tile(channels, 64))
    assert analysis.group_of(matmul.name).prunable


def test_pruning_dead_channels_of_a_keras_model_keeps_outputs(converted):
    model, name, data, _ = converted
    feed = {name: data}
    dead_model, masks, _ = kill(model, feed)
    assert masks
    analysis = analyze(dead_model, feed)
    pruned = apply_masks(analysis, masks)
    verify(pruned, analysis.model, feed)
    want, got = run(dead_model, feed), run(pruned, feed)
    for output, value in want.items():
        scale = float(np.abs(value).max())
        assert float(np.abs(got[output] - value).max()) <= 1e-4 * scale
