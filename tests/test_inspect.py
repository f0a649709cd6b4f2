"""`onnxprune inspect` (inspection.py, cli/inspect.py): the groups, their channel counts,
which are prunable and why not, params and FLOPs per layer, checked against the graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from builders import build, random_feeds
from cli_runs import SAMPLES
from click.testing import CliRunner
from onnx import numpy_helper

from onnxprune.analyze import analyze
from onnxprune.cli import main
from onnxprune.inspection import inspect


def _conv_macs(model: onnx.ModelProto, node: onnx.NodeProto, out_shape) -> int:
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight = weights[node.input[1]]
    return int(np.prod(out_shape[1:]) * np.prod(weight.shape[1:]))


def groups_of(info: dict) -> set[str]:
    return {layer["name"] for group in info["groups"] for layer in group["layers"]}


@pytest.mark.parametrize("name", ["resnet_basic", "channel_shuffle_net"])
def test_inspect_reports_groups_reasons_params_and_flops(name):
    model = build(name)
    info = inspect(model)
    analysis = analyze(model, random_feeds(model, 1))
    assert len(info["groups"]) == len(analysis.groups)
    normalized = {n.name: n for n in analysis.model.graph.node}
    floats = [i for i in analysis.model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    sizes = {i.name: int(np.prod(i.dims)) for i in floats}
    conv_total = conv_prunable = 0
    for entry, group in zip(info["groups"], analysis.groups, strict=True):
        assert entry["channels"] == group.size
        assert entry["prunable"] == group.prunable
        assert (entry["reason"] is None) == group.prunable
        assert [layer["name"] for layer in entry["layers"]] == [s.name for s in group.sources]
        for layer, source in zip(entry["layers"], group.sources, strict=True):
            node = normalized[source.name]
            assert layer["channels"] == source.size
            assert layer["params"] == sum(sizes.get(t, 0) for t in node.input[1:])
            assert layer["flops"] == 2 * layer["macs"] > 0
            if node.op_type == "Conv":
                out_shape = analysis.cg.shapes[node.output[0]]
                assert layer["macs"] == _conv_macs(analysis.model, node, out_shape)
                conv_total += layer["params"]
                conv_prunable += layer["params"] if entry["prunable"] else 0
    assert info["params"] == sum(sizes.values())  # float weights, not shape constants
    layers_flops = sum(layer["flops"] for g in info["groups"] for layer in g["layers"])
    assert info["flops"] == 2 * info["macs"] >= layers_flops  # + depthwise convs (no group)
    depthwise = any(
        n.op_type == "Conv" and n.name not in groups_of(info) for n in normalized.values()
    )
    assert (info["flops"] > layers_flops) == depthwise
    assert info["conv_params_prunable_ratio"] == pytest.approx(conv_prunable / conv_total)
    assert info["prunable_groups"] == sum(g.prunable for g in analysis.groups)


def test_inspect_explains_why_groups_are_frozen():
    info = inspect(build("channel_shuffle_net"))
    reasons = [g["reason"] for g in info["groups"] if not g["prunable"]]
    assert any("Reshape" in r for r in reasons)  # the channel shuffle
    assert any("model output" in r for r in reasons)
    assert 0 < info["conv_params_prunable_ratio"] < 1
    coupled = inspect(build("resnet_basic"))
    assert coupled["conv_params_prunable_ratio"] == 1.0
    assert max(len(g["layers"]) for g in coupled["groups"]) == 2  # block output + shortcut


def test_inspect_command_prints_json_and_a_table(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(build("channel_shuffle_net"), str(path))
    runner = CliRunner(env={"COLUMNS": "200"})  # a wide table: no wrapped words
    result = runner.invoke(main, ["inspect", str(path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["groups"] and {"params", "flops", "channels"} <= set(info["groups"][0]["layers"][0])
    table = runner.invoke(main, ["inspect", str(path)], catch_exceptions=False)
    assert table.exit_code == 0
    for text in ("prunable / why not", "FLOPs", "no: carried by model output", "yes"):
        assert text in table.stdout, text


def test_inspect_says_which_groups_a_grouped_conv_prunes_equally(tmp_path):
    path = tmp_path / "grouped.onnx"
    onnx.save(build("grouped_conv_net"), str(path))
    info = inspect(str(path))
    assert sorted({g["equal_groups"] for g in info["groups"] if g["prunable"]}) == [1, 2]
    runner = CliRunner(env={"COLUMNS": "200"})
    table = runner.invoke(main, ["inspect", str(path)], catch_exceptions=False)
    assert "yes, equally in 2 conv groups" in table.stdout


def test_inspect_says_why_an_int8_model_has_nothing_to_prune(tmp_path):
    """A QDQ model's layers read DequantizeLinear outputs: no groups, and the reason."""
    quantized = tmp_path / "int8.onnx"
    runner = CliRunner(env={"COLUMNS": "200"})
    made = runner.invoke(
        main,
        ["quantize", str(SAMPLES / "mnist_cnn.onnx"), "--data", str(SAMPLES / "mnist_dvar.npz"),
         "-o", str(quantized), "--quiet"],
        catch_exceptions=False,
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    info = inspect(quantized)
    assert info["groups"] == [] and "already quantized" in info["nothing_prunable"]
    assert inspect(SAMPLES / "mnist_cnn.onnx")["nothing_prunable"] is None
    table = runner.invoke(main, ["inspect", str(quantized)], catch_exceptions=False)
    assert table.exit_code == 0 and "nothing to prune: it is already quantized" in table.stdout
