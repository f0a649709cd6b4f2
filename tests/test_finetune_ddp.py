"""`onnxprune finetune` under torchrun: two CPU processes, gloo, DistributedDataParallel.

Only rank 0 may print results and write files; the written model must be valid and trained.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import check
from onnx import numpy_helper

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
REPO = SAMPLES.parent


def onnxprune_script() -> str:
    found = Path(sys.executable).parent / "onnxprune"
    return str(found) if found.exists() else (shutil.which("onnxprune") or "")


@pytest.mark.skipif(not onnxprune_script(), reason="the onnxprune console script is not installed")
def test_torchrun_two_cpu_processes_train_once_and_rank0_writes(tmp_path: Path) -> None:
    shutil.copy(SAMPLES / "mnist_cnn.onnx", tmp_path / "model.onnx")
    train, test = np.load(SAMPLES / "mnist_train.npz"), np.load(SAMPLES / "mnist_test.npz")
    np.savez(tmp_path / "train.npz", x=train["x"][:256], y=train["y"][:256])
    np.savez(tmp_path / "eval.npz", x=test["x"][:128], y=test["y"][:128])
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--no-python",
        onnxprune_script(),
        "finetune",
        "model.onnx",
        "--train",
        "train.npz",
        "--eval",
        "eval.npz",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "-o",
        "tuned.onnx",
        "--report",
        "tuned.json",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150
    )
    assert done.returncode == 0, done.stderr[-3000:]

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "eval.npz",
        "model.onnx",
        "train.npz",
        "tuned.json",
        "tuned.onnx",
    ]
    assert done.stdout.count("accuracy_finetuned: ") == 1  # rank 0 only
    assert done.stderr.count("epoch 1/1 loss") == 1
    assert done.stderr.count("wrote tuned.onnx") == 1
    assert "x 2 processes" in done.stderr
    report = json.loads((tmp_path / "tuned.json").read_text())
    assert report["finetune"]["processes"] == 2
    assert report["accuracy_finetuned"] >= 0.9

    tuned = onnx.load(str(tmp_path / "tuned.onnx"))
    check(tuned)
    original = onnx.load(str(tmp_path / "model.onnx"))
    before = {i.name: numpy_helper.to_array(i) for i in original.graph.initializer}
    after = [numpy_helper.to_array(i) for i in tuned.graph.initializer]
    assert sum(a.size for a in after) == sum(b.size for b in before.values())
    assert not any(
        any(a.shape == b.shape and np.array_equal(a, b) for b in before.values())
        for a in after
        if a.size > 100
    )  # every weight tensor was trained
