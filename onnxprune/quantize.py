"""Stage `quantize`: static INT8 for edge targets, calibrated on the same D_var samples.

onnxruntime.quantization does the work: QDQ format (QuantizeLinear/DequantizeLinear pairs
any runtime can read), per-channel symmetric INT8 weights, INT8 activations whose ranges
come from a MinMax pass over the data. The graph keeps its input and output names, and the
same inputs always give a byte-identical model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from . import __version__, progress
from .errors import ModelError, OnnxPruneError, ParameterError
from .io import DataLike, Dataset, input_specs, load_data, load_model, model_hash
from .metrics import evaluate, measure
from .normalize import normalize
from .pipeline import PruneResult
from .verify import verify

SCHEME = "int8 static QDQ, per-channel symmetric weights, MinMax-calibrated activations"


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over a Dataset, streamed batch by batch."""

    def __init__(self, dataset: Dataset, batch_size: int, limit: int | None) -> None:
        self.dataset, self.batch_size, self.limit = dataset, batch_size, limit
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self._batches = self.dataset.batches(self.batch_size, self.limit)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization logs advice to the root logger; users see one-line notes."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def sample_feed(dataset: Dataset, count: int = 1) -> dict[str, np.ndarray]:
    """``count`` samples (for latency: one), or one whole batch for fixed-batch models."""
    return next(dataset.batches(min(count, len(dataset))))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def quantize_int8(
    model: str | os.PathLike | onnx.ModelProto,
    data: DataLike,
    *,
    batch_size: int = 64,
    calibration_samples: int | None = None,
    preprocess: bool = True,
) -> onnx.ModelProto:
    """Static INT8 (QDQ) copy of ``model``, activation ranges calibrated on ``data``.

    ``preprocess`` runs onnxruntime's quant_pre_process first (shape inference and graph
    optimisation, which lets more ops be quantized); a model it cannot handle is quantized
    without it. ``calibration_samples`` limits the calibration to the first N samples.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if batch_size < 1:
        raise ParameterError(f"batch size must be at least 1, got {batch_size}")
    if calibration_samples is not None and calibration_samples < 1:
        raise ParameterError(f"calibration samples must be at least 1, got {calibration_samples}")
    source = normalize(load_model(model))
    dataset = load_data(data, input_specs(source))
    count = len(dataset) if calibration_samples is None else min(calibration_samples, len(dataset))
    fixed = dataset.fixed_batch
    if fixed:  # whole batches of the model's own size only
        batch_size, count = fixed, max(fixed, count - count % fixed)
    progress.info(f"quantizing to INT8 (calibration on {count} samples)")
    with tempfile.TemporaryDirectory(prefix="onnxprune-int8-") as tmp, _quiet_logging():
        path = Path(tmp) / "float.onnx"
        path.write_bytes(source.SerializeToString())
        if preprocess:
            path = _preprocess(path, Path(tmp) / "preprocessed.onnx")
        output = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(path),
                str(output),
                _Calibration(dataset, batch_size, count),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibMaxIntermediateOutputs": 16},
            )
        except OnnxPruneError:
            raise
        except Exception as exc:
            raise ModelError(f"cannot quantize the model to INT8: {_first_line(exc)}") from exc
        quantized = onnx.load(str(output))
    verify(quantized, source, sample_feed(dataset, 8))
    _stamp(quantized, source, model, count)
    return quantized


def _preprocess(path: Path, output: Path) -> Path:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(path), str(output))
        return output
    except Exception as exc:  # optional: quantization works without it
        progress.info(f"note: quantizing without pre-processing ({_first_line(exc)})")
        return path


def _stamp(
    quantized: onnx.ModelProto,
    source: onnx.ModelProto,
    model_arg: str | os.PathLike | onnx.ModelProto,
    samples: int,
) -> None:
    """Keep the source's provenance (pruning method, k, hash) and add the quantization."""
    entries = {p.key: p.value for p in source.metadata_props}
    entries.setdefault("onnxprune.version", __version__)
    if isinstance(model_arg, str | os.PathLike) and "onnxprune.source_sha256" not in entries:
        entries["onnxprune.source_sha256"] = model_hash(model_arg)
    entries["onnxprune.quantization"] = f"{SCHEME}; {samples} calibration samples"
    del quantized.metadata_props[:]
    for key, value in entries.items():
        quantized.metadata_props.add(key=key, value=value)


