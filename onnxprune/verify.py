"""Stage `verify`: a pruned model must be valid ONNX, run, and keep the interface."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


class VerificationError(RuntimeError):
    """The pruned graph is broken: a bug in onnxprune, never the user's fault."""


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def names(values) -> list[str]:
    return [value.name for value in values]


def verify(pruned: onnx.ModelProto, original: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    """onnx.checker (full), same input/output names, runs, same output shapes."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:
        raise VerificationError(f"pruned model fails onnx.checker: {exc}") from exc
    if names(pruned.graph.input) != names(original.graph.input):
        raise VerificationError("pruned model changed the input names")
    if names(pruned.graph.output) != names(original.graph.output):
        raise VerificationError("pruned model changed the output names")
    try:
        got = run(pruned, feed)
    except Exception as exc:
        raise VerificationError(f"pruned model does not run in onnxruntime: {exc}") from exc
    expected = run(original, feed)
    for name, value in expected.items():
        if _structure(got[name]) != _structure(value):
            raise VerificationError(
                f"output '{name}' changed shape: {_structure(value)} -> {_structure(got[name])}"
            )


def _structure(value) -> tuple:
    """A tensor's shape; for a sequence (of maps, as scikit-learn's ZipMap makes) its
    length and each element's keys or shape."""
    if isinstance(value, np.ndarray):
        return value.shape
    if isinstance(value, dict):
        return tuple(sorted(value))
    return (len(value), *(_structure(item) for item in value[:1]))
