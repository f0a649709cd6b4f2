"""`--keep LAYER` (Torch-Pruning's ignored layers): the named layers' channel groups stay
whole, the rest prune as usual; a pattern that names no layer stops in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import check
from cli_runs import SAMPLES, invoke, mnist_workdir

import onnxprune
from onnxprune.errors import ModelError, ParameterError
from onnxprune.sweep import sweep_ocnna

MODEL = SAMPLES / "mnist_cnn.onnx"
FIRST = "/features/features.0/Conv"


@pytest.fixture(scope="module")
def dvar() -> np.ndarray:
    return np.load(SAMPLES / "mnist_dvar.npz")["x"][:48]


def layers(report: dict) -> dict[str, tuple[int, int]]:
    return {row["name"]: (row["kept"], row["total"]) for row in report["layers"]}


def test_a_kept_layer_stays_whole_and_the_others_prune(dvar):
    plain = layers(onnxprune.ocnna(MODEL, k=40, data=dvar).report)
    model, report = onnxprune.ocnna(MODEL, k=40, data=dvar, keep=[FIRST])
    kept = layers(report)
    total = plain[FIRST][1]
    assert kept[FIRST] == (total, total) and plain[FIRST][0] < total
    assert {n: v for n, v in kept.items() if n != FIRST} == {
        n: v for n, v in plain.items() if n != FIRST
    }
    assert any("kept by --keep" in row["reason"] for row in report["frozen"])
    assert report["parameters"]["keep"] == [FIRST]
    onnx.checker.check_model(model, full_check=True)
    check(model)


def test_a_pattern_keeps_every_layer_it_matches(dvar):
    _, report = onnxprune.ocnna(MODEL, k=40, data=dvar, keep=["/classifier/*"])
    kept = layers(report)
    assert kept["/classifier/classifier.1/Gemm"][0] == kept["/classifier/classifier.1/Gemm"][1]
    assert kept[FIRST][0] < kept[FIRST][1]
    with pytest.raises(ModelError, match="no prunable channel group"):
        onnxprune.ocnna(MODEL, k=40, data=dvar, keep=["*"])


def test_a_sweep_keeps_the_layer_at_every_k(dvar):
    result = sweep_ocnna(MODEL, [20, 60], dvar, keep=[FIRST], keep_models=True)
    for model in result.models.values():
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
        assert weight.dims[0] == 16  # the sample's first conv, whole


def test_a_pattern_naming_no_layer_is_one_line_and_writes_nothing(tmp_path):
    work = mnist_workdir(tmp_path, dvar=32, test=0)
    out = work / "out.onnx"
    result = invoke(
        "ocnna", work / "model.onnx", "--k", 40, "--data", work / "dvar.npz",
        "--keep", "/no/such/*", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error") and "--keep '/no/such/*' names no layer" in lines[-1]
    assert not out.exists()
    with pytest.raises(ParameterError):
        onnxprune.ocnna(MODEL, k=40, data=np.zeros((4, 1, 28, 28), np.float32), keep=["x"])
