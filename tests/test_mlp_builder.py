"""ODF2NNA's starting MLP: sizing (equation (2)), NaN-aware standardising, export, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from paths import SHARED_DATA as DATA  # noqa: E402

from onnxprune.errors import DataError, ParameterError
from onnxprune.finetune.trainer import TrainData, evaluate
from onnxprune.mlp import build_mlp, export_mlp, hidden_units, mlp_parameter_count, train_mlp
from onnxprune.tabular import Standardizer, detect_task, split_dataset


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train many times faster on one thread, above all on a busy CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def hepatitis() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DATA / "hepatitis.npz")
    return data["X"], data["y"]


# ----------------------------------------------------------------------------- equation (2)


def equation_1(d: int, nu: int, nl: int, nc: int) -> int:
    """The paper's parameter count NP = D NU + NL (NU NC) + NL NU + NC."""
    return d * nu + nl * nu * nc + nl * nu + nc


def test_hidden_units_hand_computed() -> None:
    assert hidden_units(150, 4, 3, 1) == 18  # 147 / 8 = 18.375, floored
    assert hidden_units(14998, 26, 1, 8) == 357  # 14997 / 42 = 357.07
    assert hidden_units(4601, 57, 2, 3) == 69  # 4599 / 66 = 69.68
    assert hidden_units(1000, 10, 1, 5) == 49  # 999 / 20 = 49.95: floor, not round
    assert hidden_units(5, 100, 2, 3) == 1  # budget below one unit: at least 1


def test_spambase_model_of_table_6() -> None:
    """Table 6's original Spambase net has 1262 parameters = 57-21-2; for one hidden
    layer equation (1) is the exact count, so equation (2) recovers the 21 units."""
    assert hidden_units(1262, 57, 2, 1) == 21
    assert mlp_parameter_count(57, 2, 1, 21) == 1262 == equation_1(57, 21, 1, 2)


@pytest.mark.parametrize("rows", [50, 699, 4601, 14998, 25010])
@pytest.mark.parametrize("d,nc,nl", [(4, 3, 1), (9, 2, 3), (26, 1, 8), (57, 2, 10)])
def test_hidden_units_is_the_largest_fitting_budget(rows: int, d: int, nc: int, nl: int) -> None:
    units = hidden_units(rows, d, nc, nl)
    if units > 1:
        assert equation_1(d, units, nl, nc) <= rows < equation_1(d, units + 1, nl, nc)


def test_hidden_units_rejects_bad_sizes() -> None:
    for args in [(0, 4, 3, 1), (100, 0, 3, 1), (100, 4, 0, 1), (100, 4, 3, 0), (100.5, 4, 3, 1)]:
        with pytest.raises(ParameterError):
            hidden_units(*args)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- standardizer


def test_standardizer_matches_numpy_on_real_missing_values(hepatitis) -> None:
    x, _ = hepatitis
    assert np.isnan(x).any()
    scale = Standardizer.fit(x)
    mean = np.nanmean(x.astype(np.float64), axis=0)
    std = np.nanstd(x.astype(np.float64), axis=0)
    np.testing.assert_array_equal(scale.mean, mean.astype(np.float32))
    np.testing.assert_allclose(scale.std, std.astype(np.float32), rtol=1e-6)

    imputed = np.where(np.isnan(x), scale.mean, x)
    np.testing.assert_array_equal(scale.impute(x), imputed)
    expected = (imputed - scale.mean) / scale.std
    got = scale.transform(x)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    assert np.all(got[np.isnan(x)] == 0.0)  # an imputed cell sits exactly at the mean


def test_standardizer_edge_columns() -> None:
    x = np.array(
        [[1.0, np.nan, 0.1, 2.0], [3.0, np.nan, 0.1, np.nan], [5.0, np.nan, np.nan, 4.0]],
        dtype=np.float32,
    )
    scale = Standardizer.fit(x)
    np.testing.assert_array_equal(scale.mean, np.array([3.0, 0.0, 0.1, 3.0], np.float32))
    np.testing.assert_allclose(scale.std, [np.sqrt(8 / 3), 1.0, 1.0, 1.0], rtol=1e-6)
    out = scale.transform(x)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[:, 1:3], 0.0)  # all-NaN and constant columns -> 0
    with pytest.raises(DataError):
        Standardizer.fit(np.array([[1.0, np.inf]], np.float32))
    with pytest.raises(DataError):
        scale.transform(np.zeros((2, 3), np.float32))


# ----------------------------------------------------------------------------- model + export


