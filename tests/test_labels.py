"""Labels in the forms users bring them: int64 classes, one-hot rows, classes stored as
floats, regression targets; and one clear line when they fit none of them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_runs import SAMPLES, invoke

from onnxprune.errors import DataError
from onnxprune.io import input_specs, load_data
from onnxprune.labels import is_one_hot, labelled_for, resolve_labels
from onnxprune.metrics import evaluate

CLASSES = np.array([3, 0, 9, 3, 1])


def test_integer_labels_are_classes_as_they_are():
    task, labels = resolve_labels(CLASSES, 10)
    assert task == "classification"
    assert labels is CLASSES


def test_one_hot_rows_become_class_indices():
    one_hot = np.eye(10, dtype=np.float32)[CLASSES]
    assert is_one_hot(one_hot)
    task, labels = resolve_labels(one_hot, 10)
    assert task == "classification"
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, CLASSES)


def test_boolean_labels_are_classes_zero_and_one():
    task, labels = resolve_labels(np.array([True, False, True]), 2)
    assert task == "classification"
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 1]


def test_whole_floats_index_a_multi_column_output():
    task, labels = resolve_labels(CLASSES.astype(np.float32), 10)
    assert task == "classification"
    np.testing.assert_array_equal(labels, CLASSES)


@pytest.mark.parametrize(
    ("labels", "width"),
    [
        (np.array([0.5, 1.0, 2.0]), 1),  # targets of a one-output regressor
        (np.array([1.0, 2.0, 3.0]), 1),  # whole numbers, but one output: still targets
        (np.array([[0.2, 0.8], [0.5, 0.5]]), 2),  # soft targets are not one-hot
    ],
)
def test_float_targets_of_a_regressor_stay_targets(labels, width):
    task, kept = resolve_labels(labels, width)
    assert task == "regression"
    assert kept is labels


def test_labels_that_fit_no_reading_name_both_shapes():
    with pytest.raises(DataError, match=r"1 value\(s\) per sample .* first output has 10"):
        resolve_labels(np.array([0.5, 12.0]), 10)  # not whole / out of range for 10 classes


def mnist_subset(count: int = 300) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    data = np.load(SAMPLES / "mnist_test.npz")
    return onnx.load(SAMPLES / "mnist_cnn.onnx"), data["x"][:count], data["y"][:count]


@pytest.mark.parametrize("form", ["one_hot", "float"])
def test_evaluate_gives_the_same_accuracy_for_every_form_of_the_classes(form):
    model, x, y = mnist_subset()
    specs = input_specs(model)
    reference = evaluate(model, load_data({"x": x, "y": y}, specs))
    other = np.eye(10, dtype=np.float32)[y] if form == "one_hot" else y.astype(np.float64)
    assert evaluate(model, load_data({"x": x, "y": other}, specs)) == reference
    assert 0.9 < reference["accuracy"] <= 1.0


def test_labelled_for_leaves_the_callers_dataset_alone():
    model, x, y = mnist_subset(64)
    dataset = load_data({"x": x, "y": np.eye(10, dtype=np.float32)[y]}, input_specs(model))
    task, (resolved,) = labelled_for(model, dataset)
    assert task == "classification"
    np.testing.assert_array_equal(resolved.labels, y)
    assert dataset.labels.shape == (64, 10)


def test_cli_finetunes_on_one_hot_labels_as_classes(tmp_path):
    model, x, y = mnist_subset(256)
    np.savez(tmp_path / "train.npz", x=x, y=np.eye(10, dtype=np.float32)[y])
    result = invoke(
        "ocnna", SAMPLES / "mnist_cnn.onnx", "--k", 40, "--data", tmp_path / "train.npz",
        "--eval", tmp_path / "train.npz", "--finetune", tmp_path / "train.npz", "--epochs", 1,
        "-o", tmp_path / "out.onnx", "--report", tmp_path / "report.json", "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["finetune"]["task"] == "classification"
    assert 0.0 <= report["accuracy_finetuned"] <= 1.0
    assert "mse_after" not in report


def test_cli_refuses_targets_that_do_not_fit_the_output_in_one_line(tmp_path):
    _, x, _ = mnist_subset(64)
    np.savez(tmp_path / "eval.npz", x=x, y=np.linspace(0, 1, 64))
    result = invoke(
        "ocnna", SAMPLES / "mnist_cnn.onnx", "--k", 40, "--data", tmp_path / "eval.npz",
        "--eval", tmp_path / "eval.npz", "-o", tmp_path / "out.onnx", "--quiet",
    )  # fmt: skip
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "first output has 10" in lines[0], result.output
    assert not (tmp_path / "out.onnx").exists()
