"""The Keras route: .keras / .h5 / SavedModel in, pruned Keras model rebuilt from its config,
fine-tuned in Keras, ONNX out. The rebuilt Keras model must reproduce the pruned ONNX
model's outputs: that proves the pruning plan was applied to the Keras model identically.

Runs on Keras 2 (TensorFlow <= 2.15) and Keras 3 (TensorFlow 2.16+). On Keras 3 the
"savedmodel" format is ``model.export``: an inference-only SavedModel that converts and
prunes but holds no Keras model to rebuild (Keras 3 loads no SavedModel as a model).

Needs tensorflow + tf2onnx (pip install -e ".[keras]"): every test using a Keras model
skips cleanly without them (the fixtures skip). The error tests run everywhere: without
TensorFlow a Keras MODEL must still end in one line saying how to install it."""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from conftest import import_error, importorskip_any
from keras_weights import randomize
from paths import SHARED_DATA

import onnxprune
from onnxprune import keras as okeras  # imports TensorFlow only when used
from onnxprune.cli import main
from onnxprune.errors import ModelError, ParameterError
from onnxprune.keras.plan import plan_for
from onnxprune.keras.rebuild import rebuild
from onnxprune.methods.ocnna import prune_scored, score_model
from onnxprune.verify import run

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HAS_TF = import_error("tensorflow") is None and import_error("tf2onnx") is None
tf = importlib.import_module("tensorflow") if HAS_TF else None
KERAS3 = HAS_TF and str(getattr(tf.keras, "__version__", "2")).startswith("3")
MNIST = SHARED_DATA / "mnist.npz"
FORMATS = ("keras", "h5", "savedmodel")
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"no {MNIST}")


def kept(total: int, k: float = 40) -> int:
    return total - min(math.floor(k * total / 100 + 1e-9), total - 1)


