"""More of the bad-input catalogue (tests/test_cli.py has the first part), for every command.

Each case must end with ONE line on stderr, a documented non-zero exit code, no file left
behind (not even a temp file), and every input byte-identical. Plus the command-line
contract: --version, --help with examples, exit codes, --verbose, --quiet, plain non-TTY.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_runs import invoke, mnist_workdir

import onnxprune.io
from onnxprune import __version__

EXIT = {"option": 2, "model": 3, "data": 4, "output": 5}


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its hash: nothing may appear, vanish or change."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return mnist_workdir(tmp_path, dvar=48, test=64)


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory nobody can create files in: read-only bits, or /sys when we are root."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    for candidate in (ro, Path("/sys")):
        try:
            tempfile.TemporaryFile(dir=candidate).close()
        except OSError:
            return candidate
    pytest.skip("no unwritable directory available (root on a system without /sys)")


def expect_failure(workdir: Path, args: list, code: int, needle: str, late: bool = False) -> None:
    """``late``: the problem shows only after work started, so progress lines precede it."""
    before = _snapshot(workdir)
    result = invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error")]
    assert errors == lines[-1:] and (late or len(lines) == 1), result.stderr
    assert needle in lines[-1], lines[-1]
    assert "Traceback" not in result.output
    assert _snapshot(workdir) == before


def _cases(workdir: Path) -> dict[str, tuple[list, int, str]]:
    model, dvar, test = workdir / "model.onnx", workdir / "dvar.npz", workdir / "test.npz"
    raw = model.read_bytes()
    (workdir / "truncated.onnx").write_bytes(raw[: len(raw) // 3])
    (workdir / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(512))  # a Keras file
    (workdir / "data.csv").write_text("1,2,3\n4,5,6\n")
    nan = np.zeros((4, 1, 28, 28), np.float32)
    nan[2, 0, 0, 0] = np.nan
    np.savez(workdir / "nan.npz", x=nan)
    labels = np.zeros(4, np.float32)
    labels[1] = np.nan
    np.savez(workdir / "nan_y.npz", x=np.zeros((4, 1, 28, 28), np.float32), y=labels)
    np.savez(workdir / "small.npz", x=np.zeros((4, 1, 14, 14), np.float32))
    (workdir / "exists.onnx").write_bytes(b"keep")
    sweep = ["sweep", "ocnna", model, "--k", "20,40", "--data", dvar, "--eval", test]
    return {
        # wrong extensions
        "ocnna -o .txt": (
            ["ocnna", model, "--data", dvar, "-o", workdir / "p.txt"],
            EXIT["option"],
            "must end in .onnx",
        ),
        "ocnna --report .md": (
            ["ocnna", model, "--data", dvar, "--report", workdir / "r.md"],
            EXIT["option"],
            "must end in .json",
        ),
        "quantize --report .onnx": (
            ["quantize", model, "--data", dvar, "--report", workdir / "r.onnx"],
            EXIT["option"],
            "must end in .json",
        ),
        "sweep --report .png": (
            [*sweep, "--report", workdir / "s.png"],
            EXIT["option"],
            "must end in .json",
        ),
        "Keras .h5 as model": (["ocnna", workdir / "model.h5", "--data", dvar], 3, "ONNX"),
        "CSV as data": (["quantize", model, "--data", workdir / "data.csv"], 4, "expected .npz"),
        # bad model / data for the new commands
        "quantize truncated": (["quantize", workdir / "truncated.onnx", "--data", dvar], 3, "ONNX"),
        "quantize missing": (["quantize", workdir / "no.onnx", "--data", dvar], 3, "not found"),
        "quantize NaN": (["quantize", model, "--data", workdir / "nan.npz"], 4, "NaN"),
        "quantize shape": (["quantize", model, "--data", workdir / "small.npz"], 4, "shape"),
        "quantize no --data": (["quantize", model], EXIT["option"], "--data"),
        "quantize exists": (
            ["quantize", model, "--data", dvar, "-o", workdir / "exists.onnx"],
            5,
            "--force",
        ),
        "quantize onto input": (
            ["quantize", model, "--data", dvar, "-o", model, "--force"],
            5,
            "input model",
        ),
        "quantize calibration 0": (
            ["quantize", model, "--data", dvar, "--calibration-samples", 0],
            EXIT["option"],
            "calibration",
        ),
        "sweep truncated": (
            ["sweep", "ocnna", workdir / "truncated.onnx", "--data", dvar, "--eval", test],
            3,
            "ONNX",
        ),
        "sweep NaN": (
            ["sweep", "ocnna", model, "--data", workdir / "nan.npz", "--eval", test],
            4,
            "NaN",
        ),
        "ocnna NaN labels": (
            ["ocnna", model, "--data", dvar, "--eval", workdir / "nan_y.npz"],
            4,
            "labels 'y' contains NaN",
        ),
        "sweep eval shape": (
            ["sweep", "ocnna", model, "--data", dvar, "--eval", workdir / "small.npz"],
            4,
            "shape",
        ),
        "sweep no data": (["sweep", "ocnna", model, "--eval", test], 4, "needs data"),
        "ocnna --quantize exists": (
            ["ocnna", model, "--data", dvar, "--quantize", "int8", "-o", workdir / "exists.onnx"],
            5,
            "--force",
        ),
        "ocnna bad --quantize": (
            ["ocnna", model, "--data", dvar, "--quantize", "int4"],
            EXIT["option"],
            "--quantize",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "ocnna -o .txt",
        "ocnna --report .md",
        "quantize --report .onnx",
        "sweep --report .png",
        "Keras .h5 as model",
        "CSV as data",
        "quantize truncated",
        "quantize missing",
        "quantize NaN",
        "quantize shape",
        "quantize no --data",
        "quantize exists",
        "quantize onto input",
        "quantize calibration 0",
        "sweep truncated",
        "sweep NaN",
        "ocnna NaN labels",
        "sweep eval shape",
        "sweep no data",
        "ocnna --quantize exists",
        "ocnna bad --quantize",
    ],
)
def test_bad_input(workdir, case):
    args, code, needle = _cases(workdir)[case]
    expect_failure(workdir, args, code, needle)


def test_model_without_conv_layer(workdir, built_model):
    onnx.save(built_model("mlp"), str(workdir / "mlp.onnx"))
    np.savez(workdir / "tab.npz", x=np.random.default_rng(0).random((32, 16), np.float32))
    args = ["ocnna", workdir / "mlp.onnx", "--data", workdir / "tab.npz", "--convs-only"]
    expect_failure(workdir, args, 3, "no prunable conv layer", late=True)
    sweep = ["sweep", "ocnna", workdir / "mlp.onnx", "--data", workdir / "tab.npz"]
    np.savez(workdir / "tab_y.npz", x=np.zeros((8, 16), np.float32), y=np.zeros(8, np.int64))
    expect_failure(
        workdir,
        [*sweep, "--eval", workdir / "tab_y.npz", "--convs-only"],
        3,
        "no prunable conv",
        late=True,
    )


@pytest.mark.parametrize("command", ["ocnna", "odf2nna"])
def test_already_quantized_model_says_to_prune_first(workdir, command):
    """An INT8 (QDQ) model has Conv/Gemm nodes but no float weights to slice."""
    quantized = workdir / "int8.onnx"
    assert invoke("quantize", workdir / "model.onnx", "--data", workdir / "dvar.npz",
                  "-o", quantized, "--quiet").exit_code == 0  # fmt: skip
    args = [command, quantized, "--data", workdir / "dvar.npz"]
    if command == "odf2nna":
        args += ["--epsilon", "0.05"]
    expect_failure(workdir, args, 3, "already quantized", late=True)


@pytest.mark.parametrize("command", ["ocnna", "quantize", "sweep"])
def test_output_directory_not_writable(workdir, command):
    target = unwritable_dir(workdir)
    model, dvar, test = workdir / "model.onnx", workdir / "dvar.npz", workdir / "test.npz"
    args = {
        "ocnna": ["ocnna", model, "--data", dvar, "-o", target / "p.onnx"],
        "quantize": ["quantize", model, "--data", dvar, "-o", target / "q.onnx"],
        "sweep": ["sweep", "ocnna", model, "--data", dvar, "--eval", test, "--report"],
    }[command]
    if command == "sweep":
        args.append(target / "s.json")
    try:
        expect_failure(workdir, args, 5, "cannot write")
    finally:
        (workdir / "readonly").chmod(0o755)


class FullDisk:
    """``os`` for onnxprune.io, except that renaming finished temp files into place fails
    with ENOSPC from the ``fail_at``-th rename on: a disk that fills up mid-way."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.renames = fail_at, 0

    def __getattr__(self, name: str):
        return getattr(os, name)

    def replace(self, src, dst) -> None:
        self.renames += 1
        if self.renames >= self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        os.replace(src, dst)


