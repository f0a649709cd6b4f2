"""Fine-tune a rebuilt (pruned) Keras model with Keras ``fit``, then export it to ONNX again.

Mirrors ``finetune/round_trip.py``: sparse cross-entropy for integer labels (on the
probabilities when the model ends in softmax, on logits otherwise), MSE for float
targets; Adam by default; one progress line per epoch; the best epoch by the eval metric
(training loss without eval data) is kept; a seed makes it repeatable (TF op determinism).
Batches are cut from the stored arrays and cast on the fly, so uint8 images or a
memory-mapped ``.npy`` never need a float copy in RAM. The exported model keeps the
pruned model's input/output names and passes the same ``verify`` as a pruned model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnx

from .. import progress
from ..errors import DataError, ParameterError
from ..io import DataLike, Dataset, input_specs, load_data
from ..labels import labelled_for, predicted_classes
from ..metrics import count_params, evaluate
from ..report import carry_metadata
from ..verify import verify
from .convert import model_to_onnx, tensorflow
from .rebuild import check_equal

METADATA_KEY = "onnxprune.finetune"
OPTIMIZERS = ("adam", "sgd")
EVAL_BATCH_SIZE = 256


def _activation(model: Any) -> str:
    """The name of the first output's final activation ("softmax", "sigmoid", "linear")."""
    layer = model.outputs[0]._keras_history[0]
    if type(layer).__name__ == "Softmax":
        return "softmax"
    return getattr(getattr(layer, "activation", None), "__name__", "")


def ends_with_softmax(model: Any) -> bool:
    """True when the first output comes out of a softmax (train on probabilities then)."""
    return _activation(model) == "softmax"


def _check(epochs: int, lr: float, batch_size: int, optimizer: str) -> None:
    if epochs < 1:
        raise ParameterError(f"epochs must be at least 1, got {epochs}")
    if not lr > 0:
        raise ParameterError(f"learning rate must be > 0, got {lr}")
    if batch_size < 1:
        raise ParameterError(f"batch size must be at least 1, got {batch_size}")
    if optimizer not in OPTIMIZERS:
        raise ParameterError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def _inputs(dataset: Dataset, index: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(dataset.arrays[s.name][index], s.dtype) for s in dataset.specs]


def _loss(model: Any, task: str, labels: np.ndarray) -> Any:
    tf, _ = tensorflow()
    if task == "regression":
        return tf.keras.losses.MeanSquaredError()
    classes = int(tuple(model.outputs[0].shape)[-1] or 0)
    if len(tuple(model.outputs[0].shape)) != 2 or classes < 1:
        raise DataError("integer labels need a model with (N, classes) outputs")
    valid = max(2, classes)  # one unit: a binary classifier
    if labels.size and (int(labels.max()) >= valid or int(labels.min()) < 0):
        raise DataError(f"labels must be class indices in [0, {valid}), got {labels.max()}")
    if classes == 1:
        binary = tf.keras.losses.BinaryCrossentropy(from_logits=_activation(model) != "sigmoid")

        def binary_cross_entropy(y_true: Any, y_pred: Any) -> Any:
            """Keras 2 wants (N, 1) labels for (N, 1) scores; ours are (N,)."""
            return binary(tf.reshape(tf.cast(y_true, y_pred.dtype), tf.shape(y_pred)), y_pred)

        return binary_cross_entropy
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_with_softmax(model))