def keras_cnn():
    """Conv+BN(folded by tf2onnx, no conv bias)+ReLU twice into a residual Add, 1x1 and
    depthwise(+BN) branches joined by Concatenate, Flatten -> Dense -> BN -> Dense(softmax)."""
    layers = tf.keras.layers
    image = layers.Input((28, 28, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(image)
    x = layers.ReLU(name="r1")(layers.BatchNormalization(name="bn1")(x))
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="c2")(x)
    y = layers.ReLU(name="r2")(layers.BatchNormalization(name="bn_c2")(y))
    x = layers.MaxPooling2D(name="p1")(layers.Add(name="add")([x, y]))
    pointwise = layers.Conv2D(6, 1, activation="relu", name="c3")(x)
    depthwise = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    depthwise = layers.BatchNormalization(name="bn_dw")(depthwise)
    x = layers.Concatenate(name="cat")([pointwise, depthwise])
    x = layers.Flatten(name="flat")(layers.MaxPooling2D(name="p2")(x))
    x = layers.BatchNormalization(name="bn2")(layers.Dense(16, activation="relu", name="d1")(x))
    x = layers.Dropout(0.2, name="drop")(x)
    out = layers.Dense(10, activation="softmax", name="probs")(x)
    return tf.keras.Model(image, out, name="cnn")


def keras_mlp():
    layers = tf.keras.layers
    return tf.keras.Sequential(
        [
            layers.Input((20,), name="features"),
            layers.Dense(32, activation="relu", name="h1"),
            layers.Dense(16, activation="tanh", name="h2"),
            layers.Dense(3, name="out"),
        ],
        name="mlp",
    )


def save(model, folder, fmt: str):
    path = folder / {"keras": "model.keras", "h5": "model.h5", "savedmodel": "saved"}[fmt]
    if fmt == "savedmodel" and KERAS3:
        model.export(str(path))  # Keras 3's SavedModel: serving signature, no Keras model
    elif fmt == "savedmodel":
        model.save(str(path), save_format="tf")
    else:
        model.save(str(path))
    return path


def has_keras_model(fmt: str) -> bool:
    """Whether this Keras reads the saved format back as a Keras model."""
    return not (KERAS3 and fmt == "savedmodel")


def kernel_shape(layer) -> tuple:
    """A kernel's shape: Keras 2 names a depthwise one ``depthwise_kernel``, Keras 3 not."""
    kernel = getattr(layer, "depthwise_kernel", None)
    return tuple((layer.kernel if kernel is None else kernel).shape)


def sha(path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Every fixture with a Keras model needs this one: it skips without TensorFlow."""
    importorskip_any("tensorflow")
    importorskip_any("tf2onnx")
    return tmp_path_factory.mktemp("keras")


@pytest.fixture(scope="module")
def cnn(folder):
    tf.keras.utils.set_random_seed(0)
    model = keras_cnn()
    randomize(model, seed=1)
    paths = {fmt: save(model, folder, fmt) for fmt in FORMATS}
    data = np.random.default_rng(2).random((48, 28, 28, 1)).astype(np.float32)
    return model, paths, data


@pytest.fixture(scope="module")
def mlp(folder):
    tf.keras.utils.set_random_seed(0)
    model = keras_mlp()
    randomize(model, seed=3)
    weights = model.get_layer("h1").get_weights()
    weights[0][:, :4] = 0.0  # four constant units: ODF2NNA removes them at any epsilon
    model.get_layer("h1").set_weights(weights)
    path = folder / "mlp" / "mlp.keras"
    path.parent.mkdir()
    model.save(str(path))
    data = np.random.default_rng(4).standard_normal((64, 20)).astype(np.float32)
    return model, path, data


def assert_same_outputs(keras_model, onnx_model, feed):
    want = list(run(onnx_model, feed).values())[0]
    got = np.asarray(keras_model(next(iter(feed.values())), training=False))
    scale = max(1.0, float(np.abs(want).max()))
    assert float(np.abs(got - want).max()) <= 1e-4 * scale


# ----------------------------------------------------------------------- conversion


@pytest.mark.parametrize("fmt", FORMATS)
def test_conversion_keeps_keras_names_outputs_and_a_dynamic_batch(cnn, fmt):
    model, paths, data = cnn
    before = sha(paths[fmt])
    proto, loaded = okeras.keras_to_onnx(paths[fmt])
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    # model.export names its one output "output_0": the Keras layer names are not in it
    output = "probs" if has_keras_model(fmt) else "output_0"
    assert [o.name for o in proto.graph.output] == [output]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert max(e.version for e in proto.opset_import if e.domain in ("", "ai.onnx")) >= 13
    got = run(proto, {"image": data})[output]
    np.testing.assert_allclose(got, np.asarray(model(data)), rtol=1e-4, atol=1e-5)
    assert (loaded is not None) == has_keras_model(fmt) and sha(paths[fmt]) == before
    # Flatten's target shape is a constant (Keras 3 computes it from the batch size)
    reshapes = [n for n in proto.graph.node if n.op_type == "Reshape"]
    constants = {init.name for init in proto.graph.initializer}
    assert reshapes and all(n.input[1] in constants for n in reshapes)
    assert not any(n.op_type == "Shape" for n in proto.graph.node)


@pytest.mark.parametrize("via", ["keras", "function"])
def test_both_tf2onnx_converters_prune_into_a_model_the_rebuild_reproduces(cnn, via):
    """tf2onnx's ``from_keras`` (Keras 2, Keras 3 functional models) and ``from_function``
    (the fallback, taken by a Keras 3 Sequential) trace the model apart: each must convert
    the CNN faithfully, and its pruned model must be what the rebuilt Keras CNN computes."""
    model, _, data = cnn
    proto = okeras.model_to_onnx(model, via=via)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probs"]
    got = run(proto, {"image": data})["probs"]
    np.testing.assert_allclose(got, np.asarray(model(data)), rtol=1e-4, atol=1e-5)
    scored = score_model(proto, data, batch_size=16)  # the steps of okeras.ocnna
    result = prune_scored(scored, 40)
    plan = plan_for(scored, result.masks)
    small = rebuild(model, scored.analysis, plan, result.model, scored.feed)
    assert small.get_layer("c1").filters == small.get_layer("c2").filters == kept(8)
    assert small.get_layer("c3").filters == kept(6)
    assert small.get_layer("d1").units == kept(16)
    assert_same_outputs(small, result.model, {"image": data})


def test_a_keras3_sequential_converts_only_through_from_function(mlp):
    """Why the fallback exists: tf2onnx 1.17's ``from_keras`` fails on a Keras 3 Sequential
    (KeyError on its output tensor name); on Keras 2 it converts it."""
    model, _, data = mlp
    want = np.asarray(model(data))
    if KERAS3:
        with pytest.raises(ModelError, match="^tf2onnx cannot convert the Keras model: ") as info:
            okeras.model_to_onnx(model, via="keras")
        assert "\n" not in str(info.value)
    else:
        direct = okeras.model_to_onnx(model, via="keras")
        np.testing.assert_allclose(run(direct, {"features": data})["out"], want, 1e-4, 1e-5)
    proto = okeras.model_to_onnx(model)  # via="auto"
    assert [o.name for o in proto.graph.output] == ["out"]
    np.testing.assert_allclose(run(proto, {"features": data})["out"], want, 1e-4, 1e-5)
    with pytest.raises(ParameterError, match="via must be one of"):
        okeras.model_to_onnx(model, via="torch")


def test_savedmodel_without_keras_metadata_prunes_but_has_no_keras_route(cnn, tmp_path):
    model, _, data = cnn
    tf.saved_model.save(model, str(tmp_path / "raw"))
    proto, loaded = okeras.keras_to_onnx(tmp_path / "raw")
    (name,) = [i.name for i in proto.graph.input]
    assert loaded is None and name == ("inputs" if KERAS3 else "image")  # the signature's
    (output,) = [o.name for o in proto.graph.output]
    np.testing.assert_allclose(
        run(proto, {name: data})[output], np.asarray(model(data)), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ModelError, match="--framework torch") as info:
        okeras.ocnna(tmp_path / "raw", k=40, data=data)
    assert "\n" not in str(info.value)
    pruned, _ = onnxprune.ocnna(proto, k=40, data=data, batch_size=16)
    onnx.checker.check_model(pruned, full_check=True)
    assert run(pruned, {name: data})[output].shape == (len(data), 10)


# ----------------------------------------------------------------------- rebuild


@pytest.mark.parametrize("fmt", FORMATS)
def test_ocnna_rebuilds_the_keras_cnn_with_the_plan_applied_identically(cnn, fmt):
    model, paths, data = cnn
    if not has_keras_model(fmt):  # Keras 3 SavedModel: one line pointing to the torch route
        with pytest.raises(ModelError, match="--framework torch") as info:
            okeras.ocnna(paths[fmt], k=40, data=data, batch_size=16)
        assert "\n" not in str(info.value)
        return
    result = okeras.ocnna(paths[fmt], k=40, data=data, batch_size=16)
    small = result.keras_model
    coupled = kept(8)  # c1 and c2 meet in the residual Add: one group of 8
    assert small.get_layer("c1").filters == coupled
    assert small.get_layer("c2").filters == coupled
    assert small.get_layer("c3").filters == kept(6)
    assert kernel_shape(small.get_layer("dw")) == (3, 3, coupled, 1)
    assert small.get_layer("bn1").gamma.shape == (coupled,)
    positions = 7 * 7  # after two 2x2 poolings; Flatten rows are position-major
    assert small.get_layer("d1").kernel.shape == (positions * (kept(6) + coupled), kept(16))
    assert small.get_layer("bn2").moving_mean.shape == (kept(16),)
    assert small.get_layer("probs").units == 10  # model output: never pruned
    assert small.get_layer("bn_dw").beta.shape == (coupled,)
    # c2 reads pruned channels and has no bias: compensation lands in its folded BN's beta
    beta = small.get_layer("bn_c2").beta.numpy()
    assert not np.isin(beta, model.get_layer("bn_c2").beta.numpy()).all()
    assert small.get_layer("c2").bias is None
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(small, result.model, {"image": data})
    assert result.report["model"] == str(paths[fmt])


def test_reconstructed_weights_reach_the_keras_model(cnn):
    _, paths, data = cnn
    result = okeras.ocnna(paths["keras"], k=40, data=data, batch_size=16, reconstruct=True)
    assert any(row["refit"] for row in result.report["recovery"])
    assert_same_outputs(result.keras_model, result.model, {"image": data})


def test_in_memory_keras_model_without_compensation(cnn):
    model, _, data = cnn
    result = okeras.ocnna(model, k=25, data=data, batch_size=16, compensate=False)
    assert result.keras_model.get_layer("c3").filters == kept(6, 25)
    assert_same_outputs(result.keras_model, result.model, {"image": data})


def test_mlp_sequential_ocnna_and_odf2nna(mlp):
    _, path, data = mlp
    result = okeras.ocnna(path, k=40, data=data)
    assert result.keras_model.get_layer("h1").units == kept(32)
    assert result.keras_model.get_layer("h2").units == kept(16)
    assert_same_outputs(result.keras_model, result.model, {"features": data})
    (pruned,) = okeras.odf2nna_sweep(path, [1e-6], data, bridge=False)
    assert pruned.keras_model.get_layer("h1").units == 32 - 4  # the constant units go
    assert_same_outputs(pruned.keras_model, pruned.model, {"features": data})


def test_a_layer_without_channel_rule_on_a_pruned_path_is_named(mlp):
    layers = tf.keras.layers
    features = layers.Input((20,), name="features")
    x = layers.PReLU(name="slopes")(layers.Dense(16, name="h")(features))
    model = tf.keras.Model(features, layers.Dense(3, name="out")(x))
    randomize(model, seed=5)
    data = mlp[2]
    with pytest.raises(ModelError, match=r"Keras layer 'slopes' \(PReLU\)") as info:
        okeras.ocnna(model, k=40, data=data)
    assert "\n" not in str(info.value)


def test_unnamed_input_and_bn_without_scale_or_center(mlp):
    """Keras 3 names an unnamed Input's tensor and layer apart (only the layer name survives
    the rebuild) and keeps a node per symbolic call: the model's own nodes must be used."""
    layers = tf.keras.layers
    image = layers.Input((12, 12, 3))
    x = layers.Conv2D(8, 3, use_bias=False, name="a")(image)
    x = layers.ReLU()(layers.BatchNormalization(scale=False, center=False, name="bn_a")(x))
    x = layers.Conv2D(8, 3, use_bias=False, name="b")(x)
    x = layers.ReLU()(layers.BatchNormalization(center=False, name="bn_b")(x))
    model = tf.keras.Model(image, layers.Dense(4, name="out")(layers.GlobalMaxPooling2D()(x)))
    if KERAS3:  # another symbolic call: every layer gains a node outside this model
        model(layers.Input((12, 12, 3)))
    randomize(model, seed=6)
    data = np.random.default_rng(7).random((32, 12, 12, 3)).astype(np.float32)
    result = okeras.ocnna(model, k=40, data=data, batch_size=16)
    assert result.keras_model.get_layer("a").filters == kept(8)
    assert result.keras_model.get_layer("b").filters == kept(8)
    assert result.keras_model.get_layer("bn_b").moving_mean.shape == (kept(8),)
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(result.keras_model, result.model, {result.model.graph.input[0].name: data})


def test_sequential_without_input_and_a_depth_multiplier_from_h5(folder):
    """The Keras 2 idiom (``input_shape`` on the first layer, no Input), a DepthwiseConv2D
    with depth_multiplier 2 (output channel 2c + j reads input channel c) and its BN, saved
    as .h5 and read back; reconstruction (refit kernels, on by default) reaches the Keras
    kernels through the depthwise layout."""
    layers = tf.keras.layers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras 3 prefers an Input layer
        model = tf.keras.Sequential(
            [
                layers.Conv2D(6, 3, padding="same", input_shape=(12, 12, 3), name="c"),
                layers.ReLU(name="r1"),
                layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, name="dw"),
                layers.BatchNormalization(name="bn"),
                layers.ReLU(name="r2"),
                layers.Conv2D(8, 1, activation="relu", name="pw"),
                layers.GlobalAveragePooling2D(name="gap"),
                layers.Dense(3, name="out"),
            ],
            name="seq",
        )
        randomize(model, seed=9)
        path = folder / "seq" / "seq.h5"
        path.parent.mkdir()
        model.save(str(path))
    data = np.random.default_rng(10).random((32, 12, 12, 3)).astype(np.float32)
    result = okeras.ocnna(path, k=40, data=data, batch_size=16)
    small = result.keras_model
    assert small.get_layer("c").filters == kept(6)  # one group with the depthwise conv
    assert kernel_shape(small.get_layer("dw")) == (3, 3, kept(6), 2)
    assert small.get_layer("bn").moving_mean.shape == (2 * kept(6),)
    assert small.get_layer("pw").filters == kept(8)
    assert small.get_layer("out").units == 3
    assert any(row["refit"] for row in result.report["recovery"])
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(small, result.model, {result.model.graph.input[0].name: data})