@pytest.mark.parametrize(
    "command, fail_at",
    [("ocnna", 1), ("ocnna+int8", 2), ("ocnna+int8", 3), ("quantize", 1), ("sweep", 3)],
)
def test_disk_full_leaves_nothing_behind(workdir, monkeypatch, command, fail_at):
    model, dvar, test = workdir / "model.onnx", workdir / "dvar.npz", workdir / "test.npz"
    out = ["-o", workdir / "p.onnx", "--report", workdir / "p.json"]
    args = {
        "ocnna": ["ocnna", model, "--data", dvar, *out],
        "ocnna+int8": ["ocnna", model, "--data", dvar, "--quantize", "int8", *out],
        "quantize": ["quantize", model, "--data", dvar, *out],
        "sweep": ["sweep", "ocnna", model, "--k", "30", "--data", dvar, "--eval", test],
    }[command]
    disk = FullDisk(fail_at)
    monkeypatch.setattr(onnxprune.io, "os", disk)
    expect_failure(workdir, args, 5, "No space left on device", late=True)
    assert disk.renames == fail_at  # it failed where intended, earlier files were rolled back


def test_verbose_shows_the_traceback(workdir):
    (workdir / "bad.onnx").write_text("not a model")
    for args in (
        ["quantize", workdir / "bad.onnx", "--data", workdir / "dvar.npz"],
        ["sweep", "ocnna", workdir / "bad.onnx", "--data", workdir / "dvar.npz", "--eval"],
    ):
        if args[0] == "sweep":
            args.append(workdir / "test.npz")
        quiet = invoke(*args)
        assert quiet.exit_code == 3 and "Traceback" not in quiet.stderr
        loud = invoke(*args, "--verbose")
        assert loud.exit_code == 3 and "Traceback" in loud.stderr
        assert loud.stderr.strip().splitlines()[-1].startswith("error: ")


