"""The fine-tune round trip as users run it: pruned ONNX -> torch -> train -> ONNX.

Real models and data only (the MNIST sample CNN pruned at k = 40, Iris, Pole). Every
fine-tuned model is checked by onnx.checker and run in onnxruntime.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from builders import check
from cli_runs import invoke, sha
from onnx import TensorProto, helper, numpy_helper
from paths import SHARED_DATA

import onnxprune
from onnxprune.errors import ParameterError
from onnxprune.finetune.round_trip import _train_data, finetune
from onnxprune.io import input_specs, load_data
from onnxprune.metrics import evaluate
from onnxprune.verify import run

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
MODEL = SAMPLES / "mnist_cnn.onnx"
TRAIN_ROWS = 192
EVAL_ROWS = 256


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models train faster on one thread, above all on a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mnist() -> dict[str, dict[str, np.ndarray]]:
    dvar, train, test = (np.load(SAMPLES / f"mnist_{n}.npz") for n in ("dvar", "train", "test"))
    return {
        "dvar": {"x": dvar["x"][:64]},
        "train": {"x": train["x"][:TRAIN_ROWS], "y": train["y"][:TRAIN_ROWS]},
        "eval": {"x": test["x"][:EVAL_ROWS], "y": test["y"][:EVAL_ROWS]},
    }


@pytest.fixture(scope="module")
def pruned(mnist) -> onnx.ModelProto:
    # sliced only (no refit), so the fine-tune has accuracy to win back
    return onnxprune.ocnna(str(MODEL), k=40, data=mnist["dvar"], reconstruct=False).model


@pytest.fixture(scope="module")
def tuned(pruned, mnist) -> tuple[onnx.ModelProto, dict]:
    return finetune(pruned, mnist["train"], mnist["eval"], epochs=2, measure_start=True)


def mlp_model(features: int, outputs: int, opset: int, softmax: bool, seed: int = 0):
    """Gemm -> Relu -> Gemm (-> Softmax) with random weights, written with onnx.helper."""
    rng = np.random.default_rng(seed)
    hidden = 16
    weights = {
        "w1": rng.normal(0, 1 / np.sqrt(features), (hidden, features)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0, 1 / np.sqrt(hidden), (outputs, hidden)),
        "b2": np.zeros(outputs),
    }
    last = "probs" if softmax else "out"
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["out" if not softmax else "z"], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", outputs])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def batch_dim(value: onnx.ValueInfoProto) -> onnx.TensorShapeProto.Dimension:
    return value.type.tensor_type.shape.dim[0]


# ----------------------------------------------------------------------------- API


def test_exported_model_keeps_interface_dynamic_batch_and_opset(tuned, pruned) -> None:
    model, _ = tuned
    check(model)
    assert [v.name for v in model.graph.input] == [v.name for v in pruned.graph.input]
    assert [v.name for v in model.graph.output] == [v.name for v in pruned.graph.output]
    assert batch_dim(model.graph.input[0]).dim_param
    assert batch_dim(model.graph.output[0]).dim_param
    assert model.opset_import[0].version == 17  # max(original 17, 13)
    for rows in (3, 7):
        x = np.random.default_rng(rows).uniform(0, 255, (rows, 1, 28, 28)).astype(np.float32)
        assert run(model, {"input": x})["logits"].shape == (rows, 10)
    keys = {p.key for p in model.metadata_props}
    assert "onnxprune.finetune" in keys


def test_report_has_history_best_epoch_and_onnx_measured_accuracy(tuned, pruned, mnist) -> None:
    model, report = tuned
    eval_set = load_data(mnist["eval"], input_specs(model), require_labels=True)
    measured = evaluate(model, eval_set)["accuracy"]
    assert report["accuracy_finetuned"] == measured
    start = report["finetune"]["start"]["accuracy"]
    assert start == evaluate(pruned, eval_set)["accuracy"]
    assert measured > start + 0.3  # k = 40 without retraining is near chance on MNIST
    history = report["finetune"]["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    best = max(history, key=lambda r: (r["eval_metric"], -r["eval_loss"]))
    assert report["finetune"]["best_epoch"] == best["epoch"]
    assert abs(best["eval_metric"] - measured) <= 1 / EVAL_ROWS  # torch and onnxruntime agree
    assert report["finetune"]["params"] == onnxprune.metrics.count_params(model)


def test_same_seed_gives_byte_identical_model_and_another_seed_does_not(
    tuned, pruned, mnist
) -> None:
    again, _ = finetune(pruned, mnist["train"], mnist["eval"], epochs=2)
    other, _ = finetune(pruned, mnist["train"], mnist["eval"], epochs=2, seed=1)
    first = tuned[0].SerializeToString()
    assert again.SerializeToString() == first
    assert other.SerializeToString() != first


def test_cosine_warmup_is_recorded_deterministic_and_changes_the_model(tuned, pruned, mnist):
    options = dict(epochs=2, schedule="cosine", warmup=0.25)
    first, report = finetune(pruned, mnist["train"], mnist["eval"], **options)
    again, _ = finetune(pruned, mnist["train"], mnist["eval"], **options)
    assert first.SerializeToString() == again.SerializeToString()
    assert first.SerializeToString() != tuned[0].SerializeToString()  # constant lr differs
    settings = report["finetune"]
    assert settings["schedule"] == "cosine" and settings["warmup"] == 0.25
    lrs = [row["lr"] for row in settings["history"]]
    # 3 steps an epoch, 2 of warm-up: epoch 1 ends at the peak, epoch 2 at step 3 of 4 of the cosine
    assert lrs == pytest.approx([1e-3, 1e-3 * 0.5 * (1 + math.cos(0.75 * math.pi))])
    assert [row["lr"] for row in tuned[1]["finetune"]["history"]] == [1e-3, 1e-3]
    meta = {p.key: p.value for p in first.metadata_props}["onnxprune.finetune"]
    assert "'schedule': 'cosine'" in meta and "'warmup': 0.25" in meta


def test_softmax_classifier_at_old_opset_trains_on_logits_and_keeps_softmax() -> None:
    data = np.load(SHARED_DATA / "iris.npz")
    x, y = data["X"], data["y"]
    model = mlp_model(4, 3, opset=11, softmax=True)
    tuned, report = finetune(
        model, {"x": x, "y": y}, {"x": x, "y": y}, epochs=40, lr=2e-2, batch_size=16
    )
    check(tuned)
    assert tuned.opset_import[0].version == 13  # raised to the stated minimum
    assert tuned.graph.node[-1].op_type == "Softmax"
    probs = run(tuned, {"x": x})["probs"]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert report["accuracy_finetuned"] >= 0.9


def test_regression_reports_mse_and_improves_it() -> None:
    data = np.load(SHARED_DATA / "pole.npz")
    x = data["X"][:1500]
    y = ((data["y"][:1500] - data["y"].mean()) / data["y"].std()).astype(np.float32)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    model = mlp_model(x.shape[1], 1, opset=13, softmax=False)
    train, held = {"x": x[:1200], "y": y[:1200]}, {"x": x[1200:], "y": y[1200:]}
    tuned, report = finetune(model, train, held, epochs=5, lr=1e-2, measure_start=True)
    check(tuned)
    assert "accuracy_finetuned" not in report and report["finetune"]["metric"] == "mse"
    assert report["mse_finetuned"] < 0.8 * report["finetune"]["start"]["mse"]


def test_memory_mapped_inputs_are_trained_from_the_map(tmp_path, mnist) -> None:
    np.save(tmp_path / "x.npy", mnist["train"]["x"])
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    specs = input_specs(onnx.load(str(MODEL)))
    dataset = load_data({"x": mapped, "y": mnist["train"]["y"]}, specs, require_labels=True)
    arrays = _train_data(dataset).arrays
    assert arrays[0].dtype == np.uint8  # cast per batch, not as a float32 copy
    assert np.shares_memory(arrays[0], mapped)


def test_bad_options_fail_before_any_work(pruned, mnist) -> None:
    for options in (
        {"epochs": 0},
        {"lr": 0.0},
        {"optimizer": "lbfgs"},
        {"momentum": -1.0},
        {"schedule": "linear"},
        {"warmup": 1.0},
        {"warmup": -0.1},
    ):
        with pytest.raises(ParameterError):
            finetune(pruned, "does-not-exist.npz", **options)
    with pytest.raises(ParameterError):
        finetune(pruned, mnist["train"], device="tpu")


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def workdir(tmp_path, pruned, mnist) -> Path:
    onnx.save(pruned, str(tmp_path / "pruned.onnx"))
    np.savez(tmp_path / "train.npz", **mnist["train"])
    np.savez(tmp_path / "eval.npz", **mnist["eval"])
    np.save(tmp_path / "x.npy", mnist["train"]["x"])
    np.save(tmp_path / "y.npy", mnist["train"]["y"])
    return tmp_path


def test_cli_prints_epochs_writes_report_and_keeps_provenance(workdir) -> None:
    before = sha(workdir / "pruned.onnx")
    result = invoke(
        "finetune",
        workdir / "pruned.onnx",
        "--train",
        workdir / "train.npz",
        "--eval",
        workdir / "eval.npz",
        "--epochs",
        2,
        "--optimizer",
        "sgd",
        "--lr",
        0.01,
        "--momentum",
        0.9,
        "--report",
        workdir / "ft.json",
    )
    assert result.exit_code == 0, result.output
    assert sha(workdir / "pruned.onnx") == before
    for epoch in (1, 2):
        line = next(ln for ln in result.stderr.splitlines() if ln.startswith(f"epoch {epoch}/2"))
        assert " loss " in line and " accuracy " in line
    assert "accuracy_finetuned: " in result.stdout and "(before: " in result.stdout
    report = json.loads((workdir / "ft.json").read_text())
    assert report["finetune"]["optimizer"] == "sgd" and report["finetune"]["momentum"] == 0.9
    tuned = onnx.load(str(workdir / "pruned.finetuned.onnx"))
    check(tuned)
    keys = [p.key for p in tuned.metadata_props]
    assert len(keys) == len(set(keys))
    assert {"onnxprune.method", "onnxprune.source_sha256", "onnxprune.finetune"} <= set(keys)


def test_cli_schedule_and_warmup_reach_the_trainer(workdir) -> None:
    result = invoke(
        "finetune",
        workdir / "pruned.onnx",
        "--train",
        workdir / "train.npz",
        "--epochs",
        2,
        "--optimizer",
        "adamw",
        "--weight-decay",
        5e-4,
        "--schedule",
        "cosine",
        "--warmup",
        0.1,
        "--report",
        workdir / "cos.json",
        "-o",
        workdir / "cos.onnx",
    )
    assert result.exit_code == 0, result.output
    assert "adamw lr=0.001 (cosine, warm-up 10% (1 steps))" in result.stderr
    settings = json.loads((workdir / "cos.json").read_text())["finetune"]
    assert (settings["optimizer"], settings["schedule"], settings["warmup"]) == (
        "adamw",
        "cosine",
        0.1,
    )
    assert settings["history"][0]["lr"] > settings["history"][1]["lr"] > 0
    check(onnx.load(str(workdir / "cos.onnx")))


def test_cli_trains_from_a_memory_mapped_npy_and_falls_back_from_cuda(workdir) -> None:
    result = invoke(
        "finetune",
        workdir / "pruned.onnx",
        "--train",
        workdir / "x.npy",
        "--train-labels",
        workdir / "y.npy",
        "--epochs",
        1,
        "--device",
        "cuda",
        "-o",
        workdir / "mm.onnx",
    )
    assert result.exit_code == 0, result.output
    check(onnx.load(str(workdir / "mm.onnx")))
    if not torch.cuda.is_available():
        notices = [ln for ln in result.stderr.splitlines() if "CUDA" in ln]
        assert len(notices) == 1 and "CPU" in notices[0]


def test_cli_trains_from_an_image_folder(workdir, mnist) -> None:
    from PIL import Image

    for index, (image, label) in enumerate(zip(mnist["train"]["x"][:60], mnist["train"]["y"])):
        folder = workdir / "images" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / f"{index}.png")
    result = invoke(
        "finetune",
        workdir / "pruned.onnx",
        "--train",
        workdir / "images",
        "--epochs",
        1,
        "-o",
        workdir / "img.onnx",
    )
    assert result.exit_code == 0, result.output
    check(onnx.load(str(workdir / "img.onnx")))
    assert "training 1 epoch(s) on 60 rows" in result.stderr


@pytest.mark.parametrize(
    "extra, code, word",
    [
        (["--train", "train.npz", "--train-labels", "y.npy"], 4, "--train-labels"),
        (["--train", "x.npy", "--train-labels", "y_short.npy"], 4, "labels"),
        (["--train", "x.npy"], 4, "--train-labels"),
        (["--train", "train.npz", "--momentum", "-1"], 2, "momentum"),
        (["--train", "train.npz", "--epochs", "0"], 2, "epochs"),
        (["--train", "train.npz", "--warmup", "1.5"], 2, "warmup"),
        (["--train", "train.npz", "--warmup", "-0.1"], 2, "warmup"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(workdir, extra, code, word) -> None:
    np.save(workdir / "y_short.npy", np.zeros(5, dtype=np.int64))
    args = [workdir / a if a.endswith((".npz", ".npy")) else a for a in extra]
    result = invoke("finetune", workdir / "pruned.onnx", *args, "-o", workdir / "out.onnx")
    assert result.exit_code == code, result.output
    assert word in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (workdir / "out.onnx").exists()


def test_prune_and_finetune_twice_gives_byte_identical_files(tmp_path, mnist) -> None:
    shutil.copy(MODEL, tmp_path / "model.onnx")
    np.savez(tmp_path / "dvar.npz", **mnist["dvar"])
    np.savez(tmp_path / "train.npz", **mnist["train"])
    digests = []
    for name in ("a", "b"):
        result = invoke(
            "ocnna",
            tmp_path / "model.onnx",
            "--data",
            tmp_path / "dvar.npz",
            "--finetune",
            tmp_path / "train.npz",
            "--optimizer",
            "sgd",
            "--lr",
            0.01,
            "-o",
            tmp_path / f"{name}.onnx",
            "--report",
            tmp_path / f"{name}.json",
            "--quiet",
        )
        assert result.exit_code == 0, result.output
        check(onnx.load(str(tmp_path / f"{name}.onnx")))
        digests.append(sha(tmp_path / f"{name}.onnx"))
    assert digests[0] == digests[1]
    markdown = (tmp_path / "a.md").read_text()
    assert "## Fine-tune" in markdown and "| 1 * |" in markdown and "sgd lr 0.01" in markdown
