"""A binary classifier with one output unit (Keras' Dense(1, "sigmoid"), a logit) on the
real Spambase data: accuracy thresholds its score, pruning reports it, and the fine-tune
trains it with binary cross-entropy and keeps its final Sigmoid."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from builders import run
from paths import SHARED_DATA
from torch import nn

import onnxprune
from onnxprune.finetune.round_trip import finetune
from onnxprune.io import input_specs, load_data
from onnxprune.labels import binary_threshold
from onnxprune.metrics import evaluate

SPAMBASE = SHARED_DATA / "spambase.npz"
pytestmark = pytest.mark.skipif(not SPAMBASE.exists(), reason="needs ../shared/data")


def spambase() -> dict[str, np.ndarray]:
    data = np.load(SPAMBASE)
    order = np.random.default_rng(0).permutation(len(data["y"]))
    x, y = data["X"][order], data["y"][order]
    return {"x_train": x[:3000], "y_train": y[:3000], "x_test": x[3000:], "y_test": y[3000:]}


def binary_mlp(sigmoid: bool) -> onnx.ModelProto:
    """57 -> 32 -> 16 -> 1 (standardised inside), trained 30 epochs with BCE; exported
    with a final Sigmoid or as a logit."""
    data = spambase()
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"]).float()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Linear(57, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 1)
    )
    optimizer = torch.optim.Adam(body.parameters(), lr=3e-3)
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(body((x - mean) / std)[:, 0], y)
        loss.backward()
        optimizer.step()

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            logit = self.body((features - self.mean) / self.std)
            return torch.sigmoid(logit) if sigmoid else logit

    buffer = io.BytesIO()
    torch.onnx.export(
        Model().eval(), x[:2], buffer, input_names=["features"], output_names=["score"],
        dynamic_axes={"features": {0: "n"}, "score": {0: "n"}}, dynamo=False,
    )  # fmt: skip
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid", "logit"])
def test_accuracy_thresholds_the_score_of_one_unit(sigmoid):
    model, data = binary_mlp(sigmoid), spambase()
    assert binary_threshold(model) == (0.5 if sigmoid else 0.0)
    score = run(model, {"features": data["x_test"]})[0][:, 0]
    manual = float(((score > binary_threshold(model)) == data["y_test"]).mean())
    specs = input_specs(model)
    dataset = load_data({"x": data["x_test"], "y": data["y_test"]}, specs)
    assert evaluate(model, dataset) == {"accuracy": manual}
    assert manual > 0.85  # argmax over one column would say 0 for all: ~0.6
    floats = load_data({"x": data["x_test"], "y": data["y_test"].astype(np.float32)}, specs)
    # float 0/1 labels: the classes of a Sigmoid unit; targets of a logit (MSE)
    assert set(evaluate(model, floats)) == ({"accuracy"} if sigmoid else {"mse"})


def test_ocnna_reports_a_binary_classifiers_accuracy_and_finetunes_it():
    model, data = binary_mlp(sigmoid=True), spambase()
    test = {"x": data["x_test"], "y": data["y_test"]}
    train = {"x": data["x_train"], "y": data["y_train"]}
    pruned, report = onnxprune.ocnna(model, k=40, data=data["x_train"][:500], eval_data=test)
    assert report["accuracy_before"] > 0.85 and report["accuracy_after"] > 0.8
    tuned, tuned_report = finetune(pruned, train, test, epochs=2, measure_start=True)
    onnx.checker.check_model(tuned, full_check=True)
    assert tuned.graph.node[-1].op_type == "Sigmoid"  # trained on logits, exported whole
    block = tuned_report["finetune"]
    assert block["task"] == "classification"
    after = evaluate(tuned, load_data(test, input_specs(tuned)))["accuracy"]
    assert after >= block["start"]["accuracy"] - 0.01 and after > 0.88
    outputs = run(tuned, {"features": data["x_test"][:50]})[0]
    assert outputs.shape == (50, 1) and ((outputs >= 0) & (outputs <= 1)).all()