def artifact(name: str, model: onnx.ModelProto, feed: dict, quality: dict[str, float]) -> dict:
    """One row of the original / pruned / pruned + INT8 comparison."""
    return {"name": name, **measure(model, feed), **quality}


def add_int8(
    result: PruneResult,
    data: DataLike,
    *,
    eval_data: DataLike | None = None,
    batch_size: int = 64,
    calibration_samples: int | None = None,
) -> onnx.ModelProto:
    """Quantize a pruning result and add original / pruned / pruned + INT8 to its report.

    The hook every pruning command calls for ``--quantize int8`` (ocnna, odf2nna): the
    float model in ``result`` is left as it is, the INT8 model is returned.
    """
    dataset = load_data(data, input_specs(result.model))
    quantized = quantize_int8(
        result.model, dataset, batch_size=batch_size, calibration_samples=calibration_samples
    )
    report = result.report
    feed = sample_feed(dataset)
    eval_set = None
    if eval_data is not None:
        eval_set = load_data(eval_data, input_specs(result.model), require_labels=True)
    pruned_quality, int8_quality = {}, {}
    for metric in ("accuracy", "mse"):
        after = report.get(f"{metric}_finetuned", report.get(f"{metric}_after"))
        if after is not None:
            pruned_quality[metric] = after
    if eval_set is not None:
        progress.info("evaluating the INT8 model")
        int8_quality = evaluate(quantized, eval_set, batch_size)
    original = {
        "name": "original",
        "size_bytes": report["size_bytes_before"],
        "params": report["params_before"],
        "macs": report["macs_before"],
        "flops": report["flops_before"],
        "latency_ms": report["latency_ms_before"],
    }
    for metric in ("accuracy", "mse"):
        if f"{metric}_before" in report:
            original[metric] = report[f"{metric}_before"]
    tuned = any(key.endswith("_finetuned") for key in report)
    report["artifacts"] = [
        original,
        artifact("pruned + fine-tuned" if tuned else "pruned", result.model, feed, pruned_quality),
        artifact("pruned + int8", quantized, feed, int8_quality),
    ]
    report["quantization"] = {
        "scheme": SCHEME,
        "calibration_samples": min(calibration_samples or len(dataset), len(dataset)),
    }
    for metric, value in int8_quality.items():
        report[f"{metric}_int8"] = value
    return quantized


def quantize(
    model: str | os.PathLike | onnx.ModelProto,
    data: DataLike,
    *,
    eval_data: DataLike | None = None,
    batch_size: int = 64,
    calibration_samples: int | None = None,
    preprocess: bool = True,
) -> PruneResult:
    """INT8 copy of any ONNX model with a before/after report (``onnxprune quantize``)."""
    original = normalize(load_model(model))
    specs = input_specs(original)
    dataset = load_data(data, specs)
    eval_set = None
    if eval_data is not None:  # checked before any work starts
        eval_set = load_data(eval_data, specs, require_labels=True)
    quantized = quantize_int8(
        model,
        dataset,
        batch_size=batch_size,
        calibration_samples=calibration_samples,
        preprocess=preprocess,
    )
    feed = sample_feed(dataset)
    rows = []
    for name, candidate in (("original", original), ("int8", quantized)):
        quality = {} if eval_set is None else evaluate(candidate, eval_set, batch_size)
        rows.append(artifact(name, candidate, feed, quality))
    before, after = rows
    report: dict = {
        "tool": "onnxprune",
        "version": __version__,
        "method": "quantize",
        "parameters": {
            "scheme": SCHEME,
            "calibration_samples": min(calibration_samples or len(dataset), len(dataset)),
            "preprocess": preprocess,
        },
        "model": str(model) if not isinstance(model, onnx.ModelProto) else "<ModelProto>",
        "remaining_params_ratio": after["params"] / before["params"] if before["params"] else 1.0,
    }
    for key in ("params", "macs", "flops", "size_bytes", "latency_ms", "accuracy", "mse"):
        if key in before:
            report[f"{key}_before"], report[f"{key}_after"] = before[key], after[key]
    report.update({"layers": [], "frozen": [], "artifacts": rows, "samples": len(dataset)})
    return PruneResult(quantized, report)