def _training_data(dataset: Dataset, batch_size: int, seed: int, epoch: int) -> Any:
    """One epoch of shuffled batches (the order depends only on seed and epoch)."""
    tf, _ = tensorflow()
    labels = np.asarray(dataset.labels)
    order = np.random.default_rng([seed, epoch]).permutation(len(dataset))

    def batches():
        for start in range(0, len(order), batch_size):
            index = np.sort(order[start : start + batch_size])  # sorted: memory maps read fast
            xs = _inputs(dataset, index)
            yield (xs[0] if len(xs) == 1 else tuple(xs)), labels[index]

    specs = [tf.TensorSpec((None, *s.shape[1:]), tf.as_dtype(s.dtype)) for s in dataset.specs]
    y_spec = tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype))
    x_spec = specs[0] if len(specs) == 1 else tuple(specs)
    steps = -(-len(order) // batch_size)  # a known length: Keras 3 warns at the end otherwise
    data = tf.data.Dataset.from_generator(batches, output_signature=(x_spec, y_spec))
    return data.apply(tf.data.experimental.assert_cardinality(steps))


def _measure(model: Any, dataset: Dataset, task: str, loss: Any) -> tuple[float, float]:
    """(accuracy or MSE, mean loss) of the Keras model on a labelled dataset."""
    labels = np.asarray(dataset.labels)
    threshold = 0.5 if _activation(model) == "sigmoid" else 0.0  # for one binary unit
    metric_sum = loss_sum = 0.0
    for start in range(0, len(dataset), EVAL_BATCH_SIZE):
        index = np.arange(start, min(start + EVAL_BATCH_SIZE, len(dataset)))
        xs = _inputs(dataset, index)
        out = model(xs[0] if len(xs) == 1 else xs, training=False)
        out = out[0] if isinstance(out, list | tuple) else out
        y = labels[index]
        loss_sum += float(loss(y, out)) * len(index)
        out = np.asarray(out)
        if task == "classification":
            predicted = predicted_classes(out.reshape(len(index), -1), threshold)
            metric_sum += float((predicted == y.reshape(-1)).sum())
        else:
            error = out.reshape(y.shape).astype(np.float64) - y
            metric_sum += float(np.square(error).mean()) * len(index)
    return metric_sum / len(dataset), loss_sum / len(dataset)


def _reseed(model: Any, seed: int) -> None:
    """Keras 3 layers draw random numbers (Dropout, GaussianNoise, ...) from a seed state
    they pick when they are built: set each one from ``seed`` so a seeded fine-tune repeats
    whenever the model was made. (Keras 2's random ops follow the global seed instead.)"""
    states = [
        v
        for v in getattr(model, "variables", [])
        if str(getattr(v, "name", "")).split("/")[-1].split(":")[0] == "seed_generator_state"
    ]
    for index, state in enumerate(states):
        start = int(np.random.default_rng([seed, index]).integers(1, 10**9))
        dtype = getattr(state.dtype, "as_numpy_dtype", state.dtype)
        state.assign(np.asarray([start, 0], dtype=np.dtype(dtype)))


def _better(score: float, loss: float, best: float, best_loss: float, higher: bool) -> bool:
    if score != best:
        return score > best if higher else score < best
    return loss < best_loss


def finetune_keras(
    model: Any,
    reference: onnx.ModelProto,
    train_data: DataLike,
    eval_data: DataLike | None = None,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    momentum: float = 0.0,
    seed: int = 0,
) -> tuple[onnx.ModelProto, dict, Any]:
    """Train ``model`` (in place) and return ``(ONNX model, report, model)``.

    ``reference`` is the pruned ONNX model ``model`` reproduces: data is checked against
    its inputs and the export must keep its interface.
    """
    _check(epochs, lr, batch_size, optimizer)
    tf, _ = tensorflow()
    specs = input_specs(reference)
    train_set = load_data(train_data, specs, require_labels=True)
    eval_set = None if eval_data is None else load_data(eval_data, specs, require_labels=True)
    task, (train_set, eval_set) = labelled_for(reference, train_set, eval_set)
    labels = np.asarray(train_set.labels)
    settings = {
        "framework": "keras",
        "tensorflow": tf.__version__,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "momentum": momentum,
        "seed": seed,
    }
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    _reseed(model, seed)
    loss = _loss(model, task, labels)
    if optimizer == "adam":
        opt = tf.keras.optimizers.Adam(learning_rate=lr)
    else:
        opt = tf.keras.optimizers.SGD(learning_rate=lr, momentum=momentum)
    model.compile(optimizer=opt, loss=loss)
    metric = "train_loss"
    if eval_set is not None:
        metric = "accuracy" if task == "classification" else "mse"
    higher = metric == "accuracy"
    progress.info(
        f"fine-tuning in Keras: {epochs} epoch(s) on {len(train_set)} rows, {optimizer} "
        f"lr={lr:g}, batch {batch_size}, selecting by {metric}"
    )
    started = time.perf_counter()
    history: list[dict] = []
    best = best_loss = None
    best_epoch, best_weights = 0, None
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        batches = _training_data(train_set, batch_size, seed, epoch)  # shuffled by seed
        fitted = model.fit(batches, epochs=1, verbose=0, shuffle=False)
        train_loss = float(fitted.history["loss"][-1])
        value = eval_loss = None
        if eval_set is not None:
            value, eval_loss = _measure(model, eval_set, task, loss)
        score = train_loss if value is None else value
        ref_loss = train_loss if eval_loss is None else eval_loss
        if best is None or _better(score, ref_loss, best, best_loss, higher):
            best, best_loss, best_epoch = score, ref_loss, epoch
            best_weights = [w.copy() for w in model.get_weights()]
        history.append(
            {"epoch": epoch, "loss": train_loss, "eval_metric": value, "eval_loss": eval_loss}
        )
        shown = "" if value is None else f" {metric} {value:.6g}"
        progress.info(
            f"epoch {epoch}/{epochs} loss {train_loss:.6g}{shown} "
            f"({time.perf_counter() - epoch_start:.2f}s)" + (" *" if best_epoch == epoch else "")
        )
    model.set_weights(best_weights)
    train_s = time.perf_counter() - started

    names = ([s.name for s in specs], [v.name for v in reference.graph.output])
    tuned = model_to_onnx(model, names=names)
    feed = next(train_set.batches(min(8, len(train_set))))
    verify(tuned, reference, feed)
    check_equal(model, tuned, feed)
    carry_metadata(tuned, reference)
    tuned.metadata_props.add(key=METADATA_KEY, value=repr(settings | {"best": best_epoch}))
    report: dict = {
        "finetune": dict(
            settings,
            task=task,
            train_samples=len(train_set),
            processes=1,
            best_epoch=best_epoch,
            epochs_run=len(history),
            metric=metric,
            best_metric=float(best),
            history=history,
            train_s=train_s,
            params=count_params(tuned),
        )
    }
    if eval_set is not None:
        for name, value in evaluate(tuned, eval_set, batch_size).items():
            report[f"{name}_finetuned"] = value
    return tuned, report, model
