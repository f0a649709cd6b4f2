"""The test architectures and helpers are themselves tested: every later structural test
trusts that they export, check, run, match torch, and that killed channels are exactly zero.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")

import builders as B  # noqa: E402  (after the torch skip)
from conftest import importorskip_any  # noqa: E402

Built = Callable[..., onnx.ModelProto]

TORCH_NAMES = sorted(B.TORCH_BUILDERS)
ALL_NAMES = sorted(B.BUILDERS)


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(node.op_type for node in model.graph.node)


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def init_map(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def n_bn_modules(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


# ----------------------------------------------------------------------------- every builder


@pytest.mark.parametrize("keep_bn", [False, True])
@pytest.mark.parametrize("name", ALL_NAMES)
def test_builder_checks_and_runs(name: str, keep_bn: bool, built_model: Built) -> None:
    if keep_bn and not B.BUILDERS[name].is_torch:
        pytest.skip("keep_bn only applies to torch exports")
    model = built_model(name, keep_bn=keep_bn)
    outputs = B.check(model)
    assert len(model.graph.output) == 1
    assert outputs[0].ndim == 2 and np.abs(outputs[0]).max() > 0


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_export_matches_torch_with_dynamic_batch(name: str, built_model: Built) -> None:
    spec = B.TORCH_BUILDERS[name]
    model = built_model(name)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    x = np.random.default_rng(1).standard_normal((3, *spec.input_shape[1:])).astype(np.float32)
    with torch.no_grad():
        expected = spec.make(0)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(B.run(model, x)[0], expected, rtol=1e-4, atol=1e-5)


def test_builders_are_deterministic() -> None:
    a, b, c = B.build("mlp"), B.build("mlp"), B.build("mlp", seed=1)
    assert a.SerializeToString() == b.SerializeToString()
    assert not np.array_equal(
        init_map(a)[a.graph.node[0].input[1]], init_map(c)[c.graph.node[0].input[1]]
    )
    assert B.nhwc_style().SerializeToString() == B.nhwc_style().SerializeToString()


# ----------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("name", TORCH_NAMES)
def test_keep_bn_keeps_every_batchnorm(name: str, built_model: Built) -> None:
    n_modules = n_bn_modules(B.TORCH_BUILDERS[name].make(0))
    kept = ops(built_model(name, keep_bn=True))["BatchNormalization"]
    fused = ops(built_model(name))["BatchNormalization"]
    assert kept == n_modules
    assert fused <= kept


def test_default_export_folds_conv_bn_but_not_preactivation_bn(built_model: Built) -> None:
    assert ops(built_model("vgg_like"))["BatchNormalization"] == 0
    assert ops(built_model("resnet_bottleneck"))["BatchNormalization"] == 0
    # DenseNet's BN after Concat/ReLU has no conv to fold into.
    assert 0 < ops(built_model("densenet_like"))["BatchNormalization"] < 12


# ----------------------------------------------------------------------------- structure


def _has_depthwise(m: onnx.ModelProto) -> bool:
    weights = init_map(m)
    return any(
        n.op_type == "Conv" and attr(n, "group", 1) == weights[n.input[1]].shape[0] > 1
        for n in m.graph.node
    )


STRUCTURE: dict[str, Callable[[onnx.ModelProto], bool]] = {
    "vgg_like": lambda m: {"MaxPool", "Flatten", "Gemm"} <= set(ops(m)) and ops(m)["Gemm"] == 2,
    "resnet_basic": lambda m: ops(m)["Add"] == 2,
    "resnet_bottleneck": lambda m: ops(m)["Add"] == 3,
    "mobilenet_v2_like": lambda m: _has_depthwise(m) and "Clip" in ops(m) and "Add" in ops(m),
    "densenet_like": lambda m: ops(m)["Concat"] == 5 and "AveragePool" in ops(m),
    "se_net": lambda m: {"GlobalAveragePool", "ReduceMean", "Sigmoid", "Mul"} <= set(ops(m)),
    "inception_like": lambda m: any(
        n.op_type == "Concat" and len(n.input) == 4 for n in m.graph.node
    ),
    "squeezenet_fire": lambda m: "Gemm" not in ops(m) and ops(m)["Concat"] == 3,
    "flatten_gemm_head": lambda m: "Flatten" in ops(m) and ops(m)["Gemm"] == 2,
    "gap_gemm_head": lambda m: {"GlobalAveragePool", "Flatten", "Gemm"} <= set(ops(m)),
    "reshape_head": lambda m: {"Shape", "Gather", "Concat", "Reshape"} <= set(ops(m)),
    "grouped_conv_net": lambda m: any(attr(n, "group", 1) == 2 for n in m.graph.node),
    "channel_shuffle_net": lambda m: (
        {"Slice", "Concat", "Reshape", "Transpose"} <= set(ops(m)) and _has_depthwise(m)
    ),
    "mlp": lambda m: set(ops(m)) == {"Gemm", "Relu", "Tanh"},
    "efficient_se": lambda m: _has_depthwise(m) and ops(m)["Sigmoid"] >= 5 and "Add" in ops(m),
    "conv1d_net": lambda m: all(
        init_map(m)[n.input[1]].ndim == 3 for n in m.graph.node if n.op_type == "Conv"
    ),
    "conv_lstm": lambda m: ops(m)["LSTM"] == 1 and "Conv" in ops(m),
    "dense_gru": lambda m: any(
        n.op_type == "GRU" and attr(n, "direction", b"") == b"bidirectional" for n in m.graph.node
    ),
    "dense_rnn": lambda m: ops(m)["RNN"] == 1 and ops(m)["MatMul"] == 2,
    "nhwc_style": lambda m: (
        m.opset_import[0].version == 13
        and [attr(n, "perm") for n in m.graph.node if n.op_type == "Transpose"]
        == [[0, 3, 1, 2], [0, 2, 3, 1]]
        and ops(m)["MatMul"] == 2
        and "Gemm" not in ops(m)
    ),
    "old_zoo_style": lambda m: (
        m.opset_import[0].version == 9
        and {"Constant", "Sum", "Dropout", "BatchNormalization", "Flatten", "Gemm"} <= set(ops(m))
        and {i.name for i in m.graph.initializer} < {i.name for i in m.graph.input}
        and [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    ),
}


def test_structure_table_covers_every_builder() -> None:
    assert set(STRUCTURE) == set(B.BUILDERS)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_builder_has_its_structure(name: str, built_model: Built) -> None:
    assert STRUCTURE[name](built_model(name))


# ----------------------------------------------------------------------------- kill channels


@pytest.mark.parametrize(
    ("name", "bn", "channels"),
    [
        ("vgg_like", 0, [1, 5]),
        ("vgg_like", 3, [0, 15]),
        ("densenet_like", 6, [0, 20, 39]),  # pre-activation BN over a Concat
        ("conv1d_net", 1, [7]),
        ("mobilenet_v2_like", 2, [3]),  # BN after a depthwise conv
        ("old_zoo_style", "bn1", [2, 3]),  # initializers also listed as graph inputs
        ("old_zoo_style", 1, [0]),  # BN params from Constant nodes
    ],
)
def test_kill_channels_zeroes_exactly_those_channels(
    name: str, bn: str | int, channels: list[int], built_model: Built
) -> None:
    model = built_model(name, keep_bn=True)
    before = model.SerializeToString()
    killed = B.kill_channels(model, bn, channels)
    assert model.SerializeToString() == before, "input model must not be modified"
    B.check(killed)
    out = B._find_bn(killed, bn).output[0]
    feeds = B.random_feeds(killed, batch=2, seed=3)
    value = B.run_tensors(killed, feeds, [out])[out]
    assert np.all(value[:, channels] == 0.0)
    others = np.setdiff1d(np.arange(value.shape[1]), channels)
    assert np.all(np.abs(value[:, others]).reshape(len(others), -1).max(axis=1) > 0)


def test_kill_channels_copies_shared_constants() -> None:
    # Default-initialised BNs hold equal tensors, which torch deduplicates (Identity aliases):
    # killing channels of one BN must not change the other.
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
    )
    model = B.export(module, keep_bn=True)
    assert "Identity" in ops(model)
    killed = B.kill_channels(model, 0, [0, 1])
    B.check(killed)
    first, second = B.bn_nodes(killed)
    for slot, value in ((1, 1.0), (2, 0.0)):
        np.testing.assert_array_equal(B._constant_value(killed.graph, second.input[slot]), value)
        assert B._constant_value(killed.graph, first.input[slot])[[0, 1]].tolist() == [0, 0]
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = B.run_tensors(killed, x, [first.output[0]])[first.output[0]]
    assert np.all(got[:, :2] == 0) and np.abs(got[:, 2:]).max() > 0


def test_kill_bn_channels_torch_survives_bn_folding() -> None:
    module = B.kill_bn_channels_torch(B.vgg_like(), "0.1", [2, 4])
    fused = B.export(module)
    conv = next(n for n in fused.graph.node if n.op_type == "Conv")
    weights = init_map(fused)
    assert np.all(weights[conv.input[1]][[2, 4]] == 0)
    assert np.all(weights[conv.input[2]][[2, 4]] == 0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    value = B.run_tensors(fused, x, [conv.output[0]])[conv.output[0]]
    assert np.all(value[:, [2, 4]] == 0) and np.abs(value[:, 0]).max() > 0
    kept = B.export(module, keep_bn=True)
    bn_out = B.bn_nodes(kept)[0].output[0]
    assert np.all(B.run_tensors(kept, x, [bn_out])[bn_out][:, [2, 4]] == 0)


def test_kill_channels_rejects_bad_targets(built_model: Built) -> None:
    model = built_model("vgg_like", keep_bn=True)
    with pytest.raises(IndexError):
        B.kill_channels(model, 9, [0])
    with pytest.raises(IndexError):
        B.kill_channels(model, 0, [8])
    with pytest.raises(ValueError):
        B.kill_channels(model, model.graph.node[0].name, [0])
    with pytest.raises(KeyError):
        B.kill_channels(model, "no-such-node", [0])
    with pytest.raises(TypeError):
        B.kill_bn_channels_torch(B.vgg_like(), "0.0", [0])


# ----------------------------------------------------------------------------- helpers


def test_check_uses_fixed_batch_and_real_inputs_only() -> None:
    model = B.old_zoo_style()
    assert list(B.random_feeds(model)) == ["data_0"]
    (probs,) = B.check(model)
    assert probs.shape == (1, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_save_and_export_path(tmp_model_path) -> None:
    model = B.export(B.mlp(), (1, 16), path=tmp_model_path)
    assert onnx.load(str(tmp_model_path)).SerializeToString() == model.SerializeToString()
    assert list(tmp_model_path.parent.glob("*.tmp")) == []


def test_importorskip_any_skips_on_any_import_failure(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_mod_for_test.py").write_text("raise RuntimeError('built for other torch')")
    monkeypatch.syspath_prepend(str(tmp_path))
    for modname in ("broken_mod_for_test", "no_such_module_for_test"):
        with pytest.raises(pytest.skip.Exception):
            importorskip_any(modname)
        sys.modules.pop(modname, None)
    assert importorskip_any("json").__name__ == "json"
