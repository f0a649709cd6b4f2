"""What the command-line tests share: running the CLI in-process, hashing files to prove
inputs are untouched, and a work directory holding the MNIST sample and slices of its data."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result

from onnxprune.cli import main

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def invoke(*args) -> Result:
    """``onnxprune ARGS...`` in this process; exceptions propagate (a traceback is a bug)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def mnist_workdir(path: Path, dvar: int, test: int, train: int = 0) -> Path:
    """model.onnx (the MNIST sample), dvar.npz, test.npz (and train.npz) of the first
    ``dvar`` / ``test`` / ``train`` samples of the shipped data."""
    shutil.copy(SAMPLES / "mnist_cnn.onnx", path / "model.onnx")
    for name, count in (("dvar", dvar), ("test", test), ("train", train)):
        if count:
            data = np.load(SAMPLES / f"mnist_{name}.npz")
            np.savez(path / f"{name}.npz", x=data["x"][:count], y=data["y"][:count])
    return path
