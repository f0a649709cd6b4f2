"""A hidden layer losing every unit is removed; a least-squares Gemm joins its neighbours.

The exactness tests use layers that are linear on the data (ReLU units whose large bias
keeps them positive, tiny weights so their std is below epsilon): the best linear bridge
then reproduces the original outputs, which a mean-only replacement cannot.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import check, expose, run
from dense_forms import FORMS, build_dense, layer_units, sample
from onnx import TensorProto, helper, numpy_helper

from onnxprune import odf2nna
from onnxprune.graph.bridge import solve_bridge
from onnxprune.normal_equations import NormalEquations
from onnxprune.report import to_markdown

EPSILON = 0.1
TINY = 0.01  # weight scale of the layers meant to go: their units' std is ~0.02
LOUD = 25.0  # weight scale of the layer after them, to make its units vary again
BIAS_FORMS = [f for f in FORMS if not f.endswith("nobias")]


def _linear_layers(widths, layers, form="gemm_tb1", seed=0, constant=None):
    """Tanh layers, except ``layers``: ReLU units kept positive by a bias of 3 (so linear
    on the data) with tiny weights; the layer after them amplifies and re-centres."""
    acts = ["Relu" if i in layers else "Tanh" for i in range(len(widths) - 2)]
    after = max(layers) + 1
    return build_dense(
        widths,
        form,
        acts,
        weight_scale={**{i: TINY for i in layers}, after: LOUD / np.sqrt(widths[after])},
        bias_value={i: 3.0 for i in layers},
        input_offset={after: 3.0},
        constant_units=constant,
        seed=seed,
    )


def _assert_close(pruned: onnx.ModelProto, model: onnx.ModelProto, x: np.ndarray) -> float:
    want, got = run(model, x)[0], run(pruned, x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    return float(np.abs(got - want).max())


def _hidden_std(model, x, name):
    return run(expose(model, [name]), x)[1].std(axis=0)


@pytest.mark.parametrize("form", BIAS_FORMS)
def test_emptied_layer_is_removed_and_bridged_exactly(form):
    model = _linear_layers((5, 8, 6, 3), {1}, form)
    x = sample(model, rows=400)
    assert _hidden_std(model, x, "dense0_act").min() > EPSILON  # layer 0 stays whole
    assert _hidden_std(model, x, "dense1_act").max() < EPSILON  # layer 1 goes
    pruned, report = odf2nna(model, EPSILON, x)
    check(pruned)
    assert layer_units(pruned) == [8, 3]
    names = {node.name for node in pruned.graph.node}
    assert "dense1_bridge" in names and not names & {"dense1", "act1", "dense2"}
    (removed,) = report["layers_removed"]
    assert removed["layers"] == ["dense1"]
    assert removed["inputs"] == "dense0_act" and removed["target"] == "output"
    assert removed["fit_r2"] > 0.999999
    assert [(layer["kept"], layer["total"]) for layer in report["layers"]][:2] == [(8, 8), (0, 6)]
    assert "## Hidden layers removed" in to_markdown(report)
    bridged_error = _assert_close(pruned, model, x)

    # Without the bridge the layer keeps its most variable unit and the rest is mean-folded.
    kept_one, other = odf2nna(model, EPSILON, x, bridge=False)
    assert layer_units(kept_one) == [8, 1, 3]
    assert other["layers_not_bridged"][0]["reason"] == "bridging is off"
    assert np.abs(run(kept_one, x)[0] - run(model, x)[0]).max() > 10 * bridged_error


@pytest.mark.parametrize("form", ["gemm_tb1_nobias", "gemm_tb0_nobias"])
def test_bias_free_layers_are_bridged_too(form):
    """Without biases the layer is not linear on the data, so the fit is approximate."""
    model = build_dense((5, 8, 6, 3), form, ["Tanh", "Tanh"], weight_scale={1: TINY})
    x = sample(model, rows=400)
    pruned, report = odf2nna(model, EPSILON, x)
    check(pruned)
    assert layer_units(pruned) == [8, 3]
    assert report["layers_removed"][0]["layers"] == ["dense1"]
    bridged = np.abs(run(pruned, x)[0] - run(model, x)[0]).max()
    kept_one = odf2nna(model, EPSILON, x, bridge=False).model
    assert bridged < np.abs(run(kept_one, x)[0] - run(model, x)[0]).max()


def test_consecutive_emptied_layers_share_one_bridge():
    model = _linear_layers((5, 8, 6, 7, 3), {1, 2}, "matmul_add")
    x = sample(model, rows=400)
    pruned, report = odf2nna(model, EPSILON, x)
    check(pruned)
    assert layer_units(pruned) == [8, 3]
    (removed,) = report["layers_removed"]
    assert removed["layers"] == ["dense1", "dense2"]
    assert removed["bridge"] == "dense1_bridge"
    _assert_close(pruned, model, x)


def test_bridge_feeds_only_the_next_layers_kept_units():
    model = _linear_layers((5, 8, 6, 7, 3), {1}, "gemm_tb0", constant={2: [1, 3]})
    x = sample(model, rows=400)
    pruned, report = odf2nna(model, EPSILON, x)
    check(pruned)
    assert layer_units(pruned) == [8, 5, 3]
    assert report["layers_removed"][0]["target"] == "dense2_pre"
    _assert_close(pruned, model, x)


def test_first_hidden_layer_bridge_reads_the_model_input():
    model = _linear_layers((5, 6, 8, 3), {0}, "gemm_tb1")
    x = sample(model, rows=400)
    pruned, report = odf2nna(model, EPSILON, x)
    check(pruned)
    assert layer_units(pruned) == [8, 3]
    assert report["layers_removed"][0]["inputs"] == "input"
    _assert_close(pruned, model, x)


def test_layer_feeding_two_layers_is_not_bridged_and_keeps_one_unit():
    """hidden -> (head A, head B) -> Add: no single next layer to join, so no bridge."""
    rng = np.random.default_rng(0)

    def init(name, *shape, scale=1.0):
        return numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name)

    inits = [
        init("w0", 6, 5),
        init("b0", 6),
        init("w1", 4, 6, scale=TINY),
        numpy_helper.from_array(np.full(4, 3.0, np.float32), "b1"),
        init("wa", 3, 4),
        init("wb", 3, 4),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w0", "b0"], ["h0"], name="dense0", transB=1),
        helper.make_node("Tanh", ["h0"], ["a0"], name="act0"),
        helper.make_node("Gemm", ["a0", "w1", "b1"], ["h1"], name="dense1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="act1"),
        helper.make_node("Gemm", ["a1", "wa"], ["ya"], name="head_a", transB=1),
        helper.make_node("Gemm", ["a1", "wb"], ["yb"], name="head_b", transB=1),
        helper.make_node("Add", ["ya", "yb"], ["output"], name="join"),
    ]
    graph = helper.make_graph(
        nodes,
        "two_heads",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = sample(model, rows=200)
    pruned, report = odf2nna(model, EPSILON, x)
    check(pruned)
    assert report["layers_removed"] == []
    (entry,) = report["layers_not_bridged"]
    assert entry["layer"] == "dense1" and "feeds 2 layers" in entry["reason"]
    assert layer_units(pruned)[:2] == [6, 1]


def test_normal_equations_match_numpy_lstsq_when_streamed():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 7)) * 0.01 + 1000.0  # big offset, small variation
    w = rng.normal(size=(7, 3))
    y = (x - 1000.0) @ w + 5.0 + 1e-4 * rng.normal(size=(500, 3))
    system = NormalEquations(1, 7, 3)
    for start in range(0, 500, 37):
        system.update(x[start : start + 37, None], y[start : start + 37, None])
    fit = solve_bridge(system)
    design = np.hstack([x - 1000.0, np.ones((500, 1))])
    reference = np.linalg.lstsq(design, y, rcond=None)[0]
    np.testing.assert_allclose(fit.weight, reference[:7], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fit.bias, reference[7] - 1000.0 * reference[:7].sum(0), rtol=1e-6)
    residual = y - (x @ fit.weight + fit.bias)
    r2 = 1 - (residual**2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert fit.r2 == pytest.approx(r2, abs=1e-9)
