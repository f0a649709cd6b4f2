"""OCNNA at k on Keras applications converted by tf2onnx (what `--framework keras` does).

Random weights (``weights=None``: no downloads), random D_var images in [-1, 1]; measured
is structure, as in zoo_ocnna.py: every pruned model must pass onnx.checker and run.
Needs the ``keras`` extra (TensorFlow + tf2onnx), e.g. the Keras 2 venv:

    /work/venv-tf2/bin/python benchmarks/zoo_keras.py [--k 40] [--models MobileNetV2,...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import tensorflow as tf  # noqa: E402
from zoo_ocnna import measure_all, measure_model, table  # noqa: E402

from onnxprune.keras import model_to_onnx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# application -> input side (the smallest each accepts, 64 where it can)
APPLICATIONS = {
    "MobileNetV2": 64,
    "MobileNetV3Small": 64,
    "EfficientNetB0": 64,
    "ResNet50": 64,
    "DenseNet121": 64,
    "Xception": 71,
    "NASNetMobile": 224,
}


def measure(name: str, side: int, k: float, samples: int) -> dict:
    application = getattr(tf.keras.applications, name)
    keras_model = application(weights=None, input_shape=(side, side, 3), classes=10)
    shape = (samples, side, side, 3)
    data = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    return measure_model(model_to_onnx(keras_model), data, name, f"{side}x{side}", k)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=float, default=40)
    parser.add_argument("--models", default=",".join(APPLICATIONS))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--out", default=str(REPO / "docs" / "zoo-keras.md"))
    args = parser.parse_args()
    rows = measure_all(
        args.models.split(","),
        lambda name: measure(name, APPLICATIONS[name], args.k, args.samples),
    )
    lines = [
        f"# OCNNA at k = {args.k:g} on Keras applications (tf2onnx)",
        "",
        f"`tf.keras.applications` with random weights and 10 classes, {args.samples} random "
        "D_var images in [-1, 1], converted by `onnxprune.keras.model_to_onnx` (tf2onnx; NHWC "
        "input, Transposes around the convs). Machine: "
        f"{platform.machine()}, 2 cores, Python {platform.python_version()}, TensorFlow "
        f"{tf.__version__}. Columns as in [zoo.md](zoo.md); the Softmax the applications end "
        "with carries the classifier's units, so that group is frozen.",
        "",
        *table(rows),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all("error" not in r and r["valid"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
