"""INT8 artifacts: static QDQ quantization of pruned models, the comparison report, and
byte-identical outputs for the same inputs and seed (users diff them in their CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import check
from cli_runs import SAMPLES, invoke, mnist_workdir, sha

import onnxprune
from onnxprune.metrics import count_macs, count_params, evaluate
from onnxprune.quantize import add_int8, quantize_int8
from onnxprune.verify import run


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return mnist_workdir(tmp_path, dvar=128, test=500)


@pytest.fixture(scope="module")
def pruned_mnist():
    """The sample CNN pruned lightly (k = 10) so accuracy is high enough to compare."""
    dvar = np.load(SAMPLES / "mnist_dvar.npz")["x"][:128]
    return onnxprune.ocnna(str(SAMPLES / "mnist_cnn.onnx"), k=10, data=dvar)


def test_int8_model_is_valid_smaller_and_as_accurate(pruned_mnist):
    dvar = str(SAMPLES / "mnist_dvar.npz")
    quantized = quantize_int8(pruned_mnist.model, dvar, calibration_samples=256)
    check(quantized)
    assert [i.name for i in quantized.graph.input] == ["input"]
    assert [o.name for o in quantized.graph.output] == ["logits"]
    ops = {node.op_type for node in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [
        init for init in quantized.graph.initializer if init.data_type == onnx.TensorProto.INT8
    ]
    conv_weights = [w for w in int8_weights if len(w.dims) == 4]
    assert len(conv_weights) == 4  # every conv weight is stored as INT8
    scales = {
        n.input[1]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"
    }  # per-channel: one scale per output channel of each conv
    per_channel = [
        init for init in quantized.graph.initializer if init.name in scales and len(init.dims) == 1
    ]
    assert per_channel and max(int(init.dims[0]) for init in per_channel) > 1
    assert count_params(quantized) == count_params(pruned_mnist.model)
    feed = {"input": np.load(SAMPLES / "mnist_dvar.npz")["x"][:2].astype(np.float32)}
    assert count_macs(quantized, feed) == count_macs(pruned_mnist.model, feed)
    assert quantized.ByteSize() < 0.35 * pruned_mnist.model.ByteSize()
    test = onnxprune.io.load_data(
        str(SAMPLES / "mnist_test.npz"),
        onnxprune.io.input_specs(quantized),
        require_labels=True,
    ).subset(1000)
    float_acc = evaluate(pruned_mnist.model, test)["accuracy"]
    int8_acc = evaluate(quantized, test)["accuracy"]
    assert float_acc > 0.9
    assert abs(int8_acc - float_acc) < 0.01
    meta = {p.key: p.value for p in quantized.metadata_props}
    assert meta["onnxprune.method"] == "ocnna" and "int8" in meta["onnxprune.quantization"]


def test_add_int8_reports_original_pruned_and_int8(pruned_mnist):
    result = onnxprune.PruneResult(pruned_mnist.model, dict(pruned_mnist.report))
    quantized = add_int8(
        result,
        str(SAMPLES / "mnist_dvar.npz"),
        eval_data={
            "x": np.load(SAMPLES / "mnist_test.npz")["x"][:300],
            "y": np.load(SAMPLES / "mnist_test.npz")["y"][:300],
        },
    )
    rows = {row["name"]: row for row in result.report["artifacts"]}
    assert list(rows) == ["original", "pruned", "pruned + int8"]
    for row in rows.values():
        assert row["latency_ms"] > 0
    assert rows["pruned + int8"]["size_bytes"] < rows["pruned"]["size_bytes"]
    assert rows["pruned"]["size_bytes"] < rows["original"]["size_bytes"]
    assert rows["pruned + int8"]["params"] == rows["pruned"]["params"]
    assert rows["pruned"]["flops"] < rows["original"]["flops"]
    assert "accuracy" in rows["pruned + int8"] and result.report["accuracy_int8"] > 0.9
    assert "accuracy" not in rows["original"]  # no accuracy_before without eval in ocnna()
    md = onnxprune.report.to_markdown(result.report)
    assert "## Artifacts" in md and "| pruned + int8 |" in md
    check(quantized)


def test_ocnna_quantize_writes_both_models_and_is_byte_identical(workdir):
    model = workdir / "model.onnx"
    before = sha(model)
    outputs = []
    for name in ("a", "b"):
        result = invoke(
            "ocnna",
            model,
            "--k",
            30,
            "--data",
            workdir / "dvar.npz",
            "--eval",
            workdir / "test.npz",
            "--criterion",
            "random",
            "--seed",
            7,
            "--quantize",
            "int8",
            "-o",
            workdir / f"{name}.onnx",
            "--report",
            workdir / f"{name}.json",
            "--quiet",
        )
        assert result.exit_code == 0, result.output
        assert result.output == ""  # --quiet: nothing but errors
        outputs.append((workdir / f"{name}.onnx", workdir / f"{name}.int8.onnx"))
    assert sha(model) == before
    (a, a8), (b, b8) = outputs
    assert sha(a) == sha(b) and sha(a8) == sha(b8)
    for path in (a, a8):
        check(onnx.load(str(path)))
    report = json.loads((workdir / "a.json").read_text())
    assert [r["name"] for r in report["artifacts"]] == ["original", "pruned", "pruned + int8"]
    assert report["int8_output"].endswith("a.int8.onnx")
    assert report["latency_ms_before"] > 0 and report["latency_ms_after"] > 0
    meta = {p.key: p.value for p in onnx.load(str(a8)).metadata_props}
    assert meta["onnxprune.source_sha256"] == before
    assert "'k': 30.0" in meta["onnxprune.parameters"]
    assert "'criterion': 'random'" in meta["onnxprune.parameters"]
    other_seed = invoke(
        "ocnna",
        model,
        "--k",
        30,
        "--data",
        workdir / "dvar.npz",
        "--criterion",
        "random",
        "--seed",
        8,
        "-o",
        workdir / "c.onnx",
        "--quiet",
    )
    assert other_seed.exit_code == 0
    assert sha(workdir / "c.onnx") != sha(a)  # the seed does matter


def test_quantize_command(workdir):
    model = workdir / "model.onnx"
    before = sha(model)
    result = invoke(
        "quantize",
        model,
        "--data",
        workdir / "dvar.npz",
        "--eval",
        workdir / "test.npz",
        "--report",
        workdir / "q.json",
    )
    assert result.exit_code == 0, result.output
    assert sha(model) == before
    quantized = onnx.load(str(workdir / "model.int8.onnx"))
    check(quantized)
    report = json.loads((workdir / "q.json").read_text())
    assert report["method"] == "quantize"
    assert report["size_bytes_after"] < 0.3 * report["size_bytes_before"]
    assert abs(report["accuracy_after"] - report["accuracy_before"]) < 0.01
    assert report["params_after"] == report["params_before"]
    markdown = (workdir / "q.md").read_text()
    assert "## Artifacts" in markdown and "| int8 |" in markdown
    assert "artifacts" in result.output  # the rich table on the terminal
    again = invoke("quantize", model, "--data", workdir / "dvar.npz", "-o", workdir / "b.onnx")
    assert again.exit_code == 0
    assert sha(workdir / "b.onnx") == sha(workdir / "model.int8.onnx")


@pytest.mark.parametrize(
    "name",
    ["resnet_basic", "mobilenet_v2_like", "nhwc_style", "old_zoo_style", "mlp", "conv1d_net"],
)
def test_quantize_any_architecture_keeps_outputs_close(built_model, name):
    """Residual adds, depthwise convs, tf2onnx NHWC graphs, a fixed-batch opset-9 model,
    dense-only and 1-D convs all quantize to a valid model close to the float one."""
    model = built_model(name)
    spec = onnxprune.io.input_specs(model)[0]
    shape = tuple(d or 1 for d in spec.shape[1:])
    x = np.random.default_rng(0).standard_normal((24, *shape)).astype(np.float32)
    quantized = quantize_int8(model, x, batch_size=8)
    check(quantized)
    assert [i.name for i in quantized.graph.input] == [spec.name]
    batch = spec.shape[0] or 8
    ref = next(iter(run(model, {spec.name: x[:batch]}).values()))
    got = next(iter(run(quantized, {spec.name: x[:batch]}).values()))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()