def test_upsampling2d_passes_channels_to_the_next_conv(folder):
    """Keras' UpSampling2D (Tile after tf2onnx in Keras 3, Resize-like ops in Keras 2) does
    not freeze the conv before it; the rebuilt model matches the pruned ONNX model."""
    layers = tf.keras.layers
    image = layers.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(image)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.UpSampling2D(name="up")(x)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="c3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    model = tf.keras.Model(image, layers.Dense(3, name="out")(x))
    randomize(model, seed=4)
    path = folder / "upsampling.keras"
    model.save(str(path))
    data = np.random.default_rng(5).random((24, 16, 16, 3)).astype(np.float32)
    result = okeras.ocnna(path, k=50, data=data, batch_size=8)
    small = result.keras_model
    assert [small.get_layer(n).filters for n in ("c1", "c2", "c3")] == [4, 6, 3]
    assert result.report["frozen"] == [] or all(
        "model output" in entry["reason"] for entry in result.report["frozen"]
    )
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(small, result.model, {"image": data})


def test_a_shared_layer_is_refused_in_one_line(mlp):
    layers = tf.keras.layers
    features = layers.Input((20,), name="features")
    twice = layers.Dense(20, activation="relu", name="twice")
    model = tf.keras.Model(features, layers.Dense(3, name="out")(twice(twice(features))))
    randomize(model, seed=8)
    with pytest.raises(ModelError, match=r"'twice' is called .*\(shared layers") as info:
        okeras.ocnna(model, k=40, data=mlp[2])
    assert "\n" not in str(info.value)


