"""OCNNA end to end: analyze -> observe/score -> select -> rewrite -> verify -> report.

Scoring does not depend on k, so it is one step (``score_model``) and pruning at a k
another (``prune_scored``): a sweep scores once and prunes at every k.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from .. import progress
from ..analyze import Analysis
from ..errors import DataError, ModelError, ParameterError
from ..graph.groups import ChannelGroup
from ..importance import get_criterion
from ..io import DataLike, Dataset, input_specs, load_data, load_model
from ..metrics import evaluate
from ..pipeline import (
    PruneResult,
    apply_masks,
    first_feed,
    frozen_hint,
    prepare,
    zeros_feed,
)
from ..recovery import DISTILL_LR, DistillOptions, check_distill, recover
from ..report import build_report, stamp_provenance
from ..score import score_sources
from ..select import check_k, group_scores, keep_nonempty, percentile_mask
from ..shards import check_workers, workers_for
from ..verify import verify


@dataclass
class Scored:
    """What one observation pass learns about a model; every k reuses it."""

    model_arg: str | os.PathLike | onnx.ModelProto
    analysis: Analysis
    dataset: Dataset | None
    eval_set: Dataset | None
    groups: list[ChannelGroup]
    scores: dict[int, np.ndarray]
    means: dict[str, np.ndarray] | None
    settings: dict
    timings: dict[str, float]
    _baseline: dict[str, float] | None = field(default=None, repr=False)

    @property
    def feed(self) -> dict[str, np.ndarray]:
        return first_feed(self.dataset) if self.dataset is not None else zeros_feed(self.analysis)

    def baseline(self) -> dict[str, float]:
        """The unpruned model's accuracy / MSE on the eval data, measured once."""
        if self._baseline is None:
            assert self.eval_set is not None
            batch_size = self.settings["batch_size"]
            self._baseline = evaluate(self.analysis.model, self.eval_set, batch_size)
        return self._baseline


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
    reconstruct: bool | None = None,
    memory_budget: float | None = None,
    workers: int = 1,
    keep: Sequence[str] = (),
    distill: int = 0,
    distill_lr: float = DISTILL_LR,
) -> PruneResult:
    """Prune ``model`` with OCNNA (or a baseline criterion) at percentile ``k``.

    ``data`` is D_var (array, .npz/.npy path or mapping input name -> array); every
    prunable channel group loses floor(k% * M) of its M channels, the least important first.
    With ``compensate`` each removed channel's mean over D_var is folded into the biases
    of the layers that read it; with ``reconstruct`` (default: whenever D_var is given)
    those layers are then refit by least squares to reproduce the original model's
    outputs on D_var; ``reconstruct=False`` with ``compensate=False`` is OCNNA exactly as
    the paper defines it (weights only sliced). ``memory_budget`` (MB)
    caps the activations observation holds at once (passes over truncated graphs).
    ``workers`` > 1 scores D_var in that many spawned processes (identical results; a
    script calling this needs the usual ``if __name__ == "__main__":`` guard). ``keep``:
    shell-style patterns of layer names whose groups stay whole (sensitive layers).
    ``distill`` > 0 then trains the pruned model for that many epochs over D_var towards
    the original's layer outputs (no labels; needs torch; ``distill_lr`` is Adam's step).
    """
    k = check_k(k)
    if round_to < 1:
        raise ParameterError(f"round-to must be at least 1, got {round_to}")
    check_distill(distill, distill_lr, data)
    scored = score_model(
        model,
        data,
        eval_data=eval_data,
        criterion=criterion,
        convs_only=convs_only,
        batch_size=batch_size,
        device=device,
        seed=seed,
        compensate=compensate,
        memory_budget=memory_budget,
        workers=workers,
        keep=keep,
    )
    return prune_scored(
        scored, k, round_to, reconstruct=reconstruct, distill=distill, distill_lr=distill_lr
    )


