"""ODF2NNA on trained dense networks: every exporter form, exactness, errors, Algorithm 1."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from builders import build, check, expose, run
from dense_forms import ACTIVATIONS, FORMS, build_dense, layer_units, sample
from paths import SHARED_DATA

from onnxprune import DataError, ModelError, ParameterError, odf2nna
from onnxprune.analyze import analyze
from onnxprune.importance import ODF2NNA
from onnxprune.io import load_data
from onnxprune.methods.odf2nna import dense_groups
from onnxprune.score import consumer_inputs, score_sources


def _same_outputs(pruned: onnx.ModelProto, model: onnx.ModelProto, x: np.ndarray) -> None:
    np.testing.assert_allclose(run(pruned, x)[0], run(model, x)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("form", FORMS)
def test_constant_units_are_removed_and_outputs_unchanged(form, activation):
    constant = {0: [1, 4, 6], 1: [0, 5]}
    model, x = _without_chance_dead_units(form, activation, constant)
    pruned, report = odf2nna(model, 0.0, x)
    check(pruned)
    _same_outputs(pruned, model, x)
    assert layer_units(pruned) == [8 - 3, 6 - 2, 3]
    assert [(layer["kept"], layer["total"]) for layer in report["layers"]] == [
        (5, 8),
        (4, 6),
        (3, 3),
    ]
    assert report["layers_removed"] == []
    assert report["params_after"] < report["params_before"]


LIVE = {0: 0.5, 1: 0.5}  # positive biases: ReLU units rarely die by chance


def _without_chance_dead_units(form, activation, constant):
    """The first seed where only the chosen units are constant (a ReLU unit can also be
    dead by chance, and would rightly be removed too)."""
    for seed in range(20):
        model = build_dense(
            (5, 8, 6, 3), form, activation, constant_units=constant, bias_value=LIVE, seed=seed
        )
        x = sample(model)
        values = run(expose(model, ["dense0_act", "dense1_act"]), x)[1:]
        dead = [np.flatnonzero(np.ptp(v, axis=0) == 0).tolist() for v in values]
        if dead == [constant[0], constant[1]]:
            return model, x
    raise AssertionError("no seed without chance-dead units")


@pytest.mark.parametrize("form", ["gemm_tb1", "matmul_add"])
def test_softmax_output_is_never_pruned(form):
    model = build_dense((5, 8, 6, 4), form, ["Tanh", "Sigmoid"], softmax_output=True)
    x = sample(model)
    pruned, report = odf2nna(model, 1e6, x)  # every hidden unit is below epsilon
    check(pruned)
    assert layer_units(pruned)[-1] == 4
    assert run(pruned, x)[0].shape == (len(x), 4)
    np.testing.assert_allclose(run(pruned, x)[0].sum(axis=1), 1.0, rtol=1e-5)
    output = [layer for layer in report["layers"] if not layer["prunable"]]
    assert [(layer["kept"], layer["total"]) for layer in output] == [(4, 4)]


def test_hidden_softmax_layer_is_frozen_with_its_reason():
    constant = {0: [2], 1: [1, 3]}
    model = build_dense((5, 8, 6, 3), "gemm_tb1", ["Softmax", "Relu"], constant_units=constant)
    x = sample(model)
    pruned, report = odf2nna(model, 0.0, x)
    check(pruned)
    _same_outputs(pruned, model, x)
    assert layer_units(pruned) == [8, 4, 3]  # the Softmax layer keeps its constant unit
    reasons = [entry["reason"] for entry in report["frozen"]]
    assert any("normalises over channels" in reason for reason in reasons)


def test_threshold_is_strict_std_over_the_data():
    model = build_dense((5, 12, 3), "gemm_tb0", "Tanh", seed=3)
    x = sample(model, rows=300)
    hidden = run(_exposed(model, "dense0_act"), x)[1]
    std = hidden.std(axis=0)
    epsilon = float(np.sort(std)[4])  # exactly the 5th smallest: it goes too (std > epsilon)
    pruned, report = odf2nna(model, epsilon, x)
    check(pruned)
    assert layer_units(pruned) == [int((std > epsilon).sum()), 3] == [7, 3]
    assert report["parameters"]["epsilon"] == epsilon
    np.testing.assert_allclose(report["unit_std"][0]["std_max"], std.max(), rtol=1e-5)


def _exposed(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    return expose(model, [name])


@pytest.mark.parametrize("form", ["gemm_tb1", "gemm_tb0_nobias", "matmul_add"])
def test_compensation_means_are_the_scored_tensors(form):
    """One pass gives each unit's std (its watched output) and the mean folded into the
    next layer, which reads that same tensor in Gemm/MatMul -> act -> Gemm/MatMul chains."""
    model = build_dense((5, 8, 6, 3), form, ["Relu", "Elu"])
    x = sample(model)
    analysis = analyze(model, {"input": x[:8]})
    groups = dense_groups(analysis)
    watched = {source.name: source.watched for group in groups for source in group.sources}
    assert set(watched.values()) == set(consumer_inputs(analysis, groups))
    assert set(watched.values()) == {"dense0_act", "dense1_act"}
    dataset = load_data(x, analysis.specs)
    stds, means = score_sources(analysis, groups, ODF2NNA(), dataset, 64, compensate=True)
    for source, tensor in watched.items():
        values = run(expose(model, [tensor]), x)[1].astype(np.float64)
        np.testing.assert_allclose(stds[source], values.std(axis=0), rtol=1e-5)
        np.testing.assert_allclose(means[tensor], values.mean(axis=0), rtol=1e-5)


def test_torch_mlp_and_report_fields():
    model = build("mlp")  # Linear-ReLU-Linear-Tanh-Linear from torch
    x = np.random.default_rng(0).normal(size=(200, 16)).astype(np.float32)
    y = run(model, x)[0].argmax(axis=1)
    pruned, report = odf2nna(model, 0.25, x, eval_data={"x": x, "y": y})
    check(pruned)
    for key in ("method", "parameters", "params_before", "params_after", "flops_before"):
        assert key in report
    assert report["method"] == "odf2nna"
    assert report["accuracy_before"] == 1.0
    assert report["params_after"] < report["params_before"]
    meta = {p.key: p.value for p in pruned.metadata_props}
    assert meta["onnxprune.method"] == "odf2nna"


# ----------------------------------------------------------------------------- bad input


def test_negative_epsilon_is_refused():
    model = build_dense()
    with pytest.raises(ParameterError, match="epsilon must be a finite number >= 0"):
        odf2nna(model, -0.1, sample(model))
    with pytest.raises(ParameterError, match="epsilon"):
        odf2nna(model, float("nan"), sample(model))


def test_model_without_prunable_dense_layer_is_refused():
    single = build_dense((5, 3))  # only the output layer
    with pytest.raises(ModelError, match="no prunable dense layer"):
        odf2nna(single, 0.1, sample(single))
    convs = build("squeezenet_fire")
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ModelError, match="no prunable dense layer"):
        odf2nna(convs, 0.1, x)


def test_data_that_does_not_fit_and_nan_are_refused():
    model = build_dense()
    with pytest.raises(DataError, match=r"expects \(N, 5\)"):
        odf2nna(model, 0.1, np.zeros((4, 7), np.float32))
    bad = sample(model)
    bad[3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        odf2nna(model, 0.1, bad)
    with pytest.raises(DataError, match="needs data"):
        odf2nna(model, 0.1, None)


# ----------------------------------------------------------------------------- Algorithm 1


def test_algorithm_1_on_hepatitis_with_missing_values():
    torch = pytest.importorskip("torch")
    from onnxprune import odf2nna_from_dataset
    from onnxprune.tabular import split_dataset

    torch.set_num_threads(1)
    data = np.load(SHARED_DATA / "hepatitis.npz")
    x_train, x_test, y_train, y_test = split_dataset(data["X"], data["y"], 0.2, seed=0)
    assert np.isnan(x_train).any() and np.isnan(x_test).any()
    result = odf2nna_from_dataset(
        {"x": x_train, "y": y_train},
        {"x": x_test, "y": y_test},
        [0.3, 100.0],
        layers=1,
        units=25,
        epochs=20,
        verbose=False,
    )
    report = result.report
    assert report["architecture"] == "19-25-2"
    assert report["missing_values"]["train"] == int(np.isnan(x_train).sum())
    assert report["training"]["refine_epochs"] == 3  # 15% of 20
    # The ONNX files take raw features: NaN is imputed inside the graph.
    raw = run(result.original, x_test)[0]
    assert np.isfinite(raw).all()
    for epsilon_run in result.runs:
        for model in (epsilon_run.pruned, epsilon_run.refined):
            check(model)
            assert np.isfinite(run(model, x_test)[0]).all()
    low, high = (r.report["row"] for r in result.runs)
    assert low["params_original"] == 19 * 25 + 25 + 25 * 2 + 2
    assert high["layers_removed"] == 1 and high["architecture_pruned"] == "19-2"
    assert result.runs[1].report["layers_removed"][0]["layers"] == ["/layers/layers.0/Gemm"]
    accuracy = (run(result.runs[0].refined, x_test)[0].argmax(1) == y_test).mean()
    assert low["refined"] == pytest.approx(accuracy)


def test_algorithm_1_regression_and_bad_tables():
    pytest.importorskip("torch")
    from onnxprune import odf2nna_from_dataset

    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)).astype(np.float32)
    y = (x[:, 0] - 2 * x[:, 1] + 0.05 * rng.normal(size=240)).astype(np.float32) * 50 + 100
    train, test = {"x": x[:200], "y": y[:200]}, {"x": x[200:], "y": y[200:]}
    result = odf2nna_from_dataset(train, test, 0.05, layers=2, epochs=10, verbose=False)
    row = result.report["rows_by_epsilon"][0]
    assert result.report["task"] == "regression" and row["metric"] == "mse"
    assert row["refined"] is not None and row["refined"] < np.var(y[200:])
    with pytest.raises(DataError, match="5 features but training data 4"):
        odf2nna_from_dataset(train, {"x": np.zeros((3, 5)), "y": np.zeros(3)}, 0.1)
    with pytest.raises(DataError, match="needs arrays 'x'"):
        odf2nna_from_dataset({"y": y}, test, 0.1)
    with pytest.raises(ParameterError, match="epsilon"):
        odf2nna_from_dataset(train, test, [0.1, -1.0])


@pytest.mark.parametrize("form", ["gemm_tb1", "gemm_tb0"])
def test_output_rescaling_folds_into_the_final_gemm(form):
    """The regression refine trains on standardised targets: y' = s * y + t, exactly."""
    from onnxprune.methods.odf2nna_dataset import _scale_output

    model = build_dense((5, 8, 2), form)
    x = sample(model)
    scale, shift = np.array([2.5e-4, 3.0]), np.array([-1.0, 7.0])
    scaled = _scale_output(model, scale, shift)
    check(scaled)
    np.testing.assert_allclose(run(scaled, x)[0], run(model, x)[0] * scale + shift, rtol=1e-5)
    back = _scale_output(scaled, 1 / scale, -shift / scale)
    np.testing.assert_allclose(run(back, x)[0], run(model, x)[0], rtol=1e-4, atol=1e-5)
    assert len(back.graph.initializer) == len(model.graph.initializer)


def test_sweep_observes_once_and_matches_single_runs():
    from onnxprune.methods.odf2nna import odf2nna_sweep

    model = build_dense((5, 12, 8, 3), "matmul_add", ["Tanh", "Elu"], seed=4)
    x = sample(model)
    epsilons = [0.0, 0.2, 0.4, 1e6]
    swept = odf2nna_sweep(model, epsilons, x)
    assert len({r.report["timings"]["score_s"] for r in swept}) == 1  # one pass
    for epsilon, result in zip(epsilons, swept):
        single = odf2nna(model, epsilon, x)
        assert layer_units(result.model) == layer_units(single.model)
        np.testing.assert_array_equal(run(result.model, x)[0], run(single.model, x)[0])
    assert layer_units(swept[-1].model) == [3]  # both hidden layers bridged away
