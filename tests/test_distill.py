"""`--distill EPOCHS`: after the refit, the pruned model is trained on unlabelled D_var
towards the original's layer outputs. The graph stays the same (only initializer values
change), layer errors fall, runs repeat bit for bit, and misuse stops in one line."""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
import torch
from builders import check
from cli_runs import SAMPLES, invoke, mnist_workdir

import onnxprune
from onnxprune.errors import DataError, ModelError, ParameterError
from onnxprune.finetune.distill import taps
from onnxprune.recovery import kept_outputs

MODEL = SAMPLES / "mnist_cnn.onnx"


@pytest.fixture(scope="module")
def dvar() -> np.ndarray:
    return np.load(SAMPLES / "mnist_dvar.npz")["x"][:128]


@pytest.fixture(scope="module")
def runs(dvar):
    """Compensated only (no refit), with and without 3 epochs of distillation: far from the
    teacher, so every epoch has something to gain."""
    options = {"k": 60, "data": dvar, "reconstruct": False, "batch_size": 16}
    return onnxprune.ocnna(MODEL, **options), onnxprune.ocnna(MODEL, **options, distill=3)


def structure(model: onnx.ModelProto) -> tuple[list, list]:
    nodes = [(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    inits = [(i.name, list(i.dims), i.data_type) for i in model.graph.initializer]
    return nodes, inits


def test_distill_keeps_the_graph_and_changes_only_weights(runs):
    plain, distilled = runs
    assert structure(distilled.model) == structure(plain.model)
    check(distilled.model)
    before = {i.name: onnx.numpy_helper.to_array(i) for i in plain.model.graph.initializer}
    after = {i.name: onnx.numpy_helper.to_array(i) for i in distilled.model.graph.initializer}
    changed = [name for name in before if not np.array_equal(before[name], after[name])]
    assert changed  # the weights were trained


def test_distill_lowers_the_layer_errors_on_dvar(runs):
    plain, distilled = runs
    before = {row["name"]: row["error_after"] for row in plain.report["recovery"]}
    after = {row["name"]: row["error_after"] for row in distilled.report["recovery"]}
    assert before.keys() == after.keys()
    assert np.mean(list(after.values())) < 0.95 * np.mean(list(before.values()))
    assert all(row["distilled"] for row in distilled.report["recovery"])


def test_an_epoch_worse_than_the_refit_gives_the_refit_back(dvar):
    """A step size far too large ruins the epoch; the refit weights come back bit for bit."""
    options = {"k": 40, "data": dvar[:64]}
    plain = onnxprune.ocnna(MODEL, **options)
    ruined = onnxprune.ocnna(MODEL, **options, distill=1, distill_lr=1.0)
    assert ruined.report["distill"]["best_epoch"] == 0
    assert ruined.report["distill"]["loss"][1] > ruined.report["distill"]["loss"][0]
    assert ruined.model.graph.SerializeToString() == plain.model.graph.SerializeToString()


def test_distill_report(runs):
    report = runs[1].report
    info = report["distill"]
    assert info["epochs"] == 3 and len(info["loss"]) == 4  # D_var loss before, per epoch
    assert info["best_epoch"] == int(np.argmin(info["loss"])) > 0
    assert info["samples"] == 128 and info["mixup"] is True  # float model input: mixed pairs
    assert info["layers"] == 6  # 4 Conv + 2 Gemm outputs; the model output is the last Gemm's
    assert report["parameters"]["distill"] == 3
    assert report["timings"]["distill_s"] > 0


def test_timings_count_each_step_once(dvar):
    """The steps' seconds add up to at most the call's: distillation is not also counted
    in rewrite_verify_s."""
    started = time.perf_counter()
    result = onnxprune.ocnna(MODEL, k=40, data=dvar[:64], distill=2)
    elapsed = time.perf_counter() - started
    timings = result.report["timings"]
    assert {"recover_s", "distill_s", "rewrite_verify_s"} <= timings.keys()
    assert sum(timings.values()) <= elapsed
    assert timings["rewrite_verify_s"] < timings["distill_s"]


def test_taps_pair_kept_channels_with_the_original(dvar):
    scored = onnxprune.ocnna(MODEL, k=40, data=dvar, reconstruct=False)
    analysis = onnxprune.pipeline.prepare(MODEL, dvar)[1]
    kept = kept_outputs(analysis, scored.masks)
    found = {tap.name: tap for tap in taps(analysis.model, scored.model, kept)}
    conv = found["/features/features.0/Conv_output_0"]
    assert conv.axis == 1 and len(conv.index) == 10  # 16 filters, 6 dropped
    logits = found["logits"]
    assert logits.index is None and logits.axis == -1  # the model output keeps every class


def test_distill_is_repeatable(dvar):
    first = onnxprune.ocnna(MODEL, k=40, data=dvar[:64], distill=1, seed=3).model
    second = onnxprune.ocnna(MODEL, k=40, data=dvar[:64], distill=1, seed=3).model
    assert first.SerializeToString() == second.SerializeToString()


def test_integer_inputs_are_distilled_without_mixup(tmp_path):
    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.hidden = torch.nn.Linear(16, 32)
            self.out = torch.nn.Linear(32, 4)

        def forward(self, ids):
            return self.out(torch.relu(self.hidden(self.embed(ids).mean(1))))

    torch.manual_seed(0)
    path = tmp_path / "tokens.onnx"
    ids = torch.randint(0, 50, (2, 6))
    torch.onnx.export(
        Tokens().eval(), (ids,), path, dynamo=False, input_names=["ids"], output_names=["y"],
        dynamic_axes={"ids": {0: "n"}, "y": {0: "n"}},
    )  # fmt: skip
    data = np.random.default_rng(0).integers(0, 50, (96, 6)).astype(np.int64)
    model, report = onnxprune.ocnna(path, k=50, data=data, distill=2)
    check(model)
    assert report["distill"]["mixup"] is False
    assert [row["kept"] for row in report["layers"] if row["name"].endswith("hidden/Gemm")] == [16]


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"distill": -1}, ParameterError, "distill epochs must be a whole number >= 0"),
        ({"distill": 1.5}, ParameterError, "distill epochs must be a whole number >= 0"),
        ({"distill": 1, "distill_lr": 0.0}, ParameterError, "learning rate must be > 0"),
        ({"distill": 1, "data": None}, DataError, "distillation needs data"),
    ],
)
def test_bad_distill_options_stop_before_any_work(dvar, options, error, message):
    arguments = {"data": dvar[:16], **options}
    with pytest.raises(error, match=message):
        onnxprune.ocnna(MODEL, k=40, **arguments)


