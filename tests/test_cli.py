"""The command line: the sample run end to end, and one clear line for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import check
from cli_runs import SAMPLES, invoke, mnist_workdir, sha

from onnxprune.cli import main

MODEL = SAMPLES / "mnist_cnn.onnx"
DVAR = SAMPLES / "mnist_dvar.npz"
TEST = SAMPLES / "mnist_test.npz"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return mnist_workdir(tmp_path, dvar=64, test=256)


def test_ocnna_writes_model_and_report_and_leaves_input_untouched(workdir):
    before = sha(workdir / "model.onnx")
    result = invoke(
        "ocnna",
        workdir / "model.onnx",
        "--k",
        40,
        "--data",
        workdir / "dvar.npz",
        "--eval",
        workdir / "test.npz",
        "--report",
        workdir / "r.json",
    )
    assert result.exit_code == 0, result.output
    assert sha(workdir / "model.onnx") == before
    out = workdir / "model.ocnna-k40.onnx"
    pruned = onnx.load(str(out))
    check(pruned)
    report = json.loads((workdir / "r.json").read_text())
    for key in (
        "method",
        "parameters",
        "params_before",
        "params_after",
        "flops_before",
        "flops_after",
        "layers",
        "accuracy_before",
        "accuracy_after",
    ):
        assert key in report
    assert report["parameters"]["k"] == 40
    assert report["params_after"] < 0.5 * report["params_before"]
    conv = [layer for layer in report["layers"] if layer["op"] == "Conv"]
    assert [layer["kept"] for layer in conv] == [t - int(0.4 * t) for t in (16, 32, 64, 64)]
    assert (workdir / "r.md").read_text().startswith("# onnxprune ocnna report")
    meta = {p.key: p.value for p in pruned.metadata_props}
    assert meta["onnxprune.method"] == "ocnna"
    assert meta["onnxprune.source_sha256"] == before
    assert "kept / total per layer" in result.output


def test_same_inputs_give_byte_identical_models(workdir):
    for name in ("a.onnx", "b.onnx"):
        result = invoke(
            "ocnna",
            workdir / "model.onnx",
            "--data",
            workdir / "dvar.npz",
            "-o",
            workdir / name,
            "--quiet",
        )
        assert result.exit_code == 0
    assert sha(workdir / "a.onnx") == sha(workdir / "b.onnx")


def _bad_inputs(workdir: Path) -> dict[str, tuple[list, str]]:
    model, data = workdir / "model.onnx", workdir / "dvar.npz"
    (workdir / "garbage.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (workdir / "text.onnx").write_text("this is not a model\n")
    raw = model.read_bytes()
    (workdir / "truncated.onnx").write_bytes(raw[: len(raw) // 2])
    (workdir / "empty.onnx").write_bytes(b"")
    np.savez(workdir / "wrong_shape.npz", x=np.zeros((4, 1, 32, 32), np.float32))
    nan = np.zeros((4, 1, 28, 28), np.float32)
    nan[1, 0, 3, 3] = np.nan
    np.savez(workdir / "nan.npz", x=nan)
    np.savez(workdir / "empty_data.npz", x=np.zeros((0, 1, 28, 28), np.float32))
    np.savez(workdir / "no_x.npz", images=np.zeros((4, 1, 28, 28), np.float32))
    (workdir / "exists.onnx").write_bytes(b"keep me")
    return {
        "missing model": (["ocnna", workdir / "nope.onnx", "--data", data], "not found"),
        "random bytes": (["ocnna", workdir / "garbage.onnx", "--data", data], "ONNX"),
        "text file": (["ocnna", workdir / "text.onnx", "--data", data], "ONNX"),
        "truncated": (["ocnna", workdir / "truncated.onnx", "--data", data], "ONNX"),
        "empty file": (["ocnna", workdir / "empty.onnx", "--data", data], "empty"),
        "shape mismatch": (["ocnna", model, "--data", workdir / "wrong_shape.npz"], "shape"),
        "NaN data": (["ocnna", model, "--data", workdir / "nan.npz"], "NaN"),
        "empty data": (["ocnna", model, "--data", workdir / "empty_data.npz"], "empty"),
        "no x key": (["ocnna", model, "--data", workdir / "no_x.npz"], "no array"),
        "missing data": (["ocnna", model, "--data", workdir / "none.npz"], "not found"),
        "k = 100": (["ocnna", model, "--data", data, "--k", 100], "[0, 100)"),
        "k < 0": (["ocnna", model, "--data", data, "--k", -1], "[0, 100)"),
        "no data": (["ocnna", model], "needs data"),
        "output exists": (
            ["ocnna", model, "--data", data, "-o", workdir / "exists.onnx"],
            "--force",
        ),
        "output dir missing": (
            ["ocnna", model, "--data", data, "-o", workdir / "no/x.onnx"],
            "does not exist",
        ),
        "output is input": (
            ["ocnna", model, "--data", data, "-o", model, "--force"],
            "input model",
        ),
        "eval without labels": (
            ["ocnna", model, "--data", data, "--eval", workdir / "wrong_shape.npz"],
            "shape",
        ),
    }


CASES = [
    "missing model",
    "random bytes",
    "text file",
    "truncated",
    "empty file",
    "shape mismatch",
    "NaN data",
    "empty data",
    "no x key",
    "missing data",
    "k = 100",
    "k < 0",
    "no data",
    "output exists",
    "output dir missing",
    "output is input",
    "eval without labels",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_line_and_no_output(workdir, case):
    args, needle = _bad_inputs(workdir)[case]
    model_hash = sha(workdir / "model.onnx")
    files_before = {p.name for p in workdir.iterdir()}
    result = invoke(*args)
    assert result.exit_code not in (0, 1), result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]
    assert "Traceback" not in result.output
    assert {p.name for p in workdir.iterdir()} == files_before
    assert sha(workdir / "model.onnx") == model_hash
    assert (workdir / "exists.onnx").read_bytes() == b"keep me"


def test_verbose_shows_the_traceback(workdir):
    (workdir / "bad.onnx").write_text("nope")
    result = invoke("ocnna", workdir / "bad.onnx", "--data", workdir / "dvar.npz", "--verbose")
    assert result.exit_code == 3
    assert "Traceback" in result.stderr


def test_model_without_prunable_layer_is_refused(workdir):
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["input"], ["output"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4])],
    )
    onnx.save(helper.make_model(graph), str(workdir / "relu.onnx"))
    np.savez(workdir / "x.npz", x=np.ones((3, 4), np.float32))
    result = invoke("ocnna", workdir / "relu.onnx", "--data", workdir / "x.npz")
    assert result.exit_code == 3
    assert "no prunable channel group" in result.stderr


def test_inspect_json_lists_groups_and_reasons():
    result = invoke("inspect", MODEL, "--json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["prunable_groups"] == 5
    assert info["groups"][-1]["reason"].startswith("carried by model output")
    assert info["conv_params_prunable_ratio"] == 1.0


def test_version_and_help():
    assert "onnxprune" in invoke("--version").output
    help_text = invoke("ocnna", "--help").output
    assert "Examples" in help_text and "--k" in help_text
    help_text = invoke("sweep", "odf2nna", "--help").output
    assert "onnxprune sweep odf2nna" in help_text and "--epsilon" in help_text


def test_shared_options_read_the_same_in_every_command():
    """The option blocks in onnxprune/cli/common.py: one definition, the same everywhere."""
    import click

    context = click.Context(main)
    sweep = main.get_command(context, "sweep")
    commands = {name: main.get_command(context, name) for name in ("ocnna", "odf2nna", "quantize")}
    commands.update({f"sweep {n}": sweep.get_command(context, n) for n in ("ocnna", "odf2nna")})
    shared = ["--device", "--seed", "--force", "--criterion", "--round-to", "--compensate"]
    shared += ["--reconstruct", "--convs-only", "--quiet", "--verbose"]
    for option in shared:
        found = {
            name: (param.default, param.help, str(param.type))
            for name, command in commands.items()
            for param in command.params
            if option in param.opts and (option != "--reconstruct" or "ocnna" in name)
        }
        assert len(found) >= 2 and len(set(found.values())) == 1, (option, found)
    # odf2nna's refit is opt-in (its removed units are near-constant): a flag of its own
    (refit,) = [p for p in commands["odf2nna"].params if "--reconstruct" in p.opts]
    assert refit.is_flag and refit.get_default(click.Context(main)) is False
    for name in ("ocnna", "quantize"):
        (report,) = [p for p in commands[name].params if "--report" in p.opts]
        assert report.help == "Write the JSON report here (and a Markdown copy beside it)."


def test_finetune_after_pruning_recovers_accuracy(workdir):
    """Without the refit (--no-reconstruct) the pruned sample collapses; one epoch brings
    it back."""
    train = np.load(SAMPLES / "mnist_train.npz")
    np.savez(workdir / "train.npz", x=train["x"][:2000], y=train["y"][:2000])
    result = invoke(
        "ocnna",
        workdir / "model.onnx",
        "--k",
        40,
        "--no-reconstruct",
        "--data",
        workdir / "dvar.npz",
        "--eval",
        workdir / "test.npz",
        "--finetune",
        workdir / "train.npz",
        "--epochs",
        1,
        "--optimizer",
        "adamw",
        "--weight-decay",
        1e-4,
        "--schedule",
        "cosine",
        "--warmup",
        0.1,
        "--report",
        workdir / "r.json",
        "-o",
        workdir / "ft.onnx",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "r.json").read_text())
    settings = {key: report["finetune"][key] for key in ("optimizer", "schedule", "warmup")}
    assert settings == {"optimizer": "adamw", "schedule": "cosine", "warmup": 0.1}
    assert report["finetune"]["weight_decay"] == 1e-4
    markdown = (workdir / "r.md").read_text()
    assert "adamw lr 0.001 (cosine, 10% warm-up, weight decay 0.0001)" in markdown
    assert report["accuracy_finetuned"] > report["accuracy_after"] + 0.3
    tuned = onnx.load(str(workdir / "ft.onnx"))
    check(tuned)
    assert [i.name for i in tuned.graph.input] == ["input"]
    assert [o.name for o in tuned.graph.output] == ["logits"]
    assert {p.key for p in tuned.metadata_props} >= {"onnxprune.method", "onnxprune.version"}


def test_finetune_command_writes_a_trained_model(workdir):
    train = np.load(SAMPLES / "mnist_train.npz")
    np.savez(workdir / "train.npz", x=train["x"][:512], y=train["y"][:512])
    result = invoke(
        "finetune",
        workdir / "model.onnx",
        "--train",
        workdir / "train.npz",
        "--eval",
        workdir / "test.npz",
        "--epochs",
        1,
    )
    assert result.exit_code == 0, result.output
    tuned = onnx.load(str(workdir / "model.finetuned.onnx"))
    check(tuned)
    assert "accuracy_finetuned" in result.stdout
    bad = invoke(
        "finetune",
        workdir / "model.onnx",
        "--train",
        workdir / "dvar.npz",
        "--epochs",
        0,
        "-o",
        workdir / "x.onnx",
    )
    assert bad.exit_code == 2 and "epochs" in bad.stderr


def test_outputs_get_normal_file_permissions(workdir):
    import os

    result = invoke("ocnna", workdir / "model.onnx", "--data", workdir / "dvar.npz", "--quiet")
    assert result.exit_code == 0
    mask = os.umask(0)
    os.umask(mask)
    mode = (workdir / "model.ocnna-k40.onnx").stat().st_mode & 0o777
    assert mode == 0o666 & ~mask


@pytest.mark.parametrize("criterion", ["ocnna", "random"])
def test_two_fresh_processes_write_byte_identical_models(workdir, criterion):
    """Users diff onnxprune's output in their CI: the same inputs and --seed in two new
    processes (scoring threads, least-squares refit, compensation) give the same bytes."""
    import subprocess
    import sys

    outputs = []
    for run in range(2):
        output = workdir / f"run{run}.onnx"
        command = [sys.executable, "-m", "onnxprune", "ocnna", str(workdir / "model.onnx")]
        command += ["--k", "40", "--data", str(workdir / "dvar.npz"), "-o", str(output)]
        command += ["--criterion", criterion, "--seed", "3", "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1]
    refit = onnx.load_from_string(outputs[0])
    assert any("_refit_" in init.name for init in refit.graph.initializer)  # the default


TORCH_ONLY = [{"optimizer": "adamw"}, {"schedule": "cosine"}, {"warmup": 0.1}]


@pytest.mark.parametrize("setting", [*TORCH_ONLY, {"weight_decay": 1e-4}])
def test_keras_fine_tune_refuses_torch_only_settings_before_any_work(setting):
    from onnxprune.cli.common import finetune_pruned
    from onnxprune.errors import ParameterError

    with pytest.raises(ParameterError, match="torch only"):
        finetune_pruned(None, "keras", "train.npz", None, epochs=1, **setting)
