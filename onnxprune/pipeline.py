"""The pipeline as one readable function per method: load -> analyze -> observe/score ->
select -> rewrite -> verify -> report. The CLI and the public API both call these."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import __version__, progress
from .analyze import Analysis, analyze
from .errors import DataError, ModelError, ParameterError
from .graph.rewrite import Plan, rewrite
from .importance import get_criterion
from .io import DataLike, Dataset, input_specs, load_data, load_model, model_hash
from .metrics import count_macs, count_params, evaluate, model_bytes
from .score import score_sources
from .select import check_k, group_scores, keep_nonempty, percentile_mask
from .verify import verify


@dataclass
class PruneResult:
    """The pruned model and its report; unpacks as ``model, report = ocnna(...)``."""

    model: onnx.ModelProto
    report: dict = field(default_factory=dict)

    def __iter__(self):
        yield self.model
        yield self.report


def _first_feed(dataset: Dataset) -> dict[str, np.ndarray]:
    return next(dataset.batches(min(8, len(dataset))))


def prepare(
    model: str | os.PathLike | onnx.ModelProto, data: DataLike | None
) -> tuple[onnx.ModelProto, Analysis, Dataset | None]:
    """Load the model and data, check they fit, and analyze the channel groups."""
    original = load_model(model)
    dataset = None if data is None else load_data(data, input_specs(original))
    sample = _first_feed(dataset) if dataset is not None else None
    progress.info("analyzing channel groups")
    try:
        analysis = analyze(original, sample)
    except ModelError:
        raise
    except Exception as exc:  # a graph the analysis cannot even read is a model problem
        raise ModelError(f"cannot analyze the model: {exc}") from exc
    return original, analysis, dataset


def masks_for_removal(analysis: Analysis, remove: Mapping[str, list[int]]) -> dict[int, np.ndarray]:
    """Keep masks that drop the given channels of named sources (and their coupled ones)."""
    masks: dict[int, np.ndarray] = {}
    for source_name, channels in remove.items():
        group = analysis.group_of(source_name)
        if not group.prunable:
            raise ParameterError(f"'{source_name}' cannot be pruned: {group.frozen_reason}")
        mask = masks.setdefault(group.index, np.ones(group.size, dtype=bool))
        mask[group.channel_of[source_name][list(channels)]] = False
        if not mask.any():
            raise ParameterError(f"removing all channels of '{source_name}' is not allowed")
    return masks


def apply_masks(
    analysis: Analysis,
    masks: dict[int, np.ndarray],
    means: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Rewrite the analysed model for ``masks`` (group index -> keep mask); ``means``
    (consumer input -> per-position mean) turns on mean compensation."""
    return rewrite(analysis.model, Plan(analysis.cg, analysis.groups, masks, means))


def prune_channels(
    model: str | os.PathLike | onnx.ModelProto,
    remove: Mapping[str, list[int]],
    data: DataLike | None = None,
) -> onnx.ModelProto:
    """Remove exactly the named channels (source node name -> channel indices).

    The building block for custom criteria and for exactness tests: coupled channels
    (residual partners, concat consumers) go with them.
    """
    _, analysis, dataset = prepare(model, data)
    pruned = apply_masks(analysis, masks_for_removal(analysis, remove))
    feed = _first_feed(dataset) if dataset is not None else None
    if feed is not None:
        verify(pruned, analysis.model, feed)
    return pruned


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
        raise ModelError("the model has no prunable channel group" + _frozen_hint(analysis))
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
    feed = _first_feed(dataset) if dataset is not None else _zeros_feed(analysis)
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
        report.update(_before_after(analysis.model, pruned, eval_set, batch_size))
    report["samples"] = 0 if dataset is None else len(dataset)
    report["timings"] = timings
    stamp_provenance(pruned, report, model)
    return PruneResult(pruned, report)


def _zeros_feed(analysis: Analysis) -> dict[str, np.ndarray]:
    from .graph.shapes import probe_feed

    return probe_feed(analysis.specs, None)


def _frozen_hint(analysis: Analysis) -> str:
    reasons = sorted({g.frozen_reason for g in analysis.groups if g.frozen_reason})
    if not analysis.groups:
        return " (it has no Conv, Gemm or MatMul layer)"
    return f" (frozen: {reasons[0]})" if reasons else " (every group has a single channel)"


def _before_after(
    before: onnx.ModelProto, after: onnx.ModelProto, eval_set: Dataset, batch_size: int
) -> dict[str, float]:
    result = {}
    for suffix, model in (("before", before), ("after", after)):
        for metric, value in evaluate(model, eval_set, batch_size).items():
            result[f"{metric}_{suffix}"] = value
    return result


def build_report(
    method: str,
    parameters: dict,
    model_arg,
    analysis: Analysis,
    pruned: onnx.ModelProto,
    masks: dict[int, np.ndarray],
    scores: dict[int, np.ndarray],
    feed: dict[str, np.ndarray],
) -> dict:
    """The machine-readable report (report.py renders it for people)."""
    params_before, params_after = count_params(analysis.model), count_params(pruned)
    macs_before, macs_after = count_macs(analysis.model, feed), count_macs(pruned, feed)
    layers = []
    for group in analysis.groups:
        mask = masks.get(group.index)
        for source in group.sources:
            total = source.size
            kept = total if mask is None else int(mask[group.channel_of[source.name]].sum())
            layers.append(
                {
                    "name": source.name,
                    "op": source.node.op,
                    "kind": source.kind,
                    "group": group.index,
                    "kept": kept,
                    "total": total,
                    "prunable": group.prunable,
                }
            )
    frozen = [
        {
            "group": g.index,
            "layers": [s.name for s in g.sources],
            "channels": g.size,
            "reason": g.frozen_reason or "single channel",
        }
        for g in analysis.frozen()
    ]
    return {
        "tool": "onnxprune",
        "version": __version__,
        "method": method,
        "parameters": parameters,
        "model": str(model_arg) if not isinstance(model_arg, onnx.ModelProto) else "<ModelProto>",
        "params_before": params_before,
        "params_after": params_after,
        "remaining_params_ratio": params_after / params_before if params_before else 1.0,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "flops_before": 2 * macs_before,
        "flops_after": 2 * macs_after,
        "size_bytes_before": model_bytes(analysis.model),
        "size_bytes_after": model_bytes(pruned),
        "groups_total": len(analysis.groups),
        "groups_pruned": sum(1 for m in masks.values() if not m.all()),
        "layers": layers,
        "frozen": frozen,
    }


def stamp_provenance(pruned: onnx.ModelProto, report: dict, model_arg) -> None:
    """Record tool, method, parameters and source hash in the model's metadata_props."""
    entries = {
        "onnxprune.version": __version__,
        "onnxprune.method": report["method"],
        "onnxprune.parameters": repr(report["parameters"]),
    }
    if isinstance(model_arg, str | os.PathLike) and os.path.isfile(model_arg):
        entries["onnxprune.source_sha256"] = model_hash(model_arg)
    kept = [p for p in pruned.metadata_props if not p.key.startswith("onnxprune.")]
    del pruned.metadata_props[:]
    pruned.metadata_props.extend(kept)
    for key, value in entries.items():
        pruned.metadata_props.add(key=key, value=value)
