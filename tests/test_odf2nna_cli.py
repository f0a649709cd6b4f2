"""`onnxprune odf2nna` (both forms, --sweep) and `onnxprune sweep odf2nna`: outputs, one
observation pass for all epsilons, and one clear line per bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import check, run
from cli_runs import invoke, sha
from dense_forms import build_dense, layer_units, sample
from paths import SHARED_DATA

import onnxprune
import onnxprune.methods.odf2nna as odf2nna_method
from onnxprune.cli.odf2nna import parse_sweep
from onnxprune.errors import ParameterError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def workdir(tmp_path):
    """A dense model whose second hidden layer is linear on the data and varies < 0.1, its
    measuring data, class labels (test.npz) and float targets (targets.npz)."""
    model = build_dense(
        (5, 8, 6, 3),
        "matmul_add",
        ["Tanh", "Relu"],
        weight_scale={1: 0.01},
        bias_value={1: 3.0},
        constant_units={0: [2]},
    )
    onnx.save(model, str(tmp_path / "mlp.onnx"))
    x = sample(model, rows=300)
    out = run(model, x)[0]
    noise = np.random.default_rng(3).normal(scale=0.05, size=out.shape).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x[:200])
    np.savez(tmp_path / "test.npz", x=x[200:], y=out[200:].argmax(axis=1))
    np.savez(tmp_path / "targets.npz", x=x[200:], y=out[200:] + noise[200:])  # regression
    return tmp_path


def test_prune_trained_model_writes_model_and_report(workdir):
    before = sha(workdir / "mlp.onnx")
    result = invoke(
        "odf2nna",
        workdir / "mlp.onnx",
        "--epsilon",
        0.1,
        "--data",
        workdir / "eval.npz",
        "--eval",
        workdir / "test.npz",
        "--report",
        workdir / "r.json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert sha(workdir / "mlp.onnx") == before
    pruned = onnx.load(str(workdir / "mlp.odf2nna-e0.1.onnx"))
    check(pruned)
    assert layer_units(pruned) == [7, 3]  # the constant unit gone, layer 2 bridged away
    report = json.loads((workdir / "r.json").read_text())
    assert report["method"] == "odf2nna" and report["parameters"]["epsilon"] == 0.1
    assert report["layers_removed"][0]["layers"] == ["dense1"]
    assert report["accuracy_before"] == 1.0 and report["accuracy_after"] >= 0.98
    assert "Hidden layers removed" in (workdir / "r.md").read_text()


def test_reconstruct_flag_refits_the_layers_after_removed_units(workdir):
    args = ["odf2nna", workdir / "mlp.onnx", "--epsilon", 0.1, "--data", workdir / "eval.npz"]
    args.append("--no-bridge")  # layer 2 keeps a unit, so the layers after it lose inputs
    for flag, name in (([], "plain"), (["--reconstruct"], "refit")):
        result = invoke(
            *args, *flag, "-o", workdir / f"{name}.onnx", "--report", workdir / f"{name}.json", "-q"
        )
        assert result.exit_code == 0, result.output
        check(onnx.load(str(workdir / f"{name}.onnx")))
    plain, refit = (json.loads((workdir / f"{n}.json").read_text()) for n in ("plain", "refit"))
    assert plain["parameters"]["reconstruct"] is False
    assert refit["parameters"]["reconstruct"] is True
    assert plain["recovery"] and not any(row["refit"] for row in plain["recovery"])
    assert any(row["refit"] for row in refit["recovery"])


def test_distill_flag_trains_the_pruned_mlp_in_place(workdir):
    args = ["odf2nna", workdir / "mlp.onnx", "--epsilon", 0.1, "--data", workdir / "eval.npz"]
    args += ["--no-bridge", "--reconstruct", "-q"]
    for flag, name in (([], "refit"), (["--distill", "2"], "distilled")):
        result = invoke(
            *args, *flag, "-o", workdir / f"{name}.onnx", "--report", workdir / f"{name}.json"
        )
        assert result.exit_code == 0, result.output
    refit, distilled = (onnx.load(str(workdir / f"{n}.onnx")) for n in ("refit", "distilled"))
    check(distilled)
    assert [(n.name, n.op_type) for n in distilled.graph.node] == [
        (n.name, n.op_type) for n in refit.graph.node
    ]
    report = json.loads((workdir / "distilled.json").read_text())
    assert report["parameters"]["distill"] == 2
    assert report["distill"]["epochs"] == 2 and len(report["distill"]["loss"]) == 3
    assert report["recovery"] and all(row["distilled"] for row in report["recovery"])


def test_sweep_writes_table_json_and_plot(workdir):
    result = invoke(
        "odf2nna",
        workdir / "mlp.onnx",
        "--sweep",
        "0,0.05:0.15:0.05,5",
        "--data",
        workdir / "eval.npz",
        "--eval",
        workdir / "test.npz",
        "-o",
        workdir / "out",
        "-q",
    )
    assert result.exit_code == 0, result.output
    for epsilon in ("0", "0.05", "0.1", "0.15", "5"):
        check(onnx.load(str(workdir / f"out-e{epsilon}.onnx")))
    table = json.loads((workdir / "out-sweep.json").read_text())
    assert [row["epsilon"] for row in table["rows"]] == [0, 0.05, 0.1, 0.15, 5]
    params = [row["params_pruned"] for row in table["rows"]]
    assert params == sorted(params, reverse=True)
    assert params[0] < table["rows"][0]["params_original"]
    markdown = (workdir / "out-sweep.md").read_text()
    assert markdown.count("\n| ") == 1 + 5 and "accuracy PWR" in markdown
    assert (workdir / "out-sweep.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "| 5 |" in result.output


def test_sweep_into_a_directory_keeps_the_model_name(workdir):
    (workdir / "runs").mkdir()
    data = ["--data", workdir / "eval.npz", "--eval", workdir / "test.npz"]
    result = invoke(
        "odf2nna", workdir / "mlp.onnx", "--sweep", "0,0.1", *data, "-o", workdir / "runs", "-q"
    )
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (workdir / "runs").iterdir())
    assert names == [
        "mlp.odf2nna-e0.1.onnx",
        "mlp.odf2nna-e0.onnx",
        "mlp.odf2nna-sweep.json",
        "mlp.odf2nna-sweep.md",
        "mlp.odf2nna-sweep.png",
    ]


def test_algorithm_1_from_train_and_test_tables(tmp_path):
    data = np.load(SHARED_DATA / "iris.npz")
    order = np.random.default_rng(0).permutation(150)
    x, y = data["X"][order], data["y"][order]
    np.savez(tmp_path / "train.npz", X=x[:120], y=y[:120])
    np.savez(tmp_path / "test.npz", X=x[120:], y=y[120:])
    args = ["odf2nna", "--train", tmp_path / "train.npz", "--test", tmp_path / "test.npz"]
    args += ["--layers", 1, "--units", 10, "--epsilon", 0.05, "--epochs", 20, "-q"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    prefix = tmp_path / "train.odf2nna"
    for suffix in ("original", "pruned-e0.05", "refined-e0.05"):
        model = onnx.load(f"{prefix}.{suffix}.onnx")
        check(model)
        assert run(model, x[120:])[0].shape == (30, 3)
    report = json.loads(Path(f"{prefix}.report.json").read_text())
    assert report["architecture"] == "4-10-3" and report["task"] == "classification"
    assert report["training"]["refine_epochs"] == 3
    (row,) = report["rows"]
    assert row["metric"] == "accuracy" and row["refined"] is not None
    assert Path(f"{prefix}.report.png").exists() and Path(f"{prefix}.report.md").exists()
    again = invoke(*args)  # outputs exist: refused before any training
    assert again.exit_code == 5 and "use --force" in again.output


def _one_line_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and text in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--epsilon", -0.5, "--data", "eval.npz"], 2, "epsilon must be a finite number >= 0"),
        (["--sweep", "0.1,-1", "--data", "eval.npz", "--eval", "test.npz"], 2, "epsilon"),
        (["--sweep", "0.1:x:1", "--data", "eval.npz", "--eval", "test.npz"], 2, "bad --sweep"),
        (["--data", "eval.npz"], 2, "exactly one of --epsilon and --sweep"),
        (["--epsilon", 0.1], 2, "needs --data"),
        (["--sweep", "0.1,0.2", "--data", "eval.npz"], 2, "--sweep needs --eval"),
        (["--epsilon", 0.1, "--data", "wide.npz"], 4, "expects (N, 5)"),
        (["--epsilon", 0.1, "--data", "nan.npz"], 4, "NaN"),
        (["--epsilon", 0.1, "--data", "eval.npz", "--eval", "eval.npz"], 4, "needs a 'y'"),
        (["--epsilon", 0.1, "--data", "eval.npz", "-o", "x.json"], 2, "must end in .onnx"),
        (["--epsilon", 0.1, "--data", "eval.npz", "--report", "r.md"], 2, "must end in .json"),
        (["--epsilon", 0.1, "--data", "eval.npz", "--distill", -1], 2, "not in the range x>=0"),
        (["--epsilon", 0.1, "--data", "eval.npz", "--distill", 1, "--distill-lr", 0], 2, "> 0"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(workdir, args, code, text):
    np.savez(workdir / "wide.npz", x=np.zeros((4, 7), np.float32))
    bad = np.load(workdir / "eval.npz")["x"].copy()
    bad[5, 1] = np.nan
    np.savez(workdir / "nan.npz", x=bad)
    before = sorted(p.name for p in workdir.iterdir())
    args = [workdir / a if str(a).endswith(".npz") else a for a in args]
    _one_line_error(invoke("odf2nna", workdir / "mlp.onnx", *args), code, text)
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_model_without_prunable_dense_layer_and_form_mixups(workdir):
    onnx.save(build_dense((5, 3)), str(workdir / "linear.onnx"))
    before = sorted(p.name for p in workdir.iterdir())
    result = invoke(
        "odf2nna", workdir / "linear.onnx", "--epsilon", 0.1, "--data", workdir / "eval.npz"
    )
    _one_line_error(result, 3, "no prunable dense layer")
    result = invoke("odf2nna", "--epsilon", 0.1, "--train", workdir / "eval.npz")
    _one_line_error(result, 2, "--train and --test")
    result = invoke(
        "odf2nna", workdir / "mlp.onnx", "--epsilon", 0.1, "--train", workdir / "eval.npz"
    )
    _one_line_error(result, 2, "either MODEL with --data, or --train and --test")
    result = invoke("odf2nna", workdir / "missing.onnx", "--epsilon", 0.1, "--data", "e.npz")
    _one_line_error(result, 3, "model file not found")
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_parse_sweep_lists_and_ranges():
    assert parse_sweep("0.002,0.01") == [0.002, 0.01]
    assert parse_sweep("0.002:0.026:0.006") == [0.002, 0.008, 0.014, 0.02, 0.026]
    assert parse_sweep("0.5, 0.1,0.5") == [0.1, 0.5]
    for bad in ("", "a", "0.3:0.1:0.1", "0:1:0", "-0.1"):
        with pytest.raises(ParameterError):
            parse_sweep(bad)


def test_quantize_int8_writes_a_verified_int8_copy(workdir):
    result = invoke(
        "odf2nna",
        workdir / "mlp.onnx",
        "--epsilon",
        0.1,
        "--data",
        workdir / "eval.npz",
        "--eval",
        workdir / "test.npz",
        "--quantize",
        "int8",
        "--report",
        workdir / "q.json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    int8 = onnx.load(str(workdir / "mlp.odf2nna-e0.1.int8.onnx"))
    check(int8)
    assert any(n.op_type == "QuantizeLinear" for n in int8.graph.node)
    assert json.loads((workdir / "q.json").read_text())["int8_output"].endswith(".int8.onnx")
    refused = invoke(
        "odf2nna",
        workdir / "mlp.onnx",
        "--sweep",
        "0.1,0.2",
        "--data",
        workdir / "eval.npz",
        "--eval",
        workdir / "test.npz",
        "--quantize",
        "int8",
    )
    assert refused.exit_code == 2 and "--quantize" in refused.stderr


def _counted_observations(monkeypatch) -> list[int]:
    """Count ODF2NNA's observation passes (the real onnxruntime pass, only counted)."""
    calls: list[int] = []
    real = odf2nna_method.score_sources

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(odf2nna_method, "score_sources", counting)
    return calls