def score_model(
    model: str | os.PathLike | onnx.ModelProto,
    data: DataLike | None = None,
    *,
    eval_data: DataLike | None = None,
    criterion: str = "ocnna",
    convs_only: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    seed: int = 0,
    compensate: bool = True,
    memory_budget: float | None = None,
    workers: int = 1,
    keep: Sequence[str] = (),
) -> Scored:
    """Load, analyze and score every prunable channel once (the part independent of k)."""
    if batch_size < 1:
        raise ParameterError(f"batch size must be at least 1, got {batch_size}")
    check_workers(workers, device)
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
    analysis.keep_layers(keep)
    groups = analysis.prunable(convs_only)
    if not groups:
        if convs_only and analysis.prunable():
            raise ModelError("the model has no prunable conv layer (--convs-only)")
        raise ModelError("the model has no prunable channel group" + frozen_hint(analysis))
    timings["analyze_s"] = time.perf_counter() - start

    start = time.perf_counter()
    source_scores, means = score_sources(
        analysis,
        groups,
        importance,
        dataset,
        batch_size,
        device,
        compensate,
        memory_budget,
        workers,
    )
    timings["score_s"] = time.perf_counter() - start
    scores = {g.index: group_scores(g, source_scores) for g in groups}
    observed = importance.needs_activations or compensate
    settings = {
        "criterion": criterion,
        "convs_only": convs_only,
        "compensate": compensate,
        "batch_size": batch_size,
        "device": device,
        "seed": seed,
        "workers": workers_for(dataset, batch_size, workers) if observed else 1,
        "keep": list(keep),
    }
    return Scored(model, analysis, dataset, eval_set, groups, scores, means, settings, timings)


def prune_scored(
    scored: Scored,
    k: float,
    round_to: int = 1,
    reconstruct: bool | None = None,
    distill: int = 0,
    distill_lr: float = DISTILL_LR,
) -> PruneResult:
    """Select at percentile ``k``, rewrite, recover, verify and report, from scores made
    once."""
    k = check_k(k)
    if reconstruct is None:  # on by default: it recovers most accuracy in seconds
        reconstruct = scored.dataset is not None
    if reconstruct and scored.dataset is None:
        raise DataError("reconstruction needs data: pass D_var samples (--data)")
    check_distill(distill, distill_lr, scored.dataset)
    analysis, scores = scored.analysis, scored.scores
    masks = {
        index: percentile_mask(s, k, round_to, analysis.groups[index].blocks)
        for index, s in scores.items()
    }
    keep_nonempty(analysis.cg, analysis.groups, masks, scores)

    settings, timings = scored.settings, dict(scored.timings)
    start = time.perf_counter()
    pruned = apply_masks(analysis, masks, scored.means)
    recovery = None
    if scored.dataset is not None:  # refit (or only measure) the layers that lost inputs
        recovery = recover(
            analysis,
            pruned,
            masks,
            scored.dataset,
            scored.means or {},
            refit=reconstruct,
            batch_size=settings["batch_size"],
            device=settings["device"],
            distill=DistillOptions(
                distill, distill_lr, settings["batch_size"], settings["seed"], settings["device"]
            ),
        )
        pruned = recovery.model
        timings.update(recovery.timings)
    feed = scored.feed
    verify(pruned, analysis.model, feed)
    recovered = recovery.seconds if recovery is not None else 0.0
    timings["rewrite_verify_s"] = time.perf_counter() - start - recovered

    parameters = {
        "k": k,
        "criterion": settings["criterion"],
        "convs_only": settings["convs_only"],
        "round_to": round_to,
        "compensate": settings["compensate"],
        "reconstruct": reconstruct,
        "keep": settings["keep"],
        "distill": distill,
    }
    model = scored.model_arg
    report = build_report("ocnna", parameters, model, analysis, pruned, masks, scores, feed)
    if recovery is not None:
        report.update(recovery.report())
    if scored.eval_set is not None:
        progress.info("evaluating before/after accuracy")
        report.update({f"{m}_before": v for m, v in scored.baseline().items()})
        after = evaluate(pruned, scored.eval_set, settings["batch_size"])
        report.update({f"{m}_after": v for m, v in after.items()})
    report["samples"] = 0 if scored.dataset is None else len(scored.dataset)
    report["workers"] = settings["workers"]  # processes that scored D_var
    report["timings"] = timings
    stamp_provenance(pruned, report, model)
    return PruneResult(pruned, report, masks)