def test_a_model_the_converter_cannot_run_names_the_op(tmp_path, dvar):
    model = onnx.load(MODEL)
    last = model.graph.output[0].name
    node = onnx.helper.make_node("Hardmax", [last + "_pre"], [last], name="hardmax")
    for producer in model.graph.node:
        if last in producer.output:
            producer.output[list(producer.output).index(last)] = last + "_pre"
    model.graph.node.append(node)
    with pytest.raises(ModelError, match=r"--distill: .*op type Hardmax \(node hardmax\)"):
        onnxprune.ocnna(model, k=40, data=dvar[:32], distill=1)


def test_cli_distill_writes_model_and_report(tmp_path):
    work = mnist_workdir(tmp_path, dvar=64, test=200)
    out, report = work / "small.onnx", work / "r.json"
    result = invoke(
        "ocnna", str(work / "model.onnx"), "--k", "40", "--data", str(work / "dvar.npz"),
        "--eval", str(work / "test.npz"), "--distill", "1", "-o", str(out),
        "--report", str(report),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Distilled 1 epoch(s) on 64 D_var samples" in result.output
    check(onnx.load(out))
    saved = json.loads(report.read_text())
    assert saved["distill"]["epochs"] == 1
    assert "Distilled 1 epoch(s)" in report.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--distill", "-2"], "-2 is not in the range x>=0"),
        (["--distill", "1", "--finetune", "{train}", "--framework", "keras"], "--distill trains"),
    ],
)
def test_cli_bad_distill_is_one_line(tmp_path, extra, message):
    work = mnist_workdir(tmp_path, dvar=16, test=16, train=16)
    out = work / "small.onnx"
    extra = [arg.format(train=work / "train.npz") for arg in extra]
    args = ["ocnna", str(work / "model.onnx"), "--data", str(work / "dvar.npz"), "-o", str(out)]
    result = invoke(*args, *extra)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
