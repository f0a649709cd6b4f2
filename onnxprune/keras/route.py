"""The Keras route: convert -> prune the ONNX model -> rebuild the Keras model -> fine-tune.

Pruning itself is the ONNX pipeline, untouched (same scores, same masks, same pruned
ONNX model and report as for the converted model). The route adds the user's own Keras
model with the same channels removed (``KerasPruneResult.keras_model``), checked to
compute what the pruned ONNX model computes, and ``finetune_result`` trains that model
in Keras and puts the exported ONNX model and the fine-tune report into the result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ..errors import ModelError, ParameterError
from ..io import DataLike
from ..methods.ocnna import prune_scored, score_model
from ..methods.odf2nna import observe_units, prune_observed
from ..pipeline import PruneResult, first_feed
from ..select import check_epsilon
from .convert import is_keras_path, keras_to_onnx, model_to_onnx
from .finetune import finetune_keras
from .plan import plan_for, refuse_bridged
from .rebuild import rebuild


@dataclass
class KerasPruneResult(PruneResult):
    """A PruneResult plus the pruned Keras model (the original's config, fewer channels)."""

    keras_model: Any = None


def keras_source(model: Any) -> tuple[onnx.ModelProto, Any, Any]:
    """(ONNX model, Keras model, what the report names as the source) for a path or a model."""
    if isinstance(model, str | os.PathLike):
        path = Path(model)
        if not path.exists():
            raise ModelError(f"model file not found: {path}")
        if not is_keras_path(path):
            raise ModelError(
                "the Keras route needs a Keras model (.keras, .h5 or a SavedModel "
                f"directory): {path}"
            )
        proto, keras_model = keras_to_onnx(path)
        if keras_model is None:
            raise ModelError(
                f"{path} holds no Keras model this Keras can load (a SavedModel from "
                "tf.saved_model.save or model.export; Keras 3 loads no SavedModel: save a "
                ".keras file): fine-tune it with --framework torch"
            )
        return proto, keras_model, model
    if isinstance(model, onnx.ModelProto):
        raise ModelError("the Keras route needs the Keras model, not an ONNX model")
    proto = model_to_onnx(model)
    return proto, model, proto


def ocnna(
    model: Any,
    k: float = 40.0,
    data: DataLike | None = None,
    *,
    round_to: int = 1,
    reconstruct: bool | None = None,
    **options: Any,
) -> KerasPruneResult:
    """``onnxprune.ocnna`` on a Keras model (path or in-memory), plus the pruned Keras model.

    ``options`` are ``onnxprune.ocnna``'s (eval_data, criterion, convs_only, batch_size,
    device, seed, compensate, memory_budget, workers, keep: ONNX layer names as
    ``onnxprune inspect`` lists them).
    """
    if round_to < 1:
        raise ParameterError(f"round-to must be at least 1, got {round_to}")
    proto, keras_model, source = keras_source(model)
    scored = score_model(proto, data, **options)
    scored.model_arg = source  # the report and provenance name the Keras file
    result = prune_scored(scored, k, round_to, reconstruct=reconstruct)
    masks = result.masks
    rebuilt = rebuild(
        keras_model, scored.analysis, plan_for(scored, masks), result.model, scored.feed
    )
    return KerasPruneResult(result.model, result.report, result.masks, rebuilt)


def odf2nna_sweep(
    model: Any, epsilons: Sequence[float], data: DataLike | None, **options: Any
) -> list[KerasPruneResult]:
    """``onnxprune``'s ODF2NNA sweep on a Keras model, each result with its Keras model.

    A run that removes a whole hidden layer (bridged) cannot be rebuilt: use bridge=False.
    """
    epsilons = [check_epsilon(e) for e in epsilons]
    bridge = options.pop("bridge", True)
    reconstruct = options.pop("reconstruct", False)
    proto, keras_model, source = keras_source(model)
    observed = observe_units(proto, data, **options)
    observed.model_arg = source
    feed = first_feed(observed.dataset)
    results = []
    for epsilon in epsilons:
        result = prune_observed(
            observed,
            epsilon,
            bridge=bridge,
            reconstruct=reconstruct,
            batch_size=options.get("batch_size", 64),
            device=options.get("device", "cpu"),
        )
        refuse_bridged(result.report)
        masks = result.masks
        plan = plan_for(observed, masks)
        rebuilt = rebuild(keras_model, observed.analysis, plan, result.model, feed)
        results.append(KerasPruneResult(result.model, result.report, result.masks, rebuilt))
    return results


def odf2nna(model: Any, epsilon: float, data: DataLike | None, **options: Any) -> KerasPruneResult:
    """``onnxprune.odf2nna`` on a Keras model, plus the pruned Keras model."""
    (result,) = odf2nna_sweep(model, [epsilon], data, **options)
    return result


def finetune_result(
    result: KerasPruneResult,
    train_data: DataLike,
    eval_data: DataLike | None = None,
    **settings: Any,
) -> KerasPruneResult:
    """Fine-tune ``result.keras_model`` in Keras; the result then holds the exported ONNX
    model (with the pruning provenance) and the report gains the fine-tune block.

    ``settings``: epochs, lr, batch_size, optimizer ("adam" | "sgd"), momentum, seed.
    """
    if not isinstance(result, KerasPruneResult) or result.keras_model is None:
        raise ModelError("Keras fine-tuning needs a result of the Keras route (onnxprune.keras)")
    tuned, extra, trained = finetune_keras(  # keeps result.model's provenance
        result.keras_model, result.model, train_data, eval_data, **settings
    )
    result.model, result.keras_model = tuned, trained
    result.report.update(extra)
    return result