def test_sweep_odf2nna_observes_once_and_gives_the_models_of_single_runs(workdir, monkeypatch):
    calls = _counted_observations(monkeypatch)
    model = workdir / "mlp.onnx"
    before = sha(model)
    epsilons = ["0", "0.002", "0.05", "1"]
    data = ["--data", workdir / "eval.npz", "--eval", workdir / "test.npz"]
    out = workdir / "out"
    out.mkdir()
    result = invoke(
        "sweep",
        "odf2nna",
        model,
        "--epsilon",
        ",".join(epsilons),
        *data,
        "--save-models",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    assert sha(model) == before
    table = json.loads((out / "mlp.odf2nna-sweep.json").read_text())
    assert table["method"] == "odf2nna" and table["metric"] == "accuracy"
    assert table["parameter"] == "epsilon" and table["x_scale"] == "log"
    assert [row["epsilon"] for row in table["rows"]] == [float(e) for e in epsilons]
    assert len(table["timings"]["per_epsilon_s"]) == len(epsilons)
    for row, epsilon in zip(table["rows"], epsilons):
        single_path = workdir / f"single-e{epsilon}.onnx"
        single = invoke("odf2nna", model, "--epsilon", epsilon, *data, "-o", single_path, "-q")
        assert single.exit_code == 0, single.output
        swept = onnx.load(str(out / f"mlp.odf2nna-e{epsilon}.onnx"))
        check(swept)
        assert swept.SerializeToString() == single_path.read_bytes()
        kept = [n for n in row["units_kept"].values() if n]  # 0: removed and bridged
        assert kept == layer_units(swept)[:-1]
    assert len(calls) == 1 + len(epsilons)
    rows = table["rows"]
    assert [list(r["units_kept"].values()) for r in rows] == [[7, 6], [7, 6], [7, 0], [0, 0]]
    assert rows[2]["layers_removed"] == ["dense1"] and table["original"]["accuracy"] == 1.0
    rprs = [row["rpr"] for row in rows]
    assert rprs == sorted(rprs, reverse=True) and rprs[-1] < 0.5
    markdown = (out / "mlp.odf2nna-sweep.md").read_text()
    assert "| original | 123 | 1.000 |" in markdown and "| 0.05 |" in markdown
    assert "| 8-6 |" in markdown and "| 7-0 |" in markdown
    assert "| epsilon | parameters | RPR |" in result.output
    assert (out / "mlp.odf2nna-sweep.png").read_bytes().startswith(PNG_SIGNATURE)


def test_sweep_odf2nna_regression_reports_mse(workdir, monkeypatch):
    calls = _counted_observations(monkeypatch)
    result = invoke(
        "sweep",
        "odf2nna",
        workdir / "mlp.onnx",
        "--epsilon",
        "0.01,0.1",
        "--data",
        workdir / "eval.npz",
        "--eval",
        workdir / "targets.npz",
        "--report",
        workdir / "reg.json",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert result.output == "" and len(calls) == 1
    table = json.loads((workdir / "reg.json").read_text())
    assert table["metric"] == "mse" and "accuracy" not in table["original"]
    assert table["original"]["mse"] == pytest.approx(0.0025, rel=0.3)  # the noise
    for row in table["rows"]:
        single = onnxprune.odf2nna(
            str(workdir / "mlp.onnx"),
            row["epsilon"],
            str(workdir / "eval.npz"),
            eval_data=str(workdir / "targets.npz"),
        )
        assert row["mse_after"] == single.report["mse_after"]
        assert row["params"] == single.report["params_after"]
        assert row["mse_after"] < 2 * table["original"]["mse"]  # the mean folding holds
    assert "mse (no retraining)" in (workdir / "reg.md").read_text()
    png = workdir / "reg.png"
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    import matplotlib.image

    height, width = matplotlib.image.imread(str(png)).shape[:2]
    assert height >= 500 and width >= 800
    assert not list(workdir.glob("mlp.odf2nna-*"))  # no models without --save-models


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["--epsilon", "0.1,abc"], 2, "bad epsilon 'abc'"),
        (["--epsilon", "0.1,-0.5"], 2, "epsilon must be a finite number >= 0"),
        (["--epsilon", "inf"], 2, "epsilon must be a finite number >= 0"),
        (["--epsilon", ""], 2, "bad epsilon ''"),
        (["--epsilon", "0.2:0.1:0.1"], 2, "bad epsilon"),
        (["--report", "table.png"], 2, "must end in .json"),
        (["-o", "nowhere/run"], 5, "does not exist"),
        (["--eval", "eval.npz"], 4, "needs a 'y'"),
        (["--data", "nan.npz"], 4, "NaN"),
        (["--data", None], 4, "needs data"),
        (["--eval", None], 2, "Missing option '--eval'"),
    ],
)
def test_sweep_odf2nna_bad_input_is_one_line_and_writes_nothing(workdir, args, code, needle):
    bad = np.load(workdir / "eval.npz")["x"].copy()
    bad[3, 2] = np.nan
    np.savez(workdir / "nan.npz", x=bad)
    options = {"--epsilon": "0.01,0.1", "--data": "eval.npz", "--eval": "test.npz"}
    options.update(dict(zip(args[::2], args[1::2])))
    command = ["sweep", "odf2nna", workdir / "mlp.onnx"]
    for name, value in options.items():
        if value is not None:
            command += [name, value if name == "--epsilon" else workdir / value]
    files = sorted(p.name for p in workdir.iterdir())
    result = invoke(*command)
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error") and needle in lines[0], lines
    assert sorted(p.name for p in workdir.iterdir()) == files


def test_distill_is_refused_for_algorithm_1(workdir):
    table = workdir / "test.npz"
    args = ["--train", table, "--test", table, "--epsilon", 0.1, "--distill", 1]
    result = invoke("odf2nna", *args)
    _one_line_error(result, 2, "--distill works when pruning MODEL with --data")