def test_build_mlp_shape_and_parameters() -> None:
    module = build_mlp(19, 2, 3, 12, standardizer=Standardizer.identity(19))
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (19, 12),
        (12, 12),
        (12, 12),
        (12, 2),
    ]
    assert sum(p.numel() for p in module.parameters()) == mlp_parameter_count(19, 2, 3, 12)
    assert module(torch.zeros(5, 19)).shape == (5, 2)
    with pytest.raises(ParameterError):
        build_mlp(19, 2, 3, 12, activation="swish")


def test_export_runs_on_raw_data_with_nan(hepatitis, tmp_path: Path) -> None:
    x, _ = hepatitis
    torch.manual_seed(0)
    module = build_mlp(19, 2, 2, 16, activation="tanh", standardizer=Standardizer.fit(x))
    path = tmp_path / "mlp.onnx"
    model = export_mlp(module, 19, path)
    assert path.exists() and onnx.load(str(path)) == model
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    ops = [n.op_type for n in model.graph.node]
    assert ops[:4] == ["IsNaN", "Where", "Sub", "Div"] and ops.count("Gemm") == 3

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.isfinite(expected).all()
    got = session.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    one = session.run(None, {"input": x[:1]})[0]  # dynamic batch
    np.testing.assert_allclose(one, expected[:1], atol=1e-5, rtol=0)
    imputed = session.run(None, {"input": Standardizer.fit(x).impute(x)})[0]
    np.testing.assert_allclose(imputed, got, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- task, split


def test_detect_task() -> None:
    assert detect_task(np.array([0, 1, 2])) == "classification"
    assert detect_task(np.array([True, False])) == "classification"
    assert detect_task(np.array([0.0, 1.0, 2.0], np.float32)) == "regression"  # documented
    assert detect_task(np.array([0.0, 1.0]), force="classification") == "classification"
    with pytest.raises(DataError):
        detect_task(np.array(["a", "b"]))


def test_split_is_stratified_and_deterministic(hepatitis) -> None:
    x, y = hepatitis
    x_tr, x_te, y_tr, y_te = split_dataset(x, y, test_fraction=0.2, seed=3)
    assert len(y_tr) + len(y_te) == len(y)
    for label in np.unique(y):
        assert (y_te == label).sum() == round((y == label).sum() * 0.2)
    again = split_dataset(x, y, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[1], x_te)
    other = split_dataset(x, y, test_fraction=0.2, seed=4)
    assert not np.array_equal(np.nan_to_num(other[1]), np.nan_to_num(x_te))
    rows = {tuple(np.nan_to_num(r)) for r in x_tr} | {tuple(np.nan_to_num(r)) for r in x_te}
    assert len(rows) == len({tuple(np.nan_to_num(r)) for r in x})

    targets = np.linspace(0, 1, 101, dtype=np.float32)
    _, _, r_tr, r_te = split_dataset(targets[:, None], targets, 0.25, seed=0)
    assert len(r_te) == 25 and len(np.intersect1d(r_tr, r_te)) == 0
    with pytest.raises(ParameterError):
        split_dataset(x, y, test_fraction=1.0)


# ----------------------------------------------------------------------------- train_mlp


def test_train_mlp_classification_end_to_end(tmp_path: Path) -> None:
    data = np.load(DATA / "iris.npz")
    x_tr, x_te, y_tr, y_te = split_dataset(data["X"], data["y"], 0.3, seed=0)
    module, result = train_mlp(
        x_tr, y_tr, num_layers=2, epochs=60, batch_size=16, lr=1e-2, patience=30, progress=False
    )
    assert module.layers[0].out_features == hidden_units(105 - 12, 4, 3, 2)  # NP = rows trained on
    assert result.metric == "accuracy"
    accuracy = evaluate(module, TrainData(x_te, y_te), "classification")
    assert accuracy >= 0.9
    model = export_mlp(module, 4, tmp_path / "iris.onnx")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    predicted = session.run(None, {"input": x_te})[0].argmax(axis=1)
    assert float(np.mean(predicted == y_te)) == accuracy


def test_train_mlp_regression_predicts_raw_targets() -> None:
    """Targets are trained standardised; the folded output layer gives raw-scale MSE."""
    data = np.load(DATA / "pole.npz")
    x, y = data["X"][:2000], data["y"][:2000]
    x_tr, x_ev, y_tr, y_ev = split_dataset(x, y, 0.25, seed=0)
    module, result = train_mlp(
        x_tr,
        y_tr,
        x_ev,
        y_ev,
        num_layers=2,
        num_units=32,
        epochs=10,
        batch_size=64,
        lr=3e-3,
        progress=False,
    )
    raw_mse = evaluate(module, TrainData(x_ev, y_ev), "regression")
    assert raw_mse == pytest.approx(result.best_metric * float(np.var(y_tr)), rel=1e-4)
    assert raw_mse < 0.3 * float(np.mean((y_ev - y_tr.mean()) ** 2))