def test_bridged_odf2nna_model_is_refused_in_one_line(mlp):
    _, path, data = mlp
    with pytest.raises(ModelError, match="--no-bridge") as info:
        okeras.odf2nna(path, 1e6, data)  # every hidden unit goes: layers are bridged
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------- fine-tune


def mnist_files(folder, train: int = 300, test: int = 200):
    with np.load(MNIST) as mnist:
        x_train = mnist["X_train"][:train].transpose(0, 2, 3, 1).astype(np.float32) / 255
        x_test = mnist["X_test"][:test].transpose(0, 2, 3, 1).astype(np.float32) / 255
        y_train, y_test = mnist["y_train"][:train], mnist["y_test"][:test]
    paths = {name: folder / f"mnist_{name}.npz" for name in ("dvar", "train", "test")}
    np.savez(paths["dvar"], x=x_train[:64])
    np.savez(paths["train"], x=x_train, y=y_train)
    np.savez(paths["test"], x=x_test, y=y_test)
    return paths


@needs_mnist
def test_finetune_in_keras_exports_a_valid_onnx_model(cnn, folder):
    _, paths, _ = cnn
    files = mnist_files(folder)
    result = okeras.ocnna(paths["keras"], k=40, data=files["dvar"], eval_data=files["test"])
    pruned = result.model
    okeras.finetune_result(result, files["train"], files["test"], epochs=1, batch_size=32)
    tuned = result.model
    onnx.checker.check_model(tuned, full_check=True)
    assert [i.name for i in tuned.graph.input] == [i.name for i in pruned.graph.input]
    assert [o.name for o in tuned.graph.output] == [o.name for o in pruned.graph.output]
    x = np.load(files["test"])["x"][:5]
    assert run(tuned, {"image": x})["probs"].shape == (5, 10)
    assert_same_outputs(result.keras_model, tuned, {"image": x})
    report = result.report
    assert report["finetune"]["framework"] == "keras"
    assert report["finetune"]["epochs_run"] == 1 and report["finetune"]["train_samples"] == 300
    assert 0.0 <= report["accuracy_finetuned"] <= 1.0
    assert report["accuracy_finetuned"] > report["accuracy_after"] - 0.05
    keys = {p.key for p in tuned.metadata_props}
    assert {"onnxprune.method", "onnxprune.source_sha256", "onnxprune.finetune"} <= keys
    again = okeras.ocnna(paths["keras"], k=40, data=files["dvar"])
    okeras.finetune_result(again, files["train"], epochs=1, batch_size=32)  # same seed
    np.testing.assert_array_equal(
        run(again.model, {"image": x})["probs"], run(tuned, {"image": x})["probs"]
    )


