"""OCNNA end to end: analyze -> observe/score -> select -> rewrite -> verify -> report."""

from __future__ import annotations

import os
import time

import onnx

from .. import progress
from ..errors import DataError, ModelError, ParameterError
from ..importance import get_criterion
from ..io import DataLike, input_specs, load_data, load_model
from ..pipeline import (
    PruneResult,
    apply_masks,
    before_after,
    first_feed,
    frozen_hint,
    prepare,
    zeros_feed,
)
from ..report import build_report, stamp_provenance
from ..score import score_sources
from ..select import check_k, group_scores, keep_nonempty, percentile_mask
from ..verify import verify


def ocnna(
    model: str | os.PathLike | onnx.ModelProto,
    k: float = 40.0,
    data: DataLike | None = None,
    *,
    eval_data: DataLike | None = None,
    criterion: str = "ocnna",
    convs_only: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    round_to: int = 1,
    seed: int = 0,
    compensate: bool = True,
) -> PruneResult:
    """Prune ``model`` with OCNNA (or a baseline criterion) at percentile ``k``.

    ``data`` is D_var (array, .npz/.npy path or mapping input name -> array); every
    prunable channel group loses floor(k% * M) of its M channels, the least important first.
    With ``compensate`` each removed channel's mean over D_var is folded into the biases
    of the layers that read it.
    """
    k = check_k(k)
    if batch_size < 1:
        raise ParameterError(f"batch size must be at least 1, got {batch_size}")
    if round_to < 1:
        raise ParameterError(f"round-to must be at least 1, got {round_to}")
    importance = (
        get_criterion(criterion, seed=seed) if criterion == "random" else get_criterion(criterion)
    )
    if data is None and importance.needs_activations:
        raise DataError(f"criterion '{criterion}' needs data: pass D_var samples (--data)")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    original = load_model(model)
    eval_set = None
    if eval_data is not None:  # checked before any work starts
        eval_set = load_data(eval_data, input_specs(original), require_labels=True)
    _, analysis, dataset = prepare(original, data)
    groups = analysis.prunable(convs_only)
    if not groups:
        raise ModelError("the model has no prunable channel group" + frozen_hint(analysis))
    timings["analyze_s"] = time.perf_counter() - start

    start = time.perf_counter()
    source_scores, means = score_sources(
        analysis, groups, importance, dataset, batch_size, device, compensate
    )
    timings["score_s"] = time.perf_counter() - start

    scores = {g.index: group_scores(g, source_scores) for g in groups}
    masks = {index: percentile_mask(s, k, round_to) for index, s in scores.items()}
    keep_nonempty(analysis.cg, analysis.groups, masks, scores)

    start = time.perf_counter()
    pruned = apply_masks(analysis, masks, means)
    feed = first_feed(dataset) if dataset is not None else zeros_feed(analysis)
    verify(pruned, analysis.model, feed)
    timings["rewrite_verify_s"] = time.perf_counter() - start

    parameters = {
        "k": k,
        "criterion": criterion,
        "convs_only": convs_only,
        "round_to": round_to,
        "compensate": compensate,
    }
    report = build_report("ocnna", parameters, model, analysis, pruned, masks, scores, feed)
    if eval_set is not None:
        progress.info("evaluating before/after accuracy")
        report.update(before_after(analysis.model, pruned, eval_set, batch_size))
    report["samples"] = 0 if dataset is None else len(dataset)
    report["timings"] = timings
    stamp_provenance(pruned, report, model)
    return PruneResult(pruned, report)
