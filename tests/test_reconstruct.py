"""Least-squares reconstruction: exact where the removed channels are representable,
im2col equal to onnxruntime's Conv and to torch's unfold, streaming equal to one batch,
depthwise layers handled, and the CLI flag end to end on the MNIST sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from builders import build, check, random_feeds, run
from click.testing import CliRunner
from dense_forms import build_dense
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune import reconstruct as reconstruct_module
from onnxprune.analyze import analyze
from onnxprune.cli import main
from onnxprune.errors import DataError
from onnxprune.io import Dataset, InputSpec, load_data
from onnxprune.methods.odf2nna import observe_units
from onnxprune.metrics import layer_macs
from onnxprune.normal_equations import RIDGE_GRID, NormalEquations, choose_ridge
from onnxprune.pipeline import apply_masks, masks_for_removal
from onnxprune.reconstruct import kept_outputs, reconstruct, refit_samples
from onnxprune.recovery import measure
from onnxprune.refit_layers import ConvLayer, im2col
from onnxprune.score import consumer_inputs
from onnxprune.verify import run as run_named

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def _init(name: str, values: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def chain_model() -> onnx.ModelProto:
    """Conv A -> Relu -> Conv B (asymmetric pads, stride 2x1) -> Relu -> Flatten -> Gemm C
    -> Relu -> MatMul D -> Add. Some channels are positive multiples of others, so after
    the Relu they are exact linear combinations of kept channels:
    A4 = 2 A1, A5 = 0.5 A2; B3 = 3 B0; C6 = 2 C1."""
    rng = np.random.default_rng(1)
    a_w, a_b = rng.standard_normal((6, 3, 3, 3)), rng.standard_normal(6) * 0.1
    a_w[4], a_b[4] = 2 * a_w[1], 2 * a_b[1]
    a_w[5], a_b[5] = 0.5 * a_w[2], 0.5 * a_b[2]
    b_w, b_b = rng.standard_normal((5, 6, 3, 3)) * 0.3, rng.standard_normal(5) * 0.1
    b_w[3], b_b[3] = 3 * b_w[0], 3 * b_b[0]
    c_w, c_b = rng.standard_normal((7, 5 * 5 * 7)) * 0.1, rng.standard_normal(7) * 0.1
    c_w[6], c_b[6] = 2 * c_w[1], 2 * c_b[1]
    d_w, d_b = rng.standard_normal((7, 4)), rng.standard_normal(4)
    nodes = [
        helper.make_node("Conv", ["x", "a_w", "a_b"], ["a"], name="A", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"], name="A_relu"),
        helper.make_node(
            "Conv", ["a_relu", "b_w", "b_b"], ["b"], name="B", pads=[1, 0, 2, 1], strides=[2, 1]
        ),
        helper.make_node("Relu", ["b"], ["b_relu"], name="B_relu"),
        helper.make_node("Flatten", ["b_relu"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "c_w", "c_b"], ["c"], name="C", transB=1),
        helper.make_node("Relu", ["c"], ["c_relu"], name="C_relu"),
        helper.make_node("MatMul", ["c_relu", "d_w"], ["d"], name="D"),
        helper.make_node("Add", ["d", "d_b"], ["y"], name="D_bias"),
    ]
    inits = [
        _init(n, v)
        for n, v in [("a_w", a_w), ("a_b", a_b), ("b_w", b_w), ("b_b", b_b)]
        + [("c_w", c_w), ("c_b", c_b), ("d_w", d_w), ("d_b", d_b)]
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


REMOVE = {"A": [4, 5], "B": [3], "C": [6]}


def _pruned(model, data, remove, compensate: bool):
    analysis = analyze(model, {"x": data[:8]})
    masks = masks_for_removal(analysis, remove)
    means = None
    if compensate:
        names = list(consumer_inputs(analysis, analysis.prunable()))
        values = run_named(_exposed(analysis.model, names), {"x": data})
        means = {n: np.moveaxis(values[n], analysis.cg.layouts[n].axis, 1) for n in names}
        means = {n: v.reshape(*v.shape[:2], -1).mean(axis=(0, 2)) for n, v in means.items()}
    return analysis, masks, apply_masks(analysis, masks, means)


def _exposed(model, names):
    from builders import expose

    return expose(model, names)


def _weights(model: onnx.ModelProto, node_name: str) -> tuple[np.ndarray, np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    return inits[node.input[1]], inits[node.input[2]]


@pytest.mark.parametrize("compensate", [False, True])
def test_representable_channels_are_reconstructed_exactly(compensate, rng):
    model = chain_model()
    data = rng.standard_normal((300, 3, 8, 8)).astype(np.float32)
    fresh = rng.standard_normal((50, 3, 8, 8)).astype(np.float32)
    analysis, masks, pruned = _pruned(model, data, REMOVE, compensate)
    expected = run(model, fresh)[0]
    assert not np.allclose(run(pruned, fresh)[0], expected, atol=1e-2)

    rebuilt, fits = reconstruct(
        analysis.model,
        pruned,
        data,
        kept_outputs=kept_outputs(analysis, masks),
        ridge=0.0,
        batch_size=64,
        rows_per_input=None,
    )
    check(rebuilt)
    assert [(f.name, f.refit) for f in fits] == [("B", True), ("C", True), ("D", True)]
    assert all(f.error_after < 1e-8 < f.error_before for f in fits)
    np.testing.assert_allclose(run(rebuilt, fresh)[0], expected, rtol=1e-4, atol=1e-4)
    assert [o.name for o in rebuilt.graph.output] == ["y"]


def test_conv_refit_equals_a_dense_least_squares_solve(rng):
    """B's refit (pads 1,0,2,1, stride 2x1) against lstsq on torch-unfolded patches."""
    model = chain_model()
    data = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    # A3 is no copy (so the fit is inexact); A4, A5 go too, or the kept inputs would be
    # collinear and the least-squares solution not unique
    analysis, masks, pruned = _pruned(model, data, {"A": [3, 4, 5]}, compensate=False)
    rebuilt, fits = reconstruct(analysis.model, pruned, data, ridge=0.0, rows_per_input=None)
    assert fits[0].name == "B" and fits[0].refit and fits[0].error_after > 1e-4

    x = run_named(_exposed(pruned, ["a_relu"]), {"x": data})["a_relu"].astype(np.float64)
    y = run_named(_exposed(model, ["b"]), {"x": data})["b"].astype(np.float64)
    padded = torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1))))
    patches = torch.nn.functional.unfold(padded, (3, 3), stride=(2, 1)).numpy()
    rows = patches.transpose(0, 2, 1).reshape(-1, patches.shape[1])
    rows = np.hstack([rows, np.ones((len(rows), 1))])
    targets = y.transpose(0, 2, 3, 1).reshape(-1, y.shape[1])
    solution = np.linalg.lstsq(rows, targets, rcond=None)[0]

    weight, bias = _weights(rebuilt, "B")
    np.testing.assert_allclose(weight.reshape(5, -1).T, solution[:-1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bias, solution[-1], rtol=1e-4, atol=1e-5)
    residual = rows @ solution - targets
    relative = np.square(residual).sum() / np.square(targets - targets.mean(0)).sum()
    assert fits[0].error_after == pytest.approx(relative, rel=1e-3)


CONV_CASES = [
    {"pads": [1, 0, 2, 1], "strides": [2, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 1]},
    {"auto_pad": "VALID", "dilations": [2, 1]},
    {"pads": [0, 1, 1, 0], "group": 2},
]


@pytest.mark.parametrize("attrs", CONV_CASES)
def test_conv_patches_times_weights_equal_onnxruntime(attrs, rng):
    groups = attrs.get("group", 1)
    x = rng.standard_normal((3, 4, 9, 7)).astype(np.float32)
    weight = rng.standard_normal((6, 4 // groups, 3, 2)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    graph = helper.make_graph(
        [node],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_init("w", weight), _init("b", bias)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = run(model, x)[0]
    layer = ConvLayer(model, model.graph.node[0], np.arange(6))
    w, b = layer.current()
    rows = layer.rows(x).astype(np.float64)
    got = np.einsum("rgd,gdm->rgm", rows, w) + b
    np.testing.assert_allclose(got, layer.targets(expected), rtol=1e-4, atol=1e-4)


def test_im2col_matches_torch_unfold(rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    got = im2col(x, (3, 2), (2, 1), (1, 0, 2, 1), (1, 2))
    padded = torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1))))
    want = torch.nn.functional.unfold(padded, (3, 2), dilation=(1, 2), stride=(2, 1)).numpy()
    np.testing.assert_array_equal(got, want.transpose(0, 2, 1).reshape(-1, want.shape[1]))