SPAMBASE = SHARED_DATA / "spambase.npz"


@pytest.mark.skipif(not SPAMBASE.is_file(), reason=f"no {SPAMBASE}")
@pytest.mark.parametrize("activation", ["sigmoid", "linear"])
def test_binary_classifier_with_one_unit_finetunes_with_binary_cross_entropy(folder, activation):
    """Dense(1, "sigmoid") (or a logit) on Spambase: accuracy thresholds the score and the
    Keras fine-tune uses binary cross-entropy, keeping the final activation."""
    layers = tf.keras.layers
    with np.load(SPAMBASE) as spam:
        x, y = spam["X"], spam["y"]
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    mean, std = x[:3000].mean(0), x[:3000].std(0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    features = layers.Input((57,), name="features")
    hidden = layers.Dense(16, activation="relu", name="h2")(
        layers.Dense(32, activation="relu", name="h1")(features)
    )
    model = tf.keras.Model(features, layers.Dense(1, activation=activation, name="score")(hidden))
    tf.keras.utils.set_random_seed(0)
    loss = tf.keras.losses.BinaryCrossentropy(from_logits=activation == "linear")
    model.compile(optimizer="adam", loss=loss)
    model.fit(x[:3000], y[:3000], epochs=5, batch_size=64, verbose=0)
    path = folder / f"binary_{activation}.keras"
    model.save(str(path))
    train, test = {"x": x[:3000], "y": y[:3000]}, {"x": x[3000:], "y": y[3000:]}
    result = okeras.ocnna(path, k=40, data=x[:500], eval_data=test)
    assert result.report["accuracy_before"] > 0.88
    okeras.finetune_result(result, train, test, epochs=2, batch_size=64)
    assert result.report["finetune"]["task"] == "classification"
    assert result.report["accuracy_finetuned"] > 0.88
    assert result.keras_model.get_layer("score").activation.__name__ == activation
    onnx.checker.check_model(result.model, full_check=True)


# ----------------------------------------------------------------------- CLI


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@needs_mnist
@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_cli_ocnna_keras_end_to_end(cnn, folder, tmp_path, fmt):
    _, paths, _ = cnn
    files = mnist_files(folder)
    before = sha(paths[fmt])
    out, report = tmp_path / "small.onnx", tmp_path / "r.json"
    result = invoke(
        "ocnna", paths[fmt], "--k", 40, "--data", files["dvar"], "--eval", files["test"],
        "--finetune", files["train"], "--framework", "keras", "--epochs", 1,
        "--batch-size", 32, "-o", out, "--report", report,
    )  # fmt: skip
    assert sha(paths[fmt]) == before
    if not has_keras_model(fmt):  # Keras 3 SavedModel: no Keras model to fine-tune
        assert result.exit_code == 3, result.output
        (line,) = result.stderr.strip().splitlines()
        assert "holds no Keras model" in line and "--framework torch" in line
        assert not out.exists() and not report.exists()
        return
    assert result.exit_code == 0, result.output
    tuned = onnx.load(str(out))
    onnx.checker.check_model(tuned, full_check=True)
    assert [i.name for i in tuned.graph.input] == ["image"]
    written = json.loads(report.read_text())
    assert written["finetune"]["framework"] == "keras"
    assert "accuracy_finetuned" in written


@needs_mnist
def test_cli_keras_model_with_the_pytorch_finetune(cnn, folder, tmp_path):
    importorskip_any("torch")
    _, paths, _ = cnn
    files = mnist_files(folder)
    out, report = tmp_path / "torch.onnx", tmp_path / "torch.json"
    result = invoke(
        "ocnna", paths["keras"], "--k", 40, "--data", files["dvar"], "--eval", files["test"],
        "--finetune", files["train"], "--epochs", 1, "--batch-size", 32, "-o", out,
        "--report", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned = onnx.load(str(out))
    onnx.checker.check_model(tuned, full_check=True)
    assert [i.name for i in tuned.graph.input] == ["image"]
    assert [o.name for o in tuned.graph.output] == ["probs"]
    written = json.loads(report.read_text())
    assert written["finetune"].get("framework", "torch") == "torch"
    assert 0.0 <= written["accuracy_finetuned"] <= 1.0


def test_cli_odf2nna_keras_and_plain_pruning_of_an_h5(mlp, cnn, tmp_path):
    _, path, data = mlp
    labels = (data[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "mlp.npz", x=data, y=labels)
    result = invoke(
        "odf2nna", path, "--epsilon", 1e-6, "--data", tmp_path / "mlp.npz",
        "--finetune", tmp_path / "mlp.npz", "--framework", "keras", "--no-bridge",
        "--epochs", 1, "-o", tmp_path / "mlp.onnx", "--report", tmp_path / "mlp.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "mlp.json").read_text())["finetune"]["framework"] == "keras"
    _, paths, images = cnn
    np.savez(tmp_path / "dvar.npz", x=images)
    out = tmp_path / "cnn.onnx"
    result = invoke("ocnna", paths["h5"], "--data", tmp_path / "dvar.npz", "-o", out)
    assert result.exit_code == 0, result.output
    assert onnx.load(str(out)).graph.input[0].name == "image"


def test_corrupt_keras_file_is_one_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    before = sha(bad)
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3), np.float32))
    for extra in ([], ["--framework", "keras", "--finetune", tmp_path / "d.npz"]):
        result = CliRunner().invoke(
            main, [str(a) for a in ["ocnna", bad, "--data", tmp_path / "d.npz", *extra]]
        )
        assert result.exit_code == 3, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        if HAS_TF:
            assert (
                lines[0].startswith("error: cannot convert ") and "not a readable Keras" in lines[0]
            )
        else:
            assert "pip install 'onnxprune[keras]'" in lines[0]
    assert sha(bad) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.keras", "d.npz"]


def test_framework_keras_needs_a_keras_model(tmp_path, mlp):
    _, path, data = mlp
    proto, _ = okeras.keras_to_onnx(path)
    onnx.save(proto, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=data, y=np.zeros(len(data), np.int64))
    result = CliRunner().invoke(
        main,
        ["ocnna", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
         "--framework", "keras", "--finetune", str(tmp_path / "d.npz")],
    )  # fmt: skip
    assert result.exit_code == 3
    assert result.stderr.strip().splitlines() == [
        f"error: the Keras route needs a Keras model (.keras, .h5 or a SavedModel directory): "
        f"{tmp_path / 'm.onnx'}"
    ]
