"""`sweep ocnna`: one observation pass for every k, the same models as single runs, and a
table and plot people can read (`sweep odf2nna`: tests/test_odf2nna_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from builders import check
from cli_runs import invoke, mnist_workdir, sha

import onnxprune
import onnxprune.methods.ocnna as ocnna_method
from onnxprune.select import check_epsilon
from onnxprune.sweep import parse_values, sweep_ocnna

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return mnist_workdir(tmp_path, dvar=64, test=300, train=512)


def test_one_scoring_pass_gives_the_models_of_single_runs(workdir, monkeypatch):
    calls = []
    real = ocnna_method.score_sources

    def counting(*args, **kwargs):  # the real scoring, counted
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ocnna_method, "score_sources", counting)
    model, dvar, test = (str(workdir / n) for n in ("model.onnx", "dvar.npz", "test.npz"))
    result = sweep_ocnna(model, [40, 25.5], dvar, eval_data=test, keep_models=True)
    assert len(calls) == 1
    rows = result.report["rows"]
    assert [row["k"] for row in rows] == [25.5, 40]
    assert [row["params"] for row in rows] == sorted((r["params"] for r in rows), reverse=True)
    for row in rows:
        single = onnxprune.ocnna(model, k=row["k"], data=dvar, eval_data=test)
        swept = result.models[row["k"]]
        check(swept)
        assert swept.SerializeToString() == single.model.SerializeToString()
        assert row["params"] == single.report["params_after"]
        assert row["rpr"] == pytest.approx(single.report["remaining_params_ratio"])
        assert row["accuracy_after"] == single.report["accuracy_after"]
    assert result.report["original"]["accuracy"] == single.report["accuracy_before"]
    assert len(calls) == 1 + len(rows)


def test_sweep_command_writes_table_and_plot(workdir):
    model = workdir / "model.onnx"
    before = sha(model)
    result = invoke(
        "sweep",
        "ocnna",
        model,
        "--k",
        "10,30,60",
        "--data",
        workdir / "dvar.npz",
        "--eval",
        workdir / "test.npz",
        "--save-models",
    )
    assert result.exit_code == 0, result.output
    assert sha(model) == before
    table = json.loads((workdir / "model.ocnna-sweep.json").read_text())
    assert table["parameter"] == "k" and [r["k"] for r in table["rows"]] == [10, 30, 60]
    rprs = [r["rpr"] for r in table["rows"]]
    assert rprs == sorted(rprs, reverse=True) and 0 < rprs[-1] < rprs[0] < 1
    assert table["rows"][0]["accuracy_after"] > table["rows"][-1]["accuracy_after"]
    markdown = (workdir / "model.ocnna-sweep.md").read_text()
    assert "| original | 463,053 |" in markdown and "| 30 |" in markdown
    assert "| k | parameters | RPR |" in result.output  # the table on the terminal
    png = (workdir / "model.ocnna-sweep.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    import matplotlib.image

    image = matplotlib.image.imread(str(workdir / "model.ocnna-sweep.png"))
    assert image.shape[0] >= 500 and image.shape[1] >= 800
    for k in ("k10", "k30", "k60"):
        check(onnx.load(str(workdir / f"model.ocnna-{k}.onnx")))


def test_sweep_with_finetune_and_int8_and_a_report_path(workdir):
    (workdir / "out").mkdir()
    result = invoke(
        "sweep",
        "ocnna",
        workdir / "model.onnx",
        "--k",
        "50",
        "--data",
        workdir / "dvar.npz",
        "--eval",
        workdir / "test.npz",
        "--no-reconstruct",  # the fine-tune must have accuracy to win back
        "--finetune",
        workdir / "train.npz",
        "--quantize",
        "int8",
        "--report",
        workdir / "out" / "s.json",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["s.json", "s.md", "s.png"]
    table = json.loads((workdir / "out" / "s.json").read_text())
    for row in table["rows"]:
        assert row["accuracy_finetuned"] > row["accuracy_after"]
        assert abs(row["accuracy_int8"] - row["accuracy_finetuned"]) < 0.05
    assert "fine-tuned" in (workdir / "out" / "s.md").read_text()


def test_bad_k_list_is_one_line_and_writes_nothing(workdir):
    files = {p.name for p in workdir.iterdir()}
    for ks, needle in (("10,abc", "bad value"), ("10,100", "[0, 100)"), ("-5", "[0, 100)")):
        result = invoke(
            "sweep",
            "ocnna",
            workdir / "model.onnx",
            "--k",
            ks,
            "--data",
            workdir / "dvar.npz",
            "--eval",
            workdir / "test.npz",
        )
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0]
    assert {p.name for p in workdir.iterdir()} == files


def test_parse_values():
    assert parse_values("40, 10,10,75") == [10.0, 40.0, 75.0]
    assert parse_values("10:30:10,75") == [10.0, 20.0, 30.0, 75.0]
    assert parse_values("0.1,0:0.02:0.01", check_epsilon) == [0.0, 0.01, 0.02, 0.1]
    for bad in ("", "10,,20", "30:10:5", "0:10:0", "1e3"):
        with pytest.raises(onnxprune.ParameterError):
            parse_values(bad)