@pytest.mark.parametrize("rows_per_input", [None, 3])
def test_streaming_in_batches_equals_one_batch(rows_per_input, rng):
    model = chain_model()
    data = rng.standard_normal((90, 3, 8, 8)).astype(np.float32)
    analysis, masks, pruned = _pruned(model, data, {"A": [0, 3], "B": [1]}, compensate=True)
    kept = kept_outputs(analysis, masks)
    results = []
    for batch_size in (7, 90):
        rebuilt, fits = reconstruct(
            analysis.model,
            pruned,
            data,
            kept_outputs=kept,
            batch_size=batch_size,
            rows_per_input=rows_per_input,
        )
        results.append((rebuilt, fits))
    (one, fits_one), (many, fits_many) = results
    for name in ("B", "C"):
        for a, b in zip(_weights(one, name), _weights(many, name)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(fits_one, fits_many):
        assert a.error_after == pytest.approx(b.error_after, rel=1e-6, abs=1e-12)


def test_a_large_dvar_is_refit_on_an_even_spread_of_it(rng, monkeypatch):
    """Every layer is a pass over the refit data, so past MAX_SAMPLES an evenly spaced
    subset is used: the same model as refitting on exactly those samples."""
    model = chain_model()
    data = rng.standard_normal((50, 3, 8, 8)).astype(np.float32)
    analysis, masks, pruned = _pruned(model, data, {"A": [0, 3], "B": [1]}, compensate=True)
    kept = kept_outputs(analysis, masks)
    everything, _ = reconstruct(analysis.model, pruned, data, kept_outputs=kept)
    monkeypatch.setattr(reconstruct_module, "MIN_SAMPLES", 10)
    monkeypatch.setattr(reconstruct_module, "MAX_SAMPLES", 20)
    spread, _ = reconstruct(analysis.model, pruned, data, kept_outputs=kept)
    index = np.linspace(0, 49, 20).round().astype(int)
    chosen, _ = reconstruct(analysis.model, pruned, data[index], kept_outputs=kept)
    assert spread.SerializeToString() == chosen.SerializeToString()
    assert spread.SerializeToString() != everything.SerializeToString()


def test_big_models_are_refit_on_fewer_samples_from_their_macs(rng, monkeypatch):
    model = chain_model()
    dataset = load_data(
        rng.standard_normal((300, 3, 8, 8)).astype(np.float32),
        [InputSpec("x", np.dtype(np.float32), (None, 3, 8, 8))],
    )
    macs = sum(layer_macs(model, next(dataset.batches(1))).values())
    monkeypatch.setattr(reconstruct_module, "MIN_SAMPLES", 16)
    monkeypatch.setattr(reconstruct_module, "MAX_SAMPLES", 256)
    monkeypatch.setattr(reconstruct_module, "REFIT_MACS", 4 * 50 * macs)
    assert refit_samples(model, dataset, layers=4) == 50  # what the budget affords
    assert refit_samples(model, dataset, layers=1) == 200 >= 16  # 4x the layers' budget
    assert refit_samples(model, dataset, layers=400) == 16  # never below the floor
    monkeypatch.setattr(reconstruct_module, "REFIT_MACS", 1e30)
    assert refit_samples(model, dataset, layers=4) == 256  # never above the cap
    assert refit_samples(model, dataset.subset(12), layers=4) == 12  # small D_var: all


def test_spread_keeps_every_part_of_sorted_data_and_whole_fixed_batches():
    labels = np.repeat(np.arange(5), 20)  # sorted by class, as an image folder is
    specs = [InputSpec("x", np.dtype(np.float32), (None, 2))]
    data = Dataset({"x": np.arange(200, dtype=np.float32).reshape(100, 2)}, specs, labels)
    picked = data.spread(10)
    assert len(picked) == 10 and set(picked.labels.tolist()) == set(range(5))
    assert picked.arrays["x"][0, 0] == 0 and picked.arrays["x"][-1, 0] == 198
    fixed = Dataset(data.arrays, [InputSpec("x", np.dtype(np.float32), (4, 2))], labels)
    assert len(fixed.spread(10)) == 8
    assert data.spread(500) is data


def _moments(x, y):
    stats = NormalEquations(x.shape[1], x.shape[2], y.shape[2])
    stats.update(x, y)
    return stats.moments()


def test_pooled_moments_equal_the_moments_of_all_rows(rng):
    x = rng.standard_normal((300, 2, 5)) * 3 + 7
    y = x @ rng.standard_normal((5, 3)) + rng.standard_normal((300, 2, 3))
    pooled = _moments(x[:110], y[:110]) + _moments(x[110:], y[110:])
    whole = _moments(x, y)
    for field in ("mean_x", "mean_y", "cov_x", "cov_xy", "var_y"):
        np.testing.assert_allclose(getattr(pooled, field), getattr(whole, field), atol=1e-9)
    assert pooled.count == 300


def test_the_ridge_is_chosen_on_held_out_rows(rng):
    """Noise targets from many inputs: the largest ridge wins; exact targets: the smallest."""
    x = rng.standard_normal((120, 1, 60))
    w0 = np.zeros((1, 60, 2))
    noise = rng.standard_normal((120, 1, 2))
    assert choose_ridge(_moments(x[:80], noise[:80]), _moments(x[80:], noise[80:]), w0) == max(
        RIDGE_GRID
    )
    exact = x @ rng.standard_normal((60, 2))
    assert choose_ridge(_moments(x[:80], exact[:80]), _moments(x[80:], exact[80:]), w0) == min(
        RIDGE_GRID
    )


def test_depthwise_layers_are_refit_and_skips_say_why():
    model = build("mobilenet_v2_like", keep_bn=False)
    data = random_feeds(model, batch=48, seed=2)["input"]
    result = onnxprune.ocnna(model, k=40, data=data, reconstruct=True, batch_size=16)
    check(result.model)
    rows = result.report["recovery"]
    assert rows and all(r["refit"] and r["compensated"] for r in rows)
    assert any(r["op"] == "Conv" and r["outputs"] == r["inputs_kept"] for r in rows)  # depthwise
    assert all(r["error_after"] <= r["error_before"] + 1e-12 for r in rows)
    assert all(r["ridge"] in RIDGE_GRID for r in rows)  # chosen per layer on held-out samples

    plain = onnxprune.ocnna(model, k=40, data=data, batch_size=16)
    measured = {r["name"]: r for r in plain.report["recovery"]}
    first = rows[0]  # the first layer sees the same inputs either way
    assert measured[first["name"]]["error_after"] == pytest.approx(first["error_before"], rel=1e-3)

    analysis = analyze(model, {"input": data[:4]})
    masks = {g.index: np.arange(g.size) % 3 != 0 for g in analysis.prunable()}
    pruned = apply_masks(analysis, masks)
    same, fits = reconstruct(
        analysis.model, pruned, data, kept_outputs=kept_outputs(analysis, masks), max_features=2
    )
    assert fits and all(not f.refit and "exceed the limit" in f.reason for f in fits)
    np.testing.assert_array_equal(run(same, data[:4])[0], run(pruned, data[:4])[0])
    no_map, _ = reconstruct(analysis.model, pruned, data[:8])
    check(no_map)
    assert any(
        f.reason and "kept-output map" in f.reason
        for f in measure(analysis.model, pruned, data[:8])
    )


def _constant_channel_model(consumer: onnx.NodeProto, image: bool) -> onnx.ModelProto:
    """x -> producer P (channel 1 constant 0.7 after the Relu) -> Relu -> ``consumer``."""
    rng = np.random.default_rng(3)
    if image:
        p_w, p_b = rng.standard_normal((3, 2, 1, 1)), rng.standard_normal(3)
        producer = helper.make_node("Conv", ["x", "p_w", "p_b"], ["p"], name="P")
        q_w, shape = rng.standard_normal((2, 3, 3, 3)), ["N", 2, 6, 6]
    else:
        p_w, p_b = rng.standard_normal((3, 2)), rng.standard_normal(3)
        producer = helper.make_node("Gemm", ["x", "p_w", "p_b"], ["p"], name="P", transB=1)
        q_w, shape = rng.standard_normal((3, 2)), ["N", 2]
    p_w[1], p_b[1] = 0, 0.7
    nodes = [producer, helper.make_node("Relu", ["p"], ["pr"], name="R"), consumer]
    graph = helper.make_graph(
        nodes,
        "constant_channel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [_init("p_w", p_w), _init("p_b", p_b), _init("q_w", q_w)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("case", ["gemm_no_bias_alpha_beta", "conv_unpadded", "conv_padded"])
def test_compensating_a_constant_channel(case, rng):
    """Exact for dense consumers (also with alpha/beta and no bias) and unpadded convs; a
    padded conv is exact wherever its kernel does not reach into the padding."""
    if case.startswith("gemm"):
        consumer = helper.make_node("Gemm", ["pr", "q_w"], ["y"], name="Q", alpha=0.5, beta=2.0)
    else:
        pads = [1, 1, 1, 1] if case == "conv_padded" else [0, 0, 0, 0]
        consumer = helper.make_node("Conv", ["pr", "q_w"], ["y"], name="Q", pads=pads)
    model = _constant_channel_model(consumer, image=case.startswith("conv"))
    x = rng.standard_normal((16, 2, 6, 6) if case.startswith("conv") else (16, 2))
    feed = {"x": x.astype(np.float32)}
    analysis = analyze(model, feed)
    masks = masks_for_removal(analysis, {"P": [1]})
    pruned = apply_masks(analysis, masks, {"pr": np.array([0.0, 0.7, 0.0])})
    check(pruned)
    got, want = run(pruned, feed)[0], run(model, feed)[0]
    if case == "conv_padded":
        np.testing.assert_allclose(got[:, :, 1:-1, 1:-1], want[:, :, 1:-1, 1:-1], atol=1e-5)
        assert not np.allclose(got, want, atol=1e-3)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_reconstruct_needs_data():
    with pytest.raises(DataError, match="needs data"):
        onnxprune.ocnna(chain_model(), k=40, criterion="l1", reconstruct=True)


def test_cli_reconstruct_end_to_end_on_the_mnist_sample(tmp_path):
    shutil.copy(SAMPLES / "mnist_cnn.onnx", tmp_path / "model.onnx")
    dvar = np.load(SAMPLES / "mnist_dvar.npz")
    np.savez(tmp_path / "dvar.npz", x=dvar["x"][:200])
    test = np.load(SAMPLES / "mnist_test.npz")
    np.savez(tmp_path / "test.npz", x=test["x"][:500], y=test["y"][:500])
    args = ["ocnna", tmp_path / "model.onnx", "--k", 40, "--data", tmp_path / "dvar.npz"]
    args += ["--eval", tmp_path / "test.npz", "--reconstruct", "--report", tmp_path / "r.json"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pruned = onnx.load(str(tmp_path / "model.ocnna-k40.onnx"))
    check(pruned)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["parameters"]["reconstruct"] is True
    rows = report["recovery"]
    assert len(rows) == 5 and all(r["refit"] and r["compensated"] for r in rows)
    assert all(r["error_after"] < r["error_before"] for r in rows)
    assert report["accuracy_after"] >= report["accuracy_before"] - 0.05  # plain: ~0.2
    assert "## Recovery" in (tmp_path / "r.md").read_text()


def test_odf2nna_reconstruct_refits_the_layers_after_removed_units(rng):
    """ODF2NNA removes low-variance units; --reconstruct refits the next layers on the same
    data, every refit layer's error drops, and the outputs get closer to the original's."""
    model = build_dense((6, 16, 12, 3), "matmul_add", "Tanh", seed=3)
    data = rng.standard_normal((300, 6)).astype(np.float32)
    stds = np.concatenate(list(observe_units(model, data).scores.values()))
    epsilon = float(np.quantile(stds, 0.4))
    plain = onnxprune.odf2nna(model, epsilon, data)
    refit = onnxprune.odf2nna(model, epsilon, data, reconstruct=True)
    assert plain.report["parameters"]["reconstruct"] is False
    assert refit.report["parameters"]["reconstruct"] is True
    rows = refit.report["recovery"]
    assert rows and all(row["refit"] for row in rows)
    for before, after in zip(plain.report["recovery"], rows, strict=True):
        assert before["name"] == after["name"]
        assert after["error_after"] < before["error_after"]
    for pruned in (plain.model, refit.model):
        check(pruned)
    held_out = {"input": rng.standard_normal((200, 6)).astype(np.float32)}
    want = run(model, held_out)[0]
    errors = [np.mean((run(m, held_out)[0] - want) ** 2) for m in (plain.model, refit.model)]
    assert errors[1] < errors[0]