def test_version_help_and_exit_codes():
    version = invoke("--version")
    assert version.exit_code == 0 and __version__ in version.output
    top = invoke("--help")
    assert top.exit_code == 0
    assert "Exit codes" in top.output
    for code in ("0 success", "1 internal error", "2 bad option", "3 bad model", "4 bad data"):
        assert code in top.output
    commands = [["ocnna"], ["odf2nna"], ["inspect"], ["finetune"], ["quantize"]]
    commands += [["sweep"], ["sweep", "ocnna"]]
    for command in commands:
        result = invoke(*command, "--help")
        assert result.exit_code == 0, command
        assert "Examples:" in result.output and "onnxprune " + command[0] in result.output
    unknown = invoke("--frobnicate")
    assert unknown.exit_code == 2 and len(unknown.stderr.strip().splitlines()) == 1


def test_non_tty_output_is_plain_and_quiet_is_silent(workdir):
    args = ["ocnna", workdir / "model.onnx", "--data", workdir / "dvar.npz"]
    plain = invoke(*args, "-o", workdir / "a.onnx", "--quantize", "int8")
    assert plain.exit_code == 0, plain.output
    assert "\x1b[" not in plain.output  # no colour codes or progress bars in logs
    assert len(plain.stderr.strip().splitlines()) <= 8
    quiet = invoke(*args, "-o", workdir / "b.onnx", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == ""
